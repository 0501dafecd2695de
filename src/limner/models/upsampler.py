"""The super-resolution stage: a small, fully convolutional flow model that draws a high-resolution image
given the low-resolution one (SR3 / Imagen's super-resolution diffusion, at CPU scale, in pixel space).

What it reads, per output pixel: the noisy residual x_t (the target is the high-resolution image minus the
low one enlarged bicubically, which is zero wherever the enlargement is already right; it predicts that
residual, x0, and `velocity` turns it into the flow's velocity for the samplers) beside the enlarged
low image, noise-augmented (Imagen's noise conditioning augmentation: the low image is mixed with noise at a
level drawn per sample in training and fixed at sampling, and the level is given to the model as a second
timestep, so it learns how far to trust its input; the level of a cascade's later stage hides the earlier
stage's artefacts). The flow time, the augmentation level and the factor (2 or 4) condition every block
through adaLN, as in DiT.

Space-to-depth by `shuffle` first, so the convolutions run on a grid `shuffle` times coarser than the output
(ESPCN's pixel shuffle at the end). Every layer is local and normalised per pixel (no GroupNorm: statistics
over the whole map would change with the tile size, the colour shifts that tiled VAEs show), so a tile of any
size sees what the whole image would show it, up to the receptive field (`receptive_field`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..diffusion import flow
from .dit import timestep_embedding


@dataclass
class UpsamplerConfig:
    width: int = 64
    depth: int = 6          # residual blocks, two 3x3 convolutions each
    shuffle: int = 4        # the blocks run on a grid this many times coarser than the output
    factors: list[int] = field(default_factory=lambda: [2, 4])  # the enlargements it is trained for

    def __post_init__(self):
        if self.width < 8 or self.depth < 1:
            raise ValueError(f"width must be >= 8 and depth >= 1, not {self.width} and {self.depth}")
        if self.shuffle not in (1, 2, 4, 8):
            raise ValueError(f"shuffle must be 1, 2, 4 or 8, not {self.shuffle}")
        if not self.factors or any(f not in (2, 4) for f in self.factors):
            raise ValueError(f"factors must be a list of 2 and/or 4, not {self.factors}")

    def to_dict(self) -> dict:
        return asdict(self)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel: local, so a tile is normalised as the whole image would be."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.n1, self.n2 = ChannelNorm(dim), ChannelNorm(dim)
        self.c1, self.c2 = nn.Conv2d(dim, dim, 3, padding=1), nn.Conv2d(dim, dim, 3, padding=1)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))

    def forward(self, h, c):
        shift, scale, gate = (a[..., None, None] for a in self.ada(c).chunk(3, dim=1))
        y = self.c1(F.silu(self.n1(h)))
        y = self.c2(F.silu(self.n2(y) * (1 + scale) + shift))
        return h + gate * y


class Upsampler(nn.Module):
    def __init__(self, cfg: UpsamplerConfig):
        super().__init__()
        self.cfg = cfg
        d, s = cfg.width, cfg.shuffle
        self.embed = nn.ModuleDict({k: nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
                                    for k in ("t", "level", "factor")})
        self.inp = nn.Conv2d(6 * s * s, d, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(d) for _ in range(cfg.depth))
        self.out_norm = ChannelNorm(d)
        self.out = nn.Conv2d(d, 3 * s * s, 3, padding=1)
        for blk in self.blocks:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(blk.ada[-1].weight), nn.init.zeros_(blk.ada[-1].bias)
        nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)

    @property
    def multiple(self) -> int:
        """Output sides must be multiples of this (the space-to-depth block)."""
        return self.cfg.shuffle

    @property
    def receptive_field(self) -> int:
        """How far (output pixels) an output pixel sees: 2 + 2 * depth 3x3 convolutions on the coarse grid, plus
        the rest of its space-to-depth block."""
        return (3 + 2 * self.cfg.depth) * self.cfg.shuffle

    def forward(self, x, t, low_up, level, factor):
        """x: (B, 3, H, W) noisy residual; t, level: (B,) in [0, 1]; low_up: (B, 3, H, W) the augmented low
        image enlarged to H x W; factor: (B,) the enlargement. Returns the clean residual x0, (B, 3, H, W)."""
        s = self.cfg.shuffle
        c = (self.embed["t"](timestep_embedding(t, 256)) + self.embed["level"](timestep_embedding(level, 256))
             + self.embed["factor"](timestep_embedding(torch.log2(factor.float()) / 4, 256)))
        h = self.inp(F.pixel_unshuffle(torch.cat([x, low_up], 1), s))
        for blk in self.blocks:
            h = blk(h, c)
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), s)


def enlarge(low: torch.Tensor, factor: int) -> torch.Tensor:
    """The bicubic enlargement the residual is taken against (training and sampling alike)."""
    return F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False)


def augment(low: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise conditioning augmentation at the low resolution: the flow's own mixing, (1 - a) x + a noise."""
    a = level.view(-1, 1, 1, 1)
    return (1 - a) * low + a * noise


def loss(model: Upsampler, low, high, factor: int, max_level: float, generator=None) -> torch.Tensor:
    """The flow's noising (diffusion.flow: x_t = (1 - t) x0 + t noise, logit-normal t) of the residual
    x0 = high - enlarge(low), with the model predicting x0 itself (mean squared error), and each sample's low image
    augmented at a level drawn uniformly in [0, max_level]. low: (B, 3, h, w), high: (B, 3, f h, f w) in [-1, 1].

    x0, not the velocity noise - x0 (what the denoiser predicts): the blocks run on a grid `shuffle` times
    coarser, and a velocity would have them carry every pixel's noise through; the residual is smooth and sparse.
    The sampler still follows the flow's velocity, `velocity` makes it from the prediction."""
    b = low.shape[0]
    level = torch.rand(b, generator=generator, device=low.device) * max_level
    low_up = enlarge(augment(low, level, torch.randn(low.shape, generator=generator, device=low.device)), factor)
    x0 = high - enlarge(low, factor)
    t = flow.sample_t(b, generator=generator, device=low.device)
    noise = torch.randn(x0.shape, generator=generator, device=low.device)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    x0_hat = model(xt, t, low_up, level, torch.full((b,), float(factor), device=low.device))
    return ((x0_hat.float() - x0) ** 2).mean()


def velocity(model: Upsampler, x, t, low_up, level, factor) -> torch.Tensor:
    """The flow velocity (x_t - x0) / t from the model's x0; samplers evaluate it at t > 0 only."""
    return (x - model(x, t, low_up, level, factor)) / t.view(-1, 1, 1, 1)
