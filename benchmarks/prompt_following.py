"""Prompt following of the model alone: the held-out Shapes World suites in the caption templates' wordings
and in wordings no training captioner uses (world/unseen_wordings.py), exact scene checks, 95% Wilson
intervals. The scorer only grades here; generation runs the model's own default path (no search).

    python benchmarks/prompt_following.py                                   # shipped default, learned layout
    python benchmarks/prompt_following.py --layout none --steps 20 --best-of 1   # text only
    python benchmarks/prompt_following.py --model runs/planner-default/model --per-cell 10 --out pf.json
"""
import argparse
import json
import time

from limner.common.files import write_atomic
from limner.pipeline import Pipeline
from limner.safety.guard import SafetyConfig
from limner.world.evaluate import score_families


ap = argparse.ArgumentParser()
ap.add_argument("--model", default="shapes-default")
ap.add_argument("--layout", default="auto", choices=["auto", "learned", "rule", "none"])
ap.add_argument("--per-cell", type=int, default=10)
ap.add_argument("--steps", type=int)
ap.add_argument("--guidance", type=float)
ap.add_argument("--best-of", type=int)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--families", nargs="+", default=["templates", "unseen"], choices=["templates", "unseen"])
ap.add_argument("--out")
a = ap.parse_args()

pipe = Pipeline.from_pretrained(a.model, safety=SafetyConfig.off(), layout=a.layout)
result = {"model": a.model, "layout": a.layout, "per_cell": a.per_cell, "steps": a.steps or pipe.defaults.get("steps"),
          "guidance": a.guidance if a.guidance is not None else pipe.defaults.get("guidance"),
          "best_of": a.best_of or pipe.defaults.get("best_of", 1)}
t0 = time.time()
result["families"] = score_families(pipe, a.per_cell, a.families, seed=a.seed, steps=a.steps, guidance=a.guidance,
                                    best_of=a.best_of)
result["seconds"] = round(time.time() - t0, 1)
print(f"{a.model} layout={a.layout} steps={result['steps']} guidance={result['guidance']} best_of={result['best_of']}")
print(f"{'family':10} {'suite':9} {'acc':>6}  95% interval   n")
for family, rows in result["families"].items():
    for s, r in rows.items():
        print(f"{family:10} {s:9} {r['acc']:6.3f}  [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  {r['n']}")
print(f"{result['seconds']} s")
if a.out:
    write_atomic(a.out, json.dumps(result, indent=1))
