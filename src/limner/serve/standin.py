"""A stand-in engine: what the server asks of an engine (`engine.Engine`), drawing flat grey squares at a
pace the caller sets. For tests of the server, and of code built on it, without loading a model."""
from __future__ import annotations

import threading
import time

from PIL import Image


class StandInEngine:
    """Each step waits `step_s` (and, while `hold` is clear, until it is set); `batches` records the prompts
    of each call, to see what the queue drew together; `checks` counts prompt checks."""
    name, default_steps, default_guidance = "stand-in", 20, 1.5

    def __init__(self, step_s: float = 0.0, resolution: int = 64, sizes: list[int] | None = None,
                 check_s: float = 0.0):
        self.step_s, self.resolution, self.check_s = step_s, resolution, check_s
        self.checks = 0   # prompt checks made (each takes check_s, as a prompt filter would)
        self.sizes = sizes or [resolution]   # more than one: as if the model had an upsampler cascade
        self.auto_size, self.can_upscale = self.sizes[-1], len(self.sizes) > 1
        self.hold = threading.Event()
        self.hold.set()
        self.batches: list[list[str]] = []

    def check_prompt(self, prompt: str) -> None:
        self.checks += 1
        time.sleep(self.check_s)

    def generate(self, shape, prompts, seeds, progress=None) -> list[Image.Image]:
        self.batches.append(list(prompts))
        side = (shape.side or self.resolution) * shape.upscale
        size = (side, side)
        for i in range(shape.steps):
            self.hold.wait(10)
            time.sleep(self.step_s)
            if progress:
                progress(1 - i / shape.steps, lambda: [Image.new("RGB", size)] * (len(prompts) * shape.n))
        out = []
        for prompt, seed in zip(prompts, seeds):
            for i in range(shape.n):
                img = Image.new("RGB", size, (128, 128, 128))
                img.info["parameters"] = {"prompt": prompt, "seed": seed + i, "steps": shape.steps}
                out.append(img)
        return out

    def safe_previews(self, images):
        return images

    def text_tokens(self, prompt: str) -> int:
        return len(prompt.split())

    def image_tokens(self) -> int:
        return (self.resolution // 4) ** 2
