"""`kind: upsampler`: the super-resolution stage (models/upsampler.py), trained on random crops of
(low, high) image pairs and exported into a copy of the model folder it enlarges for (`attach_to`).

Pairs come free from Shapes World, which renders any scene exactly at any resolution: a pool of scenes is
rendered once at each of `data.resolutions` (and at that side / factor for the low image), and every step
takes aligned crops from it, most of them centred on an object's edge, where the enlargement has work to do.
`data.source: folder` trains on a folder of the user's own high-resolution images instead: random crops,
each made smaller with an antialiased bicubic for its low image. One factor per step (all of the model's
factors in turn); the augmentation level is drawn per sample (models/upsampler.py: `loss`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models import folder
from ..models import upsampler as UP
from ..models.upsampler import Upsampler, UpsamplerConfig
from ..pipeline.upscale import UpscaleSettings
from ..world.scene import SIZES, TRI_H, render, sample_scene
from .data import IMAGE_EXTS, to_tensor
from .loop import LoopConfig, Metrics, Task, train


@dataclass
class UpsamplerData:
    source: str = "shapes"        # "shapes" (exact renders) or "folder" (the user's own high-resolution images)
    path: str | None = None       # folder: where the images are (jpg, png, webp; searched recursively)
    scenes: int = 64              # shapes: scenes rendered at each resolution
    seed: int = 3                 # not the denoiser's data seed: other scenes
    resolutions: list[int] = field(default_factory=lambda: [128, 256, 512, 1024])  # shapes: high image sides
    crop: int = 64                # high-resolution crop side
    object_crops: float = 0.75    # shapes: share of crops centred on an object's edge (the rest anywhere)
    min_scale: float = 0.5        # folder: images are also made smaller, down to this, before cropping

    def __post_init__(self):
        if self.source not in ("shapes", "folder"):
            raise ValueError(f"data.source must be shapes or folder, not {self.source!r}")
        if self.source == "folder" and not self.path:
            raise ValueError("data.source is folder but data.path (a folder of high-resolution images) is not set")
        if self.crop % 16:
            raise ValueError(f"data.crop must be a multiple of 16, not {self.crop}")
        if any(r < self.crop for r in self.resolutions):
            raise ValueError(f"data.resolutions {self.resolutions}: each must be at least data.crop ({self.crop})")


@dataclass
class UpsamplerTrainConfig(LoopConfig):
    kind: str = "upsampler"
    data: UpsamplerData = field(default_factory=UpsamplerData)
    model: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    # each sample's low image is mixed with noise at a level drawn uniformly in [0, max_noise_level]
    max_noise_level: float = 0.5
    # how the exported model samples (its `output`: the side the pipeline's cascade makes of the base images)
    sampling: UpscaleSettings = field(default_factory=UpscaleSettings)
    attach_to: str = "shapes-default"  # the model folder (or shipped name) whose images it enlarges
    steps: int = 2000
    batch_size: int = 32
    ema: float = 0.995

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.max_noise_level < 1:
            raise ValueError(f"max_noise_level must be in [0, 1), not {self.max_noise_level}")


Config = UpsamplerTrainConfig


def edge_centre(scene, resolution: int, rng: np.random.Generator) -> tuple[float, float]:
    """A point (pixels) on or near a random object's outline: where a crop has edges to learn."""
    o = scene.objects[rng.integers(len(scene.objects))]
    w = SIZES[o.size]
    h = w * TRI_H if o.shape == "triangle" else w
    angle = rng.uniform(0, 2 * np.pi)
    return (o.x + 0.5 * w * np.cos(angle)) * resolution, (o.y + 0.5 * h * np.sin(angle)) * resolution


class ShapesPairs:
    """Every scene of the pool rendered at each high resolution and at that side / factor."""

    def __init__(self, cfg: UpsamplerData, factors: list[int], show: bool):
        rng = random.Random(cfg.seed)
        self.cfg, self.pool = cfg, []  # (scene, {side: uint8 array})
        for res in cfg.resolutions:
            for _ in range(cfg.scenes):
                scene = sample_scene(rng)
                sides = {res} | {res // f for f in factors}
                self.pool.append((scene, res, {s: np.asarray(render(scene, s)) for s in sides}))
        if show:
            print(f"rendered {len(self.pool)} scenes at {cfg.resolutions} px and their low images", flush=True)

    def __len__(self):
        return len(self.pool)

    def crop(self, i: int, factor: int, rng: np.random.Generator):
        scene, res, images = self.pool[i]
        c = self.cfg.crop
        if rng.random() < self.cfg.object_crops:
            cx, cy = np.array(edge_centre(scene, res, rng)) + rng.normal(0, c / 8, 2)
        else:
            cx, cy = rng.uniform(0, res, 2)
        # aligned on the factor, so the low crop is exactly the high crop's area
        top = int(np.clip(cy - c / 2, 0, res - c)) // factor * factor
        left = int(np.clip(cx - c / 2, 0, res - c)) // factor * factor
        low = images[res // factor][top // factor : (top + c) // factor, left // factor : (left + c) // factor]
        return low, images[res][top : top + c, left : left + c]


class FolderPairs:
    """The user's images, each made smaller by a random scale, then cropped; the low image by an antialiased
    bicubic reduction of the crop."""

    def __init__(self, cfg: UpsamplerData, show: bool):
        root = Path(cfg.path)
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS) if root.is_dir() else []
        if not paths:
            raise FileNotFoundError(f"data.path {root}: no {', '.join(IMAGE_EXTS)} images there")
        self.cfg, self.images = cfg, []
        for p in paths:
            with Image.open(p) as im:
                im = im.convert("RGB")
            if min(im.size) >= cfg.crop:
                self.images.append(im)
        if not self.images:
            raise ValueError(f"data.path {root}: every image is smaller than data.crop ({cfg.crop} px)")
        if show:
            print(f"{len(self.images)} images from {root}", flush=True)

    def __len__(self):
        return len(self.images)

    def crop(self, i: int, factor: int, rng: np.random.Generator):
        im, c = self.images[i], self.cfg.crop
        scale = rng.uniform(max(self.cfg.min_scale, c / min(im.size)), 1.0)
        if scale < 1:
            im = im.resize((max(c, round(im.width * scale)), max(c, round(im.height * scale))), Image.LANCZOS)
        top, left = rng.integers(0, im.height - c + 1), rng.integers(0, im.width - c + 1)
        high = im.crop((left, top, left + c, top + c))
        return np.asarray(high.resize((c // factor, c // factor), Image.BICUBIC)), np.asarray(high)


class UpsamplerTask(Task):
    def __init__(self, cfg: UpsamplerTrainConfig, device, show: bool):
        self.cfg, self.device = cfg, device
        self.model = Upsampler(cfg.model).to(device)
        self.pairs = (ShapesPairs(cfg.data, cfg.model.factors, show) if cfg.data.source == "shapes"
                      else FolderPairs(cfg.data, show))

    def describe(self) -> str:
        return f"{len(self.pairs)} images, factors {self.cfg.model.factors}, crops of {self.cfg.data.crop} px"

    def batch(self, step, rank, world):
        factor = self.cfg.model.factors[step % len(self.cfg.model.factors)]
        rng = np.random.default_rng([self.cfg.seed, step, rank, 17])
        lows, highs = zip(*(self.pairs.crop(int(i), factor, rng)
                            for i in rng.integers(0, len(self.pairs), self.cfg.batch_size)))
        return factor, torch.stack([to_tensor(x) for x in lows]), torch.stack([to_tensor(x) for x in highs])

    def loss(self, net, batch, gen, world):
        factor, low, high = batch
        return UP.loss(net, low.to(self.device), high.to(self.device), factor, self.cfg.max_noise_level, gen)

    def finish(self, ema, metrics: Metrics):
        export(self.cfg, ema, Path(self.cfg.out_dir) / "model")


def export(cfg: UpsamplerTrainConfig, model: Upsampler, to: Path) -> Path:
    """The model folder `attach_to`, copied, with this upsampler and its sampling settings added."""
    return folder.save_upsampler(folder.resolve(cfg.attach_to), model, cfg.sampling.to_dict(), to)


def run(cfg: UpsamplerTrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    return train(cfg, UpsamplerTask, resume, quiet)
