"""`limner train` with `kind: reward`: online Diffusion-DPO against a verifiable reward.

Post-training in the manner of Flow-GRPO / Diffusion-DPO: each round samples several images per prompt
from the current model, scores them against the prompt's exact constraints with the Shapes World scorer
(the reward), pairs the best and worst image of each prompt, and takes DPO steps that raise the model's
likelihood of the better image relative to a frozen reference (Wallace et al. 2023, written for the flow
loss). Prompts are fresh training captions of scenes from their own seed; any caption equal to a
held-out suite prompt is dropped, as in pre-training.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from ..common.config import build
from ..common.progress import progress
from ..diffusion import flow
from ..models import folder
from ..world import captions as C
from ..world.parse import parse_prompt
from ..world.scene import sample_scene
from ..world.scorer import Constraints, detect, reward, score
from ..world.suites import held_out_prompts, normalise
from .loop import Metrics, load_checkpoint, own_threads, prepare_out_dir, save_checkpoint


@dataclass
class RewardConfig:
    kind: str = "reward"
    init: str = "shapes-default"  # the model to post-train: a shipped name or an exported folder
    out_dir: str = "runs/reward"
    seed: int = 7  # prompts come from scenes of this seed (pre-training used its own)
    rounds: int = 20
    prompts_per_round: int = 64
    samples_per_prompt: int = 4
    rollout_steps: int = 10  # Euler steps of the rollouts (Flow-GRPO also trains on short rollouts)
    guidance: float = 1.5
    caption_weights: dict = dataclasses.field(default_factory=lambda: {"count": 0.5, "spatial": 0.3, "detailed": 0.2})
    updates_per_round: int = 4  # passes over the round's pairs
    pair_batch: int = 16
    beta: float = 2000.0  # DPO temperature on the per-sample mean squared flow error
    sft_weight: float = 0.5  # plus the plain flow loss on the winners, which keeps the model an image model
    lr: float = 2e-5
    grad_clip: float = 1.0
    threads: int = 0

    @classmethod
    def load(cls, path: str | Path) -> "RewardConfig":
        return build(cls, yaml.safe_load(Path(path).read_text()) or {}, str(path))

    def __post_init__(self):
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be at least 2: DPO compares images of one prompt")
        unknown = set(self.caption_weights) - {"count", "spatial", "detailed"}
        if unknown:
            raise ValueError(f"caption_weights: unknown kinds {sorted(unknown)}; use count, spatial, detailed")


Config = RewardConfig


def prompts_for_round(cfg: RewardConfig, rnd: int, held_out: set[str]) -> list[tuple[str, Constraints]]:
    """Training captions with the constraints their scene makes exact."""
    rng = random.Random(f"reward-{cfg.seed}-{rnd}")
    kinds, weights = zip(*cfg.caption_weights.items())
    out = []
    while len(out) < cfg.prompts_per_round:
        scene = sample_scene(rng)
        kind = rng.choices(kinds, weights)[0]
        if kind == "count":
            text, cons = C.count(scene, rng), Constraints.from_scene(scene, "count", with_sizes=False)
            cons.relations = []
        elif kind == "spatial":
            text = C.spatial(scene, rng, complete=True)
            cons = Constraints.from_scene(scene, "spatial", with_sizes=False)
            parsed = parse_prompt(text)
            cons.relations = parsed.relations if parsed else []  # only the relations the caption states
        else:
            text, cons = C.detailed(scene, rng), Constraints.from_scene(scene, "detailed")
        if normalise(text) not in held_out:
            out.append((text, cons))
    return out


@torch.no_grad()
def rollout(pipe, states, mask, empty, seeds, cfg: RewardConfig):
    """Latents the pipeline's model samples with guidance, and their decoded images."""
    n_tok = int(mask.sum(1).max())
    states, mask = states[:, :n_tok], mask[:, :n_tok]
    u_states, u_mask = torch.zeros_like(states), torch.zeros_like(mask)  # "" padded to the prompts' length
    u_states[:, : empty.shape[0]], u_mask[:, : empty.shape[0]] = empty, True
    z = pipe.sample_latents((states, mask), (u_states, u_mask), seeds, cfg.rollout_steps, cfg.guidance)
    return z, pipe.decode(z)


def per_sample_error(model, x0, states, mask, t, noise):
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    return ((model(xt, t, states, mask).float() - (noise - x0)) ** 2).mean(dim=(1, 2, 3))


def dpo_loss(policy, ref, xw, xl, states, mask, cfg: RewardConfig, gen):
    """Diffusion-DPO: -log sigmoid(-beta/2 [(e_w - e_w_ref) - (e_l - e_l_ref)]), one t and noise per pair."""
    b = xw.shape[0]
    t = flow.sample_t(b, generator=gen)
    noise = torch.randn(xw.shape, generator=gen)
    x = torch.cat([xw, xl])
    s, m, tt, nn_ = torch.cat([states, states]), torch.cat([mask, mask]), torch.cat([t, t]), torch.cat([noise, noise])
    err = per_sample_error(policy, x, s, m, tt, nn_)
    with torch.no_grad():
        err_ref = per_sample_error(ref, x, s, m, tt, nn_)
    ew, el = err.chunk(2)
    rw, rl = err_ref.chunk(2)
    inside = -0.5 * cfg.beta * ((ew - rw) - (el - rl))
    loss = -F.logsigmoid(inside).mean() + cfg.sft_weight * ew.mean()
    return loss, (inside > 0).float().mean().item()


@own_threads
def run(cfg: RewardConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Rounds of rollouts and DPO updates; not the step loop (loop.py), whose fixed steps of one batch each
    do not fit a round of sampling followed by a varying number of updates, but its checkpoints, metrics and
    out-dir rules."""
    from ..pipeline import Pipeline
    from ..text.encoder import TextEncoder, pad

    out = prepare_out_dir(cfg, resume)
    ckpt_path = out / "checkpoint.pt"
    policy, vae, meta = folder.load(cfg.init)
    encoder = TextEncoder(meta.get("text_encoder", "minilm"))
    pipe = Pipeline(policy, vae, encoder, meta)  # no guard, no hooks: rollouts sample the policy itself
    ref = copy.deepcopy(policy).requires_grad_(False).eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    start = 0
    ck = load_checkpoint(ckpt_path) if resume else None
    if ck:
        policy.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"])
        start = ck["round"]
        print(f"resumed {ckpt_path} at round {start}")
    held_out = held_out_prompts()
    empty = encoder.encode([""])[0]
    metrics = Metrics(out / "metrics.jsonl")
    bar = progress(cfg.rounds, "reward", unit="round", initial=start, enabled=not quiet)
    t0 = time.time()
    for rnd in range(start, cfg.rounds):
        prompts = sorted(prompts_for_round(cfg, rnd, held_out), key=lambda p: len(p[0]))  # less padding per chunk
        k = cfg.samples_per_prompt
        cons = [c for _, c in prompts for _ in range(k)]
        seeds = [(cfg.seed * 1_000_003 + rnd * 10_007 + i) % 2**31 for i in range(len(cons))]
        states, mask = pad(encoder.encode([p for p, _ in prompts]))
        states, mask = states.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        policy.eval()
        zs, rewards, correct = [], [], []
        for i in range(0, len(cons), 64):
            z, imgs = rollout(pipe, states[i : i + 64], mask[i : i + 64], empty, seeds[i : i + 64], cfg)
            zs.append(z)
            for img, c in zip(imgs, cons[i : i + 64]):
                r = score(detect(img), c)
                rewards.append(reward(r, c))
                correct.append(r["correct"])
        z = torch.cat(zs)
        rew = np.array(rewards).reshape(-1, k)
        wi, li = [], []
        for j, row in enumerate(rew):
            order = np.argsort(-row, kind="stable")
            for a, b in zip(order[: k // 2], order[::-1][: k // 2]):  # best with worst, second with second worst
                if row[a] > row[b]:
                    wi.append(j * k + a), li.append(j * k + b)
        policy.train()
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + rnd)
        losses, accs = [], []
        for _ in range(cfg.updates_per_round if wi else 0):
            perm = torch.randperm(len(wi), generator=gen).tolist()
            for s in range(0, len(perm), cfg.pair_batch):
                sel = perm[s : s + cfg.pair_batch]
                w = torch.tensor([wi[q] for q in sel])
                l_ = torch.tensor([li[q] for q in sel])
                n_tok = int(mask[w].sum(1).max())
                loss, acc = dpo_loss(policy, ref, z[w], z[l_], states[w, :n_tok], mask[w, :n_tok], cfg, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                opt.step()
                losses.append(loss.item()), accs.append(acc)
        row = {"round": rnd + 1, "rollout_correct": float(np.mean(correct)), "reward": float(np.mean(rewards)),
               "pairs": len(wi), "loss": float(np.mean(losses)) if losses else None,
               "implicit_acc": float(np.mean(accs)) if accs else None, "time": time.time() - t0}
        metrics.write(row)
        bar.update(1)
        bar.set_postfix(correct=f"{row['rollout_correct']:.3f}", reward=f"{row['reward']:.3f}", pairs=len(wi),
                        **({"loss": f"{row['loss']:.4g}"} if losses else {}))
        save_checkpoint({"model": policy.state_dict(), "opt": opt.state_dict(), "round": rnd + 1,
                         "config": dataclasses.asdict(cfg)}, ckpt_path)
    bar.close()
    metrics.close()
    # a folder like the one it started from (same autoencoder, text encoder and defaults), saying how it was made
    post = {"post_training": {"kind": "reward", "init": cfg.init, "rounds": cfg.rounds}}
    return folder.save(out / "model", policy, vae, {**meta, **post}, parts_from=folder.resolve(cfg.init))
