"""The models `limner eval score` runs, from folders the user points to (nothing is downloaded): CLIP for
CLIPScore and CMMD, generative VQA models for VQAScore, any transformers vision model for FID/KID features.
Each has an `identity` (its files and settings) under which its scores are cached."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..common.files import digest
from ..models.local import model_folder

VQA_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'   # Lin et al. 2024, VQAScore


def folder_identity(folder: Path, *settings) -> str:
    """A model's cache key: its files' fingerprint and the settings that change its scores."""
    from ..pipeline.backends import fingerprint

    return digest(json.dumps(fingerprint(folder), sort_keys=True, default=str), *settings)


class FeatureExtractor(Protocol):
    """Images -> features [N, D] for FID/KID/CMMD; `identity` names the weights and settings."""

    identity: str

    def __call__(self, images: list[Image.Image]) -> np.ndarray: ...


class Clip:
    """L2-normalised CLIP embeddings of images and texts.

    `spec` is a transformers CLIP folder (a CLIPModel; a CLIPVisionModelWithProjection serves images only)
    or `open_clip:NAME[:PRETRAINED]` (a weights file or tag) when open_clip is installed. Also a
    FeatureExtractor: calling it embeds images.
    """

    def __init__(self, spec: str, device: str = "cpu", batch_size: int = 32):
        self.spec, self.device, self.batch_size = str(spec), device, batch_size
        if self.spec.startswith("open_clip:"):
            try:
                import open_clip
            except ImportError:
                raise ValueError(f"{spec}: open_clip is not installed (pip install open_clip_torch), or pass a "
                                 f"transformers CLIP folder instead") from None
            rest = self.spec.removeprefix("open_clip:")
            name, _, pretrained = (rest, "", "") if rest.startswith("hf-hub:") else rest.partition(":")
            model, _, self._preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
            self._open = model.to(device).eval(), open_clip.get_tokenizer(name)
            self.has_text = True
            weights = Path(pretrained)
            self.identity = digest(self.spec, weights.stat().st_mtime_ns if weights.is_file() else None)
            return
        from ..models.clip import ClipEmbedder

        folder = model_folder(spec, "CLIP model")
        self._open, self._hf = None, ClipEmbedder(folder, device, batch_size)
        kind = self._hf.config.get("model_type")
        if kind not in ("clip", "clip_vision_model"):
            raise ValueError(f"{spec} holds a {kind!r} model, not CLIP: pass a transformers CLIPModel folder")
        self.has_text = self._hf.has_text
        self.identity = folder_identity(folder)

    def images(self, images: list[Image.Image]) -> np.ndarray:
        if self._open is None:
            return self._hf.images(images).numpy()
        import torch

        with torch.no_grad():
            out = [self._open[0].encode_image(torch.stack([self._preprocess(im.convert("RGB")) for im in
                                                           images[i:i + self.batch_size]]).to(self.device))
                   for i in range(0, len(images), self.batch_size)]
            return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1).cpu().numpy()

    __call__ = images

    def texts(self, texts: list[str]) -> np.ndarray:
        if not self.has_text:
            raise ValueError(f"{self.spec} has no CLIP text tower: CLIPScore needs a full CLIPModel folder")
        if self._open is None:
            return np.concatenate([self._hf.texts(texts[i:i + 256]).numpy() for i in range(0, len(texts), 256)])
        import torch

        with torch.no_grad():
            emb = self._open[0].encode_text(self._open[1](texts).to(self.device)).float()
            return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()


class TransformersFeatures:
    """The pooled output of a transformers vision model folder (ViT, DINOv2, ConvNeXt, ...), or the mean
    of its last hidden state where it has no pooler."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoImageProcessor, AutoModel

        folder = model_folder(path, "vision model")
        self.device, self.batch_size = device, batch_size
        try:
            self.processor = AutoImageProcessor.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder).to(device).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} holds no vision model with an image processor that transformers can load: "
                             f"{e}") from None
        self.identity = folder_identity(folder)

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                pixels = self.processor(images=[im.convert("RGB") for im in images[i:i + self.batch_size]],
                                        return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
                o = self.model(pixel_values=pixels)
                pooled = getattr(o, "pooler_output", None)
                if pooled is None:
                    h = o.last_hidden_state
                    pooled = h.mean(dim=tuple(range(2, h.ndim)) if h.ndim == 4 else 1)
                out.append(pooled.reshape(len(pixels), -1).float().cpu())
        return torch.cat(out).numpy()


def load_features(spec: str, device: str = "cpu", batch_size: int = 32) -> FeatureExtractor:
    """The extractor for a --features spec: CLIP (a folder or open_clip:...) embeds, any other vision model pools."""
    if str(spec).startswith("open_clip:"):
        return Clip(spec, device, batch_size)
    kind = json.loads((model_folder(spec, "vision model") / "config.json").read_text()).get("model_type")
    if kind in ("clip", "clip_vision_model"):
        return Clip(spec, device, batch_size)
    return TransformersFeatures(spec, device, batch_size)


class Vqa:
    """P("yes") as the first answer token of a generative VQA model the user points to (BLIP VQA, BLIP-2,
    InstructBLIP, LLaVA-style chat models, ...): softmax of the first decoded token's logits, summed over
    the vocabulary's single-token spellings of yes ("Yes", "yes", " Yes", ...)."""

    def __init__(self, path: str, question: str = VQA_QUESTION, device: str = "cpu", batch_size: int = 8):
        import transformers

        folder = model_folder(path, "VQA model")
        arch = (json.loads((folder / "config.json").read_text()).get("architectures") or [""])[0]
        cls = getattr(transformers, arch, None) or transformers.AutoModelForImageTextToText
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(folder)
            self.model = cls.from_pretrained(folder).to(device).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} holds no vision-language model that transformers can load: {e}") from None
        if not self.model.can_generate() or getattr(self.processor, "tokenizer", None) is None:
            raise ValueError(f"{path} is a {arch or 'model'} that does not generate text: pass a generative VQA "
                             f"model (BLIP VQA, BLIP-2, LLaVA, ...)")
        tok = self.processor.tokenizer
        tok.padding_side = "left"   # decoder-only models answer right after each question
        ids = [tok(w, add_special_tokens=False)["input_ids"] for w in ("Yes", "yes", " Yes", " yes")]
        self.yes = sorted({i[0] for i in ids if len(i) == 1})
        if not self.yes:
            raise ValueError(f"the tokenizer of {path} has no single token for 'yes'; VQAScore reads that token")
        self.question, self.device, self.batch_size = question, device, batch_size
        self.identity = folder_identity(folder, question)

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        import torch

        chat = getattr(self.processor, "chat_template", None) is not None
        out = []
        for i in range(0, len(images), self.batch_size):
            texts = [self.question.format(p) for p in prompts[i:i + self.batch_size]]
            if chat:
                texts = [self.processor.apply_chat_template([{"role": "user", "content": [
                    {"type": "image"}, {"type": "text", "text": t}]}], add_generation_prompt=True) for t in texts]
            inputs = self.processor(images=[im.convert("RGB") for im in images[i:i + self.batch_size]], text=texts,
                                    return_tensors="pt", padding=True).to(self.device, dtype=self.model.dtype)
            with torch.inference_mode():
                gen = self.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                                          return_dict_in_generate=True)
            out.append(torch.softmax(gen.logits[0].float(), -1)[:, self.yes].sum(-1).cpu().numpy())
        return np.concatenate(out)
