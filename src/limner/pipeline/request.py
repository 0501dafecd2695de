"""The checks a generation request must pass, importable without torch: the CLI (and later the server)
refuse bad parameters before any model loads, and the pipeline checks the same ranges again on each call."""
from __future__ import annotations

import math

SAMPLERS = ("euler", "heun", "midpoint")  # diffusion.sampling.SAMPLERS' names (a test keeps them equal)


def validate(prompts, steps, guidance, sampler, num_images, best_of=1):
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError("the prompt is empty: describe the image you want, e.g. 'three red circles'")
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps must be between 1 and 1000, not {steps}")
    if math.isnan(guidance) or not 0 <= guidance <= 50:
        raise ValueError(f"guidance must be between 0 and 50, not {guidance}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not 1 <= num_images <= 256:
        raise ValueError(f"-n must be between 1 and 256, not {num_images}")
    if not 1 <= best_of <= 64:
        raise ValueError(f"--best-of must be between 1 and 64, not {best_of}")


UPSCALE_FACTORS = (1, 2, 4, 8)


def validate_upscale(upscale) -> None:
    if upscale not in UPSCALE_FACTORS:
        raise ValueError(f"--upscale must be 2, 4 or 8 (1: none), not {upscale}")
