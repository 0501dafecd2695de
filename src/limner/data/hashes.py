"""Image fingerprints for deduplication, and how alike two are: what `limner.data.dedup` clusters on.

* `exact_key`: a content hash of the decoded pixels, so a PNG re-saved as PNG (or any lossless re-encode)
  is caught no matter what the file bytes look like.
* `image_hashes`: 64-bit perceptual hashes for re-encodes, resizes, small crops, colour and brightness edits
  and blur. A single pHash cannot do this well (see benchmarks/dedup.py): it flips many bits under a 10%
  crop, and it cannot tell apart scenes of a few flat shapes on a near-white ground (Shapes World), whose
  low-frequency sign pattern only says "a blob around here". So there are three (KINDS): a windowed
  luminance pHash (layout), with the pHashes of two zoomed views (CROP_VIEWS, for crops), a colour hash (how
  much of each hue) and an edge-orientation hash (what shapes); and, as hashes of images with a few small
  shapes still agree by chance, a 16 px colour thumbnail (576 bytes) to verify candidates on.
* `thumb_distance`: two thumbnails, aligned by the best of a few crop boxes, compared up to per-channel gain
  and offset and a saturation change, overall and in every 3 x 3 patch.

All from one 64 px reduction of the image; numpy only.
"""
from __future__ import annotations

import hashlib
import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

KINDS = ("phash", "colour", "edges")      # the columns of `hash_matrix`, in the order hash_clusters links them
CROP_VIEWS = ("phash_crop5", "phash_crop10")  # pHashes of the centre with 5% / 10% cut off each side
THUMB_SIDE, THUMB_BITS = 16, 6            # the verification thumbnail: 16 x 16 RGB, 6 bits a channel
THUMB_WORDS = THUMB_SIDE ** 2 * 3 * THUMB_BITS // 64  # 72: the thumbnail as uint64 words, as hash_clusters takes it
N_VIEWS = len(CROP_VIEWS) + THUMB_WORDS   # columns of `hash_matrix`'s second array (hash_clusters' views)
# thumbnails within this distance are the same image; chosen in benchmarks/dedup.py --sweep (seed 0)
THUMB_TOLERANCE = 0.12

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_HUE_LEVELS = np.array([0.002, 0.006, 0.02, 0.06, 0.2], np.float32)          # fraction of the image
_EDGE_LEVELS = np.array([0.07, 0.1, 0.13, 0.17, 0.22, 0.3, 0.4], np.float32)  # fraction of edge energy


def _dct_matrix(n: int, k: int) -> np.ndarray:
    x = np.arange(n) + 0.5
    return (np.cos(np.pi * np.arange(k)[:, None] * x[None] / n) * np.sqrt(2 / n)).astype(np.float32)


def _box_matrix(n_out: int, lo: float, hi: float, n_in: int = 64) -> np.ndarray:
    """(n_out, n_in) area-averaging resampler of the span [lo, hi) of n_in pixels."""
    edges = np.linspace(lo, hi, n_out + 1)
    j = np.arange(n_in)
    overlap = np.clip(np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def _tukey(n: int, alpha: float) -> np.ndarray:
    e = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n)) / (alpha * n / 2)
    w = np.where(e < 1, 0.5 - 0.5 * np.cos(np.pi * np.minimum(e, 1)), 1.0)
    return np.outer(w, w).astype(np.float32)


_D8 = _dct_matrix(32, 8)
# fading the border out makes the hash depend less on what a crop removes (crop recall 0.31 -> 0.5 at <= 10)
_WINDOW = _tukey(32, 0.5)
_VIEW_CUTS = (0.0, 0.05, 0.10)  # the full image, then CROP_VIEWS
_VIEW_RESAMPLE = np.stack([_box_matrix(32, 64 * c, 64 * (1 - c)) for c in _VIEW_CUTS])
_R8, _R9 = _box_matrix(8, 0, 64), _box_matrix(9, 0, 64)


def _pack(bits: np.ndarray) -> int:
    """Up to 64 bools -> int, the first the most significant bit (zero-padded on the right)."""
    b = np.zeros(64, bool)
    b[:bits.size] = bits.ravel()
    return int.from_bytes(np.packbits(b).tobytes(), "big")


def _phashes(y64: np.ndarray) -> list[int]:
    """pHash (8x8 DCT of 32 px, above-median bits) of the full image and of each view, in one go."""
    y = _VIEW_RESAMPLE @ y64 @ _VIEW_RESAMPLE.transpose(0, 2, 1)
    c = (_D8 @ ((y - y.mean((1, 2), keepdims=True)) * _WINDOW) @ _D8.T).reshape(len(y), 64)
    med = np.partition(c, (31, 32), axis=1)[:, 31:33].mean(1, keepdims=True)
    return [_pack(b) for b in c > med]


def _soft_hist(x: np.ndarray, weight: np.ndarray, bins: int) -> np.ndarray:
    """Circular histogram of x in [0, bins), interpolated between bin centres (no jitter at bin edges)."""
    lo = np.floor(x).astype(np.int64)
    f = x - lo
    return (np.bincount((lo % bins).ravel(), (weight * (1 - f)).ravel(), bins)
            + np.bincount(((lo + 1) % bins).ravel(), (weight * f).ravel(), bins))


def _colour(a: np.ndarray) -> int:
    """Fraction of the image in each of 12 hues, for saturated pixels, on a log scale of 5 unary levels.

    Unary (thermometer) levels make the Hamming distance the number of level steps; the log scale lets
    one small shape on a plain ground register. Greys (saturation < 0.2) and darks count for nothing, so
    brightness and mild colour shifts barely move it.
    """
    r, g, b = a
    mx, mn = a.max(0), a.min(0)
    sat = (mx - mn) / np.maximum(mx, 1)
    weight = np.clip((sat - 0.2) / 0.2, 0, 1) * np.clip((mx - 30) / 40, 0, 1)
    hue = np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b) * (12 / (2 * np.pi))
    return _pack(_soft_hist(hue, weight, 12)[:, None] / weight.size > _HUE_LEVELS)


def _edges(a: np.ndarray) -> int:
    """Share of gradient energy in each of 8 orientations (7 unary levels): squares, triangles and circles
    differ here even when their layout and colour agree. Taken at 32 px, where JPEG blocks and blur are gone.

    Colour gradients (Di Zenzo's structure tensor), so an edge between two colours of equal luminance counts.
    """
    gx = a[:, 1:-1, 2:] - a[:, 1:-1, :-2]
    gy = a[:, 2:, 1:-1] - a[:, :-2, 1:-1]
    xx, yy, xy = (gx * gx).sum(0), (gy * gy).sum(0), (gx * gy).sum(0)
    mag = np.sqrt((xx + yy) / 2 + np.sqrt(((xx - yy) / 2) ** 2 + xy * xy))
    h = _soft_hist(np.arctan2(2 * xy, xx - yy) * (8 / (2 * np.pi)), mag, 8)  # doubled angle: orientation mod 180
    return _pack(h[:, None] / max(h.sum(), 1e-6) > _EDGE_LEVELS)


def _rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or "transparency" in img.info:  # what a viewer shows: transparency over white
        return Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def image_hashes(img: Image.Image) -> dict[str, int | bytes]:
    """64-bit perceptual hashes of one image, KINDS, CROP_VIEWS and a plain dHash, and "thumb": the 16 px
    verification thumbnail packed into bytes (`thumb_words` reads it). `hash_matrix` stacks them.

    All from one 64 px thumbnail (PIL `reduce` first, so a 512 px image costs little more than a 64 px one);
    callers decoding JPEGs may also `img.draft("RGB", (128, 128))` before loading.
    """
    img = _rgb(img)
    f = min(img.size) // 64
    # channel-planar: numpy is slow at reducing a trailing axis of 3
    a = np.ascontiguousarray(np.asarray((img.reduce(f) if f > 1 else img).resize((64, 64), Image.BOX),
                                        np.float32).transpose(2, 0, 1))
    y = (_LUMA @ a.reshape(3, -1)).reshape(64, 64)
    full, *views = _phashes(y)
    g = _R8 @ y @ _R9.T
    a32 = (a[:, ::2, ::2] + a[:, 1::2, ::2] + a[:, ::2, 1::2] + a[:, 1::2, 1::2]) / 4
    out = {"phash": full, "colour": _colour(a), "edges": _edges(a32)}
    out.update(zip(CROP_VIEWS, views))
    out["thumb"] = _thumb(a)
    out["dhash"] = _pack(g[:, 1:] > g[:, :-1])
    return out


_THUMB_LEVELS = (1 << THUMB_BITS) - 1


def _thumb(a: np.ndarray) -> bytes:
    """(3, 64, 64) float pixels -> the 16 px thumbnail, channel-planar, packed THUMB_BITS a value."""
    f = a.shape[-1] // THUMB_SIDE
    t = a.reshape(3, THUMB_SIDE, f, THUMB_SIDE, f).mean((2, 4))
    q = np.clip(np.rint(t * (_THUMB_LEVELS / 255)), 0, _THUMB_LEVELS).astype(np.uint8).ravel()
    bits = (q[:, None] >> np.arange(THUMB_BITS - 1, -1, -1, dtype=np.uint8)) & 1
    return np.packbits(bits.ravel()).tobytes()


def thumb_words(thumbs: Sequence[bytes]) -> np.ndarray:
    """Packed thumbnails (`image_hashes`' "thumb") -> (n, THUMB_WORDS) uint64, the same bits big-endian."""
    if any(len(t) != THUMB_WORDS * 8 for t in thumbs):
        raise ValueError(f"a packed thumbnail is {THUMB_WORDS * 8} bytes (image_hashes' 'thumb')")
    return np.frombuffer(b"".join(thumbs), ">u8").astype(np.uint64).reshape(len(thumbs), THUMB_WORDS)


def thumbnails(words: np.ndarray) -> np.ndarray:
    """(n, THUMB_WORDS) uint64 words -> (n, 3, 16, 16) float32 pixels in [0, 255]."""
    w = np.ascontiguousarray(np.asarray(words, np.uint64).astype(">u8"))
    bits = np.unpackbits(w.view(np.uint8), axis=1).reshape(len(w), -1, THUMB_BITS)
    q = bits @ (1 << np.arange(THUMB_BITS - 1, -1, -1)).astype(np.float32)
    return (q * (255 / _THUMB_LEVELS)).astype(np.float32).reshape(len(w), 3, THUMB_SIDE, THUMB_SIDE)


def hash_matrix(hashes: Sequence[dict[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """`image_hashes` results -> ((n, 3) uint64 KINDS columns, (n, N_VIEWS) uint64 views: crop views, then
    the thumbnail's words) for `hash_clusters`."""
    cols = np.array([[h[k] for k in KINDS + CROP_VIEWS] for h in hashes], np.uint64).reshape(-1, len(KINDS + CROP_VIEWS))
    return cols[:, :len(KINDS)], np.concatenate([cols[:, len(KINDS):], thumb_words([h["thumb"] for h in hashes])], 1)


def exact_key(data: bytes | np.ndarray | Image.Image) -> str:
    """Hex SHA-256 (first 128 bits; SHA-256 runs on the CPU's SHA instructions, twice blake2b's speed here)
    of the decoded pixels: equal for any two encodings of the same pixels.

    Encoded bytes are decoded with their EXIF orientation applied (what a viewer shows). Pixels are
    canonicalised to 8-bit RGB (grey and palette images expanded), RGBA only when some pixel is not opaque;
    arrays are taken as RGB(A) or grey, uint8. The shape is part of the key.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if isinstance(data, Image.Image):
        data = np.asarray(data.convert("RGBA"))
    a = np.asarray(data)
    if a.dtype != np.uint8:
        raise ValueError(f"exact_key wants uint8 pixels, got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] in (1, 2):  # grey (+ alpha) -> RGB (+ alpha), as PIL converts
        a = np.concatenate([a[..., :1].repeat(3, -1), a[..., 1:]], -1)
    if a.shape[-1] == 4 and (a[..., 3] == 255).all():
        a = a[..., :3]
    h = hashlib.sha256()
    h.update(np.array(a.shape, np.int64).tobytes())
    h.update(memoryview(np.ascontiguousarray(a)).cast("B"))   # no copy of the pixels
    return h.hexdigest()[:32]


# --- thumbnail verification ----------------------------------------------------------------------------

_CMP = 12  # thumbnails are compared at 12 px, resampled from 16 over the aligned box
_CUTS = np.linspace(0, 0.1, 5)  # a crop box cuts 0, 2.5 .. 10% off each side, independently
_SPANS = np.array([(lo, 1 - hi) for lo in _CUTS for hi in _CUTS]) * THUMB_SIDE
_SPAN_RESAMPLE = np.stack([_box_matrix(_CMP, lo, hi, THUMB_SIDE) for lo, hi in _SPANS])  # (25, 12, 16)
_CENTRED = np.flatnonzero(np.isclose(_SPANS[:, 0], THUMB_SIDE - _SPANS[:, 1]))  # centre crops (as CROP_VIEWS)
_FULL = _SPAN_RESAMPLE[0]
_GAIN = (0.6, 1.7)   # per-channel contrast a copy may gain or lose (brightness, white balance)
_SATURATION = (1 / 1.15, 1.0, 1.15)  # saturation changes tried
_FLOOR = 4.0         # grey levels: the least contrast a residual is measured against (flat images)
_LOCAL, _LOCAL_FLOOR = 0.15, 16.0 # weight of the worst patch, and the least patch contrast it is measured against


def _residual(x: np.ndarray, y: np.ndarray, axes: tuple) -> np.ndarray:
    """How unlike x and y (..., 3, *axes) are, after the best per-channel gain in _GAIN and offset (and, for
    images, saturation in _SATURATION): the residual energy over y's own contrast energy (floored), and for
    images (two axes) at least _LOCAL times the worst 3 x 3 patch's residual over that patch's contrast, so
    one small shape that moved counts even beside a large one that did not."""
    x = x - x.mean(axes, keepdims=True)
    y = y - y.mean(axes, keepdims=True)
    size = np.prod([y.shape[a] for a in axes]) * y.shape[-len(axes) - 1]
    chan = tuple(range(-len(axes) - 1, 0))
    signal = np.maximum((y * y).sum(chan), _FLOOR ** 2 * size)
    best = None
    for sat in (_SATURATION if len(axes) == 2 else (1.0,)):
        # saturation as PIL's ImageEnhance.Color: a blend with the luma (linear, so mean-free stays mean-free)
        xs = x if sat == 1 else sat * x + (1 - sat) * np.einsum("c,...cij->...ij", _LUMA, x)[..., None, :, :]
        g = np.clip((xs * y).sum(axes) / np.maximum((xs * xs).sum(axes), 1e-6), *_GAIN)
        gx = g.reshape(g.shape + (1,) * len(axes)) * xs
        err = (y - gx) ** 2
        d = err.sum(chan) / signal
        if len(axes) == 2:
            e = _box3(err.sum(-3))
            contrast = _box3((y * y + gx * gx).sum(-3))
            d = np.maximum(d, _LOCAL * (e / np.maximum(contrast, _LOCAL_FLOOR ** 2 * 27)).max((-1, -2)))
        best = d if best is None else np.minimum(best, d)
    return best


def _box3(e: np.ndarray) -> np.ndarray:
    """Sums over 3 x 3 patches (zero-padded) of the last two axes."""
    p = np.pad(e, [(0, 0)] * (e.ndim - 2) + [(1, 1), (1, 1)])
    c = p[..., :-2] + p[..., 1:-1] + p[..., 2:]
    return c[..., :-2, :] + c[..., 1:-1, :] + c[..., 2:, :]


def _one_way(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """Residual of b against the best box of a (b a crop of a): the centre crops, and the box that best
    matches the row and column profiles, each side cut 0-10% on its own."""
    y = _FULL @ tb @ _FULL.T                                                  # (p, 3, 12, 12)
    pick = []
    for axis in (-1, -2):  # rows' profile (mean over x) picks the y span, columns' the x span
        pa, pb = ta.mean(axis), y.mean(axis)                                  # (p, 3, 16), (p, 3, 12)
        xa = np.einsum("pcr,ksr->pkcs", pa, _SPAN_RESAMPLE)
        pick.append(np.argmin(_residual(xa, pb[:, None], (-1,)), 1))
    best = np.full(len(ta), np.inf, np.float32)
    for ky, kx in [tuple(pick)] + [(np.full(len(ta), k), np.full(len(ta), k)) for k in _CENTRED]:
        x = np.einsum("psr,pcrq,ptq->pcst", _SPAN_RESAMPLE[ky], ta, _SPAN_RESAMPLE[kx])
        best = np.minimum(best, _residual(x, y, (-1, -2)))
    return best


def thumb_distance(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """(p, 3, 16, 16) thumbnails (`thumbnails`) -> (p,) distance: 0 for the same pixels, about 0.01-0.06 for
    a re-encode, resize, blur, colour or brightness edit or (aligned) crop of up to 10% a side, and about
    0.2-1 for distinct Shapes World scenes (another layout, shape or size). The residual, after the best
    per-channel gain and offset, over the image's own contrast (so a scene of one small shape is compared on
    that shape), least over crop boxes of either image inside the other."""
    ta, tb = np.asarray(ta, np.float32), np.asarray(tb, np.float32)
    d = _residual(_FULL @ ta @ _FULL.T, _FULL @ tb @ _FULL.T, (-1, -2))
    hard = np.flatnonzero(d > 0.5 * THUMB_TOLERANCE)  # most copies are not crops: skip the box search
    if len(hard):
        a, b = ta[hard], tb[hard]
        d[hard] = np.minimum(d[hard], np.minimum(_one_way(a, b), _one_way(b, a)))
    return d
