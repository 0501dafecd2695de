"""The long-prompt picture in README and BENCHMARKS: one held-out detailed prompt for each object count 3-8,
a row per (model, sampling) setting, the same seed; the prompts and each image's grade go to stdout.

    python benchmarks/detailed_grid.py [--model shapes-default] [--before OLD_MODEL] [--out docs/detailed-shapes-default.png]
"""
import argparse

import torch

from limner.pipeline import Pipeline, grid
from limner.safety.guard import SafetyConfig
from limner.world.scorer import Constraints, detect, score
from limner.world.suites import build

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="shapes-default")
ap.add_argument("--before", help="an older model folder for a first row (its default search)")
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--out", default="docs/detailed-shapes-default.png")
a = ap.parse_args()
torch.set_num_threads(2)
items = build("detailed", 1)  # one prompt per object count, 3 to 8
prompts = [it["prompt"] for it in items]
off = SafetyConfig.off()  # the pictures, not the watermark
pipe = Pipeline.from_pretrained(a.model, safety=off, cascade=False)  # base-size pictures
rows = []
if a.before:
    rows.append(("before, default search", Pipeline.from_pretrained(a.before, safety=off, cascade=False)(prompts, seed=a.seed)))
rows.append(("model alone, 20 steps", pipe(prompts, seed=a.seed, steps=20, best_of=1)))
rows.append(("default search", pipe(prompts, seed=a.seed)))
for i, it in enumerate(items):
    print(f"{i + 1}. ({it['tags']['objects']} objects) {it['prompt']}")
for name, imgs in rows:
    grades = [score(detect(im), Constraints.from_dict(it["constraints"])) for im, it in zip(imgs, items)]
    print(f"{name}: " + " ".join("right" if g["correct"] else f"wrong(placed {g['positions']:.2f})" for g in grades))
grid([im for _, imgs in rows for im in imgs], cols=len(items), scale=3).save(a.out)
print(f"wrote {a.out}")
