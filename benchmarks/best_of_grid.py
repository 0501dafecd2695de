"""The picture in README and BENCHMARKS: eight held-out prompts, the model alone (top) and the shipped default
search (bottom), the same seed.

    python benchmarks/best_of_grid.py [--model shapes-default] [--seed 7] [--out docs/best-of-shapes-default.png]
"""
import argparse

import torch

from limner.pipeline import Pipeline, grid
from limner.safety.guard import SafetyConfig

PROMPTS = ["a purple triangle and 2 yellow squares", "three yellow circles", "five blue triangles", "seven red circles",
           "a orange circle on the left of one blue square", "one orange square and a red circle",
           "one red circle above one green circle", "a red triangle and one purple square and a yellow circle"]

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="shapes-default")
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--out", default="docs/best-of-shapes-default.png")
a = ap.parse_args()
torch.set_num_threads(2)
pipe = Pipeline.from_pretrained(a.model, safety=SafetyConfig.off(), cascade=False)  # base-size pictures, no watermark
plain = pipe(PROMPTS, seed=a.seed, steps=20, best_of=1)
search = pipe(PROMPTS, seed=a.seed)  # the model's defaults
grid(plain + search, cols=8).save(a.out)
print(f"wrote {a.out}")
