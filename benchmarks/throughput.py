"""Training and sampling throughput of limner's DiT vs diffusers peers of about the same size, side by side.

Ours is the shipped configuration (`model:` of configs/shapes-default.yaml). Peers: diffusers
`PixArtTransformer2DModel` (a DiT with cross-attention, the closest published design), as many layers as
bring it nearest our parameter count, and `UNet2DConditionModel`, all on the same latents and 384-d MiniLM
token states. Also reports each as a fraction of this CPU's measured fp32 matmul peak (FLOPs from torch's
FlopCounterMode, with its weight-gradient count of grouped convolutions corrected: torch 2.13 counts a
depthwise conv's weight gradient as a dense one, `groups` times too many), and the bf16 peak for reference.

    python benchmarks/throughput.py [--threads 2] [--batch 128] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
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


def train_rate(model, batch, repeats, ch, text_len=24):
    x, s = torch.randn(batch, ch, 16, 16), torch.randn(batch, text_len, 384)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = lambda: (opt.zero_grad(), flow_loss(model, x, s, mask).backward(), opt.step())
    step()
    with FlopCounterMode(display=False, custom_mapping=FLOPS) as fc:
        flow_loss(model, x, s, mask).backward()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    dt = (time.perf_counter() - t) / repeats
    return batch / dt, fc.get_total_flops() / dt


@torch.no_grad()
def sample_rate(model, batch, ch, steps=20, text_len=24):
    """Seconds per image for `steps` guided Euler steps (2 model calls per step)."""
    x, s = torch.randn(2 * batch, ch, 16, 16), torch.randn(2 * batch, text_len, 384)
    mask = torch.ones(2 * batch, text_len, dtype=torch.bool)
    t = torch.full((2 * batch,), 0.5)
    model(x, t, s, mask)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x, t, s, mask)
    return (time.perf_counter() - t0) / batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    peak = matmul_peak()
    dit = DiT(DiTConfig(**yaml.safe_load(SHIPPED.read_text())["model"]))
    ch = dit.cfg.in_channels
    models = {"limner DiT-S": dit, **peers(n_params(dit), ch)}
    rows = {}
    for name, m in models.items():
        ips, flops = train_rate(m, a.batch, a.repeats, ch)
        m.eval()
        rows[name] = {"params_M": n_params(m) / 1e6, "train_img_s": ips, "train_fraction_of_peak": flops / peak,
                      "sample_s_per_image_b1": sample_rate(m, 1, ch, a.steps),
                      "sample_s_per_image_b64": sample_rate(m, 64, ch, a.steps)}
    ours = rows["limner DiT-S"]
    for name, r in rows.items():
        r["train_ratio_vs_peer"] = ours["train_img_s"] / r["train_img_s"]
        r["sample_b1_ratio_vs_peer"] = r["sample_s_per_image_b1"] / ours["sample_s_per_image_b1"]
    print(json.dumps({"matmul_peak_gflops": peak / 1e9, "bf16_matmul_peak_gflops": matmul_peak(dtype=torch.bfloat16) / 1e9,
                      "threads": a.threads, "batch": a.batch,
                      "sample_steps": a.steps, "models": rows}, indent=2))


if __name__ == "__main__":
    main()
