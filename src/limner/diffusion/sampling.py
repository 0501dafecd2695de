"""Samplers for the flow ODE dx/dt = v(x, t), from t = 1 (noise) to t = 0, one small function each.

`guided` wraps a denoiser with classifier-free guidance: v = v_neg + g (v_cond - v_neg), where the
negative branch is the empty prompt or a user's negative prompt.
"""
from __future__ import annotations

import torch


def timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 to 0; shift > 1 spends more steps at high noise (SD3's time shift)."""
    t = torch.linspace(1, 0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


def guided(model, cond, uncond, guidance: float, ground=None):
    """cond/uncond: (states, mask) already padded to one length; returns v(x, t) with guidance.
    `ground` (a grounded denoiser's layout tensors) conditions both branches: the layout is given, the text guided.
    A denoiser with `condition` (our DiT) reads the prompt and layout once here, not at every step."""
    one = guidance == 1.0
    states, mask = cond if one else (torch.cat([cond[0], uncond[0]]), torch.cat([cond[1], uncond[1]]))
    if ground is not None and not one:
        ground = tuple(torch.cat([g, g]) for g in ground)
    kw = {} if ground is None else {"ground": ground}
    if hasattr(model, "condition"):
        kw = {"cond": model.condition(states, mask, ground)}

    def v(x, t):
        x = x if one else torch.cat([x, x])
        out = model(x, t.expand(x.shape[0]), states, mask, **kw)
        if one:
            return out
        c, u = out.chunk(2)
        return u + guidance * (c - u)

    return v


@torch.no_grad()
def euler(v, x, ts):
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * v(x, t)
    return x


@torch.no_grad()
def heun(v, x, ts):
    """Second order (Karras et al. 2022, Alg. 1); the last step is plain Euler."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        d = v(x, t)
        x_e = x + (t_next - t) * d
        if t_next > 0:
            x_e = x + (t_next - t) * 0.5 * (d + v(x_e, t_next))
        x = x_e
    return x


@torch.no_grad()
def midpoint(v, x, ts):
    """Second order with one extra evaluation per step at the half-way time."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t
        x = x + h * v(x + 0.5 * h * v(x, t), t + 0.5 * h)
    return x


SAMPLERS = {"euler": euler, "heun": heun, "midpoint": midpoint}
