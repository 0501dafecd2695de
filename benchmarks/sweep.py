"""Shapes World suite scores of a model over guidance scales, samplers and step counts.

    python benchmarks/sweep.py --model shapes-default --per-cell 8 --guidance 2 3 4 5 --steps 20 --sampler euler [--best-of 1 4]
"""
import argparse
import json
import time

import torch

from limner.pipeline.core import Pipeline
from limner.world.evaluate import run_suites

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="shapes-default")
ap.add_argument("--per-cell", type=int, default=8)
ap.add_argument("--guidance", type=float, nargs="+", default=[3.0])
ap.add_argument("--steps", type=int, nargs="+", default=[20])
ap.add_argument("--sampler", nargs="+", default=["euler"])
ap.add_argument("--best-of", type=int, nargs="+", default=[1], help="verifier search candidates per image")
ap.add_argument("--cells", action="store_true", help="also print per-cell accuracy, whole-scene rate and extras")
ap.add_argument("--suites", nargs="+", default=None, help="a subset of counting binding spatial detailed")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0, help="first noise seed (pick settings on one, report on another)")
a = ap.parse_args()
torch.set_num_threads(a.threads)
pipe = Pipeline.from_pretrained(a.model)
for sampler in a.sampler:
    for steps in a.steps:
        for g in a.guidance:
            for n in a.best_of:
                t = time.time()
                details = {} if a.cells else None
                summary = run_suites(pipe, a.per_cell, a.suites, seed=a.seed, steps=steps, guidance=g, sampler=sampler,
                                     details=details, best_of=n)
                print(json.dumps({"sampler": sampler, "steps": steps, "guidance": g, "best_of": n, **summary,
                                  "seconds": round(time.time() - t, 1), **({"details": details} if a.cells else {})}),
                      flush=True)
