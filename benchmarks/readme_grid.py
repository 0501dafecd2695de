"""README's picture: the default path (the model's own planner, then the denoiser; no search, no grader) on prompts
written for the picture in several wordings, one row per model folder, the same seed. Not graded: the figures
are benchmarks/prompt_following.py's.

    python benchmarks/readme_grid.py [--models runs/planner-default-stage3/model shapes-default] [--out docs/default-path.png]
"""
import argparse

import torch

from limner.pipeline import Pipeline, grid
from limner.safety.guard import SafetyConfig

PROMPTS = ["three red circles and a blue square",
           "a circle in orange, large, top-left, and two squares painted blue at the bottom",
           "Generate an image of five yellow triangles",
           "a purple square above a red triangle",
           "1. A red triangle on the left. 2. A green circle on the right. 3. A yellow square at the bottom.",
           "a square, purple and small, in the lower right; a triangle in orange at the top",
           "two green circles to the right of a big blue triangle",
           "seven red circles"]

ap = argparse.ArgumentParser()
ap.add_argument("--models", nargs="+", default=["shapes-default"], help="one row each, top to bottom")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", default="docs/default-path.png")
a = ap.parse_args()
torch.set_num_threads(2)
rows = []
for model in a.models:   # base-size pictures, no watermark: the drawing, not the cascade
    rows += Pipeline.from_pretrained(model, safety=SafetyConfig.off(), cascade=False)(PROMPTS, seed=a.seed)
grid(rows, cols=len(PROMPTS)).save(a.out)
for i, p in enumerate(PROMPTS):
    print(f"{i + 1}. {p}")
print(f"wrote {a.out}")
