"""The autoencoder: diffusers' AutoencoderKL, ours trained on Shapes World or any saved folder.

Latents are normalised with the folder's `shift_factor` and `scaling_factor` (SD3/FLUX convention),
so the denoiser always sees roughly unit-variance inputs.

`autoencoder_kl()` imports diffusers' class by the lightest path: `from diffusers import AutoencoderKL`
runs the `__init__` of diffusers.models.autoencoders, which imports every autoencoder diffusers has
(and through them every UNet and transformer): 1.1 s of CPU on the 2-core dev machine where the
modules AutoencoderKL needs take 0.6 s (both after the text encoder has imported transformers).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import types
from dataclasses import asdict, dataclass, field

import torch

# The packages whose __init__ imports all their siblings; AutoencoderKL needs a few modules from each.
_EAGER_PACKAGES = ("diffusers.models.autoencoders", "diffusers.models.unets", "diffusers.models.transformers")


@dataclass
class AutoencoderConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # len - 1 halvings: f = 4
    latent_channels: int = 4
    layers_per_block: int = 1

    def to_dict(self):
        return asdict(self)


@contextlib.contextmanager
def _bare_packages(names):
    """Stand-ins for `names` in sys.modules while the block runs: empty packages with the real search
    path, so a submodule imports without its package's __init__. Removed afterwards, so a later ordinary
    import runs the real __init__, which finds the submodules already loaded (the same classes)."""
    added = {}
    try:
        for name in names:
            if name not in sys.modules:
                spec = importlib.util.find_spec(name)   # imports the parents (lazy in diffusers), not `name`
                package = types.ModuleType(name)
                package.__path__ = list(spec.submodule_search_locations)
                sys.modules[name] = added[name] = package
        yield
    finally:
        for name, package in added.items():
            if sys.modules.get(name) is package:
                del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if getattr(sys.modules.get(parent), child, None) is package:
                delattr(sys.modules[parent], child)


@functools.cache
def autoencoder_kl() -> type:
    """diffusers' AutoencoderKL class, without importing the rest of diffusers' models where it can."""
    if "diffusers.models.autoencoders" not in sys.modules:   # else diffusers' models are imported already
        try:
            with _bare_packages(_EAGER_PACKAGES):
                from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
            return AutoencoderKL
        except (ImportError, AttributeError):   # a diffusers laid out otherwise: the ordinary import below
            pass
    from diffusers import AutoencoderKL

    return AutoencoderKL


def build(cfg: AutoencoderConfig):
    n = len(cfg.channels)
    return autoencoder_kl()(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=min(32, min(cfg.channels)), mid_block_add_attention=False,
        scaling_factor=1.0, shift_factor=0.0,
    )


def load(path: str):
    return autoencoder_kl().from_pretrained(path).eval().requires_grad_(False)


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
