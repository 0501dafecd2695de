"""limner.diffusion: the flow-matching loss (flow.py), timesteps, samplers and guidance (sampling.py)."""
import torch

from limner.diffusion import flow
from limner.diffusion.sampling import SAMPLERS, euler, guided, heun, midpoint, timesteps


def test_flow_loss_trains_a_tiny_model(tiny_dit):
    torch.manual_seed(0)
    m = tiny_dit()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x0 = torch.randn(1, 4, 8, 8).repeat(16, 1, 1, 1)  # one target: the flow must learn it
    s, mask = torch.randn(16, 5, 32), torch.ones(16, 5, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    first = flow.loss(m, x0, s, mask, generator=g).item()
    for _ in range(150):
        loss = flow.loss(m, x0, s, mask, generator=g)
        opt.zero_grad(), loss.backward(), opt.step()
    assert loss.item() < 0.5 * first


def test_timesteps_and_shift():
    t = timesteps(10)
    assert t[0] == 1 and t[-1] == 0 and torch.all(t[1:] < t[:-1])
    assert torch.all(timesteps(10, shift=3.0)[1:-1] > t[1:-1])


def test_samplers_solve_known_flows():
    # straight-line flow x_t = (1-t) x0 + t e has constant velocity e - x0: Euler is exact
    x0, e = torch.randn(2, 3), torch.randn(2, 3)
    for fn in SAMPLERS.values():
        out = fn(lambda x, t: e - x0, e.clone(), timesteps(4))
        assert torch.allclose(out, x0, atol=1e-5)
    # dx/dt = x, from t=1 to 0: x(0) = x(1) / e; second order beats first order
    v = lambda x, t: x
    x1 = torch.ones(1)
    exact = x1 / torch.e
    err = {f.__name__: (f(v, x1, timesteps(8)) - exact).abs().item() for f in (euler, heun, midpoint)}
    assert err["heun"] < err["euler"] / 5 and err["midpoint"] < err["euler"] / 5


def test_euler_matches_diffusers_flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(sigmas=timesteps(6)[:-1].tolist())
    x = torch.randn(1, 4, 8, 8)
    field = lambda x, t: torch.sin(x) * t  # any smooth velocity
    ours = euler(field, x.clone(), timesteps(6))
    theirs = x.clone()
    for i, t in enumerate(sched.timesteps):
        theirs = sched.step(field(theirs, sched.sigmas[i]), t, theirs).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_guidance_combines_branches():
    m = lambda x, t, s, mask: s[:, :1, :1].reshape(-1, 1) * torch.ones_like(x)
    cond = (torch.full((2, 1, 1), 3.0), torch.ones(2, 1, dtype=torch.bool))
    uncond = (torch.full((2, 1, 1), 1.0), torch.ones(2, 1, dtype=torch.bool))
    v = guided(m, cond, uncond, 2.5)
    assert torch.allclose(v(torch.zeros(2, 1), torch.tensor(0.5)), torch.full((2, 1), 1 + 2.5 * 2))
