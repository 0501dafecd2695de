"""Shapes World scenes: the fixed palette and shapes of the spec, scene sampling, analytic rendering.

Coordinates are fractions of the canvas side, origin top-left, y down. An object's `size` is the side
of its bounding box; a triangle's box is `size` wide and `size * sqrt(3)/2` tall.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
BACKGROUNDS = {
    "ivory": (245, 242, 232),
    "light grey": (228, 228, 228),
    "pale blue": (225, 235, 245),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.10, "large": 0.20}
TRI_H = math.sqrt(3) / 2
MAX_OBJECTS = 8


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    x: float  # centre of the bounding box
    y: float

    def box(self) -> tuple[float, float, float, float]:
        w = SIZES[self.size]
        h = w * TRI_H if self.shape == "triangle" else w
        return self.x - w / 2, self.y - h / 2, self.x + w / 2, self.y + h / 2


@dataclass
class Scene:
    background: str
    objects: list[Obj] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [dataclasses.asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(d["background"], [Obj(**o) for o in d["objects"]])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def groups(self) -> dict[tuple[str, str], list[Obj]]:
        """Objects grouped by (colour, shape), the unit that captions count."""
        out: dict[tuple[str, str], list[Obj]] = {}
        for o in self.objects:
            out.setdefault((o.colour, o.shape), []).append(o)
        return out


def box_gap(a: tuple, b: tuple) -> float:
    """Distance between two axis-aligned boxes (0 when they touch or overlap)."""
    dx = max(b[0] - a[2], a[0] - b[2], 0.0)
    dy = max(b[1] - a[3], a[1] - b[3], 0.0)
    return math.hypot(dx, dy) if dx and dy else max(dx, dy)


def place(objs: list[Obj], rng: random.Random, gap: float, margin: float = 0.02, tries: int = 200) -> bool:
    """Give every object a centre so that boxes keep `gap` apart and stay `margin` inside the canvas."""
    placed: list[tuple] = []
    for o in objs:
        w = SIZES[o.size]
        h = w * TRI_H if o.shape == "triangle" else w
        for _ in range(tries):
            o.x = rng.uniform(margin + w / 2, 1 - margin - w / 2)
            o.y = rng.uniform(margin + h / 2, 1 - margin - h / 2)
            b = o.box()
            if all(box_gap(b, p) >= gap for p in placed):
                placed.append(b)
                break
        else:
            return False
    return True


def sample_scene(
    rng: random.Random,
    n_objects: int | None = None,
    n_groups: int | None = None,
    gap: float = 0.05,
    max_objects: int = MAX_OBJECTS,
) -> Scene:
    """A random scene built from 1-4 (colour, shape) groups so that counts up to 8 are common.

    Drawing every object independently would make almost every count "one"; grouping first is what
    lets captions teach the numbers.
    """
    while True:
        n = n_objects or rng.randint(1, max_objects)
        k = n_groups or rng.choice([1, 1, 2, 2, 3, 4])
        k = min(k, n)
        kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], k)
        # split n into k positive parts
        cuts = sorted(rng.sample(range(1, n), k - 1)) if k > 1 else []
        counts = [b - a for a, b in zip([0] + cuts, cuts + [n])]
        big_ok = n <= 5
        objs = []
        for (colour, shape), c in zip(kinds, counts):
            size = "large" if big_ok and rng.random() < 0.4 else "small"
            for _ in range(c):
                # a few groups mix sizes, as the spec allows
                s = size if rng.random() < 0.85 else rng.choice(list(SIZES))
                objs.append(Obj(shape, colour, s if big_ok else "small", 0.0, 0.0))
        if place(objs, rng, gap):
            return Scene(rng.choice(list(BACKGROUNDS)), objs)


def sdf(shape: str, px: np.ndarray, py: np.ndarray, half: float) -> np.ndarray:
    """Signed distance (negative inside) to a shape centred at 0 with bounding-box half-width `half`."""
    if shape == "circle":
        return np.hypot(px, py) - half
    if shape == "square":
        qx, qy = np.abs(px) - half, np.abs(py) - half
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0)
    # equilateral triangle pointing up, side 2*half, box centred at 0 (apex at -h/2 with y down)
    h = 2 * half * TRI_H
    ax, ay = 0.0, -h / 2
    pts = [(ax, ay), (half, h / 2), (-half, h / 2)]
    px, py = np.broadcast_arrays(px, py)
    d = np.full(px.shape, np.inf)
    sign_inside = np.ones(px.shape, bool)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        ex, ey = x1 - x0, y1 - y0
        wx, wy = px - x0, py - y0
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        d = np.minimum(d, np.hypot(wx - ex * t, wy - ey * t))
        sign_inside &= (ex * wy - ey * wx) >= 0  # clockwise in y-down coordinates
    return np.where(sign_inside, -d, d)


def render(scene: Scene, resolution: int = 64) -> Image.Image:
    """Draw a scene at any resolution; edges anti-aliased from the exact signed distance."""
    img = np.empty((resolution, resolution, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:
        x0, y0, x1, y1 = o.box()
        i0, i1 = max(int(y0 * resolution) - 1, 0), min(int(math.ceil(y1 * resolution)) + 1, resolution)
        j0, j1 = max(int(x0 * resolution) - 1, 0), min(int(math.ceil(x1 * resolution)) + 1, resolution)
        ys = (np.arange(i0, i1) + 0.5)[:, None]
        xs = (np.arange(j0, j1) + 0.5)[None, :]
        d = sdf(o.shape, xs - o.x * resolution, ys - o.y * resolution, SIZES[o.size] * resolution / 2)
        cover = np.clip(0.5 - d, 0, 1)[..., None]
        patch = img[i0:i1, j0:j1]
        patch[:] = patch * (1 - cover) + np.asarray(COLOURS[o.colour], np.float32) * cover
    return Image.fromarray(np.round(img).astype(np.uint8))
