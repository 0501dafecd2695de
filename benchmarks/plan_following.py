"""Planning alone: how often a model folder's learned planner turns a held-out prompt into the right objects in
the right places, scored exactly on the plan itself (each planned object read as the scorer would read it
drawn), no denoiser. It separates planning errors from drawing errors: the prompt-following figure of the
model is at most about this one (the layout upper bound note: drawing a right layout succeeds 94-98%).

    python benchmarks/plan_following.py                                    # the shipped planner, 25 per cell
    python benchmarks/plan_following.py --model runs/planner-default/model --per-cell 10
    python benchmarks/plan_following.py --validation 300 --families      # only the validation scenes

`--validation N`: N fresh scenes (a seed no training run uses) captioned by every training captioner, scored per
captioner: the right objects (counts of each colour and shape) and, for the captioners that place every object,
the share of objects planned into their cell, and the share of scenes of 3 or more objects planned whole (every object,
each in its cell). This is the in-distribution check to choose between planners by;
the suites are for reporting only.

`--dev N`: N prompts per suite (counting, binding, spatial; detailed and prose: 3-6 objects each placed, scored whole) in wordings of this file's own (DEV_* below, written
2026-12-06 for choosing planners, independently of world/unseen_wordings.py and of every training captioner):
how a planner copes with phrasing it never saw, measured on a set that is not the reported held-out suite.
"""
import argparse
import json
import time
from collections import defaultdict

from limner.models import folder
from limner.models.planner import TextPlanner
from limner.text.encoder import TextEncoder
import random

from limner.world import captioners, suites, unseen_wordings
from limner.world.captions import cell
from limner.world.scene import sample_scene
from limner.world.evaluate import CELL, HEADLINE, wilson
from limner.world.layout import found_of
from limner.world.scorer import Constraints, score


# ------------------------------------------------------------------ dev wordings (for choosing, not reporting)
DEV_COLOURS = {"red": ["red", "ruby", "fire-engine red"], "green": ["green", "jade", "lime green"],
               "blue": ["blue", "navy", "azure"], "yellow": ["yellow", "canary yellow", "mustard"],
               "purple": ["purple", "lavender", "mauve"], "orange": ["orange", "apricot", "carrot orange"]}
DEV_SHAPES = {"circle": [("circle", "circles"), ("orb", "orbs"), ("ball", "balls")],
              "square": [("square", "squares"), ("square panel", "square panels"), ("quadrate", "quadrates")],
              "triangle": [("triangle", "triangles"), ("wedge", "wedges"), ("pyramid shape", "pyramid shapes")]}
DEV_COUNTS = {1: ["exactly one", "a lone", "only one"], 2: ["a pair of", "exactly two", "a couple of"],
              3: ["a trio of", "exactly three", "3"], 4: ["four", "a quartet of", "exactly 4"],
              5: ["five", "a handful of five", "5"], 6: ["half a dozen", "six", "exactly 6"],
              7: ["seven", "7", "a group of seven"], 8: ["eight", "8", "a cluster of eight"]}
DEV_RELATIONS = {"left of": ["positioned to the left of", "placed left of", "off to the left of"],
                 "right of": ["positioned to the right of", "placed right of", "off to the right of"],
                 "above": ["floating above", "placed higher than", "sitting atop"],
                 "below": ["placed beneath", "sitting lower than", "hanging below"]}
DEV_FRAMES = ["Draw {}.", "Please make {}.", "I'd like {}.", "Show {} on a plain background.", "{}, nothing else.",
              "An illustration of {}."]


def dev_thing(rng, n, colour, shape):
    sing, plural = rng.choice(DEV_SHAPES[shape])
    return f"{rng.choice(DEV_COUNTS[n]) if n > 1 or rng.random() < 0.5 else 'a'} {rng.choice(DEV_COLOURS[colour])} {sing if n == 1 else plural}"


def dev_kinds(rng, k):
    return rng.sample([(c, s) for c in DEV_COLOURS for s in DEV_SHAPES], k)


def dev_counting(rng):
    n, [(c, s)] = rng.randint(1, 8), dev_kinds(rng, 1)
    return rng.choice(DEV_FRAMES).format(dev_thing(rng, n, c, s)), Constraints([{"colour": c, "shape": s, "count": n}])


def dev_binding(rng):
    kinds = dev_kinds(rng, rng.choice([2, 3]))
    parts = [dev_thing(rng, 1, c, s) for c, s in kinds]
    text = rng.choice(DEV_FRAMES).format(", ".join(parts[:-1]) + rng.choice([" plus ", " as well as ", " along with "]) + parts[-1])
    return text, Constraints([{"colour": c, "shape": s, "count": 1} for c, s in kinds])


def dev_spatial(rng):
    (ca, sa), (cb, sb) = dev_kinds(rng, 2)
    rel = rng.choice(list(DEV_RELATIONS))
    text = rng.choice(DEV_FRAMES).format(f"{dev_thing(rng, 1, ca, sa)} {rng.choice(DEV_RELATIONS[rel])} {dev_thing(rng, 1, cb, sb)}")
    return text, Constraints([{"colour": ca, "shape": sa, "count": 1}, {"colour": cb, "shape": sb, "count": 1}],
                             [{"a": [ca, sa], "rel": rel, "b": [cb, sb]}])


# long scenes in sentence shapes of their own (2026-12-07): the captioners' words for colours, shapes, sizes and
# places, but objects introduced as steps, lists and asides, one object per clause, in any order
DEV_PLACES = [["top left", "top middle", "top right"], ["middle left", "middle", "middle right"],
              ["bottom left", "bottom middle", "bottom right"]]
DEV_STEPS = ["Put {} in the {}.", "Add {} to the {}.", "{} goes in the {}.", "Then {}, {}.", "Next comes {} ({}).",
             "Also {}: {}.", "Place {} at the {}."]


def placed_constraints(scene) -> Constraints:
    """What a prompt that places every object states: each object, with its size, in its cell. No relations:
    these prompts name none (until 2026-12-07 the scene's every group relation was checked too, which failed
    right plans whose objects stood in their cells but not in the unstated order within them)."""
    return Constraints.placed(scene, "validation", with_sizes=False)


def dev_detailed(rng):
    scene = sample_scene(rng, n_objects=rng.randint(3, 6))
    objs = list(scene.objects)
    rng.shuffle(objs)
    lines = []
    for i, o in enumerate(objs):
        row, col = cell(o.x, o.y)
        thing = f"{rng.choice(['a', 'one'])} {o.size if o.size == 'small' else rng.choice(['large', 'big'])} {o.colour} {o.shape}"
        step = rng.choice(DEV_STEPS).format(thing, DEV_PLACES[row][col])
        step = step[0].upper() + step[1:]
        lines.append(step if rng.random() < 0.5 else f"{i + 1}. {step}")
    return f"{rng.choice(['A picture with these shapes:', 'Step by step:', 'Layout:'])} " + " ".join(lines), placed_constraints(scene)


# long scenes in prose of their own (2026-12-07, written after the numbered steps above became a form captioners
# write): attributes after the noun, places as parts of the canvas, clauses joined loosely, no numbers but counts
DEV_PARTS = [["close to the top-left corner", "in the top portion, centred", "close to the top-right corner"],
             ["halfway down on the left", "at the heart of the canvas", "halfway down on the right"],
             ["close to the bottom-left corner", "in the bottom portion, centred", "close to the bottom-right corner"]]
DEV_JOINS = ["; ", ", and ", ". Then ", ". Beside that, ", "; after that, "]


def dev_prose(rng):
    scene = sample_scene(rng, n_objects=rng.randint(3, 6))
    objs = list(scene.objects)
    rng.shuffle(objs)
    clauses = []
    for o in objs:
        row, col = cell(o.x, o.y)
        size = o.size if o.size == "small" else rng.choice(["large", "big"])
        thing = rng.choice([f"a {o.shape} in {o.colour}, {size}", f"a {size} {o.shape} in {o.colour}",
                            f"one {o.colour} {o.shape} of {size} size"])
        clauses.append(rng.choice([f"{thing} {DEV_PARTS[row][col]}", f"{DEV_PARTS[row][col]} I want {thing}"]))
    text = clauses[0]
    for c in clauses[1:]:
        join = rng.choice(DEV_JOINS)
        text += join + (c[0].upper() + c[1:] if join.endswith(". ") else c)
    opener = rng.choice(["Here is what I have in mind: ", "Picture this: ", "The scene: "])
    return opener + text[0].upper() + text[1:] + ".", placed_constraints(scene)


DEV_HEADLINE = {**HEADLINE, "prose": HEADLINE["detailed"]}   # prose is scored whole, as detailed
DEV_WRITERS = {"counting": dev_counting, "binding": dev_binding, "spatial": dev_spatial, "detailed": dev_detailed,
               "prose": dev_prose}

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="shapes-default")
ap.add_argument("--per-cell", type=int, default=25)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--temperature", type=float, help="the places' sampling temperature [the model's plan_temperature]")
ap.add_argument("--families", nargs="*", default=["templates", "unseen"], choices=["templates", "unseen"])
ap.add_argument("--validation", type=int, default=0, help="also score N fresh scenes per training captioner")
ap.add_argument("--dev", type=int, default=0, help="also score N prompts per suite in this file's dev wordings")
ap.add_argument("--out")
a = ap.parse_args()

path = folder.resolve(a.model)
meta = folder.read_meta(path)
planner = folder.load_planner(path, meta)
if planner is None:
    raise SystemExit(f"{a.model} has no learned planner")
if a.temperature is None:
    a.temperature = folder.plan_temperature(meta)
plan = TextPlanner(planner, TextEncoder(meta.get("text_encoder", "minilm")), a.temperature)
builders = {"templates": suites.build, "unseen": unseen_wordings.build}
result = {"model": str(a.model), "per_cell": a.per_cell, "temperature": a.temperature, "families": {}}
t0 = time.time()
for family in a.families:
    rows = {}
    for suite in suites.SUITES:
        items = builders[family](suite, a.per_cell)
        layouts = plan([it["prompt"] for it in items], [a.seed + i for i in range(len(items))])
        rs = [score(found_of(lay), Constraints.from_dict(it["constraints"])) for it, lay in zip(items, layouts)]
        key = HEADLINE[suite]
        hits = sum(r[key] for r in rs)
        cells = defaultdict(list)
        for it, r in zip(items, rs):
            cells[str(it["tags"][CELL[suite]])].append(r[key])
        rows[suite] = {"acc": hits / len(rs), "n": len(rs), "ci95": wilson(hits, len(rs)),
                       "content": sum(r["content_ok"] for r in rs) / len(rs),
                       "placed": sum(r["positions"] for r in rs) / len(rs),
                       "cells": {k: round(sum(v) / len(v), 3) for k, v in cells.items()}}
    result["families"][family] = rows
if a.validation:
    from limner.world import captions as C

    rng = random.Random("plan-validation-7919")
    scenes = [sample_scene(rng) for _ in range(a.validation)]
    rows = {}
    for name, write in captioners.CAPTIONERS.items():
        texts = [write(sc, rng) for sc in scenes]
        layouts = plan(texts, [a.seed + i for i in range(len(texts))])
        right, placed, whole, long = 0, 0.0, 0, 0
        for sc, lay in zip(scenes, layouts):
            r = score(found_of(lay), placed_constraints(sc))
            objects_ok = r["count_ok"] and r["extras"] == 0
            right += objects_ok
            placed += r["positions"]
            if len(sc.objects) >= 3:   # a long scene planned whole: every object, each in its cell
                long += 1
                whole += objects_ok and r["positions"] == 1.0
        rows[name] = {"objects": right / len(scenes), "placed": placed / len(scenes), "whole_long": whole / max(long, 1),
                      "long": long}
    # relations alone: fresh two-object scenes, one relation that holds, in the relational captioner's words
    texts, wanted = [], []
    while len(texts) < a.validation:
        sc = sample_scene(rng, n_objects=2, n_groups=2)
        if C.relations(sc):
            ka, rel, kb = rng.choice(C.relations(sc))
            texts.append(f"{captioners.noun_phrase(1, *ka, rng)} {rng.choice(captioners.RELATION_WORDS[rel])} "
                         f"{captioners.noun_phrase(1, *kb, rng)}")
            wanted.append(Constraints([{"colour": k[0], "shape": k[1], "count": 1} for k in (ka, kb)],
                                      [{"a": list(ka), "rel": rel, "b": list(kb)}]))
    layouts = plan(texts, [a.seed + i for i in range(len(texts))])
    right = sum(score(found_of(lay), cons)["relations_ok"] for lay, cons in zip(layouts, wanted))
    result["validation"] = {"scenes": a.validation, "captioners": rows, "relations": right / len(texts)}
if a.dev:
    rows = {}
    for suite, write in DEV_WRITERS.items():
        rng = random.Random(f"plan-dev-{suite}-4421")
        items = [write(rng) for _ in range(a.dev)]
        layouts = plan([text for text, _ in items], [a.seed + i for i in range(len(items))])
        hits = sum(score(found_of(lay), cons)[DEV_HEADLINE[suite]] for (_, cons), lay in zip(items, layouts))
        rows[suite] = {"acc": hits / len(items), "n": len(items), "ci95": wilson(hits, len(items))}
    result["dev"] = rows
result["seconds"] = round(time.time() - t0, 1)
print(f"{a.model}: planning alone (plans scored exactly), temperature {a.temperature}")
print(f"{'family':10} {'suite':9} {'acc':>6}  95% interval    content placed  n   by cell")
for family, rows in result["families"].items():
    for s, r in rows.items():
        print(f"{family:10} {s:9} {r['acc']:6.3f}  [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  {r['content']:6.3f} "
              f"{r['placed']:6.3f} {r['n']:4d}  {r['cells']}")
for name, r in result.get("validation", {}).get("captioners", {}).items():
    print(f"validation {name:17} objects {r['objects']:.3f}  placed {r['placed']:.3f}  "
          f"whole scene of 3+ objects {r['whole_long']:.3f} (n {r['long']})")
if "validation" in result:
    print(f"validation relations (2 objects, one relation) {result['validation']['relations']:.3f}")
for suite, r in result.get("dev", {}).items():
    print(f"dev wordings {suite:9} {r['acc']:.3f}  [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  n {r['n']}")
print(f"{result['seconds']} s")
if a.out:
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
