"""The per-image stages of curation: decode and validate, quality, safety, AI-generated images.

Each stage is a small function of an image (and its file's metadata) that returns its scores and, when
the image should go, a reason such as "quality:blur". None of them raises on bad data: whatever is
wrong with an input becomes a recorded reason. Thresholds were set on the planted corpus of
`limner data demo` and on real photographs (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFile

ANALYSIS_SIDE = 256  # quality scores are computed at this long side, so they mean the same at any size


# ------------------------------------------------------------------------------------- decode and validate


@dataclass
class DecodeConfig:
    min_side: int = 32  # smaller is "tiny": not an image worth keeping
    max_aspect: float = 4.0  # long side / short side
    max_pixels: int = 100_000_000  # larger is refused before decoding (decompression bombs)
    animated: str = "drop"  # "drop" or "first_frame"


@dataclass
class Decoded:
    image: Image.Image  # 8-bit RGB
    format: str  # "JPEG", "PNG", ...
    info: dict  # the file's metadata (text chunks, EXIF, XMP), read before conversion drops it
    notes: list[str]  # conversions made, e.g. "CMYK->RGB"


def decode(data: bytes | None, cfg: DecodeConfig) -> tuple[Decoded | None, dict, str | None]:
    """(decoded, scores, reason); `decoded` is None exactly when `reason` says why."""
    if not data:
        return None, {}, "decode:empty"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > cfg.max_pixels:
                return None, {"width": w, "height": h}, "decode:too_large"
            info = _metadata(img)
            frames = getattr(img, "n_frames", 1)
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return None, {}, "decode:too_large"
    except OSError as e:
        return None, {}, "decode:truncated" if "truncated" in str(e) or "broken data" in str(e) else "decode:corrupt"
    except Exception:  # Pillow raises many types on hostile input (SyntaxError, ValueError, struct.error ...)
        return None, {}, "decode:corrupt"
    scores = {"width": w, "height": h, "format": img.format or "", "mode": img.mode, "frames": frames}
    if frames > 1 and cfg.animated == "drop":
        return None, scores, "decode:animated"
    if min(w, h) < cfg.min_side:
        return None, scores, "decode:tiny"
    if max(w, h) / min(w, h) > cfg.max_aspect:
        return None, scores, "decode:aspect"
    rgb, notes = to_rgb(img)
    scores["converted"] = ",".join(notes)
    return Decoded(rgb, img.format or "", info, notes), scores, None


def to_rgb(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """8-bit RGB whatever came in: CMYK, 16-bit, palette, alpha (flattened on white), greyscale."""
    mode = img.mode
    if mode == "RGB":
        return img, []
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, np.float64)
        a = a / 257.0 if a.max() > 255 else a
        return Image.fromarray(a.clip(0, 255).astype(np.uint8)).convert("RGB"), [f"{mode}->8bit"]
    if mode == "F":
        a = np.asarray(img, np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-9) * 255
        return Image.fromarray(a.astype(np.uint8)).convert("RGB"), ["float->8bit"]
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", img.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out, [f"{mode}->RGB(alpha on white)"]
    return img.convert("RGB"), [f"{mode}->RGB"]  # CMYK, YCbCr, palette, greyscale


def _metadata(img: Image.Image) -> dict:
    info = {k: v for k, v in img.info.items() if isinstance(v, (str, bytes)) and k not in ("icc_profile", "exif")}
    if getattr(img, "quantization", None):
        info["quantization"] = {k: list(v) for k, v in img.quantization.items()}
    try:
        exif = img.getexif()
        for tag, name in ((0x0131, "Software"), (0x010E, "ImageDescription"), (0x013B, "Artist"), (0x010F, "Make"),
                          (0x9286, "UserComment")):
            if tag in exif:
                info[f"exif:{name}"] = exif[tag]
    except Exception:  # a broken EXIF block is no reason to lose the image
        pass
    return info


# ------------------------------------------------------------------------------------------------ quality


@dataclass
class QualityConfig:
    enabled: bool = True
    min_side: int = 128  # "low_resolution" below this
    # steepest edges / contrast at the analysis size: rendered scenes 0.55-0.95, photos 0.34-0.55,
    # Gaussian blur of σ 1.5 / 2 / 3 px ~0.23 / 0.18 / 0.14
    min_sharpness: float = 0.2
    max_clipped: float = 0.5  # over/under-exposed: this share of pixels at the extremes...
    min_mean_luma: float = 25.0  # ...or a mean this dark (a dimmed image need not clip)
    min_jpeg_quality: int = 20  # JPEG quality estimated from the file's quantisation tables
    max_blockiness: float = 2.5  # 8x8 grid step ratio, for blocks re-encoded at high quality (clean ~1.0-1.6)
    min_contrast: float = 8.0  # flat: luma range below this, both p99.5 - p0.5 and p99.9 - p0.1


def luma(img: Image.Image, side: int | None = ANALYSIS_SIDE) -> np.ndarray:
    img = img.convert("L")   # first: one channel to shrink, not three
    if side and max(img.size) > side:
        img.thumbnail((side, side), Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, np.float32)


def sharpness(y: np.ndarray, contrast: float | None = None) -> float:
    """How steep the steepest edges are relative to the image's contrast: blur spreads every edge.
    `contrast`: the luma range p99.5 - p0.5, when the caller has it already."""
    gx, gy = np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0))
    g = np.concatenate([gx.ravel(), gy.ravel()])
    k = max(32, g.size // 1000)  # the top 0.1% (at least 32 pixels): enough for one small object's rim
    top = np.partition(g, g.size - k)[-k:].mean()
    if contrast is None:
        lo, hi = np.percentile(y, (0.5, 99.5))
        contrast = hi - lo
    return float(top / max(contrast, 1.0))


def blockiness(y: np.ndarray) -> float:
    """Mean step across the 8x8 JPEG grid over the mean step inside blocks (Wang et al. 2002 in spirit)."""
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    if h < 16 or w < 16:
        return 1.0
    y = y[:h, :w]
    ratios = []
    for d in (np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0)).T):
        grid = d[:, 7::8]
        on = grid.mean()
        off = (d.sum() - grid.sum()) / (d.size - grid.size)   # the rest, without copying it out
        ratios.append((on + 0.5) / (off + 0.5))  # +0.5: flat regions have no steps at all
    return float(np.mean(ratios))


# the IJG standard luminance table at quality 50: libjpeg scales it by 5000/q (q < 50) or 200 - 2q
_IJG_LUMA_SUM = sum([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def jpeg_quality(tables: dict | None) -> float | None:
    """libjpeg's quality setting, recovered from the luminance quantisation table (order-free: sums)."""
    if not tables or 0 not in tables:
        return None
    scale = 100.0 * sum(tables[0]) / _IJG_LUMA_SUM
    return float(np.clip((200 - scale) / 2 if scale <= 100 else 5000 / scale, 1, 100))


def quality(dec: Decoded, cfg: QualityConfig) -> tuple[dict, str | None]:
    img = dec.image
    grey = img.convert("L")
    y = luma(grey)
    lo0, lo, hi, hi0 = np.percentile(y, (0.1, 0.5, 99.5, 99.9))
    scores = {"contrast": float(hi - lo), "detail_range": float(hi0 - lo0), "sharpness": sharpness(y, hi - lo), "overexposed": float((y >= 250).mean()),
              "underexposed": float((y <= 5).mean()), "mean_luma": float(y.mean())}
    # the JPEG grid is on the stored pixels: measure it on a native-resolution crop, aligned to the grid
    if dec.format == "JPEG":
        scores["jpeg_quality"] = jpeg_quality(dec.info.get("quantization"))
        scores["blockiness"] = blockiness(np.asarray(grey.crop((0, 0, min(img.width, 512), min(img.height, 512))), np.float32))
    if not cfg.enabled:
        return scores, None
    if min(img.size) < cfg.min_side:
        return scores, "quality:low_resolution"
    # coarse JPEG quantisation shifts flat areas too (ivory to white): it goes first
    if (scores.get("jpeg_quality") or 100) < cfg.min_jpeg_quality or scores.get("blockiness", 1.0) > cfg.max_blockiness:
        return scores, "quality:jpeg_artifacts"
    if scores["overexposed"] > cfg.max_clipped:
        return scores, "quality:overexposed"
    if scores["underexposed"] > cfg.max_clipped or scores["mean_luma"] < cfg.min_mean_luma:
        return scores, "quality:underexposed"  # before "flat": a dimmed image has little contrast left
    # flat: no contrast, not even in a small object (one under 0.5% of the image shows in p0.1-p99.9)
    if scores["contrast"] < cfg.min_contrast and scores["detail_range"] < cfg.min_contrast:
        return scores, "quality:flat"
    if scores["sharpness"] < cfg.min_sharpness:
        return scores, "quality:blur"
    return scores, None


# ------------------------------------------------------------------------------------------------- safety


@dataclass
class SafetyConfig:
    # an ImageFilter spec (limner.safety.image_filter: "opennsfw", "clip:PATH", a dict), a list of them (an
    # image goes when any one flags it), or None
    classifier: str | dict | list | None = "opennsfw"
    thresholds: dict | None = None  # per label, replacing the classifier's own; with a list, give each
    # classifier's thresholds in its own spec ({"classifier": "clip", "path": ..., "thresholds": {...}})

    def __post_init__(self):
        if isinstance(self.classifier, list) and self.thresholds:
            raise ValueError("thresholds go with one classifier: with a list, give each classifier its thresholds "
                             "in its own spec")


@lru_cache(maxsize=4)
def _image_filters(specs: str, thresholds: str) -> list:
    """Built once per worker; each spec is parsed by ImageFilter.from_spec, as generation parses it."""
    import json

    from ..safety.image_filter import ImageFilter

    specs, over = json.loads(specs), json.loads(thresholds)
    filters = [f for f in map(ImageFilter.from_spec, specs if isinstance(specs, list) else [specs]) if f]
    if over:
        filters = [ImageFilter(f.classifier, over, f.action) for f in filters]
    labels = [label for f in filters for label in f.classifier.labels]
    shared = sorted({label for label in labels if labels.count(label) > 1})
    if shared:
        raise ValueError(f"safety classifiers share the labels {shared}: each label names one score column")
    return filters


def safety(images: list[Image.Image], cfg: SafetyConfig) -> list[tuple[dict, str | None]]:
    """The same pluggable classifier interface that guards generation, run on a batch: every classifier's
    scores, and the reason of the first classifier (in config order) that flags the image."""
    if not cfg.classifier or not images:
        return [({}, None)] * len(images)
    import json

    filters = _image_filters(json.dumps(cfg.classifier, sort_keys=True), json.dumps(cfg.thresholds or {}, sort_keys=True))
    if not filters:  # only "none"
        return [({}, None)] * len(images)
    out = []
    for verdicts in zip(*(f.check(images) for f in filters)):
        scores = {f"safety_{k}": float(s) for v in verdicts for k, s in v.scores.items()}
        flagged = next((v for v in verdicts if not v.allowed), None)
        out.append((scores, f"safety:{flagged.label}" if flagged else None))
    return out


# ---------------------------------------------------------------------------------------- AI-generated


@dataclass
class AIGeneratedConfig:
    metadata: bool = True  # generator parameters and tags: A1111, ComfyUI, InvokeAI, EXIF software, IPTC XMP
    c2pa: bool = True  # a C2PA manifest declaring trainedAlgorithmicMedia
    watermark: bool = True  # limner's own invisible watermark
    invisible_watermark: bool = True  # the dwtDct mark of the invisible-watermark library (SDXL and others)
    classifier: str | dict | None = None  # a learned detector: an ImageFilter spec, flagging label "ai"
    thresholds: dict | None = None


GENERATORS = re.compile(
    r"stable[ _-]?diffusion|\bsdxl\b|midjourney|dall\W{0,3}e\b|novelai|comfyui|automatic1111|\ba1111\b|invokeai|"
    r"firefly|imagen\b|\bflux\.?1?\b|leonardo\.ai|dreamstudio|craiyon|nightcafe|ideogram|\blimner\b", re.I)
A1111 = re.compile(r"\bSteps: \d+.*\b(Sampler|CFG scale|Seed):", re.S)
XMP_AI = re.compile(r"(trainedAlgorithmicMedia|compositeWithTrainedAlgorithmicMedia)")
# invisible-watermark's default scales and SDXL's fixed 48-bit message (diffusers' StableDiffusionXLWatermarker)
SDXL_BITS = np.array([int(b) for b in format(0b101100111110110010010000011110111011000110011110, "048b")], bool)


def metadata_signals(info: dict) -> list[str]:
    found = []
    text = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) for k, v in info.items()}
    if "parameters" in text and (A1111.search(text["parameters"]) or "limner" in text["parameters"]):
        found.append("a1111_parameters")
    if "workflow" in text or ("prompt" in text and text["prompt"].lstrip().startswith("{")):
        found.append("comfyui")
    if any(k in text for k in ("invokeai_metadata", "sd-metadata", "Dream")):
        found.append("invokeai")
    for k, v in text.items():
        if k.startswith("exif:") and GENERATORS.search(v):
            found.append(f"exif_{k[5:].lower()}")
        if "xmp" in k.lower() and XMP_AI.search(v):
            found.append("iptc_ai_source")
        if k in ("Software", "Comment", "Description", "Source") and GENERATORS.search(v):
            found.append(f"png_{k.lower()}")
    return sorted(set(found))


def has_c2pa(data: bytes, fmt: str) -> dict | None:
    """The manifest summary when the file embeds one (cheap byte check first: reading is slow)."""
    if b"c2pa" not in data and b"jumb" not in data:
        return None
    import tempfile
    from pathlib import Path

    from ..safety.provenance import read_c2pa

    suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(fmt, ".bin")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"image{suffix}"
        p.write_bytes(data)
        try:
            return read_c2pa(p)
        except Exception:  # an unreadable manifest is reported as none
            return None


def dwtdct_bits(img: Image.Image, length: int = 48, scale: float = 36.0) -> np.ndarray:
    """Bits of invisible-watermark's dwtDct mark (its `maxDct` decoder, vectorised): the U channel's Haar
    LL band in 4x4 blocks; each block's largest non-DC value carries bit `block index % length`."""
    rgb = np.asarray(img.convert("RGB"), np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = np.clip(np.round(0.492 * (b - y) + 128), 0, 255)  # OpenCV's 8-bit BGR2YUV, as the library uses
    h, w = (u.shape[0] // 4) * 4, (u.shape[1] // 4) * 4
    u = u[:h, :w]
    ll = (u[0::2, 0::2] + u[0::2, 1::2] + u[1::2, 0::2] + u[1::2, 1::2]) / 2  # pywt haar dwt2 approximation
    bh, bw = ll.shape[0] // 4, ll.shape[1] // 4
    blocks = ll[: bh * 4, : bw * 4].reshape(bh, 4, bw, 4).transpose(0, 2, 1, 3).reshape(-1, 16)
    vals = np.abs(blocks[np.arange(len(blocks)), 1 + np.abs(blocks[:, 1:]).argmax(1)])
    bit = (vals % scale) > 0.5 * scale
    sums = np.bincount(np.arange(len(bit)) % length, weights=bit, minlength=length)
    counts = np.bincount(np.arange(len(bit)) % length, minlength=length)
    return sums / np.maximum(counts, 1) * 255 > 127


def ai_generated(dec: Decoded, data: bytes, cfg: AIGeneratedConfig) -> tuple[dict, str | None]:
    signals, scores = [], {}
    if cfg.metadata:
        signals += metadata_signals(dec.info)
    if cfg.c2pa:
        manifest = has_c2pa(data, dec.format)
        if manifest is not None:
            scores["c2pa_validation"] = manifest["validation"] or ""
            if manifest["ai_generated"]:
                signals.append("c2pa")
    if cfg.watermark:
        from ..safety.watermark import detect

        det = detect(dec.image)
        scores["limner_watermark_p"] = float(det.p_value)
        if det.detected:
            signals.append("limner_watermark")
    if cfg.invisible_watermark and min(dec.image.size) >= 64:
        matches = int((dwtdct_bits(dec.image) == SDXL_BITS).sum())
        scores["dwtdct_sdxl_bits"] = matches
        if matches >= 44:  # of 48; unmarked images match ~24 ± 3.5, so 44 is ~6 sigma out
            signals.append("invisible_watermark_sdxl")
    scores["ai_signals"] = ",".join(signals)
    return scores, f"ai_generated:{signals[0]}" if signals else None


def ai_classifier(images: list[Image.Image], cfg: AIGeneratedConfig) -> list[tuple[dict, str | None]]:
    """A learned AI-image detector behind the same interface as the safety classifier."""
    if not cfg.classifier:
        return [({}, None)] * len(images)
    out = safety(images, SafetyConfig(cfg.classifier, cfg.thresholds))
    return [({k.replace("safety_", "ai_"): v for k, v in s.items()}, r and r.replace("safety:", "ai_generated:"))
            for s, r in out]
