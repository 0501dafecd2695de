"""Copy a trained model folder into the package as a shipped model, storing the denoiser in fp16.

    python benchmarks/ship.py runs/shapes-default/model src/limner/weights/shapes-default [--guidance G] [--steps K] [--best-of N]
"""
import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("dst")
ap.add_argument("--guidance", type=float)
ap.add_argument("--steps", type=int)
ap.add_argument("--best-of", type=int, help="default verifier-search candidates per image")
a = ap.parse_args()
src, dst = Path(a.src), Path(a.dst)
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src / "autoencoder", dst / "autoencoder")
save_file({k: v.half().contiguous() for k, v in load_file(src / "denoiser.safetensors").items()},
          dst / "denoiser.safetensors")
meta = json.loads((src / "limner.json").read_text())
if a.guidance is not None:
    meta["defaults"]["guidance"] = a.guidance
if a.steps is not None:
    meta["defaults"]["steps"] = a.steps
if a.best_of is not None:
    meta["defaults"]["best_of"] = a.best_of
(dst / "limner.json").write_text(json.dumps(meta, indent=2))
print(f"shipped {src} -> {dst}: {sum(p.stat().st_size for p in dst.rglob('*') if p.is_file()) / 1e6:.1f} MB")
