"""`limner <verb>`: generate, train, world, data, eval, safety, watermark."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def cmd_generate(a) -> int:
    from .pipeline.backends import DiffusersBackend, LimnerBackend, load_backend
    from .pipeline.core import save_png
    from .safety.guard import SafetyConfig

    if not a.prompt.strip():
        raise ValueError("the prompt is empty: describe the image you want, e.g. 'three red circles'")
    if bool(a.c2pa_cert) != bool(a.c2pa_key):
        raise ValueError("C2PA signing needs both --c2pa-cert (certificate chain PEM) and --c2pa-key (private key PEM)")
    if a.scale < 1:
        raise ValueError(f"--scale must be a whole number >= 1, not {a.scale}")
    # limner's guard enlarges before it marks, so the mark is made at the size that is saved
    backend = load_backend(a.model, SafetyConfig(watermark=not a.no_watermark, enlarge=a.scale))
    if isinstance(backend, LimnerBackend):
        images = backend.pipe(a.prompt, negative_prompt=a.negative_prompt, seed=a.seed, steps=a.steps,
                              guidance=a.guidance, sampler=a.sampler, num_images=a.n, best_of=a.best_of)
    elif a.sampler or a.best_of:
        raise ValueError("--sampler and --best-of apply to limner models only; diffusers pipelines and servers "
                         "use their own sampling")
    else:  # a diffusers folder or an OpenAI-style server: same seeds as a limner model's -n
        images = backend.generate([a.prompt] * a.n, [a.seed + i for i in range(a.n)], a.negative_prompt,
                                  a.steps, a.guidance)
    guarded = (LimnerBackend, DiffusersBackend)
    out = Path(a.output)
    for i, img in enumerate(images):
        path = out if len(images) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}")
        if a.scale > 1 and not isinstance(backend, guarded):  # a server's images come marked as they are
            img = img.resize((img.width * a.scale, img.height * a.scale), resample=0)
        save_png(img, path, metadata=not a.no_metadata)
        if a.c2pa_cert:
            from .safety.provenance import sign_c2pa

            sign_c2pa(path, path, a.c2pa_cert, a.c2pa_key, params=None if a.no_metadata else img.info.get("parameters"))
        print(path)
    return 0


def cmd_train(a) -> int:
    import dataclasses

    import yaml

    from .common.config import build
    from .train.train import TrainConfig, run

    Config = TrainConfig
    if Path(a.config).exists() and (yaml.safe_load(Path(a.config).read_text()) or {}).get("kind") == "reward":
        from .train import reward  # post-training of an exported model against the Shapes World scorer

        Config, run = reward.RewardConfig, reward.run
    cfg = Config.load(a.config)
    if a.set:
        raw = dataclasses.asdict(cfg)
        for kv in a.set:
            key, _, value = kv.partition("=")
            *parents, leaf = key.split(".")
            node = raw
            for p in parents:
                node = node[p]
            node[leaf] = yaml.safe_load(value)
        cfg = build(Config, raw, a.config)
    path = run(cfg, resume=a.resume)
    if os.environ.get("RANK", "0") == "0":
        print(path)
    return 0


def cmd_world_sample(a) -> int:
    import random

    from .world import captions as C
    from .world.scene import render, sample_scene
    from .world.scorer import Constraints

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

    from .world.parse import parse_prompt
    from .world.scene import Scene
    from .world.scorer import Constraints

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

    from .world.scorer import detect, score

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
    from .world.suites import build

    items = build(a.name, a.per_cell, a.seed)
    text = "".join(json.dumps(it) + "\n" for it in items)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {len(items)} prompts to {a.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_world_eval(a) -> int:
    from .pipeline.core import Pipeline
    from .world.evaluate import run_suites

    pipe = Pipeline.from_pretrained(a.model)
    details: dict = {}
    run_suites(pipe, a.per_cell, a.suite or None, a.seed, a.steps, a.guidance, a.sampler, details, best_of=a.best_of)
    print(json.dumps(details, indent=2))
    return 0


def cmd_watermark_embed(a) -> int:
    from PIL import Image

    from .pipeline.core import save_png
    from .safety import watermark as W

    src = Path(a.input)
    if not src.is_file():
        raise FileNotFoundError(f"no image at {src}")
    payload = int(a.payload, 16) if a.payload else W.payload_for("user", src.name)
    img = W.embed(Image.open(src), payload, key=W.KEY if a.key is None else a.key)
    out = Path(a.output)
    if out.suffix.lower() == ".png":
        print(save_png(img, out))
    else:  # lossy formats keep it too, at a cost: see docs/BENCHMARKS.md
        tmp = out.with_name(f".{out.name}.tmp")
        img.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"), quality=95)
        tmp.replace(out)
        print(out)
    print(f"payload {payload:08x}", file=sys.stderr)
    return 0


def cmd_watermark_detect(a) -> int:
    from PIL import Image

    from .safety import watermark as W

    found = 0
    for path in a.images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no image at {path}")
        d = W.detect(Image.open(path), key=W.KEY if a.key is None else a.key)
        found += bool(d.detected)
        if a.json:
            print(json.dumps({"image": path, **d.to_dict()}))
        else:
            verdict = {True: "detected", False: "not detected", None: "unsure"}[d.detected]
            payload = f", payload {d.to_dict()['payload']}" if d.payload is not None else ""
            print(f"{path}: {verdict} (p = {d.p_value:.2g}, z = {d.z:.1f}{payload})")
    return 0 if found else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="limner", description="Imagen-3-style text-to-image, end to end.")
    sub = p.add_subparsers(dest="verb", required=True)

    g = sub.add_parser("generate", help="write images for a prompt and print their paths")
    g.add_argument("prompt")
    g.add_argument("--output", "-o", default="limner.png")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--sampler", default=None, help="euler, heun or midpoint")
    g.add_argument("-n", type=int, default=1, help="number of images")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--best-of", type=int, default=None,
                   help="draw N candidates per image, keep the one the Shapes World scorer rates best [model default]")
    g.add_argument("--model", default="shapes-default",
                   help="a shipped name, a limner or diffusers model folder, or an OpenAI images API URL[#model]")
    g.add_argument("--scale", type=int, default=1, help="nearest-neighbour enlargement, made before the watermark (16: 1024 px, a mark that survives JPEG)")
    g.add_argument("--no-metadata", action="store_true", help="leave generation parameters out of the PNG")
    g.add_argument("--no-watermark", action="store_true", help="skip the invisible watermark (local use only)")
    g.add_argument("--c2pa-cert", default=os.environ.get("LIMNER_C2PA_CERT"),
                   help="sign a C2PA manifest (AI-generated) with this certificate chain PEM [$LIMNER_C2PA_CERT]")
    g.add_argument("--c2pa-key", default=os.environ.get("LIMNER_C2PA_KEY"), help="its private key PEM [$LIMNER_C2PA_KEY]")
    g.set_defaults(fn=cmd_generate)

    t = sub.add_parser("train", help="train an autoencoder or denoiser from a YAML config")
    t.add_argument("config")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. steps=100")
    t.set_defaults(fn=cmd_train)

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
    su.add_argument("name", choices=["counting", "binding", "spatial", "detailed"])
    su.add_argument("--per-cell", type=int, default=25)
    su.add_argument("--seed", type=int, default=2024)
    su.add_argument("--out")
    su.set_defaults(fn=cmd_world_suite)
    ev = ws.add_parser("eval", help="generate the held-out suites with a model and score them")
    ev.add_argument("--model", default="shapes-default")
    ev.add_argument("--suite", action="append", choices=["counting", "binding", "spatial", "detailed"])
    ev.add_argument("--per-cell", type=int, default=25)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--steps", type=int)
    ev.add_argument("--guidance", type=float)
    ev.add_argument("--sampler")
    ev.add_argument("--best-of", type=int, help="verifier search: N candidates per image [model default]")
    ev.set_defaults(fn=cmd_world_eval)

    from .data.commands import add_data_parser
    from .eval.arena.commands import add_arena_parser
    from .eval.commands import add_eval_suites_parser
    from .eval.elo_command import add_elo_parser
    from .eval.generate import add_eval_generate_parser
    from .eval.metrics import add_eval_score_parser
    from .eval.report import add_eval_report_parser
    from .safety.commands import add_safety_parser

    e_ = sub.add_parser("eval", help="evaluation: prompt suites, generation for several models, ratings from votes")
    evs = e_.add_subparsers(dest="eval_verb", required=True)
    add_eval_suites_parser(evs)
    add_eval_generate_parser(evs)
    add_eval_score_parser(evs)
    add_eval_report_parser(evs)
    add_elo_parser(evs)
    add_safety_parser(sub)
    add_data_parser(sub)
    add_arena_parser(sub)

    wm = sub.add_parser("watermark", help="embed or detect limner's invisible watermark")
    wms = wm.add_subparsers(dest="watermark_verb", required=True)
    key = dict(type=lambda v: int(v, 0), help="watermark key, e.g. 0x1234 (default: limner's public key)")
    e = wms.add_parser("embed", help="write a watermarked copy of an image")
    e.add_argument("input")
    e.add_argument("output")
    e.add_argument("--payload", help="32-bit payload as hex (default: derived from the file name)")
    e.add_argument("--key", **key)
    e.set_defaults(fn=cmd_watermark_embed)
    d = wms.add_parser("detect", help="say whether images carry the watermark; exit 0 if any does")
    d.add_argument("images", nargs="+")
    d.add_argument("--json", action="store_true", help='one line per image: {"detected": true|false|null, ...}')
    d.add_argument("--key", **key)
    d.set_defaults(fn=cmd_watermark_detect)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"limner: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
