"""CLIP from a local folder: L2-normalised image and text embeddings.

The one CLIP loader: the CLIP image filter (`limner.safety.image_filter`), curation's semantic
deduplication and CLIPScore / CMMD in evaluation all embed through `ClipEmbedder`. Its folder is one of

- a transformers `CLIPModel` folder (both towers: images and texts);
- a `CLIPVisionModelWithProjection` folder (images only);
- a diffusers `StableDiffusionSafetyChecker` folder, or a Stable Diffusion pipeline folder holding
  `safety_checker/` (images only; the loaded checker, with its concept embeddings, is `towers.safety_checker`).

Images are preprocessed as transformers' CLIPImageProcessor does (`clip_pixels`), with the mean and std of
a preprocessor_config.json beside the weights where there is one. Weights load on first use, so making an
embedder costs nothing; torch and transformers are imported only then.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAFETY_CHECKER = "StableDiffusionSafetyChecker"


def clip_folder(path: str | Path) -> Path:
    """The folder holding the CLIP weights: `path`, or its `safety_checker/` (a Stable Diffusion pipeline)."""
    path = Path(path)
    folder = path / "safety_checker" if (path / "safety_checker" / "config.json").exists() else path
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no CLIP model at {path}: expected a folder with config.json (a CLIPModel, "
                                "CLIPVisionModelWithProjection or StableDiffusionSafetyChecker)")
    return folder


def normalisation(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std from a preprocessor_config.json beside the weights (or the pipeline's feature_extractor/)."""
    files = [folder / "preprocessor_config.json", folder.parent / "feature_extractor" / "preprocessor_config.json"]
    cfg = next((json.loads(f.read_text()) for f in files if f.exists()), {})
    return np.float32(cfg.get("image_mean", CLIP_MEAN)), np.float32(cfg.get("image_std", CLIP_STD))


def clip_pixels(images: list[Image.Image], size: int, mean=CLIP_MEAN, std=CLIP_STD):
    """CLIP preprocessing to a [N, 3, size, size] tensor: bicubic resize of the short side, centre crop, normalise."""
    import torch

    out = []
    for image in images:
        im = image.convert("RGB")
        short, long = sorted(im.size)
        long = int(size * long / short)  # exactly as transformers rounds it, so pixels match CLIPImageProcessor
        im = im.resize((size, long) if im.width <= im.height else (long, size), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / 255
        out.append(torch.from_numpy((arr - np.float32(mean)) / np.float32(std)).permute(2, 0, 1))
    return torch.stack(out)


@dataclass
class ClipTowers:
    """What a loaded CLIP folder provides: the vision tower and its projection always, the whole CLIPModel
    when it has a text tower, the diffusers safety checker when the folder is one."""

    vision: Any                  # a CLIPVisionTransformer
    projection: Any              # nn.Linear to the joint embedding space
    image_size: int
    mean: np.ndarray
    std: np.ndarray
    clip: Any = None             # transformers CLIPModel (text_model, text_projection), or None
    safety_checker: Any = None   # diffusers StableDiffusionSafetyChecker, or None

    @property
    def dim(self) -> int:
        return self.projection.out_features


class ClipEmbedder:
    """L2-normalised projected CLIP embeddings of images (and texts, given a CLIPModel folder), as float32
    CPU tensors [N, D]. See the module's docstring for the folders it reads."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 32):
        self.path = clip_folder(path)
        self.device, self.batch_size = device, batch_size

    @cached_property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    @property
    def has_text(self) -> bool:
        """Whether texts can be embedded (a CLIPModel folder), known without loading the weights."""
        return self.config.get("model_type") == "clip" and SAFETY_CHECKER not in self.config.get("architectures", [])

    @cached_property
    def towers(self) -> ClipTowers:
        mean, std = normalisation(self.path)
        if SAFETY_CHECKER in self.config.get("architectures", []):
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

            # transformers 5 refuses SDPA for this class; eager attention computes the same thing
            sd = StableDiffusionSafetyChecker.from_pretrained(self.path, attn_implementation="eager")
            sd = sd.to(self.device).eval()
            return ClipTowers(sd.vision_model, sd.visual_projection, sd.config.vision_config.image_size, mean, std,
                              safety_checker=sd)
        kind = self.config.get("model_type")
        if kind not in ("clip", "clip_vision_model"):
            raise ValueError(f"{self.path}/config.json is a {kind!r} model, not CLIP")
        from transformers import CLIPModel, CLIPVisionModelWithProjection

        text = kind == "clip"
        model = (CLIPModel if text else CLIPVisionModelWithProjection).from_pretrained(self.path)
        model = model.to(self.device).eval()
        vision_config = model.config.vision_config if text else model.config
        return ClipTowers(model.vision_model, model.visual_projection, vision_config.image_size, mean, std,
                          clip=model if text else None)

    def images(self, images: list[Image.Image]):
        """Projected image embeddings, L2-normalised: a float32 tensor [N, D]."""
        import torch

        t = self.towers
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                pixels = clip_pixels(images[i : i + self.batch_size], t.image_size, t.mean, t.std)
                pooled = t.vision(pixel_values=pixels.to(self.device)).pooler_output
                out.append(torch.nn.functional.normalize(t.projection(pooled).float(), dim=-1).cpu())
        return torch.cat(out)

    def texts(self, phrases: list[str]):
        """Projected text embeddings, L2-normalised: a float32 tensor [N, D] (a CLIPModel folder with its tokenizer)."""
        import torch

        model = self.towers.clip
        if model is None:
            raise ValueError(f"{self.path} has no CLIP text tower (it is a vision-only CLIP or a safety checker)")
        tok = self.tokenizer(phrases, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            pooled = model.text_model(input_ids=tok["input_ids"].to(self.device),
                                      attention_mask=tok["attention_mask"].to(self.device)).pooler_output
            return torch.nn.functional.normalize(model.text_projection(pooled).float(), dim=-1).cpu()

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)
