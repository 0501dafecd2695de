"""`kind: planner`: the layout planner (models/planner.py), trained on captioned scenes with boxes.

Each step draws scenes and, per scene, one caption from one of several captioners (weights in the config);
the target is the scene's every object with its box. Text states come from the same frozen encoder as the
denoiser's, computed once and cached. The planner is exported into a copy of the model folder it plans for
(`attach_to`), so the folder then holds text encoder, planner, denoiser and autoencoder: the whole default
path of `limner generate`, learned end to end.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..models import folder
from ..models.planner import Planner, PlannerConfig, layout_loss
from ..world import captioners as CAP
from ..world.layout import of_scene, phrase
from ..world.scene import COLOURS, SHAPES, SIZES, sample_scene
from ..world.suites import held_out_prompts, normalise
from .data import batch_indices, cached_text_blocks
from .loop import LoopConfig, Metrics, Task, train


def world_labels() -> list[str]:
    """Shapes World's object vocabulary: every size, colour and shape, as layouts name them."""
    return [phrase(z, c, s) for c in COLOURS for s in SHAPES for z in SIZES]


@dataclass
class PlannerData:
    scenes: int = 12000
    seed: int = 1  # not the denoiser's data seed: other scenes
    # how often each captioner's caption is picked (every captioner writes one per scene)
    captioners: dict = field(default_factory=lambda: {name: 1.0 for name in CAP.CAPTIONERS})
    cache_dir: str | None = None  # cached text states; None: <limner cache>/train
    cache_block: int = 5000       # scenes per text-cache block: more scenes re-encode only the new blocks
    # A curriculum: the first `easy_steps` draw only scenes of at most `easy_max_objects` objects, captioned by
    # `easy_captioners` (those that say where things are). Trained on the full mixture from step 0, the planner
    # learns counts and labels but not places: matching each object to the words that place it is found only
    # on simple scenes (measured: the share of a place's probability in the right third of the canvas rises from
    # chance to ~0.8 within 600 easy steps, and is still at chance for y after 1,200 mixed ones).
    easy_steps: int = 600
    easy_max_objects: int = 2
    easy_captioners: list[str] = field(default_factory=lambda: ["scene_walk", "british_detailed", "inventory",
                                                                "relational", "templates"])

    def __post_init__(self):
        unknown = [n for n in [*self.captioners, *self.easy_captioners] if n not in CAP.CAPTIONERS]
        if unknown:
            raise ValueError(f"data.captioners: unknown {unknown}; known: {', '.join(CAP.CAPTIONERS)}")
        if self.easy_steps and not set(self.easy_captioners) & set(self.captioners):
            raise ValueError("data.easy_captioners: none of them is in data.captioners; name one or set easy_steps: 0")


@dataclass
class PlannerTrainConfig(LoopConfig):
    kind: str = "planner"
    data: PlannerData = field(default_factory=PlannerData)
    model: PlannerConfig = field(default_factory=PlannerConfig)  # labels: empty means Shapes World's
    text_encoder: str = "minilm"
    attach_to: str = "shapes-default"  # the model folder (or shipped name) this planner plans for
    coarse: list[int] = field(default_factory=lambda: [2, 4, 8])  # coarser resolutions each place is also scored at
    steps: int = 3000
    batch_size: int = 128
    lr: float = 5e-4
    warmup: int = 100
    ema: float = 0.995
    ckpt_every: int = 250
    log_every: int = 25

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "planner":
            raise ValueError(f"kind is {self.kind!r} in a planner config")


Config = PlannerTrainConfig


def scenes_and_captions(cfg: PlannerData) -> tuple[list, list[dict[str, str]]]:
    """`cfg.scenes` scenes, one caption from each captioner per scene, none equal to a held-out suite prompt."""
    rng = random.Random(cfg.seed)
    held = held_out_prompts()
    scenes, captions = [], []
    names = list(cfg.captioners)
    for _ in range(cfg.scenes):
        scene = sample_scene(rng)
        caps = {k: v for k, v in CAP.caption(scene, rng, names).items() if normalise(v) not in held}
        scenes.append(scene)
        captions.append(caps)
    return scenes, captions


class PlannerTask(Task):
    def __init__(self, cfg: PlannerTrainConfig, device, show: bool):
        from ..text.encoder import TextEncoder

        self.cfg, self.device = cfg, device
        labels = cfg.model.labels or world_labels()
        self.model = Planner(PlannerConfig(**{**cfg.model.to_dict(), "labels": labels})).to(device)
        self.scenes, self.captions = scenes_and_captions(cfg.data)
        self.tokens = torch.tensor([self.model.tokens_of(of_scene(s.objects)) for s in self.scenes])
        encoder = TextEncoder(cfg.text_encoder)
        if encoder.dim != cfg.model.text_dim:
            raise ValueError(f"model.text_dim {cfg.model.text_dim} != text encoder width {encoder.dim}")
        step = cfg.data.cache_block
        blocks = [[c for caps in self.captions[i : i + step] for c in caps.values()] for i in range(0, len(self.captions), step)]
        self.text = cached_text_blocks(encoder, blocks, cfg.data.cache_dir, show=show)

    def describe(self) -> str:
        return f"{len(self.scenes)} scenes x {len(self.cfg.data.captioners)} captioners"

    @functools.cached_property
    def simple_scenes(self) -> np.ndarray:
        """Curriculum draw weights: 1 for a scene of at most `easy_max_objects` objects, else 0 (once, not per step)."""
        return np.array([len(s.objects) <= self.cfg.data.easy_max_objects for s in self.scenes], np.float64)

    def batch(self, step, rank, world):
        from ..text.encoder import pad

        data = self.cfg.data
        easy = step < data.easy_steps
        idx = batch_indices(len(self.scenes), step, self.cfg.batch_size, self.cfg.seed, rank, world,
                            self.simple_scenes if easy else None)
        rng = np.random.default_rng([self.cfg.seed, step, 13])
        flat, offsets, index = self.text
        states = []
        for i in idx:
            caps = self.captions[i]
            kinds = [k for k in caps if not easy or k in data.easy_captioners] or list(caps)
            w = np.array([data.captioners[k] for k in kinds], np.float64)
            c = caps[kinds[rng.choice(len(kinds), p=w / w.sum())]]
            states.append(flat[offsets[index[c]] : offsets[index[c] + 1]].float())
        x, mask = pad(states)
        return self.tokens[idx], x, mask

    def loss(self, net, batch, gen, world):
        tokens, states, mask = (t.to(self.device) for t in batch)
        return layout_loss(net(tokens[:, :-1], states, mask), tokens, tuple(self.cfg.coarse))

    def finish(self, ema, metrics: Metrics):
        export(self.cfg, ema, Path(self.cfg.out_dir) / "model")


def export(cfg: PlannerTrainConfig, planner: Planner, to: Path) -> Path:
    """The model folder `attach_to`, copied, with this planner added."""
    return folder.save_planner(folder.resolve(cfg.attach_to), planner, to)


def run(cfg: PlannerTrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    return train(cfg, PlannerTask, resume, quiet)
