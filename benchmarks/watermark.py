"""Watermark benchmark: quality, robustness at a calibrated false-positive rate, speed; side by side with
the invisible-watermark library (dwtDct, dwtDctSvd: what SDXL ships) on the same images and attacks.

    python benchmarks/watermark.py --calibrate 10000   # null distribution -> src/limner/safety/watermark_calibration.json
    python benchmarks/watermark.py                     # quality, robustness table, speed (markdown)

Images: 1024 px Shapes World scenes (what limner's default model draws, at output size) and 1024 px
photographs (scikit-image's sample images, randomly cropped and flipped: what users' own models draw).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from limner.safety import watermark as W
from limner.safety.attacks import ATTACKS
from limner.world.scene import render, sample_scene

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "cat", "camera", "brick", "grass", "gravel", "moon", "text", "coins", "page", "clock",
          "horse"]
CALIBRATION = Path(__file__).resolve().parents[1] / "src/limner/safety/watermark_calibration.json"


def photo(rng: random.Random, size: int) -> Image.Image:
    import skimage.data
    from skimage.util import img_as_ubyte

    a = img_as_ubyte(getattr(skimage.data, rng.choice(PHOTOS))())
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    h, w = a.shape[:2]
    f = rng.uniform(0.6, 1.0)
    ch, cw = int(h * f), int(w * f)
    y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
    a = a[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        a = a[:, ::-1]
    im = Image.fromarray(np.ascontiguousarray(a))
    s = size / min(im.size)
    return im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)


def image_sets(n_shapes: int, n_photos: int, seed: int = 0, size: int = 1024, enlarge: int = 1):
    """`enlarge`: scenes drawn at size / enlarge and enlarged (nearest), as `limner generate --scale` writes."""
    rng = random.Random(seed)
    big = lambda im: im.resize((size, size), Image.NEAREST)
    sets = {"shapes": [big(render(sample_scene(rng), size // enlarge)) for _ in range(n_shapes)],
            "photos": [photo(rng, size) for _ in range(n_photos)]}
    return {k: v for k, v in sets.items() if v}


# --- calibration ---------------------------------------------------------------------------------------

CALIBRATION_SEED = 1
SAMPLE = 200   # the calibration keeps its first SAMPLE images' z, so a test can recompute them


def calibration_images(n: int, seed: int = CALIBRATION_SEED):
    """(index, image): the calibration's n unmarked images of every kind, size and edit, in its order (index
    i is the same image for every n; images an edit made too small to check are left out)."""
    rng = random.Random(seed)
    names = list(ATTACKS)
    for i in range(n):
        size = rng.choice([128, 256, 384, 512, 768, 1024])
        kind = rng.random()
        if kind < 0.45:
            im = photo(rng, size)
        elif kind < 0.9:
            im = render(sample_scene(rng), size)
        else:  # 1/f noise textures: content with structure at every scale
            g = np.random.default_rng(i)
            f = np.fft.fftfreq(size)
            amp = 1 / np.maximum(np.hypot(*np.meshgrid(f, f)), 1 / size) ** rng.uniform(0.5, 1.5)
            tex = np.real(np.fft.ifft2(amp[..., None] * np.fft.fft2(g.normal(size=(size, size, 3)), axes=(0, 1)),
                                       axes=(0, 1)))
            tex = (tex - tex.min()) / (np.ptp(tex) + 1e-9) * 255
            im = Image.fromarray(tex.astype(np.uint8))
        im = ATTACKS[rng.choice(names)](im)
        if min(im.size) >= W.K:
            yield i, im


def calibrate(n: int, seed: int = CALIBRATION_SEED) -> dict:
    """z on n unmarked images of every kind, size and edit; those of the first SAMPLE kept in order, so a test
    can recompute them with the current detector (None: an image too small to check)."""
    zs, sample = [], [None] * min(n, SAMPLE)
    t0 = time.time()
    for i, im in calibration_images(n, seed):
        zs.append(W.score(im)[0])
        if i < SAMPLE:
            sample[i] = round(zs[-1], 5)
        if (i + 1) % 500 == 0:
            print(f"calibration {i + 1}/{n}  {time.time() - t0:.0f}s  max z {max(zs):.2f}", file=sys.stderr)
    return dict(W.fit_null(zs), command=f"python benchmarks/watermark.py --calibrate {n}",
                sample={"seed": seed, "z": sample})


# --- the peer: invisible-watermark ---------------------------------------------------------------------

BITS = [int(b) for b in f"{0xA5C3_1E7B:032b}"]


def peer_embed(im, method):
    from imwatermark import WatermarkEncoder

    enc = WatermarkEncoder()
    enc.set_watermark("bits", BITS)
    bgr = enc.encode(cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR), method)
    return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def peer_matches(im, method) -> int:
    from imwatermark import WatermarkDecoder

    if min(im.size) < 64:  # its DWT/DCT blocks need room
        return 0
    bits = WatermarkDecoder("bits", 32).decode(cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR),
                                               method)
    return sum(int(a == b) for a, b in zip(bits, BITS))


def peer_threshold(fpr=1e-3) -> int:
    """Matching bits needed for `fpr` when unmarked images decode to random bits (binomial tail)."""
    for k in range(33):
        if sum(math.comb(32, j) for j in range(k, 33)) / 2**32 <= fpr:
            return k
    return 33


# --- the run -------------------------------------------------------------------------------------------

def quality(pairs):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ps, ss = [], []
    for a, b in pairs:
        a, b = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
        ps.append(peak_signal_noise_ratio(a, b))
        ss.append(structural_similarity(a, b, channel_axis=2, data_range=255))
    return float(np.mean(ps)), float(np.min(ps)), float(np.mean(ss)), float(np.min(ss))


def speed(im, repeats=7) -> dict:
    """Embed + detect of one 1024 px image on one thread (min and median seconds), limner and the peer."""
    cv2.setNumThreads(1)
    runs = {"limner": lambda i: W.detect(W.embed(im, payload=i))}
    for m in ("dwtDct", "dwtDctSvd"):
        runs[m] = lambda i, m=m: peer_matches(peer_embed(im, m), m)
    out = {}
    for name, fn in runs.items():
        t = []
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(i)
            t.append(time.perf_counter() - t0)
        out[name] = {"min_s": round(min(t), 4), "median_s": round(float(np.median(t)), 4)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibrate", type=int, default=0, help="write the null calibration from N unmarked images")
    ap.add_argument("--shapes", type=int, default=60)
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--peer-images", type=int, default=8, help="per set, for the (slow) peer")
    ap.add_argument("--speed", action="store_true", help="only the speed measurement (run it on a quiet machine)")
    ap.add_argument("--size", type=int, default=1024, help="image side (64: the shipped model's native output)")
    ap.add_argument("--enlarge", type=int, default=1, help="scenes drawn at size/N, enlarged N times (--scale N)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.speed:
        print(json.dumps(speed(photo(random.Random(0), 1024)), indent=1))
        return
    if a.calibrate:
        cal = calibrate(a.calibrate)
        CALIBRATION.write_text(json.dumps(cal, indent=1) + "\n")
        print(json.dumps(cal, indent=1))
        return
    sets = image_sets(a.shapes, a.photos, size=a.size, enlarge=a.enlarge)
    thr = W.calibration()["z_at_fpr"]["0.001"]
    k_peer = peer_threshold()
    print(f"limner threshold z >= {thr:.2f} (0.1% FPR, calibrated on {W.calibration()['n']} unmarked images); "
          f"peer threshold >= {k_peer}/32 bits (binomial, 0.1%)", file=sys.stderr)
    marked = {k: [W.embed(im, payload=W.payload_for("bench", str(i))) for i, im in enumerate(v)]
              for k, v in sets.items()}
    peers = {m: {k: [peer_embed(im, m) for im in v[: a.peer_images]] for k, v in sets.items()}
             for m in ("dwtDct", "dwtDctSvd")} if a.peer_images else {}
    out = {"quality": {}, "tpr": {}, "payload": {}, "min_z": {}, "speed": {}}
    for k in sets:
        out["quality"][f"limner/{k}"] = quality(zip(sets[k], marked[k]))
        for m in peers:
            out["quality"][f"{m}/{k}"] = quality(zip(sets[k], peers[m][k]))
    for name, f in ATTACKS.items():
        if min(f(next(iter(sets.values()))[0]).size) < W.K:  # e.g. a quarter of 64 px: too small to check
            continue
        row, pay, low = {}, {}, {}
        for k in sets:
            hits = ok = 0
            low[k] = math.inf
            for i, im in enumerate(marked[k]):
                z, s, ang, folded, off = W.score(f(im))
                hits += z >= thr
                low[k] = min(low[k], z)
                ok += W.read_payload(folded, off, W.KEY) == W.payload_for("bench", str(i))
            row[f"limner/{k}"] = hits / len(marked[k])
            pay[k] = ok / len(marked[k])
            for m in peers:
                row[f"{m}/{k}"] = float(np.mean([peer_matches(f(im), m) >= k_peer for im in peers[m][k]]))
        out["tpr"][name], out["payload"][name], out["min_z"][name] = row, pay, low
        print(name, json.dumps(row), file=sys.stderr)
    out["speed"] = speed(sets["photos"][0]) if "photos" in sets and a.size == 1024 else "not measured"
    out["thresholds"] = {"limner_z": thr, "peer_bits": k_peer}
    print(report(out, a))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


def report(out, a) -> str:
    cols = list(next(iter(out["tpr"].values())))
    lines = [f"Quality (mean PSNR dB, min PSNR, mean SSIM, min SSIM) on {a.size} px images:", ""]
    lines += [f"- {k}: {p:.1f} / {pm:.1f} dB, SSIM {s:.4f} / {sm:.4f}" for k, (p, pm, s, sm) in out["quality"].items()]
    lines += ["", f"True-positive rate at 0.1% false positives ({a.shapes} shapes + {a.photos} photos for limner; "
              f"{a.peer_images} + {a.peer_images} for each peer):", "",
              "| attack | " + " | ".join(cols) + " | limner payload " + " / ".join(out["payload"][next(iter(out["payload"]))])
              + " | limner min z " + " / ".join(out["min_z"][next(iter(out["min_z"]))]) + " |",
              "|---" * (len(cols) + 3) + "|"]
    for name, row in out["tpr"].items():
        p, z = out["payload"][name], out["min_z"][name]
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " | " + " / ".join(f"{v:.2f}" for v in p.values())
                     + " | " + " / ".join(f"{v:.1f}" for v in z.values()) + " |")
    lines += ["", f"Speed: {out['speed']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
