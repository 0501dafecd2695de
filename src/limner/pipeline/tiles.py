"""Tiled inference for fully convolutional denoisers: images of any size in bounded memory, without seams.

MultiDiffusion-style (Bar-Tal et al. 2023): at every sampling step the velocity is computed tile by tile over
overlapping tiles and the tiles' velocities are averaged with smooth weights (a raised-cosine ramp across each
overlap, flat inside), so every step moves one image, not a patchwork of separately drawn tiles. The band of a
tile's inner edges that the model's receptive field carries past the tile (where it saw zero padding instead of
the image) gets weight 0, so for a local model every pixel's velocity is the untiled one: no seams by
construction, and no colour shift (the model normalises per pixel, never over a tile). The noise is one
field shared by all tiles, made of fixed blocks each seeded by its place (`noise_field`), so a pixel's noise does
not depend on the tile size either: tiled and untiled sampling start from the same image and end at the same
one (up to float rounding).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..common.files import digest

NOISE_BLOCK = 64  # the noise field's seeded blocks, in pixels of the grid it is drawn on


def noise_field(seed: int, stream: int, channels: int, top: int, left: int, height: int, width: int,
                block: int = NOISE_BLOCK) -> torch.Tensor:
    """(channels, height, width) of the seed's Gaussian noise field at (top, left): block (i, j) of the field is
    drawn from its own generator seeded by (seed, stream, i, j), so any window of it is the same numbers."""
    out = torch.empty(channels, height, width)
    for bi in range(top // block, (top + height - 1) // block + 1):
        for bj in range(left // block, (left + width - 1) // block + 1):
            g = torch.Generator().manual_seed(int(digest(seed, stream, bi, bj), 16))
            tile = torch.randn(channels, block, block, generator=g)
            y0, x0 = max(top, bi * block), max(left, bj * block)
            y1, x1 = min(top + height, (bi + 1) * block), min(left + width, (bj + 1) * block)
            out[:, y0 - top : y1 - top, x0 - left : x1 - left] = tile[:, y0 - bi * block : y1 - bi * block,
                                                                       x0 - bj * block : x1 - bj * block]
    return out


def spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """(start, end) of overlapping windows covering [0, length): at most `tile` long, neighbours sharing at
    least `overlap`, starts on multiples of `multiple` (a space-to-depth model's block)."""
    if tile >= length:
        return [(0, length)]
    if overlap >= tile:
        raise ValueError(f"the overlap ({overlap}) must be smaller than the tile ({tile})")
    n = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (n - 1)
    starts = sorted({min(length - tile, round(i * step / multiple) * multiple) for i in range(n)})
    return [(s, s + tile) for s in starts]


def ramp(length: int, start: int, end: int, overlap: int, dead: int = 0) -> torch.Tensor:
    """One axis of a tile's weight. On each side that borders another tile (not the image's own edges): 0 over
    the `dead` pixels nearest the tile's edge (there the model saw the tile's zero padding, not the image), then
    a raised cosine rising over the rest of the overlap but `dead` pixels, then 1. With overlap > 2 * dead every
    pixel keeps a tile with weight (neighbours may share more than `overlap`; the sum is divided out)."""
    w = torch.ones(end - start)
    rise_len = overlap - 2 * dead
    if overlap <= 0 or rise_len <= 0:
        if overlap > 0:
            raise ValueError(f"the overlap ({overlap}) must exceed twice the dead band ({dead})")
        return w
    rise = torch.cat([torch.zeros(dead), 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(rise_len) + 0.5) / rise_len),
                      torch.ones(dead)])
    n = min(overlap, end - start)
    if start > 0:
        w[:n] = torch.minimum(w[:n], rise[:n])
    if end < length:
        w[-n:] = torch.minimum(w[-n:], rise[:n].flip(0))
    return w


def tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1, dead: int = 0):
    """[(y0, y1, x0, x1, weight (y1-y0, x1-x0))] covering the image."""
    ys, xs = spans(height, tile, overlap, multiple), spans(width, tile, overlap, multiple)
    return [(y0, y1, x0, x1, ramp(height, y0, y1, overlap, dead)[:, None] * ramp(width, x0, x1, overlap, dead)[None])
            for y0, y1 in ys for x0, x1 in xs]


def tiled(v_tile: Callable, height: int, width: int, tile: int, overlap: int, multiple: int = 1, dead: int = 0,
          on_tile: Callable | None = None) -> Callable:
    """v(x, t) over the whole (1, C, H, W) image from `v_tile(x_tile, t, (y0, y1, x0, x1))`, each tile's answer
    weighted by its ramps and the sum divided by the summed weights (MultiDiffusion's average). `dead`: the
    model's receptive field, whose band along a tile's inner edges gets no weight. `on_tile()` is called after
    every tile (a progress bar)."""
    layout = tiles(height, width, tile, overlap, multiple, dead)
    total = torch.zeros(height, width)
    for y0, y1, x0, x1, w in layout:
        total[y0:y1, x0:x1] += w

    def v(x, t):
        if len(layout) == 1:
            out = v_tile(x, t, (0, height, 0, width))
            if on_tile:
                on_tile()
            return out
        out = torch.zeros_like(x)
        for y0, y1, x0, x1, w in layout:
            out[..., y0:y1, x0:x1] += w * v_tile(x[..., y0:y1, x0:x1], t, (y0, y1, x0, x1))
            if on_tile:
                on_tile()
        return out.div_(total)

    v.count = len(layout)
    return v
