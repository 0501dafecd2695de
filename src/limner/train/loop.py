"""The one training loop: every kind that trains by steps (the autoencoder, the denoiser) runs through it.

A kind supplies a `Task` (its model, its batches, its loss, and what to do with the EMA model now and then
and at the end); the loop owns everything else: distributed setup, the DDP/FSDP wrap, AdamW with warmup and
cosine decay, the EMA copy, atomic checkpoints, `--resume`, metrics.jsonl and the progress bar.

Single process by default; under `torchrun --nproc-per-node N` the same config trains with DDP (or FSDP with
`distributed: fsdp`). A checkpoint holds model, EMA, optimizer and step; batches, noise and timesteps are
functions of (seed, step, rank), so a resumed run continues exactly where the killed one stopped.

The pieces that are not the step loop itself (`prepare_out_dir`, `save_checkpoint`, `Metrics`,
`own_threads`) are shared with post-training (reward.py), whose rounds are not fixed steps.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ..common.files import atomic_path
from ..common.progress import progress

log = logging.getLogger("limner.train")


@dataclass
class LoopConfig:
    """What the loop reads; each kind's config extends it (and sets `kind`)."""
    kind: str = ""
    out_dir: str = "runs/debug"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    amp: str = "auto"  # "auto": bf16 on CUDA only (CPUs without bf16 matmul run it ~50x slower); "bf16"; "none"
    distributed: str = "ddp"  # "ddp" or "fsdp" under torchrun
    threads: int = 0  # torch threads per process; 0 = leave PyTorch's default
    log_every: int = 50
    ckpt_every: int = 500

    def __post_init__(self):
        expected = type(self).__dataclass_fields__["kind"].default   # each kind's config names its own kind
        if self.kind != expected:
            raise ValueError(f"kind is {self.kind!r} in {'an' if expected[:1] in 'aeiou' else 'a'} {expected} config")
        if self.amp not in ("auto", "bf16", "none"):
            raise ValueError(f"amp must be auto, bf16 or none, not {self.amp!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be ddp or fsdp, not {self.distributed!r}")


class Task:
    """What a kind gives the loop. `__init__(cfg, device, show)` runs right after the loop seeds torch, and
    sets `model` (its parameters that require grad are the ones trained)."""
    model: torch.nn.Module

    def describe(self) -> str:
        """A few words for the start-up line, e.g. '20000 images'."""
        return ""

    def batch(self, step: int, rank: int, world: int):
        """This rank's batch at `step`: a pure function of (seed, step, rank), which is what makes resume exact."""
        raise NotImplementedError

    def loss(self, net, batch, gen: torch.Generator, world: int) -> torch.Tensor:
        """The batch's loss through `net` (the wrapped model); draw any noise from `gen`."""
        raise NotImplementedError

    def after_step(self, ema, step: int, metrics: "Metrics") -> None:
        """Rank 0, after every step: e.g. export and sample the EMA model every so many steps."""

    def finish(self, ema, metrics: "Metrics") -> None:
        """Rank 0, after the last step: e.g. export the EMA model."""


def lr_at(cfg: LoopConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


# --- shared with post-training ---

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


def prepare_out_dir(cfg, resume: bool) -> Path:
    """Create `cfg.out_dir`, refuse to overwrite a run unless resuming, and record the config there."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "checkpoint.pt").exists() and not resume:
        raise FileExistsError(f"{out / 'checkpoint.pt'} exists: pass --resume to continue it, or choose another out_dir")
    (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return out


def save_checkpoint(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:  # a run killed mid-write leaves the previous checkpoint whole
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, weights_only=False) if path.exists() else None


class Metrics:
    """metrics.jsonl: one JSON object per line, flushed as written (a killed run keeps what it logged)."""

    def __init__(self, path: Path):
        self.file = Path(path).open("a")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# --- distributed and numerics ---

def setup_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    return rank, world, device


def wrap(model, cfg: LoopConfig, world: int, device):
    if world == 1:
        return model
    if cfg.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", None) or []:  # shard block by block, then the rest
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def state_of(model) -> dict:
    """Full (unsharded) state dict, for DDP, FSDP and plain models alike."""
    if hasattr(model, "module"):
        model = model.module
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu() for k, v in model.state_dict().items()}


def autocast(cfg: LoopConfig, device):
    on = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


@torch.no_grad()
def update_ema(ema, model, decay: float, step: int):
    d = min(decay, (1 + step) / (10 + step))  # short memory early on, so the EMA is not mostly initialisation
    for e, p in zip(ema.parameters(), model.parameters()):
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        e.lerp_(p.detach().to(e.dtype), 1 - d)


def adamw(params, cfg: LoopConfig):
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))


# --- the loop ---

@own_threads
def train(cfg: LoopConfig, make_task, resume: bool = False, quiet: bool = False) -> Path:
    """Train `make_task(cfg, device, show)`'s model for `cfg.steps` steps; returns out_dir/model."""
    rank, world, device = setup_distributed()
    out = Path(cfg.out_dir)
    ckpt_path = out / "checkpoint.pt"
    if rank == 0:
        prepare_out_dir(cfg, resume)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(cfg.seed)  # before the task builds its model: the initial weights follow the seed
    show = rank == 0 and not quiet
    task = make_task(cfg, device, show)
    model = task.model

    ema = copy.deepcopy(model).requires_grad_(False).eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(trainable, cfg)
    step = 0
    ck = load_checkpoint(ckpt_path) if resume else None
    if ck:
        model.load_state_dict(ck["model"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["opt"])
        step = ck["step"]
        if show:
            print(f"resumed {ckpt_path} at step {step}")
    net = wrap(model, cfg, world, device)
    if world > 1 and cfg.distributed == "fsdp":  # FSDP replaced the parameters: the optimizer must hold the new ones
        opt = adamw([p for p in net.parameters() if p.requires_grad], cfg)
        if ck:
            opt.load_state_dict(ck["opt"])
    if show:
        n_params, n_trained = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in trainable)
        print(f"{cfg.kind}: {n_params / 1e6:.2f}M parameters ({n_trained / 1e6:.2f}M trained), {task.describe()}, "
              f"{world} process(es), device {device}", flush=True)

    metrics = Metrics(out / "metrics.jsonl") if rank == 0 else None
    bar = progress(cfg.steps, cfg.kind, unit="step", initial=step, enabled=show)
    t_last, seen = time.time(), 0
    while step < cfg.steps:
        batch = task.batch(step, rank, world)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        with autocast(cfg, device):
            loss = task.loss(net, batch, gen, world)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        update_ema(ema, model, cfg.ema, step)
        seen += cfg.batch_size * world
        bar.update(1)

        if step % cfg.log_every == 0 or step == cfg.steps:
            lval = loss.detach().float()
            if world > 1:
                dist.all_reduce(lval)
                lval /= world
            ips = seen / (time.time() - t_last)
            t_last, seen = time.time(), 0
            if metrics:
                metrics.write({"step": step, "loss": lval.item(), "lr": lr_at(cfg, step - 1),
                               "grad_norm": float(gnorm), "images_per_s": ips, "time": time.time()})
            bar.set_postfix(loss=f"{lval.item():.4g}", img_s=f"{ips:.4g}")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            state = {"model": state_of(net), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                     "config": dataclasses.asdict(cfg)}
            if rank == 0:
                save_checkpoint(state, ckpt_path)
        if rank == 0:
            task.after_step(ema, step, metrics)
    bar.close()
    if rank == 0:
        task.finish(ema, metrics)
        metrics.close()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return out / "model"
