"""`limner train CONFIG.yaml [--resume]`: one loop for the autoencoder and the denoiser.

Single process by default; under `torchrun --nproc-per-node N` the same config trains with DDP (or
FSDP with `distributed: fsdp`). Checkpoints are atomic and hold model, EMA, optimizer and step; the
data order, caption choice, noise and timesteps are functions of (seed, step, rank), so a resumed run
continues exactly where the killed one stopped.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from ..common.config import build
from ..diffusion import flow
from ..models import autoencoder as AE
from ..models.dit import DiT, DiTConfig
from ..world.layout import PhraseEmbedder
from ..world.layout import tensors as layout_tensors
from .data import (DataConfig, atomic_save, batch_indices, cached_latents, cached_text, digest, image_of,
                   load_records, pick_captions, to_tensor)

log = logging.getLogger("limner.train")


@dataclass
class TrainConfig:
    kind: str = "denoiser"  # "autoencoder" or "denoiser"
    out_dir: str = "runs/debug"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=dict)  # DiTConfig or AutoencoderConfig fields
    autoencoder: str | None = None  # denoiser: folder of the trained autoencoder
    # denoiser: start from this model's weights (a shipped name or an exported folder); with train_new_only,
    # only the parameters it lacks train (an adapter such as `model.grounding`), the rest stay frozen
    init: str | None = None
    train_new_only: bool = False
    text_encoder: str = "minilm"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    amp: str = "auto"  # "auto": bf16 on CUDA only (CPUs without bf16 matmul run it ~50x slower); "bf16"; "none"
    cond_dropout: float = 0.1  # share of captions replaced by "" so classifier-free guidance works
    # grounding models: share of images trained without their layout, so the text-only path (prompts that
    # place nothing) keeps learning alongside the layout adapter
    layout_dropout: float = 0.0
    crop: int = 32  # autoencoder: random crop side, cheaper than whole images...
    full_res_steps: int = 0  # ...but GroupNorm statistics differ on whole images: end on them for this many steps
    full_res_batch: int = 24
    kl_weight: float = 1e-6
    object_weight: float = 0.0  # autoencoder: extra loss weight on pixels unlike the background (small objects)
    distributed: str = "ddp"  # "ddp" or "fsdp" under torchrun
    threads: int = 0  # torch threads per process; 0 = leave PyTorch's default
    log_every: int = 50
    ckpt_every: int = 500
    sample_every: int = 1000  # EMA sample grid (PNG) and Shapes World scores
    eval_per_cell: int = 4
    sample_steps: int = 20
    guidance: float = 3.0

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config {path} does not exist (see configs/ for examples)")
        raw = yaml.safe_load(path.read_text()) or {}
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> "TrainConfig":
        if "data" in raw and raw["data"] is None:   # `data:` left empty in YAML: the defaults
            raw = {**raw, "data": {}}
        return build(cls, raw, where)

    def __post_init__(self):
        if self.kind not in ("autoencoder", "denoiser"):
            raise ValueError(f"kind must be 'autoencoder' or 'denoiser', not {self.kind!r}")
        if self.kind == "denoiser" and not self.autoencoder:
            raise ValueError("a denoiser needs `autoencoder:` (the folder a trained autoencoder was exported to)")
        if self.train_new_only and not self.init:
            raise ValueError("train_new_only needs `init:` (the model whose weights stay frozen)")
        if not 0 <= self.layout_dropout < 1:
            raise ValueError(f"layout_dropout must be in [0, 1), not {self.layout_dropout}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


class Progress:
    """One line that rewrites itself on a terminal and logs plainly elsewhere."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True):
        self.total, self.t0, self.start, self.enabled = total, time.time(), start, enabled

    def update(self, step: int, **stats):
        if not self.enabled:
            return
        done = step - self.start
        rate = done / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        bar = "#" * int(30 * step / self.total)
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
        print(f"\r[{bar:<30}] {step}/{self.total} {text} eta {eta / 60:.1f}m", end="", flush=True)
        if step >= self.total:
            print(flush=True)


def setup_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    return rank, world, device


def wrap(model, cfg: TrainConfig, world: int, device):
    if world == 1:
        return model
    if cfg.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        blocks = getattr(model, "blocks", None)
        for b in blocks or []:
            fully_shard(b)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def state_of(model):
    """Full (unsharded) state dict, for DDP, FSDP and plain models alike."""
    if hasattr(model, "module"):
        model = model.module
    sd = model.state_dict()
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu() for k, v in sd.items()}


def load_into(model, sd):
    if hasattr(model, "module"):
        model = model.module
    try:
        from torch.distributed.tensor import DTensor, distribute_tensor

        cur = model.state_dict()
        sd = {k: distribute_tensor(v, cur[k].device_mesh, cur[k].placements) if isinstance(cur[k], DTensor) else v
              for k, v in sd.items()}
    except ImportError:  # pragma: no cover
        pass
    model.load_state_dict(sd)


def autocast(cfg: TrainConfig, device):
    on = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def own_threads(run):
    """Run `run(cfg, ...)` on `cfg.threads` torch threads (0: leave them) and give the caller back its own
    count afterwards: the count is process-wide, and a training run is a library call too."""
    @functools.wraps(run)
    def wrapped(cfg, *args, **kwargs):
        before = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            return run(cfg, *args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapped


@own_threads
def run(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    rank, world, device = setup_distributed()
    out = Path(cfg.out_dir)
    ckpt_path = out / "checkpoint.pt"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists() and not resume:
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another out_dir")
        (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(cfg.seed)
    show = rank == 0 and not quiet

    records = load_records(cfg.data)
    if not records:
        raise ValueError("the data source yielded no image-caption pairs")
    weights = np.array([r.weight for r in records]) if any(r.weight != 1.0 for r in records) else None

    if cfg.kind == "autoencoder":
        model = AE.build(AE.AutoencoderConfig(**cfg.model)).to(device)
        fetch = lambda idx, step: autoencoder_batch(cfg, records, idx, step)
    else:
        vae = AE.load(cfg.autoencoder).to(device)
        dcfg = DiTConfig(**cfg.model)
        res = cfg.data.resolution
        if res // AE.factor(vae) != dcfg.latent_size or vae.config.latent_channels != dcfg.in_channels:
            raise ValueError(f"model.latent_size {dcfg.latent_size} / in_channels {dcfg.in_channels} do not match "
                             f"{res}px through the autoencoder ({res // AE.factor(vae)}px, {vae.config.latent_channels} ch)")
        from ..text.encoder import TextEncoder

        encoder = TextEncoder(cfg.text_encoder)
        if dcfg.text_dim != encoder.dim:
            raise ValueError(f"model.text_dim {dcfg.text_dim} != text encoder width {encoder.dim}")
        vae_id = digest(*[v.numpy().tobytes() for v in list(vae.state_dict().values())[:4]])
        report = (lambda what: lambda i, n: print(f"\r{what}: {i}/{n}", end="\n" if i == n else "", flush=True)) if show else (lambda what: None)
        latents = cached_latents(vae, vae_id, records, res, cfg.data.cache_dir, progress=report("latents"))
        all_caps = [c for r in records for c in r.captions.values()] + [""]
        text = cached_text(encoder, all_caps, cfg.data.cache_dir, progress=report("text states"))
        scene_layouts = None
        layouts = [layout_of(r) for r in records] if dcfg.grounding else []
        if dcfg.grounding and not any(layouts):  # nothing would train the adapter (and DDP refuses unused weights)
            log.warning("model.grounding: no image in this data has a layout (object boxes), so the model is "
                        "trained and exported without the layout adapter")
            dcfg = dataclasses.replace(dcfg, grounding=False)
        if dcfg.grounding:  # every record's layout, and the few phrases of a world's objects, made once
            embed = PhraseEmbedder(encoder)
            for p in {p for lay in layouts if lay for p, _ in lay}:
                embed(p)
            scene_layouts = layouts, embed
        del encoder
        model = DiT(dcfg).to(device)
        if cfg.init:
            start_from(model, cfg.init, cfg.train_new_only, show)
        fetch = lambda idx, step: denoiser_batch(cfg, records, latents, text, idx, step, scene_layouts)

    ema = copy.deepcopy(model).requires_grad_(False).eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    step = 0
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["opt"])
        step = ck["step"]
        if show:
            print(f"resumed {ckpt_path} at step {step}")
    net = wrap(model, cfg, world, device)
    if world > 1 and cfg.distributed == "fsdp":
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        if resume and ckpt_path.exists():
            opt.load_state_dict(ck["opt"])
    n_params = sum(p.numel() for p in model.parameters())
    if show:
        print(f"{cfg.kind}: {n_params / 1e6:.2f}M parameters ({sum(p.numel() for p in trainable) / 1e6:.2f}M trained), "
              f"{len(records)} images, {world} process(es), device {device}")

    metrics = (out / "metrics.jsonl").open("a") if rank == 0 else None
    bar = Progress(cfg.steps, step, show)
    t_last, seen = time.time(), 0
    while step < cfg.steps:
        idx = batch_indices(len(records), step, cfg.batch_size, cfg.seed, rank, world, weights)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
        batch = fetch(idx, step)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        with autocast(cfg, device):
            if cfg.kind == "autoencoder":
                loss = autoencoder_loss(net, batch.to(device), cfg, gen)
            else:
                x0, states, mask, ground = batch
                ground = None if ground is None else tuple(g.to(device) for g in ground)
                loss = denoiser_loss(net, x0.to(device), states.to(device), mask.to(device), gen, world == 1, ground=ground)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        update_ema(ema, model, cfg.ema, step)
        seen += len(idx) * world
        if step % cfg.log_every == 0 or step == cfg.steps:
            lval = loss.detach().float()
            if world > 1:
                dist.all_reduce(lval)
                lval /= world
            ips = seen / (time.time() - t_last)
            t_last, seen = time.time(), 0
            if metrics:
                metrics.write(json.dumps({"step": step, "loss": lval.item(), "lr": lr_at(cfg, step - 1),
                                          "grad_norm": float(gnorm), "images_per_s": ips, "time": time.time()}) + "\n")
                metrics.flush()
            bar.update(step, loss=lval.item(), img_s=ips)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            sd = {"model": state_of(net), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                  "config": dataclasses.asdict(cfg)}
            if rank == 0:
                atomic_save(sd, ckpt_path)
        if rank == 0 and cfg.kind == "denoiser" and (step % cfg.sample_every == 0 or step == cfg.steps):
            export(cfg, ema, out / "model", vae)
            evaluate(cfg, out, step, metrics)
    if rank == 0 and cfg.kind == "autoencoder":
        export_autoencoder(cfg, ema, records, out / "model")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return out / "model"


@torch.no_grad()
def update_ema(ema, model, decay: float, step: int):
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        e.lerp_(p.detach().to(e.dtype), 1 - d)


def autoencoder_batch(cfg: TrainConfig, records, idx, step) -> torch.Tensor:
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


def autoencoder_loss(vae, x, cfg: TrainConfig, gen) -> torch.Tensor:
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    rec = vae.decode(z).sample
    kl = 0.5 * (post.mean**2 + post.var - 1 - post.logvar).mean()
    # objects cover a few percent of the pixels; without extra weight their colours come out wrong
    bg = x.flatten(2).median(dim=2).values[..., None, None]
    w = 1 + cfg.object_weight * ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
    err = rec - x
    return (w * (err.abs() + err**2)).sum() / (w.sum() * 3) + cfg.kl_weight * kl


def denoiser_loss(net, x0, states, mask, gen, split: bool = True, short: int = 48, ground=None):
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


def denoiser_batch(cfg: TrainConfig, records, latents, text, idx, step, ground=None):
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
        layouts, embed = ground
        ground = layout_tensors([None if rng.random() < cfg.layout_dropout else layouts[i] for i in idx], embed)
    return latents[idx].float(), x, mask, ground


def layout_of(rec):
    """A Shapes World record's true layout; None for images without one (they train the base path)."""
    from ..world.layout import of_scene
    from ..world.scene import Scene

    return of_scene(Scene.from_dict(rec.scene).objects) if rec.scene else None


def start_from(model, init: str, new_only: bool, show: bool):
    """Load `init`'s denoiser weights; parameters it lacks keep their fresh initialisation. With `new_only`
    those are the only ones that train."""
    from safetensors.torch import load_file

    from ..pipeline.core import resolve_model

    sd = {k: v.float() for k, v in load_file(resolve_model(init) / "denoiser.safetensors").items()}
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


@torch.no_grad()
def export_autoencoder(cfg: TrainConfig, vae, records, folder: Path):
    """Save the EMA autoencoder as a diffusers folder with latent shift and scale measured on data."""
    rng = np.random.default_rng(cfg.seed)
    idx = rng.choice(len(records), size=min(512, len(records)), replace=False)
    x = torch.stack([to_tensor(image_of(records[i], cfg.data.resolution)) for i in idx])
    z = vae.encode(x).latent_dist.mode()
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    rec = AE.to_image(vae, AE.to_latent(vae, x[:64]))
    err = (rec - x[:64]).abs().mean().item() * 127.5
    print(f"autoencoder exported to {folder}: mean abs error {err:.2f}/255 on {len(rec)} images")


def export(cfg: TrainConfig, ema, folder: Path, vae):
    """A self-contained model folder: EMA denoiser, its config, the autoencoder and the text encoder name."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "autoencoder").mkdir(parents=True)
    vae.save_pretrained(tmp / "autoencoder")
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / "denoiser.safetensors")
    meta = {"denoiser": ema.cfg.to_dict(), "text_encoder": cfg.text_encoder, "resolution": cfg.data.resolution,
            "world": "shapes" if cfg.data.source == "shapes" else None,
            "defaults": {"steps": cfg.sample_steps, "guidance": cfg.guidance, "sampler": "euler"}}
    (tmp / "limner.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def evaluate(cfg: TrainConfig, out: Path, step: int, metrics):
    """Sample grid of fixed prompts, plus Shapes World suite scores, from the exported EMA model."""
    from ..pipeline.core import Pipeline
    from ..safety.guard import SafetyConfig
    from ..world.evaluate import run_suites

    pipe = Pipeline.from_pretrained(str(out / "model"), safety=SafetyConfig.off())  # measure the model alone
    grid_prompts = ["three red circles and a blue square", "a yellow triangle to the left of two green circles",
                    "eight purple squares", "one large orange circle"]
    imgs = pipe(grid_prompts, seed=0)
    from ..pipeline.core import grid

    grid(imgs, cols=4).save(out / f"samples-{step:07d}.png")
    if cfg.data.source == "shapes" and cfg.eval_per_cell:
        summary = run_suites(pipe, per_cell=cfg.eval_per_cell)
        print(f"\nstep {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)
        if metrics:
            metrics.write(json.dumps({"step": step, "eval": summary}) + "\n")
            metrics.flush()
