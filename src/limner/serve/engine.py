"""The loaded pipeline as the server drives it: the model's request defaults, the prompt check a request
passes before it is queued, drawing a batch with progress, previews that pass the image filter too."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Shape:
    """What jobs must share to be drawn in one pipeline call (prompts and seeds may differ)."""
    negative_prompt: str
    steps: int
    guidance: float
    n: int
    side: int = 0        # the side drawn (one of Engine.sizes); 0: the model's base resolution
    upscale: int = 1     # then enlarged this many times by the model's upsampler


class Engine:
    """A limner model with the safety guard fully on (prompt filter, image filter, watermark, parameters)."""

    def __init__(self, model: str):
        from ..pipeline import Pipeline

        self.pipe = Pipeline.from_pretrained(model)   # safety=None: everything on, never switchable from a request
        self.name, self.resolution = self.pipe.name, self.pipe.resolution
        # the sides a request may name: the base resolution, then each stage of the model's upsampler cascade
        self.sizes, self.auto_size = self.pipe.sizes, self.pipe.default_size   # auto: the model's own default
        self.can_upscale = self.pipe.upscaler is not None
        self.default_steps = int(self.pipe.defaults.get("steps", 20))
        self.default_guidance = float(self.pipe.defaults.get("guidance", 3.0))
        self._preview_filter = _image_filter(self.pipe.guard.config.image_filter)
        # one tiny drawing now loads what the first call loads lazily (prompt and image filters, planner,
        # phrase embedder), so /readyz means ready and the first request is as fast as the rest
        self.generate(Shape("", 1, self.default_guidance, 1), ["a red circle"], [0])

    def check_prompt(self, prompt: str) -> None:
        """Raises PromptBlocked (code content_policy_violation) before a job is queued."""
        self.pipe.guard.check_prompt(prompt)

    def generate(self, shape: Shape, prompts: list[str], seeds: list[int], progress=None) -> list[Image.Image]:
        """shape.n images per prompt, prompt by prompt; image i of a prompt has its seed + i."""
        # size and upscale always said: a model whose own default is its cascade's output still draws the
        # server's default, the base size, unless the request asked for more
        return self.pipe(prompts, negative_prompt=shape.negative_prompt or None, seed=seeds, steps=shape.steps,
                         guidance=shape.guidance, num_images=shape.n, progress=progress,
                         size=shape.side or self.resolution, upscale=shape.upscale)

    def safe_previews(self, images: list[Image.Image]) -> list[Image.Image]:
        """Previews pass the image filter like final images; a flagged one is blurred (the final image decides)."""
        if self._preview_filter is None:
            return images
        from ..safety.image_filter import blur

        return [img if v.allowed else blur(img) for img, v in zip(images, self._preview_filter.check(images))]

    def text_tokens(self, prompt: str) -> int:
        return len(self.pipe.encoder.tokenizer(prompt)["input_ids"])

    def image_tokens(self) -> int:
        """Denoiser tokens per image: what one image costs, as OpenAI's usage counts output tokens."""
        cfg = self.pipe.denoiser.cfg
        return (cfg.latent_size // cfg.patch) ** 2


def _image_filter(spec: str):
    if spec == "none":
        return None
    from ..safety.image_filter import ImageFilter, default_filter

    return default_filter() if spec == "opennsfw" else ImageFilter.from_spec(spec)
