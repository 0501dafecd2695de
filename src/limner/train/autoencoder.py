"""`kind: autoencoder`: the image autoencoder (diffusers' AutoencoderKL) the denoiser works in.

Trains on random crops (cheaper than whole images), then, for the last `full_res_steps`, on whole images
(GroupNorm statistics differ on them). The loss is L1 + L2 reconstruction, with extra weight on pixels unlike
the background, plus a small KL term. The exported folder carries the latents' shift and scale, measured on
the data, so the denoiser sees roughly unit-variance latents.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.files import atomic_dir
from ..models import autoencoder as AE
from ..models.autoencoder import AutoencoderConfig
from .data import DataConfig, batch_indices, image_of, to_tensor, training_records
from .loop import LoopConfig, Metrics, Task, train


@dataclass
class AutoencoderTrainConfig(LoopConfig):
    kind: str = "autoencoder"
    data: DataConfig = field(default_factory=DataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    crop: int = 32  # random crop side, cheaper than whole images...
    full_res_steps: int = 0  # ...but GroupNorm statistics differ on whole images: end on them for this many steps
    full_res_batch: int = 24
    kl_weight: float = 1e-6
    object_weight: float = 0.0  # extra loss weight on pixels unlike the background (small objects)


Config = AutoencoderTrainConfig


class AutoencoderTask(Task):
    def __init__(self, cfg: AutoencoderTrainConfig, device, show: bool):
        self.cfg, self.device, self.show = cfg, device, show
        self.records, self.weights = training_records(cfg.data)
        self.model = AE.build(cfg.model).to(device)

    def describe(self) -> str:
        return f"{len(self.records)} images"

    def batch(self, step, rank, world):
        idx = batch_indices(len(self.records), step, self.cfg.batch_size, self.cfg.seed, rank, world, self.weights)
        return crops(self.cfg, self.records, idx, step)

    def loss(self, net, batch, gen, world):
        return reconstruction_loss(net, batch.to(self.device), self.cfg, gen)

    def finish(self, ema, metrics: Metrics):
        export(self.cfg, ema, self.records, Path(self.cfg.out_dir) / "model", self.show)


def crops(cfg: AutoencoderTrainConfig, records, idx, step) -> torch.Tensor:
    """Random crops of the batch's images (whole images, fewer of them, in the last full_res_steps)."""
    rng = np.random.default_rng([cfg.seed, step, 7])
    res, c = cfg.data.resolution, min(cfg.crop, cfg.data.resolution)
    if step >= cfg.steps - cfg.full_res_steps:
        c, idx = res, idx[: cfg.full_res_batch]
    out = []
    for i in idx:
        x = to_tensor(image_of(records[i], res))
        top, left = rng.integers(0, res - c + 1, 2)
        out.append(x[:, top : top + c, left : left + c])
    return torch.stack(out)


def reconstruction_loss(vae, x, cfg: AutoencoderTrainConfig, gen) -> torch.Tensor:
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    rec = vae.decode(z).sample
    kl = 0.5 * (post.mean**2 + post.var - 1 - post.logvar).mean()
    # objects cover a few percent of the pixels; without extra weight their colours come out wrong
    bg = x.flatten(2).median(dim=2).values[..., None, None]
    w = 1 + cfg.object_weight * ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
    err = rec - x
    return (w * (err.abs() + err**2)).sum() / (w.sum() * 3) + cfg.kl_weight * kl


@torch.no_grad()
def export(cfg: AutoencoderTrainConfig, vae, records, folder: Path, show: bool = True):
    """Save the EMA autoencoder as a diffusers folder with latent shift and scale measured on data."""
    rng = np.random.default_rng(cfg.seed)
    idx = rng.choice(len(records), size=min(512, len(records)), replace=False)
    x = torch.stack([to_tensor(image_of(records[i], cfg.data.resolution)) for i in idx])
    z = vae.encode(x).latent_dist.mode()
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))
    with atomic_dir(folder) as tmp:
        vae.save_pretrained(tmp)
    if show:
        rec = AE.to_image(vae, AE.to_latent(vae, x[:64]))
        err = (rec - x[:64]).abs().mean().item() * 127.5
        print(f"autoencoder exported to {folder}: mean abs error {err:.2f}/255 on {len(rec)} images")


def run(cfg: AutoencoderTrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    return train(cfg, AutoencoderTask, resume, quiet)
