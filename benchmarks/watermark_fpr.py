"""Watermark false positives on unmarked images the calibration never saw, at the shipped threshold.

    python benchmarks/watermark_fpr.py                       # 4,600 images, ~15 min on 2 busy cores
    python benchmarks/watermark_fpr.py --model-images 40 --photos 40 --synthetic 40   # a quick look

The calibration (`benchmarks/watermark.py --calibrate`) drew Shapes World renders, crops of 19 scikit-image
photos and 1/f noise textures, square, at six sizes, under the robustness attacks. None of these groups is
made that way:

- model-*: unmarked outputs of the shipped model itself (`Pipeline` with the watermark off, as
  `limner generate --no-watermark` writes them), one seed and held-out suite prompt each, seen as users get
  them: the 64 px output; enlarged whole pixels (`--scale 4..16`: 256-1024 px); resampled by an editor to a
  size that is no multiple of 64; squashed to a strong aspect ratio (1:1.7 to 1:3.3); enlarged and saved
  as JPEG. Each group has its own image per seed; the groups share seeds, so they are not independent
  of one another.
- photos: crops of photographs outside the calibration's 19 (scikit-image's motorcycle pair, cell and
  microaneurysms; matplotlib's Grace Hopper; scikit-learn's china and flower when it is installed), or of
  every image in `--photo-dir` (your own photos; docs/BENCHMARKS.md names the folder it reports).
- synthetic: graphics and textures of other kinds than 1/f noise (gratings, rotated checkerboards, value
  noise, white noise, gradients, text, scikit-image's logo, blobs and phantom, a terrain map).

The false-positive rate is the share flagged `detected` (joint p <= 0.0005, half the 0.1% promised), with a 95% Clopper-Pearson
interval; the share at the 1% threshold (`detected` or `unsure`) is given beside it. The threshold is read,
never set, here: this set must not tune it. (It did once: the 2026-12-07 decision at half the promised rate was
chosen after looking at its photo crops; two fresh draws, --seed 13 and --seed 14, checked it. See docs/BENCHMARKS.md.)
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from limner.safety import attacks
from limner.safety import watermark as W

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / "runs" / "watermark-fpr"


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval: never narrower than the data allow, and sound at k = 0."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


# --- the shipped model's own outputs -------------------------------------------------------------------

def model_outputs(n: int, model: str = "shapes-default", cache: Path = MODEL_CACHE) -> list[Image.Image]:
    """n unmarked 64 px outputs, seed i with held-out suite prompt i; kept as PNGs so a rerun skips drawing."""
    from limner.pipeline import Pipeline
    from limner.safety.guard import SafetyConfig
    from limner.world.suites import build

    folder = cache / model.replace("/", "_")
    paths = [folder / f"{i:05d}.png" for i in range(n)]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        prompts = [it["prompt"] for s in ("counting", "binding", "spatial", "detailed") for it in build(s)]
        pipe = Pipeline.from_pretrained(model, safety=SafetyConfig(watermark=False))
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        for start in range(0, len(todo), 32):
            chunk = todo[start:start + 32]
            for i, img in zip(chunk, pipe([prompts[i % len(prompts)] for i in chunk], seed=chunk)):
                tmp = paths[i].with_suffix(".tmp")
                img.save(tmp, format="PNG")
                tmp.replace(paths[i])  # atomic: an interrupted run leaves no half-written image
            print(f"drawn {start + len(chunk)}/{len(todo)}  {time.time() - t0:.0f}s", file=sys.stderr)
    return [Image.open(p).convert("RGB") for p in paths]


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def model_variants(img: Image.Image, rng: random.Random) -> dict[str, tuple[str, Image.Image]]:
    """Group -> (what was done, image) for one 64 px output."""
    out = {"model-64px": ("as drawn", img)}
    f = rng.choice([4, 8, 16])
    out["model-enlarged"] = (f"nearest x{f}", img.resize((64 * f,) * 2, Image.NEAREST))
    side, how = rng.randint(100, 1100), rng.choice(list(RESAMPLE))
    while side % 64 == 0:
        side += 1
    out["model-resampled"] = (f"{how} {side}px", img.resize((side, side), RESAMPLE[how]))
    long, ratio, how = rng.choice([512, 768, 1024]), rng.uniform(0.3, 0.6), rng.choice(list(RESAMPLE))
    src = img.resize((64 * 16,) * 2, Image.NEAREST) if rng.random() < 0.5 else img  # from --scale 16 or 64 px
    size = (long, round(long * ratio)) if rng.random() < 0.5 else (round(long * ratio), long)
    out["model-squashed"] = (f"{how} {src.width}px -> {size[0]}x{size[1]}", src.resize(size, RESAMPLE[how]))
    f, q = rng.choice([4, 8, 16]), rng.randint(50, 95)
    out["model-jpeg"] = (f"nearest x{f}, JPEG q{q}", attacks.jpeg(q)(img.resize((64 * f,) * 2, Image.NEAREST)))
    return out


# --- photographs the calibration never cropped ---------------------------------------------------------

def photo_sources(photo_dir: str | None = None) -> dict[str, np.ndarray]:
    """Name -> RGB uint8 array: every image in `photo_dir`, or by default photos that are not in
    benchmarks/watermark.py's PHOTOS."""
    if photo_dir is not None:
        sys.path.insert(0, str(Path(__file__).parent))
        from watermark import folder_photos

        return folder_photos(photo_dir)
    import matplotlib
    import skimage.data
    from skimage.util import img_as_ubyte

    rgb = lambda a: np.ascontiguousarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])
    left, right, _ = skimage.data.stereo_motorcycle()
    out = {"motorcycle_left": left, "motorcycle_right": right, "cell": rgb(img_as_ubyte(skimage.data.cell())),
           "microaneurysms": rgb(img_as_ubyte(skimage.data.microaneurysms()))}
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    out["grace_hopper"] = np.asarray(Image.open(hopper).convert("RGB"))
    try:  # scikit-learn is optional (pip install scikit-learn): two more colour photos
        from sklearn.datasets import load_sample_images

        for path, a in zip(load_sample_images().filenames, load_sample_images().images):
            out[Path(path).stem] = a
    except ImportError:
        print("scikit-learn not installed: photos without china and flower", file=sys.stderr)
    return out


def photo_crop(sources: dict[str, np.ndarray], rng: random.Random) -> tuple[str, Image.Image]:
    name = rng.choice(sorted(sources))
    a = sources[name]
    h, w = a.shape[:2]
    f = rng.uniform(0.35, 1.0)
    ch, cw = max(int(h * f), 16), max(int(w * f), 16)
    y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
    a = a[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        a = a[:, ::-1]
    im = Image.fromarray(np.ascontiguousarray(a))
    side = rng.choice([96, 160, 200, 300, 448, 640, 900, 1024])
    s = side / min(im.size)
    im = im.resize((max(round(im.width * s), W.K), max(round(im.height * s), W.K)), Image.BICUBIC)
    what = f"{name} crop {f:.2f} -> {im.width}x{im.height}"
    if rng.random() < 0.3:
        q = rng.randint(50, 95)
        im, what = attacks.jpeg(q)(im), what + f", JPEG q{q}"
    return what, im


# --- synthetic graphics and textures of other kinds than the calibration's 1/f noise -------------------

def synthetic(rng: random.Random) -> tuple[str, Image.Image]:
    side = rng.choice([96, 200, 256, 333, 512, 700, 1024])
    g = np.random.default_rng(rng.randrange(2**32))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    colours = g.uniform(0, 255, size=(2, 3)).astype(np.float32)
    mix = lambda t: Image.fromarray(np.clip(colours[0] + (colours[1] - colours[0]) * t[..., None], 0, 255).astype(np.uint8))
    kind = rng.choice(["grating", "checker", "value-noise", "white-noise", "gradient", "text", "skimage"])
    angle, period = rng.uniform(0, np.pi), rng.uniform(2, 48)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "grating":
        return f"grating period {period:.1f}px {side}px", mix(0.5 + 0.5 * np.sin(2 * np.pi * u / period))
    if kind == "checker":
        return f"checker period {period:.1f}px {side}px", mix(((np.floor(u / period) + np.floor(v / period)) % 2))
    if kind == "value-noise":
        cells = rng.choice([4, 8, 16, 32, 64])
        t = np.asarray(Image.fromarray(g.random((cells, cells)).astype(np.float32)).resize((side, side), Image.BICUBIC))
        return f"value noise {cells} cells {side}px", mix(np.clip(t, 0, 1))
    if kind == "white-noise":
        amp = rng.uniform(2, 60)
        a = np.clip(g.normal(128, amp, size=(side, side, 3 if rng.random() < 0.5 else 1)), 0, 255)
        return f"white noise sd {amp:.0f} {side}px", Image.fromarray(np.broadcast_to(a, (side, side, 3)).astype(np.uint8))
    if kind == "gradient":
        t = u / max(float(np.ptp(u)), 1.0)
        return f"gradient {side}px", mix(np.clip(t - t.min() + g.normal(0, 0.01, t.shape), 0, 1))
    if kind == "text":
        im = Image.new("RGB", (side, side), tuple(int(c) for c in colours[0]))
        draw = ImageDraw.Draw(im)
        size = rng.randint(8, 40)
        font = ImageFont.load_default(size=size)
        words = ["limner", "watermark", "false", "positive", "shapes", "the", "quick", "brown", "fox", "0123456789"]
        for y in range(0, side, int(size * 1.3)):
            draw.text((rng.randint(-20, 5), y), " ".join(rng.choice(words) for _ in range(12)),
                      fill=tuple(int(c) for c in colours[1]), font=font)
        return f"text {size}px {side}px", im
    return skimage_graphic(rng, side, g)


def skimage_graphic(rng: random.Random, side: int, g: np.random.Generator) -> tuple[str, Image.Image]:
    import matplotlib
    import skimage.data
    from skimage.util import img_as_ubyte

    name = rng.choice(["logo", "binary_blobs", "checkerboard", "shepp_logan_phantom", "terrain"])
    if name == "binary_blobs":
        a = img_as_ubyte(skimage.data.binary_blobs(length=side, blob_size_fraction=rng.uniform(0.02, 0.2),
                                                   rng=int(g.integers(2**31))))
    elif name == "terrain":  # a digital elevation model through a colour map: smooth natural relief
        dem = np.load(Path(matplotlib.get_data_path()) / "sample_data" / "jacksboro_fault_dem.npz")["elevation"]
        dem = (dem - dem.min()) / np.ptp(dem)
        a = img_as_ubyte(matplotlib.colormaps["gist_earth"](dem)[..., :3])
    elif name == "logo":
        a = np.asarray(Image.fromarray(skimage.data.logo()).convert("RGB"))
    else:
        a = img_as_ubyte(getattr(skimage.data, name)())
    im = Image.fromarray(np.ascontiguousarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]))
    return f"{name} {side}px", im.resize((side, side), Image.BICUBIC)


# --- the run -------------------------------------------------------------------------------------------

def measure(n_model: int, n_photos: int, n_synthetic: int, seed: int = 2026, photo_dir: str | None = None) -> list[dict]:
    rng = random.Random(seed)
    rows = []

    def check(group, what, im):
        d = W.detect(im)
        rows.append({"group": group, "what": what, "size": list(im.size), "z": round(d.z, 4),
                     "z_unmoved": round(d.z_unmoved, 4), "p_value": d.p_value, "detected": d.detected})

    t0 = time.time()
    for i, img in enumerate(model_outputs(n_model) if n_model else []):
        for group, (what, im) in model_variants(img, rng).items():
            check(group, f"seed {i}: {what}", im)
    print(f"model outputs checked  {time.time() - t0:.0f}s", file=sys.stderr)
    sources = photo_sources(photo_dir) if n_photos else {}
    for _ in range(n_photos):
        check("photos", *photo_crop(sources, rng))
    for _ in range(n_synthetic):
        check("synthetic", *synthetic(rng))
    print(f"all checked  {time.time() - t0:.0f}s", file=sys.stderr)
    return rows


def summary(rows: list[dict]) -> dict:
    groups = {}
    for g in dict.fromkeys(r["group"] for r in rows):
        groups[g] = [r for r in rows if r["group"] == g]
    groups["model (all five)"] = [r for r in rows if r["group"].startswith("model-")]
    groups["all"] = rows
    out = {}
    for g, rs in groups.items():
        if not rs:   # e.g. --model-images 0: no model group to summarise
            continue
        n = len(rs)
        fp = sum(r["detected"] is True for r in rs)
        flagged = sum(r["detected"] is not False for r in rs)
        worst = max(rs, key=lambda r: r["z"])
        out[g] = {"n": n, "false_positives": fp, "fpr": fp / n, "fpr_95ci": clopper_pearson(fp, n),
                  "at_1pct": flagged, "at_1pct_rate": flagged / n, "at_1pct_95ci": clopper_pearson(flagged, n),
                  "max_z": worst["z"], "max_z_image": worst["what"],
                  "median_z": float(np.median([r["z"] for r in rs]))}
    return out


def report(s: dict) -> str:
    cal = W.calibration()
    pct = lambda v: f"{100 * v:.2f}%"
    z = lambda p, test: f"{W.z_at_p(p / 2, test):.2f}"
    lines = [f"Shipped: detected at joint p <= {W.DETECTED_FPR:g} (0.1% promised: search z >= {z(W.DETECTED_FPR, 'search')} "
             f"or unmoved z >= {z(W.DETECTED_FPR, 'unmoved')}), unsure up to p = {W.UNSURE_FPR:g}; calibrated on "
             f"{cal['n']} other unmarked images.", "",
             "| group | n | detected (FPR) | 95% CI | detected or unsure | 95% CI | median z | max z (image) |",
             "|---|---|---|---|---|---|---|---|"]
    for g, r in s.items():
        lines.append(f"| {g} | {r['n']} | {r['false_positives']} ({pct(r['fpr'])}) | "
                     f"{pct(r['fpr_95ci'][0])}-{pct(r['fpr_95ci'][1])} | {r['at_1pct']} ({pct(r['at_1pct_rate'])}) | "
                     f"{pct(r['at_1pct_95ci'][0])}-{pct(r['at_1pct_95ci'][1])} | {r['median_z']:.2f} | "
                     f"{r['max_z']:.2f} ({r['max_z_image']}) |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-images", type=int, default=600, help="model outputs (seeds); each gives 5 images")
    ap.add_argument("--photos", type=int, default=800, help="photo crops")
    ap.add_argument("--synthetic", type=int, default=800, help="synthetic graphics and textures")
    ap.add_argument("--seed", type=int, default=2026, help="draws the variants, crops and textures")
    ap.add_argument("--photo-dir", help="crop the photos from every image in this folder instead of the built-in ones")
    ap.add_argument("--json", help="write every image's z, p-value and verdict, and the summary, here")
    a = ap.parse_args()
    for flag in ("model_images", "photos", "synthetic"):
        if getattr(a, flag) < 0:
            ap.error(f"--{flag.replace('_', '-')} must be 0 or more, not {getattr(a, flag)}")
    rows = measure(a.model_images, a.photos, a.synthetic, a.seed, a.photo_dir)
    if not rows:
        ap.error("nothing to measure: give --model-images, --photos or --synthetic above 0")
    s = summary(rows)
    print(report(s))
    if a.json:
        out = Path(a.json)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"summary": s, "p_threshold": W.DETECTED_FPR, "rows": rows}, indent=1))
        tmp.replace(out)


if __name__ == "__main__":
    main()
