"""Training and sampling throughput of limner's DiT vs diffusers peers of about the same size, side by side.

Ours is the shipped configuration (`model:` of configs/shapes-default.yaml). Peers: diffusers
`PixArtTransformer2DModel` (a DiT with cross-attention, the closest published design), as many layers as
bring it nearest our parameter count, and `UNet2DConditionModel`, all on the same latents and 384-d MiniLM
token states. Also reports each as a fraction of this CPU's measured fp32 matmul peak (FLOPs from torch's
FlopCounterMode, with its weight-gradient count of grouped convolutions corrected: torch 2.13 counts a
depthwise conv's weight gradient as a dense one, `groups` times too many), and the bf16 peak for reference.

    python benchmarks/throughput.py [--threads 2] [--batch 64] [--rounds 10] [--repeats 3] [--out FILE]

Rounds are interleaved (every model once a round, the order rotated), and each ratio is taken within a round,
then summarised as its median and min-max over rounds: a noisy moment slows both sides of a ratio alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

from limner.diffusion.flow import loss as flow_loss
from limner.models.dit import DiT, DiTConfig


SHIPPED = Path(__file__).resolve().parents[1] / "configs/shapes-default.yaml"


def matmul_peak(n=2048, reps=10, dtype=torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


class Adapter(torch.nn.Module):
    """Calls a diffusers denoiser with limner's signature (x, t, states, mask)."""

    def __init__(self, model, kind):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x, t, states, mask):
        if self.kind == "pixart":
            out = self.model(x, encoder_hidden_states=states, timestep=t * 1000, encoder_attention_mask=mask.long(),
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        else:
            out = self.model(x, t * 1000, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        return out[:, : x.shape[1]]


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def peers(target: int, ch: int, width=192, heads=4):
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    def pixart(depth):
        return PixArtTransformer2DModel(
            num_attention_heads=heads, attention_head_dim=width // heads, in_channels=ch, out_channels=ch,
            num_layers=depth, cross_attention_dim=width, sample_size=16, patch_size=2, caption_channels=384,
            norm_type="ada_norm_single", use_additional_conditions=False)

    pixart = min((pixart(d) for d in range(4, 13)), key=lambda m: abs(n_params(m) - target))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=ch, out_channels=ch, block_out_channels=(96, 192), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=384, attention_head_dim=8, norm_num_groups=32)
    return {"diffusers PixArtTransformer2DModel": Adapter(pixart, "pixart"),
            "diffusers UNet2DConditionModel": Adapter(unet, "unet")}


def grouped_conv_backward_flop(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                               output_mask, out_shape=None, **kw) -> int:
    """torch's formula, with the weight gradient divided by `groups` (its transposed shapes lose the group
    split); the input gradient is already right."""
    args = (grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups)
    grad_input = conv_backward_flop(*args, [output_mask[0], False, False], out_val=out_shape)
    grad_weight = conv_backward_flop(*args, [False, output_mask[1], False], out_val=out_shape)
    return grad_input + grad_weight // groups


FLOPS = {torch.ops.aten.convolution_backward: grouped_conv_backward_flop}


def train_step(model, batch, ch, text_len=24, layout=False):
    """One AdamW step of the flow loss as a closure; `layout` gives a grounding model 4 boxes an image."""
    x, s = torch.randn(batch, ch, 16, 16), torch.randn(batch, text_len, 384)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    ground = (torch.randn(batch, 4, 384), torch.rand(batch, 4, 4), torch.ones(batch, 4, dtype=torch.bool)) if layout else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = lambda: (opt.zero_grad(), flow_loss(model, x, s, mask, ground=ground).backward(), opt.step())
    step()   # warm-up: allocations, optimizer state
    with FlopCounterMode(display=False, custom_mapping=FLOPS) as fc:
        flow_loss(model, x, s, mask, ground=ground).backward()
    return step, fc.get_total_flops()


def timed(fn, repeats: int) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


@torch.no_grad()
def sampler(model, batch, ch, text_len=24):
    """One guided Euler step (2 model calls: a batch of 2 x `batch`) as a closure."""
    x, s = torch.randn(2 * batch, ch, 16, 16), torch.randn(2 * batch, text_len, 384)
    mask = torch.ones(2 * batch, text_len, dtype=torch.bool)
    t = torch.full((2 * batch,), 0.5)
    model(x, t, s, mask)
    return torch.no_grad()(lambda: model(x, t, s, mask))


def spread(xs) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds: every model once a round, order rotated")
    ap.add_argument("--repeats", type=int, default=3, help="training steps timed per model per round")
    ap.add_argument("--steps", type=int, default=20, help="guided sampling steps an image costs")
    ap.add_argument("--out", help="write the figures here as JSON")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    peak = matmul_peak()
    dit = DiT(DiTConfig(**yaml.safe_load(SHIPPED.read_text())["model"]))
    ch = dit.cfg.in_channels
    models = {"limner DiT-S": dit, **peers(n_params(dit), ch)}
    runs = {name: {"train": train_step(m, a.batch, ch), "b1": sampler(m.eval(), 1, ch),
                   "b64": sampler(m, 64, ch)} for name, m in models.items()}
    if dit.cfg.grounding:   # the shipped model trains with a layout for most images: that step too, ours only
        models["limner DiT-S, with layout"] = dit
        runs["limner DiT-S, with layout"] = {"train": train_step(dit.train(), a.batch, ch, layout=True)}
    times = {name: {k: [] for k in r} for name, r in runs.items()}
    names = list(runs)
    for r in range(a.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            models[name].train()
            step, flops = runs[name]["train"]
            times[name]["train"].append(timed(step, a.repeats))
            models[name].eval()
            for b in ("b1", "b64"):
                if b in runs[name]:   # a sampled image costs `steps` guided steps
                    times[name][b].append(timed(runs[name][b], 5 if b == "b1" else 1) * a.steps / (1 if b == "b1" else 64))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{n} {a.batch / times[n]['train'][-1]:.1f} img/s" for n in names),
              flush=True)
    ours = times["limner DiT-S"]
    rows = {}
    for name, t in times.items():
        ips = [a.batch / x for x in t["train"]]
        rows[name] = {"params_M": n_params(models[name]) / 1e6, "train_img_s": spread(ips),
                      "train_fraction_of_peak": statistics.median(runs[name]["train"][1] / x for x in t["train"]) / peak,
                      # per round: ours / theirs, so that a slow moment hits both sides of a ratio alike
                      "our_train_speedup": spread([b / o for o, b in zip(ours["train"], t["train"])])}
        for b in ("b1", "b64"):
            if t.get(b):
                rows[name][f"sample_s_per_image_{b}"] = spread(t[b])
                rows[name][f"our_sample_{b}_speedup"] = spread([x / o for o, x in zip(ours[b], t[b])])
    result = {"matmul_peak_gflops": peak / 1e9, "bf16_matmul_peak_gflops": matmul_peak(dtype=torch.bfloat16) / 1e9,
              "threads": a.threads, "batch": a.batch, "rounds": a.rounds, "repeats": a.repeats,
              "sample_steps": a.steps, "models": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    fmt = lambda d, f="{:.2f}": f"{f.format(d['median'])} ({f.format(d['min'])}-{f.format(d['max'])})"
    print(f"{a.rounds} interleaved rounds, batch {a.batch}, {a.threads} threads; medians (min-max over rounds)")
    for name, r in rows.items():
        line = f"{name:36s} {r['params_M']:.2f}M  train {fmt(r['train_img_s'], '{:.1f}')} img/s, ours x{fmt(r['our_train_speedup'])}"
        for b in ("b1", "b64"):
            if f"sample_s_per_image_{b}" in r:
                line += f"; sample {b} {fmt(r[f'sample_s_per_image_{b}'], '{:.3f}')} s/img, ours x{fmt(r[f'our_sample_{b}_speedup'])}"
        print(line)


if __name__ == "__main__":
    main()
