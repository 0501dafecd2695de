"""The one gate every entry point (CLI, Python API, HTTP server) sends requests and images through.

before sampling:  prompt filter on the prompt                          -> PromptBlocked
after decoding:   image filter on every image                          -> ImageBlocked (or blurred / warned)
                  invisible watermark carrying (model, request) tags,  and the parameters for the PNG
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from PIL import Image


@dataclass
class SafetyConfig:
    prompt_filter: bool = True
    policy: str | None = None            # a policy YAML; None: the shipped one
    image_filter: str = "opennsfw"       # "opennsfw", "clip:PATH" or "none"
    watermark: bool = True
    watermark_key: int | None = None     # None: limner's public key, so anyone can check limner images
    enlarge: int = 1                     # nearest-neighbour enlargement before the watermark (`--scale`):
                                         # marked at 64 px a chip is one pixel, which JPEG 75 erases

    @classmethod
    def off(cls) -> "SafetyConfig":
        """Everything off: for research runs by someone entitled to turn it off, never the server default."""
        return cls(prompt_filter=False, image_filter="none", watermark=False)


class Guard:
    def __init__(self, config: SafetyConfig | None = None):
        self.config = config or SafetyConfig()
        self._image_filter = None

    def check_prompt(self, prompt: str) -> None:
        """Raise PromptBlocked (code content_policy_violation) naming the category. Negative prompts are
        not checked: they steer away from what they name, and "nsfw, nude, blurry" is a common one."""
        if not self.config.prompt_filter:
            return
        from .prompt_filter import enforce

        enforce(prompt, self.config.policy)

    def finish(self, images: list[Image.Image], params: list[dict], model: str) -> list[Image.Image]:
        """Image filter, then watermark; records the request id and payload in each image's parameters."""
        if self.config.image_filter != "none":
            from .image_filter import ImageFilter, default_filter

            if self._image_filter is None:
                spec = self.config.image_filter
                self._image_filter = default_filter() if spec == "opennsfw" else ImageFilter.from_spec(spec)
            images = self._image_filter.apply(images)
        from . import watermark as W

        out = []
        for img, p in zip(images, params):
            if self.config.enlarge > 1:
                img = img.resize((img.width * self.config.enlarge, img.height * self.config.enlarge), Image.NEAREST)
            # by default the request is named by its parameters, so the same seed still gives the same image
            p = dict(p, request_id=p.get("request_id") or request_id(p))
            if self.config.watermark:
                payload = W.payload_for(model, p["request_id"])
                img = W.embed(img, payload, key=self.config.watermark_key or W.KEY)
                p["watermark"] = f"limner:{payload:08x}"
            img.info["parameters"] = p
            out.append(img)
        return out


def request_id(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
