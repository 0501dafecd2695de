"""Rectified flow: x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0 (SD3, minRF).

Timesteps are logit-normal (SD3), which spends training on the middle of the path where the layout
(how many objects, where) is decided.
"""
from __future__ import annotations

import torch


def sample_t(n: int, mean: float = 0.0, std: float = 1.0, generator=None, device="cpu") -> torch.Tensor:
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def loss(model, x0, states, mask, t=None, generator=None, ground=None) -> torch.Tensor:
    t = sample_t(x0.shape[0], generator=generator, device=x0.device) if t is None else t
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    v = model(xt, t, states, mask) if ground is None else model(xt, t, states, mask, ground)
    return ((v.float() - (noise - x0)) ** 2).mean()
