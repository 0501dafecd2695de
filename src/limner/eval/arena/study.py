"""Making a rating study from a `limner eval generate` folder: its images and prompts into the arena's store
(`limner.eval.arena.store`), tasks for every pair of models on every prompt and seed, scheduled round-robin
over the model pairs, obvious attention checks (an image against a wrecked copy of itself), and reference
images rendered for Shapes World prompts. `neighbour_pairs` places a new model against its nearest rivals
instead of everyone.
"""
from __future__ import annotations

import json
import random
import secrets
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from sqlalchemy import func, select

from .store import (DECOY_MODEL, PAIR_QUESTIONS, QUESTIONS, REFERENCE_MODEL, ArenaError, Image, Meta, Prompt, Store,
                    Task)


@dataclass
class StudySpec:
    questions: tuple[str, ...] = ("overall", "alignment", "appeal", "detailed", "counting")
    votes_per_item: int = 1
    long_prompt_words: int = 30      # prompts this long are asked `detailed` instead of `alignment`
    obvious_checks: int = 10         # attention items: an image against a wrecked copy of itself
    seed: int = 0


def counting_target(constraints: dict | None) -> tuple[str, int] | None:
    """(object phrase, count) for a prompt that asks for a number of one kind of thing."""
    if not constraints:
        return None
    if "counts" in constraints:   # GeckoNum-style {"counts": {"apple": 3}}
        counts = constraints["counts"] or {}
        if len(counts) == 1:
            noun, n = next(iter(counts.items()))
            return noun, int(n)
        return None
    groups = constraints.get("groups")
    if constraints.get("category") in ("count", "counting") and groups:   # Shapes World: the first group is counted
        from ...world.captions import PLURALS

        g = groups[0]
        return f"{g['colour']} {PLURALS[g['shape']]}", int(g["count"])
    return None


def create_study(store: Store, gen_dir: str | Path, spec: StudySpec | None = None, models: list[str] | None = None,
                 pairs: list[tuple[str, str]] | None = None) -> dict:
    """Import a `limner eval generate` folder: images, prompts (with reference images where the prompt
    has a Shapes World scene), and tasks for every pair of models (or the `pairs` given) on every
    prompt and seed. Importing again adds only what is new (a new model's images and its pairs)."""
    from PIL import Image as PILImage

    from ..generate import read_manifest, safe_name

    spec = spec or StudySpec()
    unknown = set(spec.questions) - set(QUESTIONS)
    if unknown:
        raise ArenaError(f"unknown question(s) {', '.join(sorted(unknown))}; choose from {', '.join(QUESTIONS)}")
    gen_dir = Path(gen_dir).resolve()
    manifest = gen_dir / "manifest.jsonl"
    if not manifest.exists():
        raise ArenaError(f"{manifest} not found: make it with `limner eval generate --suite S --model A --model B "
                         f"--out {gen_dir}`")
    rows = [r for r in read_manifest(manifest).values() if r.get("path")]
    if models:
        rows = [r for r in rows if r["model"] in models]
    if len({r["model"] for r in rows}) < 2 and not pairs:
        raise ArenaError(f"{manifest} has images of {len({r['model'] for r in rows})} model(s); a side-by-side "
                         "study needs at least two")
    rng = random.Random(spec.seed)
    media = gen_dir / "arena-media"
    with store.session(write=True) as s:
        meta = {m.key: m for m in s.scalars(select(Meta))}
        if "root" in meta and json.loads(meta["root"].value) != str(gen_dir):
            raise ArenaError(f"this arena was made from {json.loads(meta['root'].value)}, not {gen_dir}")
        s.merge(Meta(key="root", value=json.dumps(str(gen_dir))))
        s.merge(Meta(key="spec", value=json.dumps(spec.__dict__ | {"questions": list(spec.questions)})))
        images = {i.path: i for i in s.scalars(select(Image))}

        def image(path: Path, model: str, prompt_id: str, seed: int) -> Image:
            key = str(path)
            if key not in images:
                images[key] = Image(token=secrets.token_hex(16), path=key, model=model, prompt_id=prompt_id, seed=seed)
                s.add(images[key])
                s.flush()
            return images[key]

        prompts = {p.id: p for p in s.scalars(select(Prompt))}
        groups: dict[tuple[str, int], dict[str, Image]] = defaultdict(dict)
        constraints: dict[str, dict | None] = {}
        for r in rows:
            pid = r["prompt_id"]
            if pid not in prompts:
                prompts[pid] = Prompt(id=pid, text=r["prompt"], suite=r.get("suite"), tags=json.dumps(r.get("tags") or {}))
                ref = _reference_image(r.get("reference"), media / f"{safe_name(pid)}-reference.png")
                if ref is not None:
                    prompts[pid].reference = image(ref, REFERENCE_MODEL, pid, -1).id
                s.add(prompts[pid])
            groups[(pid, int(r["seed"]))][r["model"]] = image(gen_dir / r["path"], r["model"], pid, int(r["seed"]))
            constraints[pid] = r.get("constraints")
        s.flush()

        existing = {(t.question, t.image_a, t.image_b) for t in s.scalars(select(Task))}
        existing |= {(q, b, a) for q, a, b in existing}
        rank0 = (s.scalar(select(func.max(Task.rank))) or -1) + 1
        by_pair: dict[tuple, list[Task]] = defaultdict(list)
        counting = []
        for (pid, seed), imgs in sorted(groups.items()):
            p = prompts[pid]
            long = len(p.text.split()) >= spec.long_prompt_words
            qs = [q for q in spec.questions if q in PAIR_QUESTIONS
                  and not (q == "detailed" and not long) and not (q == "alignment" and long and "detailed" in spec.questions)]
            names = sorted(imgs)
            todo = pairs if pairs is not None else list(combinations(names, 2))
            for ma, mb in todo:
                if ma not in imgs or mb not in imgs:
                    continue
                a, b = (imgs[ma], imgs[mb]) if rng.random() < 0.5 else (imgs[mb], imgs[ma])
                for q in qs:
                    if (q, a.id, b.id) not in existing:
                        by_pair[tuple(sorted((ma, mb)))].append(Task(question=q, prompt_id=pid, image_a=a.id,
                                                                     image_b=b.id, target=spec.votes_per_item))
            target = counting_target(constraints.get(pid)) if "counting" in spec.questions else None
            if target:
                for img in imgs.values():
                    if ("counting", img.id, None) not in existing:
                        counting.append(Task(question="counting", prompt_id=pid, image_a=img.id, count_object=target[0],
                                             count_expected=target[1], target=spec.votes_per_item))
        # round-robin over model pairs, prompts shuffled within each: balanced coverage at every moment
        lists = list(by_pair.values()) + ([counting] if counting else [])
        for lst in lists:
            rng.shuffle(lst)
        rng.shuffle(lists)
        new = []
        for depth in range(max((len(lst) for lst in lists), default=0)):
            new += [lst[depth] for lst in lists if depth < len(lst)]
        for i, t in enumerate(new):
            t.rank = rank0 + i
        s.add_all(new)

        checks = 0
        if not existing and spec.obvious_checks and "overall" in spec.questions:
            real = [i for i in images.values() if i.model not in (REFERENCE_MODEL, DECOY_MODEL)]
            for img in rng.sample(real, min(spec.obvious_checks, len(real))):
                path = media / f"decoy-{img.token}.png"
                _wreck(PILImage.open(img.path), rng.randrange(2**31)).save(_mkdir(path))
                decoy = image(path, DECOY_MODEL, img.prompt_id, img.seed)
                s.add(Task(question="overall", prompt_id=img.prompt_id, image_a=img.id, image_b=decoy.id,
                           attention="obvious", target=10**6, rank=0))
                checks += 1
    return {"tasks": len(new), "attention_checks": checks, "images": len(rows),
            "models": sorted({r["model"] for r in rows}), "pairs": len(by_pair)}


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _reference_image(reference: str | None, out: Path) -> Path | None:
    """The image a detailed prompt was written from: a file path, or a Shapes World scene rendered."""
    if not reference:
        return None
    if not reference.lstrip().startswith("{"):
        path = Path(reference)
        return path.resolve() if path.exists() else None
    from ...world.scene import Scene, render

    if not out.exists():
        render(Scene.from_dict(json.loads(reference)), 256).save(_mkdir(out))
    return out.resolve()


def _wreck(img, seed: int):
    """An obviously worse copy, for attention checks: heavy blur, then loud noise."""
    import numpy as np
    from PIL import ImageFilter

    img = img.convert("RGB").filter(ImageFilter.GaussianBlur(max(img.size) / 16))
    a = np.asarray(img, np.float32) + np.random.default_rng(seed).normal(0, 60, (img.size[1], img.size[0], 3))
    from PIL import Image as PILImage
    return PILImage.fromarray(a.clip(0, 255).astype(np.uint8))


def neighbour_pairs(store: Store, new_model: str, k: int = 2, question: str | None = "overall") -> list[tuple[str, str]]:
    """The report's cheap placement of a new model: compare it only with the k models rated nearest to
    where a first, small round of votes puts it, not with everyone. Without votes for it yet, its
    neighbours are the models around the median rating."""
    import numpy as np

    from ..ratings import Votes, fit_bt, to_ratings, win_matrix

    votes, _ = store.export()
    votes = [v for v in votes if question is None or v["question"] == question] or votes
    known = sorted({v["model_a"] for v in votes} | {v["model_b"] for v in votes})
    others = [m for m in known if m != new_model]
    if len(others) <= k:
        return [(new_model, m) for m in others]
    v = Votes.from_rows(enumerate(votes, 1), "arena")
    models, ia, ib = v.encode(known)
    # a weak prior (every pair tied once) keeps ratings finite when a model won or lost everything
    w = win_matrix(len(models), ia, ib, v.outcome) + 0.5 * (1 - np.eye(len(models)))
    rating = dict(zip(models, to_ratings(fit_bt(w), models)))
    centre = rating[new_model] if new_model in rating else float(np.median([rating[m] for m in others]))
    near = sorted(others, key=lambda m: abs(rating[m] - centre))[:k]
    return [(new_model, m) for m in near]
