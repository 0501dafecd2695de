"""The captions ablation (issue 23): does caption diversity, and then a learned layout, make the model follow
prompts? Four denoisers at one training budget (configs/ablation.yaml: same scenes, steps, model and seed),
differing only in the captions they are trained on; each then drawn alone (20 steps, best of 1, no search) on
the held-out suites in the template wordings and in wordings no captioner uses.

    python benchmarks/ablation.py                       # train what is missing (resumable), then score all four
    python benchmarks/ablation.py --per-cell 10 --only c d --out ablation.json

Training runs as `limner train` subprocesses, one at a time; a run whose model folder exists is not retrained.
Variant (d) is drawn with the shipped planner (trained separately, on its own captions: its 72 min are outside
the equal budget, which covers the denoisers).
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from limner.common.files import write_atomic
from limner.models import folder

VARIANTS = {   # key: (folder name, label, --set overrides of configs/ablation.yaml)
    "a": ("alt-only", "(a) alt-text only", ["data.caption_weights={alt: 1.0}"]),
    "b": ("one-captioner", "(b) one synthetic captioner (the templates)",
          ["data.caption_weights={alt: 0.05, count: 0.35, spatial: 0.2, detailed: 0.4}"]),
    "c": ("all-captioners", "(c) all captioners", []),
    "d": ("all-captioners-layout", "(d) (c) + learned layout", ["model.grounding=true", "layout_dropout=0.5"]),
}


def train(key: str, root: Path, config: str, extra: list[str]) -> float | None:
    """Train one variant unless its model exists; the seconds it took (None when it was there already)."""
    name, _, sets = VARIANTS[key]
    out = root / name
    if (out / "model" / "limner.json").exists():
        return None
    cmd = [sys.executable, "-m", "limner.cli", "train", config, "--set", f"out_dir={out}"]
    for s in sets + extra:
        cmd += ["--set", s]
    if (out / "checkpoint.pt").exists():
        cmd.append("--resume")
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def with_planner(model: Path, planner_from: str) -> Path:
    """A copy of `model` with the planner (and its place temperature) of `planner_from`, a model folder."""
    src = folder.resolve(planner_from)
    meta = folder.read_meta(src)
    planner = folder.load_planner(src, meta)
    out = model.parent / "model-planned"
    if out.exists():
        shutil.rmtree(out)
    folder.save_planner(model, planner, out)
    mine = folder.read_meta(out)
    mine.setdefault("defaults", {})["plan_temperature"] = folder.plan_temperature(meta)
    write_atomic(out / "limner.json", json.dumps(mine, indent=2))
    return out


def score(model: Path, per_cell: int, seed: int) -> dict:
    from limner.pipeline import Pipeline
    from limner.safety.guard import SafetyConfig
    from limner.world.evaluate import score_families

    pipe = Pipeline.from_pretrained(str(model), safety=SafetyConfig.off())
    return score_families(pipe, per_cell, seed=seed, steps=20, best_of=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/ablation.yaml")
    ap.add_argument("--root", default="runs/ablation")
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="more overrides for every variant, e.g. steps=200")
    ap.add_argument("--planner", default="shapes-default", help="the model folder whose planner draws variant (d)")
    ap.add_argument("--per-cell", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/ablation/results.json")
    a = ap.parse_args()

    root = Path(a.root)
    results = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    for key in a.only:   # every training first: a later one reuses the text and latent caches of the first
        seconds = train(key, root, a.config, a.set)
        if seconds is not None:
            results.setdefault(key, {})["train_seconds"] = round(seconds)
    for key in a.only:
        name, label, _ = VARIANTS[key]
        model = root / name / "model"
        if key == "d":
            model = with_planner(model, a.planner)
        t0 = time.time()
        results.setdefault(key, {}).update(label=label, model=str(model), per_cell=a.per_cell, seed=a.seed,
                                           suites=score(model, a.per_cell, a.seed),
                                           score_seconds=round(time.time() - t0))
        write_atomic(a.out, json.dumps(results, indent=1))
    print(f"{'variant':46} {'templates: count bind spat detail':34} unseen: count bind spat detail")
    for key in VARIANTS:
        if "suites" not in results.get(key, {}):
            continue
        r = results[key]["suites"]
        row = lambda f: " ".join(f"{r[f][s]['acc']:.2f}" for s in ("counting", "binding", "spatial", "detailed"))
        print(f"{results[key]['label']:46} {row('templates'):34} {row('unseen')}")


if __name__ == "__main__":
    main()
