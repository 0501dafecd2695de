"""Upscaling with a model folder's learned upsampler: the cascade after the base model, and `limner upscale`.

An enlargement is a plan of the model's trained factors (16: 4 then 4; 8: 4 then 2), each stage one flow
sample of the residual over the bicubic enlargement, tiled (pipeline/tiles.py) so that memory stays bounded
at any size. Any PIL image works: RGB as it is, grey converted to RGB and back, an alpha channel enlarged with
Lanczos beside the RGB, odd and non-square sizes padded to the model's block and cropped back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from ..common.files import digest
from ..common.progress import progress
from ..diffusion.sampling import SAMPLERS, timesteps
from ..models import folder
from ..models.upsampler import Upsampler, augment, enlarge, velocity
from .tiles import noise_field, tiled

MAX_OUTPUT_SIDE = 16384
MAX_OUTPUT_PIXELS = 8192 * 8192  # an 8x of a 1024 px image; the full-size working image is ~0.8 GB per 3 channels
FACTORS = (2, 4, 8)  # what `limner upscale` offers (the pipeline's cascade multiplies further: 16 x 8)


@dataclass
class UpscaleSettings:
    """How a folder's upsampler samples (upsampler/config.json's "sampling", beside the model config)."""
    steps: int = 4
    sampler: str = "euler"
    noise_level: float = 0.1  # the fixed augmentation level at sampling (a second timestep; see models/upsampler.py)
    output: int = 0           # the cascade's output side after the base model (0: no cascade, native size)
    tile: int = 0             # tile side in output pixels (0: from the memory available)

    def __post_init__(self):
        if not 1 <= self.steps <= 100:
            raise ValueError(f"upsampler steps must be between 1 and 100, not {self.steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 0 <= self.noise_level < 1:
            raise ValueError(f"noise_level must be in [0, 1), not {self.noise_level}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_request(width: int, height: int, factor: int, factors=FACTORS) -> None:
    """Refuse a factor not in `factors` or an output too large, before any work."""
    if factor not in factors:
        raise ValueError(f"the factor must be {', '.join(map(str, factors[:-1]))} or {factors[-1]}, not {factor}")
    w, h = width * factor, height * factor
    if w * h > MAX_OUTPUT_PIXELS or max(w, h) > MAX_OUTPUT_SIDE:
        raise ValueError(f"a {factor}x enlargement of {width}x{height} would be {w}x{h} ({w * h / 1e6:.1f} "
                         f"megapixels); the limit is {MAX_OUTPUT_PIXELS / 1e6:.1f} megapixels (8192x8192) and "
                         f"{MAX_OUTPUT_SIDE} px a side: choose a smaller factor or crop the image first")


def available_memory() -> int:
    """Bytes the system can give now (MemAvailable), or 4 GiB where /proc/meminfo cannot be read."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


class Upscaler:
    def __init__(self, model: Upsampler, settings: UpscaleSettings | None = None):
        self.model, self.settings = model.eval(), settings or UpscaleSettings()

    @classmethod
    def from_folder(cls, name_or_path, device: str = "cpu") -> "Upscaler | None":
        """The folder's upsampler, or None when it has none (older folders: native size)."""
        part = folder.load_upsampler(folder.resolve(name_or_path), device)
        if part is None:
            return None
        model, sampling = part
        return cls(model, UpscaleSettings(**sampling))

    def plan(self, factor: int) -> list[int]:
        """The trained factors, largest first, whose product is `factor`."""
        stages, left = [], factor
        for f in sorted(self.model.cfg.factors, reverse=True):
            while left % f == 0 and left > 1:
                stages.append(f)
                left //= f
        if left != 1:
            raise ValueError(f"this upsampler is trained for {self.model.cfg.factors}: it cannot make {factor}x")
        return stages

    def tile_size(self) -> int:
        """Tile side (output pixels): what a quarter of the available memory holds, at most 1024, at least 128."""
        if self.settings.tile:
            return self.settings.tile
        cfg = self.model.cfg
        bytes_per_pixel = 4 * (12 * cfg.width / cfg.shuffle**2 + 30)  # live activations + inputs, measured roughly
        side = int((min(available_memory() // 4, 1 << 30) / bytes_per_pixel) ** 0.5)
        return max(128, min(1024, side // 64 * 64))

    def __call__(self, img: Image.Image, factor: int, seed: int = 0, show: bool = False) -> Image.Image:
        """`img` enlarged `factor` times (a power of 2 the trained factors make), in its own mode (RGB, RGBA, L, LA)."""
        check_request(img.width, img.height, factor, (factor,))
        stages = self.plan(factor)
        alpha = img.getchannel("A") if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else None
        grey = img.mode in ("L", "LA", "1", "I", "I;16", "F")
        rgb = np.asarray(img.convert("RGB"))
        for i, f in enumerate(stages):
            rgb = self.stage(rgb, f, seed + 7919 * i, show)
        out = Image.fromarray(rgb)
        if grey:
            out = out.convert("L")
        if alpha is not None:
            out = out.convert("LA" if grey else "RGBA")
            out.putalpha(alpha.resize(out.size, Image.LANCZOS))
        return out

    @torch.no_grad()
    def stage(self, low_rgb: np.ndarray, factor: int, seed: int, show: bool = False) -> np.ndarray:
        """(h, w, 3) uint8 -> (f h, f w, 3) uint8: one flow sample over tiles."""
        s, m = self.settings, self.model.multiple
        h, w = low_rgb.shape[:2]
        # pad (edge pixels repeated) so the output is whole blocks of the model's space-to-depth; cropped after
        step = max(1, m // factor)
        ph, pw = -h % step, -w % step
        low = torch.from_numpy(np.pad(low_rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")).permute(2, 0, 1)[None]
        low = low.float() / 127.5 - 1
        lh, lw = low.shape[-2:]
        H, W = lh * factor, lw * factor
        key = int(digest("upscale", seed, h, w, factor), 16)
        level = torch.tensor([s.noise_level])
        low_aug = augment(low, level, noise_field(key, 1, 3, 0, 0, lh, lw)[None])
        factors = torch.tensor([float(factor)])
        margin = 2  # low pixels the bicubic kernel reads beyond a window

        def v_tile(x, t, window):
            y0, y1, x0, x1 = window
            ly0, lx0 = max(0, y0 // factor - margin), max(0, x0 // factor - margin)
            ly1, lx1 = min(lh, -(-y1 // factor) + margin), min(lw, -(-x1 // factor) + margin)
            up = enlarge(low_aug[..., ly0:ly1, lx0:lx1], factor)
            up = up[..., y0 - ly0 * factor : y1 - ly0 * factor, x0 - lx0 * factor : x1 - lx0 * factor]
            return velocity(self.model, x, t.expand(1), up, level, factors)

        tile = self.tile_size()
        dead = self.model.receptive_field
        overlap = -(-(2 * dead + 16) // m) * m  # a 16 px blend beyond the two dead bands
        bar = progress(0, f"upscale {factor}x", unit="tile", enabled=show)
        v = tiled(v_tile, H, W, max(tile, 2 * overlap), overlap, m, dead, on_tile=lambda: bar.update(1))
        bar.total = v.count * s.steps * (2 if s.sampler != "euler" else 1)
        x = noise_field(key, 0, 3, 0, 0, H, W)[None]
        residual = SAMPLERS[s.sampler](v, x, timesteps(s.steps))
        bar.close()
        del x
        out = residual.add_(enlarge(low, factor))[0, :, : h * factor, : w * factor]
        return out.add_(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
