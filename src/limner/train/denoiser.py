"""`kind: denoiser`: the diffusion transformer, trained with the rectified-flow loss in a trained
autoencoder's latent space, conditioned on a frozen text encoder's token states.

Latents and text states are computed once and cached by content (see data.py). Each step draws one caption
per image (by kind weight), drops some to "" so classifier-free guidance works, and, for grounding models,
adds the image's layout (dropped for `layout_dropout` of the images, so the text-only path keeps learning).
Every `sample_every` steps the EMA model is exported and sampled (a grid of fixed prompts, plus the Shapes
World suites when the data is Shapes World).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.files import digest
from ..diffusion import flow
from ..models import autoencoder as AE
from ..models import folder
from ..models.dit import DiT, DiTConfig
from .data import (DataConfig, batch_indices, cached_latents, cached_text, layout_of, pick_captions,
                   training_records, unweighted_kinds)
from .loop import LoopConfig, Metrics, Task, train

log = logging.getLogger("limner.train")
GRID_PROMPTS = ["three red circles and a blue square", "a yellow triangle to the left of two green circles",
                "eight purple squares", "one large orange circle"]


@dataclass
class DenoiserTrainConfig(LoopConfig):
    kind: str = "denoiser"
    data: DataConfig = field(default_factory=DataConfig)
    model: DiTConfig = field(default_factory=DiTConfig)
    autoencoder: str | None = None  # an exported autoencoder's folder, or a model folder / shipped name (its autoencoder/)
    # start from this model's weights (a shipped name or an exported folder); with train_new_only, only the
    # parameters it lacks train (an adapter such as `model.grounding`), the rest stay frozen
    init: str | None = None
    train_new_only: bool = False
    text_encoder: str = "minilm"
    cond_dropout: float = 0.1  # share of captions replaced by "" so classifier-free guidance works
    # grounding models: share of images trained without their layout, so the text-only path (prompts that
    # place nothing) keeps learning alongside the layout adapter
    layout_dropout: float = 0.0
    sample_every: int = 1000  # export the EMA model, save a sample grid (PNG) and Shapes World scores
    eval_per_cell: int = 4
    sample_steps: int = 20  # the exported model's default sampling steps...
    guidance: float = 3.0  # ...and guidance

    def __post_init__(self):
        super().__post_init__()
        if self.train_new_only and not self.init:
            raise ValueError("train_new_only needs `init:` (the model whose weights stay frozen)")
        if not 0 <= self.layout_dropout < 1:
            raise ValueError(f"layout_dropout must be in [0, 1), not {self.layout_dropout}")


Config = DenoiserTrainConfig


class DenoiserTask(Task):
    def __init__(self, cfg: DenoiserTrainConfig, device, show: bool):
        self.cfg, self.device, self.show = cfg, device, show
        self.records, self.weights = training_records(cfg.data)
        if missing := unweighted_kinds(self.records, cfg.data.caption_weights):
            kinds = sorted({k for r in self.records for k in r.captions})
            log.warning(f"data.caption_weights: no image has a caption of kind {missing}, so their weight goes to "
                        f"the kinds it has ({kinds}); check the spelling or the data's captioners")
        self.vae = AE.load(str(folder.autoencoder_folder(cfg.autoencoder))).to(device)
        dcfg, res = cfg.model, cfg.data.resolution
        if res // AE.factor(self.vae) != dcfg.latent_size or self.vae.config.latent_channels != dcfg.in_channels:
            raise ValueError(f"model.latent_size {dcfg.latent_size} / in_channels {dcfg.in_channels} do not match "
                             f"{res}px through the autoencoder ({res // AE.factor(self.vae)}px, "
                             f"{self.vae.config.latent_channels} ch)")
        from ..text.encoder import TextEncoder

        encoder = TextEncoder(cfg.text_encoder)
        if dcfg.text_dim != encoder.dim:
            raise ValueError(f"model.text_dim {dcfg.text_dim} != text encoder width {encoder.dim}")
        vae_id = digest(*[v.numpy().tobytes() for v in list(self.vae.state_dict().values())[:4]])
        self.latents = cached_latents(self.vae, vae_id, self.records, res, cfg.data.cache_dir, show=show)
        captions = [c for r in self.records for c in r.captions.values()] + [""]
        self.text = cached_text(encoder, captions, cfg.data.cache_dir, show=show)
        self.ground = None
        layouts = [layout_of(r) for r in self.records] if dcfg.grounding else []
        if dcfg.grounding and not any(layouts):  # nothing would train the adapter (and DDP refuses unused weights)
            log.warning("model.grounding: no image in this data has a layout (object boxes), so the model is "
                        "trained and exported without the layout adapter")
            dcfg = dataclasses.replace(dcfg, grounding=False)
        if dcfg.grounding:  # every record's layout, and the few phrases of a world's objects, embedded once
            from ..models.grounding import PhraseEmbedder

            embed = PhraseEmbedder(encoder)
            for p in {p for lay in layouts if lay for p, _ in lay}:
                embed(p)
            self.ground = layouts, embed
        del encoder
        self.model = DiT(dcfg).to(device)
        if cfg.init:
            start_from(self.model, cfg.init, cfg.train_new_only, show)

    def describe(self) -> str:
        return f"{len(self.records)} images"

    def batch(self, step, rank, world):
        idx = batch_indices(len(self.records), step, self.cfg.batch_size, self.cfg.seed, rank, world, self.weights)
        return batch(self.cfg, self.records, self.latents, self.text, idx, step, self.ground)

    def loss(self, net, batch, gen, world):
        x0, states, mask, ground = batch
        ground = None if ground is None else tuple(g.to(self.device) for g in ground)
        d = self.device
        return flow_loss(net, x0.to(d), states.to(d), mask.to(d), gen, split=world == 1, ground=ground)

    def after_step(self, ema, step: int, metrics: Metrics):
        if step % self.cfg.sample_every == 0 or step == self.cfg.steps:
            out = Path(self.cfg.out_dir)
            export(self.cfg, ema, self.vae, out / "model")
            evaluate(self.cfg, out, step, metrics)


def batch(cfg: DenoiserTrainConfig, records, latents, text, idx, step, ground=None):
    """Latents, padded caption states and mask, and (grounding models, given `ground`: every record's layout
    and the phrase embedder) the batch's layout tensors."""
    from ..text.encoder import pad

    flat, offsets, index = text
    rng = np.random.default_rng([cfg.seed, step, 11])
    caps = pick_captions(records, idx, cfg.data.caption_weights, rng)
    caps = ["" if rng.random() < cfg.cond_dropout else c for c in caps]
    states = [flat[offsets[index[c]] : offsets[index[c] + 1]].float() for c in caps]
    x, mask = pad(states)
    if ground is not None:
        from ..models.grounding import tensors as layout_tensors

        layouts, embed = ground
        ground = layout_tensors([None if rng.random() < cfg.layout_dropout else layouts[i] for i in idx], embed)
    return latents[idx].float(), x, mask, ground


def flow_loss(net, x0, states, mask, gen, split: bool = True, short: int = 48, ground=None):
    """The batch's flow loss, with short and long captions run as two sub-batches, each padded only to its
    own longest caption: one 150-token detailed caption would otherwise pad all 31 short ones (~15 tokens)
    and double the cost of the text layers. Same mean loss, same gradient. Not under DDP/FSDP, where every
    rank must run the same number of forward passes."""
    lengths = mask.sum(1)
    long = lengths > short
    if not split or long.all() or not long.any():
        return flow.loss(net, x0, states, mask, generator=gen, ground=ground)
    total = 0.0
    for g in (~long, long):
        n = int(lengths[g].max())
        part = None if ground is None else tuple(x[g] for x in ground)
        total = total + flow.loss(net, x0[g], states[g, :n], mask[g, :n], generator=gen, ground=part) * (g.sum() / len(g))
    return total


def start_from(model, init: str, new_only: bool, show: bool):
    """Load `init`'s denoiser weights; parameters it lacks keep their fresh initialisation. With `new_only`
    those are the only ones that train."""
    sd = folder.denoiser_weights(folder.resolve(init))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected:
        raise ValueError(f"init {init!r} has weights this model does not ({', '.join(unexpected[:4])}...): "
                         f"model: must describe the same architecture, plus any new parts")
    if new_only and not missing:
        raise ValueError(f"init {init!r} already has every weight of this model: train_new_only has nothing to "
                         f"train (init from the model without the new parts)")
    if new_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name in missing)
    if show:
        print(f"started from {init}: {len(sd)} tensors loaded, {len(missing)} new")


def export(cfg: DenoiserTrainConfig, ema, vae, to: Path) -> Path:
    """A self-contained model folder: the EMA denoiser, the autoencoder, the text encoder's name, defaults."""
    meta = {"text_encoder": cfg.text_encoder, "resolution": cfg.data.resolution,
            "world": "shapes" if cfg.data.source == "shapes" else None,
            "defaults": {"steps": cfg.sample_steps, "guidance": cfg.guidance, "sampler": "euler"}}
    return folder.save(to, ema, vae, meta)


def evaluate(cfg: DenoiserTrainConfig, out: Path, step: int, metrics: Metrics | None):
    """Sample grid of fixed prompts, plus Shapes World suite scores, from the exported EMA model loaded as a
    user loads it (with the hooks its metadata names), with the guard off to measure the model alone."""
    from ..pipeline import Pipeline, grid
    from ..safety.guard import SafetyConfig

    pipe = Pipeline.from_pretrained(str(out / "model"), safety=SafetyConfig.off())
    grid(pipe(GRID_PROMPTS, seed=0, size=pipe.resolution), cols=4).save(out / f"samples-{step:07d}.png")
    if cfg.data.source == "shapes" and cfg.eval_per_cell:
        from ..world.evaluate import run_suites

        summary = run_suites(pipe, per_cell=cfg.eval_per_cell)
        print(f"\nstep {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)
        if metrics:
            metrics.write({"step": step, "eval": summary})


def run(cfg: DenoiserTrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    if not cfg.autoencoder:  # checked when training starts, not in the config, so that its defaults construct
        raise ValueError("a denoiser needs `autoencoder:` (the folder a trained autoencoder was exported to, "
                         "e.g. runs/autoencoder-tiny/model after `limner train configs/autoencoder-tiny.yaml`)")
    return train(cfg, DenoiserTask, resume, quiet)
