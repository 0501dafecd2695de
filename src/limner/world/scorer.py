"""Read an image back into Shapes World objects and score it against a prompt's constraints.

Each pixel is explained as a blend `bg + a * (colour - bg)` of the background and one palette colour,
which undoes anti-aliasing exactly on rendered scenes and degrades gracefully on generated ones.
Connected pixels of one colour are an object; its shape follows from how much of its box it fills
and where its mass sits (a triangle is bottom-heavy).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from .scene import COLOURS, SHAPES, TRI_H, Obj, sdf
from .captions import cell, relation

_NAMES = list(COLOURS)
_RGB = np.array([COLOURS[c] for c in _NAMES], np.float32)


@dataclass
class Found:
    colour: str
    shape: str
    size: str
    x: float
    y: float
    area: float  # fraction of the canvas


@dataclass
class Constraints:
    """What a prompt asks for. `exact` forbids objects beyond the listed groups."""

    groups: list[dict]  # {"colour", "shape", "count", optional "size"}
    relations: list[dict] = field(default_factory=list)  # {"a": [colour, shape], "rel", "b": [...]}
    exact: bool = True
    category: str = "count"
    objects: list[dict] = field(default_factory=list)  # where a prompt puts each object: {..., "cell": [row, col]}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Constraints":
        return cls(**d)

    @classmethod
    def from_scene(cls, scene, category: str = "scene", with_sizes: bool = True) -> "Constraints":
        from .captions import relations

        groups = []
        for (c, s), objs in scene.groups().items():
            if with_sizes:
                by_size: dict[str, int] = {}
                for o in objs:
                    by_size[o.size] = by_size.get(o.size, 0) + 1
                groups += [{"colour": c, "shape": s, "count": n, "size": z} for z, n in by_size.items()]
            else:
                groups.append({"colour": c, "shape": s, "count": len(objs)})
        rels = [{"a": list(a), "rel": r, "b": list(b)} for a, r, b in relations(scene)]
        return cls(groups, rels, True, category)

    @classmethod
    def placed(cls, scene, category: str = "scene", stated=(), with_sizes: bool = True) -> "Constraints":
        """What a prompt that places every object states: each object, with its size, in its 3 x 3 cell, and
        only the relations it names (`stated`: (group, relation, group) triples), not every one the scene has."""
        from .captions import cell

        cons = cls.from_scene(scene, category, with_sizes)
        cons.relations = [{"a": list(a), "rel": r, "b": list(b)} for a, r, b in stated]
        cons.objects = [{"colour": o.colour, "shape": o.shape, "size": o.size, "cell": list(cell(o.x, o.y))}
                        for o in scene.objects]
        return cons


def _templates(area: float, cx: float, cy: float, ys: np.ndarray, xs: np.ndarray) -> dict[str, tuple]:
    """The coverage each shape of the given area would have, centred on the observed centroid."""
    out = {}
    for shape in SHAPES:
        if shape == "circle":
            side = 2 * np.sqrt(area / np.pi)
        elif shape == "square":
            side = np.sqrt(area)
        else:
            side = np.sqrt(4 * area / np.sqrt(3))
        box_cy = cy - side * TRI_H / 6 if shape == "triangle" else cy  # a triangle is bottom-heavy
        cover = np.clip(0.5 - sdf(shape, xs - cx, ys - box_cy, side / 2), 0, 1)
        out[shape] = (cover, side)
    return out


def detect(image: Image.Image | np.ndarray, min_alpha: float = 0.5, max_residual: float = 60.0) -> list[Found]:
    px = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.float32)
    res = px.shape[0]
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    bg = np.median(border, axis=0)
    d = _RGB - bg  # (6, 3)
    rel = px - bg  # (H, W, 3)
    alpha = np.clip(np.einsum("hwc,kc->hwk", rel, d) / (d * d).sum(1), 0, 1)
    resid = np.linalg.norm(rel[..., None, :] - alpha[..., None] * d, axis=-1)
    resid = np.where(alpha > min_alpha, resid, np.inf)
    best = resid.argmin(-1)
    is_obj = resid.min(-1) < max_residual

    # objects are connected foreground; the colour is the component's majority, so that rims whose
    # blend happens to sit nearer another palette colour don't become objects of their own
    labels, n = ndimage.label(is_obj)
    small_box = (0.1 * res) ** 2
    found = []
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        core = labels[sl] == i
        if core.sum() < 0.12 * small_box:
            continue
        k = np.bincount(best[sl][core], minlength=len(_NAMES)).argmax()
        sl = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, res)) for s in sl)
        region = ndimage.binary_dilation(labels[sl] == i) & ((labels[sl] == i) | (labels[sl] == 0))
        a = np.where(region, alpha[sl + (k,)], 0.0)
        area = a.sum()
        ys, xs = np.mgrid[sl[0], sl[1]] + 0.5
        cx, cy = (a * xs).sum() / area, (a * ys).sum() / area
        fits = _templates(area, cx, cy, ys, xs)
        shape = min(fits, key=lambda s: np.abs(fits[s][0] - a).sum())
        side = fits[shape][1]
        box_cy = cy - side * TRI_H / 6 if shape == "triangle" else cy  # report box centres, as scenes do
        size = "large" if side / res > 0.15 else "small"
        found.append(Found(_NAMES[k], shape, size, cx / res, box_cy / res, area / res**2))
    return found


def score(found: list[Found], c: Constraints) -> dict:
    """Exact checks of a prompt's constraints on detected objects.

    count_ok: every asked (colour, shape[, size]) group has exactly its number;
    relations_ok: every asked relation holds; extras: objects that no asked group (with its size) takes;
    content_ok: all of these (extras only matter when the prompt is exact);
    positions: the share of objects a detailed prompt places that stand in their cell of the 3 x 3 grid;
    correct: content_ok and every placed object in its cell: everything the prompt states.
    """
    def matches(f: Found, g: dict) -> bool:
        return f.colour == g["colour"] and f.shape == g["shape"] and ("size" not in g or f.size == g["size"])

    per_group = [sum(matches(f, g) for f in found) == g["count"] for g in c.groups]
    # an object of an asked colour and shape but of a size no group asks for is an extra too: "three large
    # purple squares" and a fourth, small one is four squares
    extras = sum(not any(matches(f, g) for g in c.groups) for f in found)
    per_rel = []
    for r in c.relations:
        a = [Obj(f.shape, f.colour, f.size, f.x, f.y) for f in found if [f.colour, f.shape] == list(r["a"])]
        b = [Obj(f.shape, f.colour, f.size, f.x, f.y) for f in found if [f.colour, f.shape] == list(r["b"])]
        per_rel.append(bool(a and b) and r["rel"] in relation(a, b))
    count_ok = all(per_group)
    rel_ok = all(per_rel)
    # described objects standing in their described cell of the 3x3 grid (one found object per description)
    placed = Counter((o["colour"], o["shape"], o["size"], tuple(o["cell"])) for o in c.objects)
    there = Counter((f.colour, f.shape, f.size, cell(f.x, f.y)) for f in found)
    positions = sum((placed & there).values()) / len(c.objects) if c.objects else 1.0
    content_ok = count_ok and rel_ok and (extras == 0 or not c.exact)
    return {
        "category": c.category,
        "per_group": per_group,
        "per_relation": per_rel,
        "count_ok": count_ok,
        "relations_ok": rel_ok,
        "extras": extras,
        "content_ok": content_ok,
        "positions": positions,
        "correct": content_ok and positions == 1.0,
        "n_found": len(found),
    }


def reward(r: dict, c: Constraints) -> float:
    """A `score` result as one number: the right objects and relations first, then partial credit (groups
    right, relations right, objects where a detailed prompt puts them, few extras) to rank the near misses."""
    groups = sum(r["per_group"]) / max(len(r["per_group"]), 1)
    return (2.0 * r["content_ok"] + groups + float(r["relations_ok"]) * bool(c.relations) + 0.5 * r["positions"]
            - 0.1 * min(r["extras"], 5))
