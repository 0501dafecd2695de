"""The denoiser: a diffusion transformer over latent patches that reads the prompt by cross-attention.

DiT (Peebles & Xie) blocks with adaLN-zero conditioning on the timestep (and, optionally, the pooled
prompt), plus a cross-attention layer per block over the text tokens (PixArt-alpha). A small trainable "refiner"
re-contextualises the frozen encoder's token states first (as in Lumina/Sana), which lets a frozen
sentence encoder carry counts and colour-shape bindings that it was never trained to separate.
With `grounding`, the model also reads a layout (a phrase and a box per object) added to the image tokens
under the boxes, so that a planned layout decides where each object goes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # (width, depth, heads): "S" is the shipped CPU model; B/L/XL follow DiT's sizes
    "tiny": (64, 2, 2),
    "S": (192, 6, 4),
    "M": (256, 8, 4),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}


@dataclass
class DiTConfig:
    preset: str | None = "S"
    width: int = 0  # 0: take it from the preset
    depth: int = 0
    heads: int = 0
    in_channels: int = 4
    latent_size: int = 16
    patch: int = 2
    text_dim: int = 384
    refiner_depth: int = 2
    mlp_ratio: float = 4.0
    skip: bool = False  # U-ViT long skips: block i also feeds block depth-1-i
    conv_mlp: bool = False  # a 3x3 depthwise conv over the token grid inside every MLP (Sana's Mix-FFN)
    # the pooled prompt in adaLN shifts every token alike, a shortcut that paints all objects the prompt's
    # colours; False conditions adaLN on the timestep alone (PixArt-alpha) and leaves text to cross-attention
    pooled_text: bool = True
    # layout conditioning (as GLIGEN's grounding tokens, but spatially aligned, as ControlNet adds its
    # condition): each object is a token made of its phrase and box, every image token receives the tokens
    # of the boxes that cover it, and each block adds them through its own zero-initialised projection
    grounding: bool = False

    def __post_init__(self):
        if self.preset:
            if self.preset not in PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
            w, d, h = PRESETS[self.preset]
            self.width, self.depth, self.heads = self.width or w, self.depth or d, self.heads or h
        if not (self.width and self.depth and self.heads):
            raise ValueError("set preset, or width, depth and heads")
        if self.latent_size % self.patch:
            raise ValueError(f"latent_size {self.latent_size} is not a multiple of patch {self.patch}")

    def to_dict(self) -> dict:
        return asdict(self)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context=None, mask=None):
        b, n, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Sequential):
    """Linear-GELU-Linear. With `grid`, a depthwise 3x3 conv mixes neighbouring patches inside it: the
    locality a patch grid lacks, which a small model would otherwise spend its training learning."""

    def __init__(self, dim: int, ratio: float, grid: int = 0):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.grid = grid
        if grid:
            self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def forward(self, x):
        h = self[0](x)
        if self.grid:
            b, n, c = h.shape
            h = h + self.dw(h.transpose(1, 2).reshape(b, c, self.grid, self.grid)).flatten(2).transpose(1, 2)
        return self[2](self[1](h))


class RefinerBlock(nn.Module):
    """Pre-norm transformer layer over the text tokens."""

    def __init__(self, dim, heads, ratio):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.mlp = Attention(dim, heads), MLP(dim, ratio)

    def forward(self, x, mask):
        x = x + self.attn(self.n1(x), mask=mask)
        return x + self.mlp(self.n2(x))


class DiTBlock(nn.Module):
    def __init__(self, dim, heads, ratio, grid=0, grounding=False):
        super().__init__()
        self.n1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.n2 = nn.LayerNorm(dim, eps=1e-6)
        self.n3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn, self.cross, self.mlp = Attention(dim, heads), Attention(dim, heads), MLP(dim, ratio, grid)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        # no bias: an image token that no box covers gets nothing, and a model without a layout is its base
        self.ground = nn.Linear(dim, dim, bias=False) if grounding else None

    def forward(self, x, c, text, mask, layout=None):
        s1, g1, b1, s2, g2, b2 = self.ada(c).chunk(6, dim=1)
        if layout is not None:
            x = x + self.ground(layout)
        x = x + g1[:, None] * self.attn(modulate(self.n1(x), s1, b1))
        x = x + self.cross(self.n2(x), text, mask)
        return x + g2[:, None] * self.mlp(modulate(self.n3(x), s2, b2))


def coverage(boxes, grid: int):
    """(B, K, 4) boxes -> (B, K, grid * grid): the share of each token's cell that each box covers."""
    edges = torch.arange(grid + 1, dtype=boxes.dtype, device=boxes.device) / grid
    lo, hi = edges[:-1], edges[1:]
    ox = (torch.minimum(boxes[..., 2:3], hi) - torch.maximum(boxes[..., 0:1], lo)).clamp(min=0) * grid
    oy = (torch.minimum(boxes[..., 3:4], hi) - torch.maximum(boxes[..., 1:2], lo)).clamp(min=0) * grid
    return (oy[..., :, None] * ox[..., None, :]).flatten(-2)


def box_features(boxes, freqs: int = 8):
    """(..., 4) boxes (x0, y0, x1, y1 in [0, 1]) -> (..., 8 * freqs) Fourier features, as GLIGEN encodes them."""
    f = (2.0 ** torch.arange(freqs, dtype=torch.float32, device=boxes.device)) * math.pi
    a = boxes[..., None] * f
    return torch.cat([torch.sin(a), torch.cos(a)], -1).flatten(-2)


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * 1000 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    parts = [f(p.flatten()[:, None] * omega[None]) for p in (y, x) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)[None]


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.width, cfg.patch
        self.grid = cfg.latent_size // p
        self.patchify = nn.Conv2d(cfg.in_channels, d, p, p)
        self.register_buffer("pos", sincos_2d(d, self.grid), persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d))
        self.refiner = nn.ModuleList(RefinerBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.refiner_depth))
        self.pool = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d)) if cfg.pooled_text else None
        grid = self.grid if cfg.conv_mlp else 0
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio, grid, cfg.grounding) for _ in range(cfg.depth))
        # an object's token: the frozen encoder's pooled phrase ("small red circle") and its box's features
        self.ground_in = nn.Sequential(nn.Linear(cfg.text_dim + 64, d), nn.SiLU(), nn.Linear(d, d)) if cfg.grounding else None
        self.skips = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(cfg.depth // 2)) if cfg.skip else None
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final = nn.Linear(d, p * p * cfg.in_channels)
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(blk.ada[-1].weight), nn.init.zeros_(blk.ada[-1].bias)
            nn.init.zeros_(blk.cross.out.weight)
        for m in (self.final_ada[-1], self.final):
            nn.init.zeros_(m.weight), nn.init.zeros_(m.bias)
        for blk in self.blocks:  # a grounded model starts as its base model
            if blk.ground is not None:
                nn.init.zeros_(blk.ground.weight)

    def encode_text(self, states, mask):
        x = self.text_in(states)
        for blk in self.refiner:
            x = blk(x, mask)
        if self.pool is None:
            return x, None
        m = mask[..., None].to(x.dtype)
        pooled = self.pool((x * m).sum(1) / m.sum(1).clamp(min=1))
        return x, pooled

    def condition(self, states, mask, ground=None):
        """(refined text, pooled text, layout map): what the denoiser reads from the prompt and the layout.
        It depends on neither x nor t, so a sampler computes it once per call, not once per step."""
        text, pooled = self.encode_text(states, mask)
        layout = None
        if ground is not None and self.ground_in is not None:
            phrases, boxes, gmask = ground
            tokens = self.ground_in(torch.cat([phrases, box_features(boxes)], -1))
            cover = coverage(boxes, self.grid) * gmask[..., None].to(tokens.dtype)
            layout = torch.einsum("bkn,bkd->bnd", cover, tokens)  # each image token: the objects covering it
        return text, pooled, layout

    def forward(self, x, t, states, mask, ground=None, cond=None):
        """x: (B, C, H, W) noisy latents; t: (B,) in [0, 1]; states: (B, L, text_dim); mask: (B, L) bool;
        ground (grounding models): (phrases (B, K, text_dim), boxes (B, K, 4), mask (B, K) bool), or None;
        cond: `condition(states, mask, ground)` computed beforehand (then states and ground are not read)."""
        b, ch, hh, ww = x.shape
        text, pooled, layout = cond if cond is not None else self.condition(states, mask, ground)
        c = self.t_embed(timestep_embedding(t, 256))
        c = c if pooled is None else c + pooled
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos
        saved, late = [], len(self.blocks) - len(self.skips or [])
        for i, blk in enumerate(self.blocks):
            if self.skips and i >= late:
                h = self.skips[i - late](torch.cat([h, saved.pop()], -1))
            h = blk(h, c, text, mask, layout)
            if self.skips and i < len(self.skips):
                saved.append(h)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        h = self.final(modulate(self.final_norm(h), shift, scale))
        p, g = self.cfg.patch, self.grid
        h = h.view(b, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, ch, g * p, g * p)
