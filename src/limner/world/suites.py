"""Shapes World prompt suites with exact constraints: counting, binding, spatial, detailed.

Every item is a dict {"id", "suite", "prompt", "constraints", "tags"}; the scorer checks images
against "constraints". Suites are drawn from their own seeds, and training drops any caption equal
to a suite prompt, so the suites stay held out.
"""
from __future__ import annotations

import random

from . import captions as C
from .scene import COLOURS, SHAPES, sample_scene
from .scorer import Constraints

SUITES = ("counting", "binding", "spatial", "detailed")
HELD_OUT_SEED = 2024


def _num(n: int, rng: random.Random) -> str:
    return str(n) if rng.random() < 0.25 else C.NUMBER_WORDS[n]


def _phrase(n: int, colour: str, shape: str, rng: random.Random) -> str:
    num = ("a" if rng.random() < 0.5 else "one") if n == 1 else _num(n, rng)
    return f"{num} {colour} {shape if n == 1 else C.PLURALS[shape]}"


def counting(rng: random.Random, n: int) -> tuple[str, Constraints, dict]:
    """GeckoNum-like: N (1-8) of one kind, sometimes beside one or two of another kind."""
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], 2)
    groups = [(n, *kinds[0])]
    if rng.random() < 0.4 and n <= 6:
        groups.append((rng.randint(1, 2), *kinds[1]))
    prompt = " and ".join(_phrase(k, c, s, rng) for k, c, s in groups)
    cons = Constraints([{"colour": c, "shape": s, "count": k} for k, c, s in groups], [], True, "counting")
    return prompt, cons, {"count": n, "groups": len(groups)}


def binding(rng: random.Random, k: int) -> tuple[str, Constraints, dict]:
    """Two or three colour-shape pairs that share colours or shapes, so that swapping them is wrong."""
    colours = rng.sample(list(COLOURS), k)
    shapes = rng.sample(SHAPES, k) if rng.random() < 0.7 else [rng.choice(SHAPES)] * k
    groups = list(zip(colours, shapes))
    prompt = " and ".join(_phrase(1, c, s, rng) for c, s in groups)
    cons = Constraints([{"colour": c, "shape": s, "count": 1} for c, s in groups], [], True, "binding")
    return prompt, cons, {"pairs": k}


def spatial(rng: random.Random, rel: str) -> tuple[str, Constraints, dict]:
    (ca, sa), (cb, sb) = rng.sample([(c, s) for c in COLOURS for s in SHAPES], 2)
    prompt = f"{_phrase(1, ca, sa, rng)} {rng.choice(C.RELATIONS[rel])} {_phrase(1, cb, sb, rng)}"
    groups = [{"colour": ca, "shape": sa, "count": 1}, {"colour": cb, "shape": sb, "count": 1}]
    cons = Constraints(groups, [{"a": [ca, sa], "rel": rel, "b": [cb, sb]}], True, "spatial")
    return prompt, cons, {"relation": rel}


def detailed(rng: random.Random, n: int) -> tuple[str, Constraints, dict]:
    """Everything the description states: each group by size, each object's place in the 3 x 3 grid, and the
    relations it names. The scene it was written from stays in the tags (for `layout_by_relations`)."""
    scene = sample_scene(rng, n_objects=n)
    text, stated = C.described(scene, rng)
    cons = Constraints.from_scene(scene, "detailed")
    cons.relations = [{"a": list(a), "rel": r, "b": list(b)} for a, r, b in stated]
    cons.objects = [{"colour": o.colour, "shape": o.shape, "size": o.size, "cell": list(C.cell(o.x, o.y))}
                    for o in scene.objects]
    return text, cons, {"objects": n, "words": len(text.split()), "scene": scene.to_dict()}


def build(suite: str, per_cell: int = 25, seed: int = HELD_OUT_SEED) -> list[dict]:
    """A suite with `per_cell` prompts for each cell (count, pair number, relation, object number)."""
    rng = random.Random(f"{suite}-{seed}")
    cells = {
        "counting": (counting, range(1, 9)),
        "binding": (binding, [2, 3]),
        "spatial": (spatial, list(C.RELATIONS)),
        "detailed": (detailed, range(3, 9)),
    }
    if suite not in cells:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    fn, values = cells[suite]
    items = []
    for v in values:
        for j in range(per_cell):
            prompt, cons, tags = fn(rng, v)
            items.append({"id": f"{suite}-{v}-{j}".replace(" ", "_"), "suite": suite, "prompt": prompt,
                          "constraints": cons.to_dict(), "tags": tags})
    return items


def held_out_prompts(per_cell: int = 25) -> set[str]:
    return {normalise(it["prompt"]) for s in SUITES for it in build(s, per_cell)}


def normalise(text: str) -> str:
    return " ".join(text.lower().split())
