"""Layouts of Shapes World scenes: each object as a phrase and a box, what a grounded denoiser reads (GLIGEN;
the tensors it reads are made by `models/grounding.py`).

Training takes a scene's true boxes. At inference `plan` is the layout stage (as in LLM-grounded
diffusion): it puts every object that a detailed prompt places into the cell of the 3 x 3 grid the prompt
names, at a random spot (one plan per seed, so best-of candidates differ), boxes apart as scenes are.
"""
from __future__ import annotations

import random

from .captions import cell
from .scene import SIZES, Obj, box_gap

Layout = list[tuple[str, tuple[float, float, float, float]]]  # (phrase, (x0, y0, x1, y1)) per object


def phrase(size: str, colour: str, shape: str) -> str:
    return f"{size} {colour} {shape}"


def of_scene(objects: list[Obj]) -> Layout:
    return [(phrase(o.size, o.colour, o.shape), o.box()) for o in objects]


def found_of(layout: Layout) -> list:
    """A layout as the scorer reads an image: each object's colour, shape, size and box centre (to score a plan
    itself, exactly, with no drawing)."""
    from .scorer import Found

    out = []
    for label, (x0, y0, x1, y1) in layout:
        size, colour, shape = label.split()
        out.append(Found(colour, shape, size, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * (y1 - y0)))
    return out


def plan(objects: list[dict], rng: random.Random, inset: float = 0.03, gap: float = 0.05,
         tries: int = 400) -> Layout | None:
    """Boxes for prompt objects ({"colour", "shape", "size", "cell": [row, col]}), each centred in its cell
    at least `inset` from the cell's edges (so it reads as that cell) and `gap` from the others; large
    objects first. None when no such layout is found (then the image is drawn from the text alone)."""
    order = sorted(objects, key=lambda o: -SIZES[o["size"]])
    for _ in range(20):
        placed = []
        for o in order:
            obj = Obj(o["shape"], o["colour"], o["size"], 0.0, 0.0)
            x0, y0, x1, y1 = obj.box()
            w, h = x1 - x0, y1 - y0
            row, col = o["cell"]
            # the centre stays inside the cell and the box inside the canvas
            x_lo, x_hi = max(col / 3 + inset, 0.02 + w / 2), min((col + 1) / 3 - inset, 0.98 - w / 2)
            y_lo, y_hi = max(row / 3 + inset, 0.02 + h / 2), min((row + 1) / 3 - inset, 0.98 - h / 2)
            for _ in range(tries):
                obj.x, obj.y = rng.uniform(x_lo, max(x_lo, x_hi)), rng.uniform(y_lo, max(y_lo, y_hi))
                box = obj.box()
                if cell(obj.x, obj.y) == (row, col) and all(box_gap(box, b) >= gap for _, b in placed):
                    placed += of_scene([obj])
                    break
            else:
                break
        if len(placed) == len(order):
            return placed
    return None
