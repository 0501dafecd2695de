"""The autoencoder: diffusers' AutoencoderKL, ours trained on Shapes World or any saved folder.

Latents are normalised with the folder's `shift_factor` and `scaling_factor` (SD3/FLUX convention),
so the denoiser always sees roughly unit-variance inputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class AutoencoderConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # len - 1 halvings: f = 4
    latent_channels: int = 4
    layers_per_block: int = 1

    def to_dict(self):
        return asdict(self)


def build(cfg: AutoencoderConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=min(32, min(cfg.channels)), mid_block_add_attention=False,
        scaling_factor=1.0, shift_factor=0.0,
    )


def load(path: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(path).eval().requires_grad_(False)


def factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_latent(vae, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
    """images in [-1, 1] -> normalised latents."""
    dist = vae.encode(images).latent_dist
    z = dist.sample() if sample else dist.mode()
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def to_image(vae, z: torch.Tensor) -> torch.Tensor:
    z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    return vae.decode(z).sample.clamp(-1, 1)
