"""Shapes World prompt suites with exact constraints: counting, binding, spatial, detailed.

Every item is a dict {"id", "suite", "prompt", "constraints", "tags"}; the scorer checks images
against "constraints". Each item is drawn from its own seeded stream (suite, seed, cell, index), so a suite
of `per_cell` items is the first `per_cell` items of every larger one; training drops any caption equal to
any prompt of the largest suite (`MAX_PER_CELL`), so every suite a report can build is held out.
"""
from __future__ import annotations

import functools
import random

from . import captions as C
from .scene import COLOURS, SHAPES, sample_scene
from .scorer import Constraints

from . import HELD_OUT_SEED, SUITES  # noqa: F401 (re-exported: the names suites are known by)
MAX_PER_CELL = 25   # the most items per cell a suite has: training excludes all of them


def _num(n: int, rng: random.Random) -> str:
    return str(n) if rng.random() < 0.25 else C.NUMBER_WORDS[n]


def _phrase(n: int, colour: str, shape: str, rng: random.Random) -> str:
    num = ("a" if rng.random() < 0.5 else "one") if n == 1 else _num(n, rng)
    return f"{num} {colour} {shape if n == 1 else C.PLURALS[shape]}"


def counting_groups(rng: random.Random, n: int) -> list[tuple[int, str, str]]:
    """GeckoNum-like: N (1-8) of one kind, sometimes beside one or two of another kind: (count, colour, shape)."""
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], 2)
    groups = [(n, *kinds[0])]
    if rng.random() < 0.4 and n <= 6:
        groups.append((rng.randint(1, 2), *kinds[1]))
    return groups


def counting(rng: random.Random, n: int) -> tuple[str, Constraints, dict]:
    groups = counting_groups(rng, n)
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
    cons = Constraints.placed(scene, "detailed", stated)
    return text, cons, {"objects": n, "words": len(text.split()), "scene": scene.to_dict()}


# the cells of each suite: a count, a number of pairs, a relation, a number of objects
CELLS = {"counting": range(1, 9), "binding": [2, 3], "spatial": list(C.RELATIONS), "detailed": range(3, 9)}


def items(suite: str, per_cell: int, writers: dict, stream: str, prefix: str = "") -> list[dict]:
    """`per_cell` items for each cell of `suite`, each written by `writers[suite](rng, cell)` from its own seeded
    stream (`stream`-cell-index), so a smaller suite is the first items of every larger one."""
    if suite not in writers:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    out = []
    for v in CELLS[suite]:
        for j in range(per_cell):
            prompt, cons, tags = writers[suite](random.Random(f"{stream}-{v}-{j}"), v)
            out.append({"id": f"{prefix}{suite}-{v}-{j}".replace(" ", "_"), "suite": suite, "prompt": prompt,
                        "constraints": cons.to_dict(), "tags": tags})
    return out


def build(suite: str, per_cell: int = MAX_PER_CELL, seed: int = HELD_OUT_SEED) -> list[dict]:
    """A suite with `per_cell` prompts for each cell (count, pair number, relation, object number)."""
    if not 1 <= per_cell <= MAX_PER_CELL:
        raise ValueError(f"per_cell must be between 1 and {MAX_PER_CELL} (training holds out that many), not {per_cell}")
    writers = {"counting": counting, "binding": binding, "spatial": spatial, "detailed": detailed}
    return items(suite, per_cell, writers, f"{suite}-{seed}")


@functools.lru_cache(maxsize=2)
def held_out_prompts(seed: int = HELD_OUT_SEED) -> frozenset[str]:
    """Every prompt of every suite that `build` can make with this seed (normalised)."""
    return frozenset(normalise(it["prompt"]) for s in SUITES for it in build(s, MAX_PER_CELL, seed))


def normalise(text: str) -> str:
    return " ".join(text.lower().split())
