"""Wall time of one `limner generate`-style call (one prompt, one image) with verifier search.

    python benchmarks/verifier_search.py --best-of 1 4 8 16 --steps 10 20 [--detailed]

Everything a user waits for is in the time: text encoding, N guided samples in one batch, decoding,
scoring the N candidates, the image filter and the watermark. Median over the prompts, after a warm-up.
"""
import argparse
import json
import statistics
import time

import torch

from limner.pipeline.core import Pipeline

PROMPTS = ["three red circles and a blue square", "a yellow triangle to the left of two green circles",
           "seven purple squares", "a small orange circle above a large blue triangle", "five green triangles"]

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="shapes-default")
ap.add_argument("--best-of", type=int, nargs="+", default=[1, 4, 8])
ap.add_argument("--steps", type=int, nargs="+", default=[20])
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--detailed", action="store_true", help="five held-out long prompts (3-7 objects, with their layouts)")
a = ap.parse_args()
if a.detailed:
    from limner.world.suites import build

    PROMPTS = [it["prompt"] for it in build("detailed", 1)[:5]]
torch.set_num_threads(a.threads)
pipe = Pipeline.from_pretrained(a.model, cascade=False)  # the base image: the figure is about search, not the upsampler
pipe(PROMPTS[0], seed=0, steps=2)  # warm-up: loads the filters
for steps in a.steps:
    for n in a.best_of:
        times = []
        for i, p in enumerate(PROMPTS):
            t = time.perf_counter()
            pipe(p, seed=100 + i, steps=steps, best_of=n)
            times.append(time.perf_counter() - t)
        print(json.dumps({"steps": steps, "best_of": n, "median_s": round(statistics.median(times), 3),
                          "max_s": round(max(times), 3)}), flush=True)
