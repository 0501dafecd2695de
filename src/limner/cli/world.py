"""`limner world sample | score | suite | eval`: Shapes World data, scoring and held-out suites."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_world_sample(a) -> int:
    import random

    from ..world import captions as C
    from ..world.scene import render, sample_scene
    from ..world.scorer import Constraints

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    with (out / "captions.jsonl").open("w") as index:
        for i in range(a.n):
            scene = sample_scene(rng)
            caps = C.captions(scene, rng)
            render(scene, a.resolution).save(out / f"{i:06d}.png")
            rec = {"id": f"{i:06d}", "image": f"{i:06d}.png", "captions": caps, "scene": scene.to_dict(),
                   "constraints": Constraints.from_scene(scene).to_dict()}
            (out / f"{i:06d}.json").write_text(json.dumps(rec))
            index.write(json.dumps(rec) + "\n")
    print(f"wrote {a.n} scenes to {out}")
    return 0


def constraints_for(image_path: Path):
    """Sidecar JSON (constraints or scene), else the prompt in the PNG's parameters, parsed."""
    from PIL import Image

    from ..world.parse import parse_prompt
    from ..world.scene import Scene
    from ..world.scorer import Constraints

    side = image_path.with_suffix(".json")
    if side.exists():
        d = json.loads(side.read_text())
        if "constraints" in d:
            return Constraints.from_dict(d["constraints"]), d.get("prompt")
        if "scene" in d:
            return Constraints.from_scene(Scene.from_dict(d["scene"])), d.get("prompt")
        if "prompt" in d:
            return parse_prompt(d["prompt"]), d["prompt"]
    params = Image.open(image_path).info.get("parameters")
    if params:
        prompt = json.loads(params).get("prompt", "") if params.startswith("{") else params
        return parse_prompt(prompt), prompt
    return None, None


def cmd_world_score(a) -> int:
    from PIL import Image

    from ..world.scorer import detect, score

    folder = Path(a.image_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not images:
        raise FileNotFoundError(f"no images (.png/.jpg/.webp) in {folder}")
    rows, skipped = [], []
    for p in images:
        cons, prompt = constraints_for(p)
        if cons is None:
            skipped.append(p.name)
            continue
        r = score(detect(Image.open(p)), cons)
        rows.append({"image": p.name, "prompt": prompt, **r})
    by_cat: dict[str, list] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    summary = {cat: {"n": len(rs), "count_ok": sum(r["count_ok"] for r in rs) / len(rs),
                     "relations_ok": sum(r["relations_ok"] for r in rs) / len(rs),
                     "placed": sum(r["positions"] for r in rs) / len(rs),
                     "correct": sum(r["correct"] for r in rs) / len(rs)} for cat, rs in by_cat.items()}
    if a.json:
        print(json.dumps({"summary": summary, "images": rows, "skipped": skipped}, indent=2))
    else:
        for cat, s in summary.items():
            placed = f"  placed {s['placed']:.3f}" if cat == "detailed" else ""
            print(f"{cat:10s} n={s['n']:5d}  counts {s['count_ok']:.3f}  relations {s['relations_ok']:.3f}{placed}  "
                  f"whole image {s['correct']:.3f}")
        if skipped:
            print(f"skipped {len(skipped)} images with no constraints (no sidecar .json and no parsable prompt)")
    return 0


def cmd_world_suite(a) -> int:
    from ..world.suites import build

    items = build(a.name, a.per_cell, a.seed)
    text = "".join(json.dumps(it) + "\n" for it in items)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {len(items)} prompts to {a.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_world_eval(a) -> int:
    from ..pipeline.core import Pipeline
    from ..world.evaluate import run_suites

    pipe = Pipeline.from_pretrained(a.model)
    details: dict = {}
    run_suites(pipe, a.per_cell, a.suite or None, a.seed, a.steps, a.guidance, a.sampler, details, best_of=a.best_of)
    print(json.dumps(details, indent=2))
    return 0


def add_parser(sub) -> None:
    from ..world import HELD_OUT_SEED, SUITES

    w = sub.add_parser("world", help="Shapes World: sample data, score images, prompt suites")
    ws = w.add_subparsers(dest="world_verb", required=True)
    s = ws.add_parser("sample", help="write scenes: PNG, captions and scene JSON")
    s.add_argument("-n", type=int, default=16)
    s.add_argument("--out", required=True)
    s.add_argument("--resolution", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_world_sample)
    sc = ws.add_parser("score", help="score images against their prompts' constraints")
    sc.add_argument("image_dir")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(fn=cmd_world_score)
    su = ws.add_parser("suite", help="write a held-out prompt suite as JSONL")
    su.add_argument("name", choices=list(SUITES))
    su.add_argument("--per-cell", type=int, default=25)
    su.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    su.add_argument("--out")
    su.set_defaults(fn=cmd_world_suite)
    ev = ws.add_parser("eval", help="generate the held-out suites with a model and score them")
    ev.add_argument("--model", default="shapes-default")
    ev.add_argument("--suite", action="append", choices=list(SUITES))
    ev.add_argument("--per-cell", type=int, default=25)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--steps", type=int)
    ev.add_argument("--guidance", type=float)
    ev.add_argument("--sampler")
    ev.add_argument("--best-of", type=int, help="verifier search: N candidates per image [model default]")
    ev.set_defaults(fn=cmd_world_eval)
