"""How to spend a fixed sampling budget on verifier search: steps per candidate, candidates, early pruning.

    python benchmarks/search_budget.py draw --candidates 32 --steps 10 --per-cell 8 --seed 0 --out /tmp/draws.pkl
    python benchmarks/search_budget.py analyse /tmp/draws.pkl [--max-cost 125]

`draw` runs every candidate of every suite prompt through the Euler sampler and, after each step, reads
the model's prediction of the clean image (x0 = x_t - t v) back into objects: that prediction after k
steps is exactly what a (k + 1)-step sampler whose last step jumps to t = 0 would draw. `analyse` then
compares, at equal denoiser evaluations per image, best-of-N at full steps, best-of-N of those early
predictions, early pruning (score all N after k + 1 evaluations, finish the best M) and the oracle (any
candidate right). It grades with the suites' own constraints, the verifier reads the prompt only.
"""
from __future__ import annotations

import argparse
import itertools
import pickle
import time
from collections import defaultdict
from dataclasses import asdict

import torch

from limner.diffusion.sampling import guided, timesteps
from limner.pipeline.core import CANDIDATE_STRIDE, Pipeline
from limner.safety.guard import SafetyConfig
from limner.text.encoder import pad
from limner.world.evaluate import HEADLINE
from limner.world.parse import parse_prompt
from limner.world.scorer import Constraints, Found, detect, reward, score
from limner.world.suites import SUITES, build


def draw(a):
    torch.set_num_threads(a.threads)
    pipe = Pipeline.from_pretrained(a.model, safety=SafetyConfig.off())
    g = pipe.meta["defaults"]["guidance"] if a.guidance is None else a.guidance
    n = a.candidates
    out, t0 = [], time.time()
    for suite in SUITES:
        items = build(suite, a.per_cell)
        for i, it in enumerate(items):
            s = a.seed + i  # as `run_suites` seeds item i; candidate c as the pipeline does
            st, mask = pad(pipe.encoder.encode([it["prompt"], ""]))
            v = guided(pipe.denoiser, (st[:1].expand(n, -1, -1), mask[:1].expand(n, -1)),
                       (st[1:].expand(n, -1, -1), mask[1:].expand(n, -1)), g)
            x = pipe.noise([s + c * CANDIDATE_STRIDE for c in range(n)])
            ts, early = timesteps(a.steps), []
            with torch.no_grad():
                for t, t_next in zip(ts[:-1], ts[1:]):
                    vel = v(x, t)
                    early.append([[asdict(f) for f in detect(img)] for img in pipe.decode(x - t * vel)])
                    x = x + (t_next - t) * vel
            final = [[asdict(f) for f in detect(img)] for img in pipe.decode(x)]
            out.append({"suite": suite, "item": it, "seed": s, "steps": early, "final": final})
        print(f"{suite}: {len(items)} prompts, {time.time() - t0:.0f} s", flush=True)
    with open(a.out, "wb") as f:
        pickle.dump(out, f)


def analyse(a):
    with open(a.draws, "rb") as f:
        data = pickle.load(f)
    steps, n = len(data[0]["steps"]), len(data[0]["final"])
    rows = defaultdict(lambda: defaultdict(list))  # (strategy, ..., cost) -> suite -> graded
    for d in data:
        cons, truth = parse_prompt(d["item"]["prompt"]), Constraints.from_dict(d["item"]["constraints"])
        found = lambda lst: [Found(**x) for x in lst]
        verify = lambda objs: reward(score(objs, cons), cons)
        grade = lambda objs: score(objs, truth)[HEADLINE[d["suite"]]]
        finals = [found(x) for x in d["final"]]
        fv, fg = [verify(f) for f in finals], [grade(f) for f in finals]
        best = lambda vals, pool: max(pool, key=lambda c: (vals[c], -c))  # ties keep the earlier candidate
        for m in sorted({1, 4, 8, 12, 16, 24, n}):
            if m <= n:
                rows[("best of", m, f"{steps} steps", steps * m)][d["suite"]].append(fg[best(fv, range(m))])
                rows[("oracle", m, f"{steps} steps", steps * m)][d["suite"]].append(any(fg[:m]))
        for k in range(steps - 1):
            ev = [verify(found(x)) for x in d["steps"][k]]
            eg = [grade(found(x)) for x in d["steps"][k]]
            rows[("per draw", 1, f"{k + 1} evals", k + 1)][d["suite"]].append(sum(eg) / n)
            for m in (12, 16, 20, 24, 30, 32):
                if m <= n:
                    rows[("best of", m, f"{k + 1} evals", (k + 1) * m)][d["suite"]].append(eg[best(ev, range(m))])
            for m, keep in itertools.product((16, 20, 24, 32), (2, 4, 6, 8)):
                if m <= n and keep < m:
                    kept = sorted(range(m), key=lambda c: (-ev[c], c))[:keep]
                    cost = m * (k + 1) + keep * (steps - k - 1)
                    rows[("prune", m, f"score after {k + 1}, finish {keep}", cost)][d["suite"]].append(fg[best(fv, kept)])
    print("| strategy | evals per image | " + " | ".join(SUITES) + " | mean |")
    print("|---|---:|" + "---:|" * (len(SUITES) + 1))
    for key in sorted(rows, key=lambda r: (r[-1], r[0])):
        if key[-1] > a.max_cost:
            continue
        acc = [sum(rows[key][s]) / len(rows[key][s]) for s in SUITES]
        print(f"| {key[0]} {key[1]}, {key[2]} | {key[3]} | " + " | ".join(f"{x:.3f}" for x in acc)
              + f" | {sum(acc) / len(acc):.3f} |")


ap = argparse.ArgumentParser()
sub = ap.add_subparsers(dest="cmd", required=True)
d = sub.add_parser("draw")
d.add_argument("--model", default="shapes-default")
d.add_argument("--candidates", type=int, default=32)
d.add_argument("--steps", type=int, default=10)
d.add_argument("--per-cell", type=int, default=8)
d.add_argument("--seed", type=int, default=0)
d.add_argument("--guidance", type=float)
d.add_argument("--threads", type=int, default=2)
d.add_argument("--out", required=True)
an = sub.add_parser("analyse")
an.add_argument("draws")
an.add_argument("--max-cost", type=int, default=125)
a = ap.parse_args()
draw(a) if a.cmd == "draw" else analyse(a)
