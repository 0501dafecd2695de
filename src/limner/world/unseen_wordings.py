"""Held-out wordings: Shapes World prompts phrased the way no training captioner phrases them.

Requests and questions instead of descriptions, attributes after the noun ("three circles in red"), number
idioms ("a pair of", "a trio of", "half a dozen"), objects placed by instructions ("put ... near the bottom",
"add ... towards the right", "... goes in the middle"), relations told from the other side ("with a blue
square to its right"). The grammar is written apart from `captions.py` and `captioners.py` and nothing that
trains imports this module (tests/test_world_wordings.py checks both), so a score here is how the model
reads wordings it has never seen. Items have the same shape as `suites.build`'s, with exact constraints.
"""
from __future__ import annotations

import random
import re

from . import captions as C
from .scene import COLOURS, SHAPES, sample_scene
from .scorer import Constraints
from .suites import counting_groups, items

from . import SUITES  # noqa: E402,F401 (the same four suites as the templates)
SEED = 7919  # its own seed: independent of the template suites' and of training's scenes

IDIOMS = {1: ["a lone", "a solitary"], 2: ["a pair of", "twin"], 3: ["a trio of"], 6: ["half a dozen"]}


def _amount(n: int, rng: random.Random) -> tuple[str, bool]:
    """A number as people say it; True when the noun that follows is plural."""
    if n in IDIOMS and rng.random() < 0.35:
        idiom = rng.choice(IDIOMS[n])
        return idiom, n > 1
    if n == 1:
        return rng.choice(["a", "one"]), False
    return (str(n) if rng.random() < 0.35 else C.NUMBER_WORDS[n]), True


def _thing(n: int, colour: str, shape: str, rng: random.Random, size: str | None = None) -> str:
    """'three circles in red', 'a pair of squares coloured blue', 'a red-coloured triangle'."""
    amount, plural = _amount(n, rng)
    noun = C.PLURALS[shape] if plural else shape
    big = {"small": "little", "large": "big"}[size] + " " if size else ""
    form = rng.randrange(3)
    if form == 0:
        text = f"{amount} {big}{noun} in {colour}"
    elif form == 1:
        text = f"{amount} {big}{noun} coloured {colour}" if rng.random() < 0.5 else f"{amount} {big}{noun} colored {colour}"
    else:
        text = f"{amount} {big}{colour}-coloured {noun}"
    return text


def _request(body: str, rng: random.Random) -> str:
    return rng.choice([
        f"Please draw {body}.",
        f"Could you make a picture with {body}?",
        f"I'd like an image showing {body}.",
        f"Render {body}, nothing else.",
        f"Generate {body} for me.",
        f"Show me {body}.",
    ])


def counting(rng: random.Random, n: int):
    groups = counting_groups(rng, n)   # what is asked is the template suite's; only the wording is this module's
    body = " together with ".join(_thing(k, c, s, rng) for k, c, s in groups)
    cons = Constraints([{"colour": c, "shape": s, "count": k} for k, c, s in groups], [], True, "counting")
    return _request(body, rng), cons, {"count": n, "groups": len(groups)}


def binding(rng: random.Random, k: int):
    colours = rng.sample(list(COLOURS), k)
    shapes = rng.sample(SHAPES, k) if rng.random() < 0.7 else [rng.choice(SHAPES)] * k
    pairs = list(zip(colours, shapes))
    if rng.random() < 0.5:
        body = ", ".join(f"one {s} that is {c}" for c, s in pairs[:-1]) + f" and one {pairs[-1][1]} that is {pairs[-1][0]}"
    else:
        body = " next to ".join(_thing(1, c, s, rng) for c, s in pairs)
    cons = Constraints([{"colour": c, "shape": s, "count": 1} for c, s in pairs], [], True, "binding")
    return _request(body, rng), cons, {"pairs": k}


def spatial(rng: random.Random, rel: str):
    (ca, sa), (cb, sb) = rng.sample([(c, s) for c in COLOURS for s in SHAPES], 2)
    a, b = f"a {ca} {sa}", f"a {cb} {sb}"
    side = {"left of": "right", "right of": "left", "above": "under it", "below": "over it"}[rel]
    form = rng.randrange(3)
    if form == 0 and rel in ("left of", "right of"):
        first, second = (a, b) if rel == "left of" else (b, a)
        prompt = f"Put {first} on the left and {second} on the right."
    elif form == 0:
        top, bottom = (a, b) if rel == "above" else (b, a)
        prompt = f"Place {top} up high and {bottom} down low."
    elif form == 1:
        prompt = (f"Draw {b} with {a} to its {side}." if rel in ("left of", "right of")
                  else f"Draw {b} with {a} {'above' if rel == 'above' else 'below'} it.")
    else:
        verb = {"left of": "sitting on the left-hand side of", "right of": "sitting on the right-hand side of",
                "above": "floating higher than", "below": "sitting lower down than"}[rel]
        prompt = f"Can I get {a} {verb} {b}?"
    groups = [{"colour": ca, "shape": sa, "count": 1}, {"colour": cb, "shape": sb, "count": 1}]
    cons = Constraints(groups, [{"a": [ca, sa], "rel": rel, "b": [cb, sb]}], True, "spatial")
    return prompt, cons, {"relation": rel}


PLACES = [["in the top left corner", "near the top", "in the top right corner"],
          ["towards the left", "dead centre", "towards the right"],
          ["in the bottom left corner", "near the bottom", "in the bottom right corner"]]


def detailed(rng: random.Random, n: int):
    """Instructions that build the scene object by object, each with its size and place."""
    scene = sample_scene(rng, n_objects=n)
    bg = f"a {scene.background}"
    steps = [rng.choice([f"Start with {bg} background.", f"Use {bg} background."])]
    for i, ((colour, shape), objs) in enumerate(scene.groups().items()):
        verb = rng.choice(["Put", "Add", "Place"]) if i else rng.choice(["Put", "Place", "First, put"])
        where = []
        for o in objs:
            row, col = C.cell(o.x, o.y)
            where.append(f"a {'little' if o.size == 'small' else 'big'} one {PLACES[row][col]}")
        amount, _ = _amount(len(objs), rng)
        if len(objs) == 1:
            steps.append(f"{verb} a {'little' if objs[0].size == 'small' else 'big'} {colour} {shape} "
                         f"{where[0].split(' one ', 1)[1]}.")
        else:
            steps.append(f"{verb} {amount} {colour} {C.PLURALS[shape]}: " + ", ".join(where[:-1]) + f" and {where[-1]}.")
    steps.append(rng.choice(["Keep everything flat, with no overlaps.", "Nothing should touch or overlap."]))
    cons = Constraints.from_scene(scene, "detailed")
    cons.objects = [{"colour": o.colour, "shape": o.shape, "size": o.size, "cell": list(C.cell(o.x, o.y))}
                    for o in scene.objects]
    text = " ".join(steps)
    return text, cons, {"objects": n, "words": len(text.split()), "scene": scene.to_dict()}


def build(suite: str, per_cell: int = 20, seed: int = SEED) -> list[dict]:
    """`per_cell` prompts for each cell (count 1-8, 2 or 3 pairs, relation, 3-8 objects), as `suites.build`."""
    def polished(write):   # "an orange", "an ivory"
        def run(rng, v):
            prompt, cons, tags = write(rng, v)
            return re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", prompt), cons, tags
        return run

    writers = {"counting": counting, "binding": binding, "spatial": spatial, "detailed": detailed}
    return items(suite, per_cell, {k: polished(w) for k, w in writers.items()}, f"unseen-{suite}-{seed}", "unseen-")
