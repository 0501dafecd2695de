"""The edits a watermark must survive, as functions PIL image -> PIL image (used by tests and benchmarks)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def _encode(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def jpeg(q): return lambda im: _encode(im, "JPEG", quality=q)
def webp(q=80): return lambda im: _encode(im, "WEBP", quality=q)


def resize(f):
    return lambda im: im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BICUBIC)


def centre_crop(area):
    def crop(im):
        s = area ** 0.5
        w, h = round(im.width * s), round(im.height * s)
        x, y = (im.width - w) // 2, (im.height - h) // 2
        return im.crop((x, y, x + w, y + h))
    return crop


def rotate(deg): return lambda im: im.rotate(deg, resample=Image.BICUBIC, expand=False)
def blur(sigma): return lambda im: im.filter(ImageFilter.GaussianBlur(sigma))
def brightness(f): return lambda im: ImageEnhance.Brightness(im).enhance(f)
def contrast(f): return lambda im: ImageEnhance.Contrast(im).enhance(f)


def noise(sigma, seed=0):
    def add(im):
        a = np.asarray(im.convert("RGB"), np.float32) / 255
        a = a + np.random.default_rng(seed).normal(0, sigma, a.shape)
        return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    return add


def screenshot(im: Image.Image) -> Image.Image:
    """Shown on a screen at 80% with a window frame around it, a slight gamma shift, captured as PNG."""
    shown = im.convert("RGB").resize((round(im.width * 0.8), round(im.height * 0.8)), Image.BILINEAR)
    a = (np.asarray(shown, np.float32) / 255) ** 1.08
    shown = Image.fromarray((a * 255).round().astype(np.uint8))
    pad, bar = round(shown.width * 0.04), round(shown.height * 0.07)
    frame = Image.new("RGB", (shown.width + 2 * pad, shown.height + bar + pad), (236, 236, 236))
    frame.paste(Image.new("RGB", (frame.width, bar), (60, 63, 70)), (0, 0))
    frame.paste(shown, (pad, bar))
    return _encode(frame, "PNG")


SINGLE = {
    "none": lambda im: im,
    "jpeg90": jpeg(90), "jpeg75": jpeg(75), "jpeg50": jpeg(50), "webp80": webp(80),
    "resize0.5": resize(0.5), "resize0.25": resize(0.25),
    "crop50": centre_crop(0.5), "crop25": centre_crop(0.25),
    "rot+5": rotate(5), "rot-5": rotate(-5),
    "blur1": blur(1), "blur2": blur(2), "noise0.05": noise(0.05),
    "bright+30": brightness(1.3), "bright-30": brightness(0.7),
    "contrast+30": contrast(1.3), "contrast-30": contrast(0.7),
    "screenshot": screenshot,
}
# pairs across families: each edit family meets compression, geometry and the others
PAIRS = [("jpeg75", "resize0.5"), ("crop50", "jpeg75"), ("rot+5", "jpeg75"), ("blur1", "resize0.5"),
         ("noise0.05", "jpeg75"), ("bright+30", "crop50"), ("crop25", "resize0.5"), ("screenshot", "jpeg75"),
         ("contrast-30", "rot-5"), ("webp80", "crop50"), ("resize0.25", "jpeg90"), ("blur2", "noise0.05"),
         ("rot+5", "crop50"), ("bright-30", "jpeg50")]
ATTACKS = dict(SINGLE)
ATTACKS.update({f"{a}+{b}": (lambda f, g: (lambda im: g(f(im))))(SINGLE[a], SINGLE[b]) for a, b in PAIRS})
