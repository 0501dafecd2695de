"""Score a pipeline on the held-out Shapes World suites: the figures of the foundation issue."""
from __future__ import annotations

import math
import warnings
from collections import defaultdict

from .scene import Scene
from .scorer import Constraints, detect, score
from .suites import SUITES, build

# what each suite's headline figure is
HEADLINE = {"counting": "count_ok", "binding": "count_ok", "spatial": "relations_ok", "detailed": "correct"}
CELL = {"counting": "count", "binding": "pairs", "spatial": "relation", "detailed": "objects"}


def run_suites(pipe, per_cell: int = 25, suites=SUITES, seed: int = 0, steps=None, guidance=None,
               sampler=None, details: dict | None = None, batch: int = 64, best_of: int | None = None,
               builder=build) -> dict[str, float]:
    """Headline accuracy per suite; with `details` (a dict) also per cell and per image results. `builder`
    makes a suite's items (`suites.build`, the template wordings, or `unseen_wordings.build`)."""
    summary = {}
    # a limner Pipeline draws at its base resolution: the scorer grades what the denoiser drew, and an upsampler's
    # 1024 px enlargement would only add minutes (other callables are called as they are)
    base = {"size": pipe.resolution} if hasattr(pipe, "resolution") else {}
    for suite in suites or SUITES:
        items = builder(suite, per_cell)
        results = []
        for i in range(0, len(items), batch):
            part = items[i : i + batch]
            # every item its own starting noise, so that one unlucky draw does not repeat across a suite
            with warnings.catch_warnings():   # the pipeline's "never seen 'x, y'" names a held-out suite's words
                warnings.filterwarnings("ignore", message=".*only knows Shapes World")
                imgs = pipe([it["prompt"] for it in part], seed=[seed + i + j for j in range(len(part))], steps=steps,
                            guidance=guidance, sampler=sampler, best_of=best_of, **base)
            for it, img in zip(part, imgs):
                found = detect(img)
                r = score(found, Constraints.from_dict(it["constraints"]))
                if suite == "detailed":   # the figure before places were checked: every relation of the scene
                    r["by_relations"] = score(found, Constraints.from_scene(Scene.from_dict(it["tags"]["scene"])))["correct"]
                results.append((it, r))
        key = HEADLINE[suite]
        summary[suite] = sum(r[key] for _, r in results) / len(results)
        if details is not None:
            cells = defaultdict(list)
            for it, r in results:
                cells[str(it["tags"][CELL[suite]])].append(r[key])
            details[suite] = {"headline": summary[suite], "metric": key, "n": len(results),
                              "hits": sum(r[key] for _, r in results),
                              "whole_scene": sum(r["correct"] for _, r in results) / len(results),
                              # objects drawn outside the asked groups, per image: what a prompt did not ask for
                              "extras": sum(r["extras"] for _, r in results) / len(results),
                              "cells": {k: sum(v) / len(v) for k, v in cells.items()}}
            if suite == "detailed":
                n = len(results)
                details[suite] |= {"content": sum(r["content_ok"] for _, r in results) / n,   # all but places
                                   "placed": sum(r["positions"] for _, r in results) / n,      # objects in their cell
                                   "layout_by_relations": sum(r["by_relations"] for _, r in results) / n}
    return summary


def score_families(pipe, per_cell: int, families=("templates", "unseen"), **kw) -> dict[str, dict]:
    """Every suite in each wording family (`templates`: the captioners' own; `unseen`: wordings no captioner
    uses): per suite the headline, n, its 95% interval, the whole-scene rate and the cells. `kw` go to `run_suites`."""
    from . import unseen_wordings   # here, not at the top: nothing that trains may import the held-out wordings

    builders = {"templates": build, "unseen": unseen_wordings.build}
    out = {}
    for family in families:
        details = {}
        run_suites(pipe, per_cell, details=details, builder=builders[family], **kw)
        out[family] = {s: {"acc": d["headline"], "n": d["n"], "ci95": wilson(d["hits"], d["n"]),
                           "whole_scene": d["whole_scene"], "cells": d["cells"]} for s, d in details.items()}
    return out


def wilson(hits: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate (sound at 0 and 1, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))
