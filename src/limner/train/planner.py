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
    # captions written per scene, by captioners drawn by weight (None: one by every captioner). Text states are
    # the cost, not scenes: 7 captions of 10,000 scenes let the planner learn those scenes' exact boxes (a
    # relations-only run fell to a training loss of 0.002 and validation fell with it); one caption of 70,000
    # scenes costs the same to encode and shows 7 times as many arrangements.
    captions_per_scene: int | None = None
    # the order a layout lists its objects in: "placed" (each object where the caption places it, else where its
    # group is first named: the order the caption walks through them), "mention" (groups where the caption first
    # names them, as LLM layout planners list objects, and a group's objects in the order the caption places
    # them), "group" (groups so, a
    # group's objects by size and x: the first shipped mention-order planner) or "label" (vocabulary order, as
    # planners before did: relations stayed at chance)
    order: str = "mention"
    # a language model that rewrites one caption per scene into a "paraphrase" caption, weighed like a captioner:
    # {base_url, model, api_key_env} or {path}, plus n, weight, ... (data/paraphrase.py: ParaphraserConfig)
    paraphraser: dict | None = None

    def __post_init__(self):
        from ..data.paraphrase import KIND, kind_weight

        self.captioners = kind_weight(self.paraphraser, self.captioners, "data.captioners")
        unknown = [n for n in [*self.captioners, *self.easy_captioners] if n not in CAP.CAPTIONERS and n != KIND]
        if unknown:
            raise ValueError(f"data.captioners: unknown {unknown}; known: {', '.join(CAP.CAPTIONERS)}")
        if self.order not in ("placed", "mention", "group", "label"):
            raise ValueError(f"data.order is {self.order!r}; use placed, mention, group or label")
        if self.captions_per_scene is not None and self.captions_per_scene < 1:
            raise ValueError(f"data.captions_per_scene is {self.captions_per_scene}; give 1 or more, or leave it out "
                             "for one caption by every captioner")
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
    init: str | None = None  # a model folder whose planner (same architecture) this run starts from: a second stage
    steps: int = 3000
    batch_size: int = 128
    lr: float = 5e-4
    warmup: int = 100
    ema: float = 0.995
    ckpt_every: int = 250
    log_every: int = 25


Config = PlannerTrainConfig


def weighted_sample(names: list[str], weights: dict, k: int, rng: random.Random) -> list[str]:
    """`k` distinct names, each drawn with probability proportional to its weight among those left."""
    left, out = list(names), []
    for _ in range(min(k, len(left))):
        out.append(left.pop(rng.choices(range(len(left)), [weights[n] for n in left])[0]))
    return out


def scenes_and_captions(cfg: PlannerData) -> tuple[list, list[dict[str, str]]]:
    """`cfg.scenes` scenes, one caption from each captioner per scene (or `captions_per_scene`, by weight; and, with
    `cfg.paraphraser`, a "paraphrase" of one of them), none equal to a held-out suite prompt (a scene can be left
    with none)."""
    from ..data.paraphrase import KIND, add_paraphrases
    from .data import cache_folder

    rng = random.Random(cfg.seed)
    held = held_out_prompts()
    scenes, captions = [], []
    names = [n for n in cfg.captioners if n != KIND]
    for _ in range(cfg.scenes):
        scene = sample_scene(rng)
        picked = names if cfg.captions_per_scene is None else weighted_sample(names, cfg.captioners, cfg.captions_per_scene, rng)
        caps = {k: v for k, v in CAP.caption(scene, rng, picked).items() if normalise(v) not in held}
        scenes.append(scene)
        captions.append(caps)
    if cfg.paraphraser is not None:   # after the scenes, from generators of its own: they stay those of no paraphraser
        add_paraphrases(captions, cfg.paraphraser, cfg.seed, cache_folder(cfg.cache_dir) / "paraphrase",
                        allowed=lambda text: normalise(text) not in held)
    return scenes, captions


def with_captions(scenes: list, captions: list[dict[str, str]]) -> tuple[list, list[dict[str, str]]]:
    """The scenes left with a caption: one whose only captions were held-out prompts trains nothing."""
    kept = [i for i, caps in enumerate(captions) if caps]
    return [scenes[i] for i in kept], [captions[i] for i in kept]


def start_weights(init: str, cfg: PlannerConfig) -> dict:
    """The planner weights of model folder `init`, checked to be of the architecture `cfg` describes."""
    path = folder.resolve(init)
    old = folder.load_planner(path, folder.read_meta(path))
    if old is None:
        raise ValueError(f"init {init!r} has no planner to start from; train one first (kind: planner, no init)")
    if old.cfg != cfg:
        diff = {k: (v, getattr(cfg, k)) for k, v in old.cfg.__dict__.items() if getattr(cfg, k) != v}
        raise ValueError(f"init {init!r}'s planner is not the one `model:` describes: {diff} (theirs, ours)")
    return old.state_dict()


class PlannerTask(Task):
    def __init__(self, cfg: PlannerTrainConfig, device, show: bool):
        from ..text.encoder import TextEncoder

        self.cfg, self.device = cfg, device
        labels = cfg.model.labels or world_labels()
        self.model = Planner(PlannerConfig(**{**cfg.model.to_dict(), "labels": labels})).to(device)
        if cfg.init:
            self.model.load_state_dict(start_weights(cfg.init, self.model.cfg))
        self.scenes, self.captions = scenes_and_captions(cfg.data)
        encoder = TextEncoder(cfg.text_encoder)
        if encoder.dim != cfg.model.text_dim:
            raise ValueError(f"model.text_dim {cfg.model.text_dim} != text encoder width {encoder.dim}")
        step = cfg.data.cache_block
        blocks = [[c for caps in self.captions[i : i + step] for c in caps.values()] for i in range(0, len(self.captions), step)]
        self.text = cached_text_blocks(encoder, blocks, cfg.data.cache_dir, show=show)
        # dropped after the cache blocks are made, so that they stay those of the scenes drawn
        self.scenes, self.captions = with_captions(self.scenes, self.captions)
        self.tokens = [{kind: self.layout_tokens(scene, text) for kind, text in caps.items()}
                       for scene, caps in zip(self.scenes, self.captions)]

    def layout_tokens(self, scene, caption: str) -> torch.Tensor:
        """The scene's layout as the target for this caption, its objects in `data.order`."""
        first = None
        if self.cfg.data.order in ("mention", "placed"):
            first = CAP.object_order(caption, scene, by_place=self.cfg.data.order == "placed")
        elif self.cfg.data.order == "group":
            at = CAP.mention_order(caption, scene)
            first = [at.get((o.colour, o.shape), float("inf")) for o in scene.objects]
        return torch.tensor(self.model.tokens_of(of_scene(scene.objects), first))

    def describe(self) -> str:
        return f"{len(self.scenes)} scenes x {len(self.cfg.data.captioners)} captioners"

    @functools.cached_property
    def simple_scenes(self) -> np.ndarray:
        """Curriculum draw weights: 1 for a scene of at most `easy_max_objects` objects with a caption by one of
        `easy_captioners`, else 0 (computed once, not per step)."""
        easy = set(self.cfg.data.easy_captioners)
        return np.array([len(s.objects) <= self.cfg.data.easy_max_objects and bool(easy & set(caps))
                         for s, caps in zip(self.scenes, self.captions)], np.float64)

    def batch(self, step, rank, world):
        from ..text.encoder import pad

        data = self.cfg.data
        easy = step < data.easy_steps
        idx = batch_indices(len(self.scenes), step, self.cfg.batch_size, self.cfg.seed, rank, world,
                            self.simple_scenes if easy else None)
        rng = np.random.default_rng([self.cfg.seed, step, 13])
        flat, offsets, index = self.text
        states, tokens = [], []
        for i in idx:
            caps = self.captions[i]
            kinds = [k for k in caps if not easy or k in data.easy_captioners] or list(caps)
            w = np.array([data.captioners[k] for k in kinds], np.float64)
            kind = kinds[rng.choice(len(kinds), p=w / w.sum())]
            states.append(flat[offsets[index[caps[kind]]] : offsets[index[caps[kind]] + 1]].float())
            tokens.append(self.tokens[i][kind])
        x, mask = pad(states)
        return torch.stack(tokens), x, mask

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
