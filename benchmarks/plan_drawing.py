"""Plans and their drawings on fresh validation scenes: how often the default path's plan is right and how often the
image drawn from it is, for long scenes (3-8 objects) captioned by the captioners that place every object, at
several decoding settings of the planner (`apart` and `apart_mass`, models/planner.py), paired (same prompts, same
seeds). The in-distribution check that `apart` was chosen by; the suites are for reporting.

    python benchmarks/plan_drawing.py --scenes 100 --settings 0,0.5 0.05,0.5 0.08,0.5
"""
import argparse
import random
import time

from limner.pipeline import Pipeline
from limner.safety.guard import SafetyConfig
from limner.world import captioners
from limner.world.evaluate import wilson
from limner.world.scene import sample_scene
from limner.world.layout import found_of
from limner.world.scorer import Constraints, detect, score


ap = argparse.ArgumentParser()
ap.add_argument("--model", default="shapes-default")
ap.add_argument("--scenes", type=int, default=100, help="scenes per captioner")
ap.add_argument("--seed", default="e2e-validation-5113", help="the scenes' generator (a string no training run uses)")
ap.add_argument("--settings", nargs="+", default=["0,0.5", "0.05,0.5"], help="apart,apart_mass pairs; the first is "
                "the baseline the others are paired with")
a = ap.parse_args()

pipe = Pipeline.from_pretrained(a.model, safety=SafetyConfig.off())
rng = random.Random(a.seed)
items = []
for name in ["british_detailed", "scene_walk", "noun_first"]:
    for _ in range(a.scenes):
        scene = sample_scene(rng, n_objects=rng.randint(3, 8))
        cons = Constraints.placed(scene, "validation", with_sizes=False)   # these captions place every object
        items.append((captioners.CAPTIONERS[name](scene, rng), cons))
texts, seeds = [t for t, _ in items], list(range(len(items)))
base = None
for setting in a.settings:
    apart, mass = (float(x) for x in setting.split(","))
    pipe.planner.planner.cfg.apart, pipe.planner.planner.cfg.apart_mass = apart, mass
    t0 = time.time()
    plans = pipe.planner(texts, seeds)
    planned = sum(score(found_of(plan), c)["correct"] for plan, (_, c) in zip(plans, items))
    drawn = []
    for i in range(0, len(texts), 64):
        images = pipe(texts[i : i + 64], seed=seeds[i : i + 64], size=pipe.resolution)
        drawn += [score(detect(im), c)["correct"] for im, (_, c) in zip(images, items[i : i + 64])]
    n, hits = len(items), sum(drawn)
    lo, hi = wilson(hits, n)
    line = (f"apart {apart} mass {mass}: plans right {planned / n:.3f}, images right {hits / n:.3f} [{lo:.3f}, {hi:.3f}]"
            f" n {n} ({time.time() - t0:.0f} s)")
    if base is None:
        base = drawn
    else:
        line += f"; against {a.settings[0]}: {sum(d and not b for b, d in zip(base, drawn))} better, " \
                f"{sum(b and not d for b, d in zip(base, drawn))} worse"
    print(line, flush=True)
