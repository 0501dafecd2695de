"""Object boxes for `limner data`: an open-vocabulary detector finds the objects a sample's captions name.

The learned layout (the planner, and the grounded denoiser that draws its boxes) trains on images whose objects
have boxes. Shapes World scenes know theirs; a user's own photos do not, so this stage asks an open-vocabulary
detector from transformers (OWLv2, OWL-ViT or Grounding DINO, a local folder) for them. Its text queries are
short noun phrases taken from the sample's own captions ("two red apples on a wooden table" -> "red apple",
"wooden table"), or a fixed list from the config.

Every kept sample's KEY.json then holds `"boxes": [{"label", "box": [x0, y0, x1, y1], "score"}, ...]`, the box
in fractions of the image's width and height (the whole image, as stored), best score first. `to_layout` turns
that into the layout training reads, on the centre square crop training draws.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..models.local import model_folder

WHAT = "open-vocabulary detector (OWLv2, OWL-ViT or Grounding DINO)"
# config.json's model_type -> how its outputs are read
KINDS = {"owlv2": "owl", "owlvit": "owl", "grounding-dino": "grounding-dino", "mm-grounding-dino": "grounding-dino"}
# the score a box needs when the config sets none: the model cards' own examples
DEFAULT_THRESHOLD = {"owl": 0.1, "grounding-dino": 0.3}
MIN_SIDE = 1e-3  # a box thinner than this (a fraction of the image), once clipped to it, is no object


@dataclass
class BoxConfig:
    detector: str | None = None  # a transformers detector folder; None: no boxes (the stage is off)
    labels: str | list = "captions"  # the queries: "captions" (phrases from each sample's captions) or a list
    max_labels: int = 8  # queries per image, at most (phrases from captions, in order of appearance)
    threshold: float | None = None  # the score a box needs; None: 0.1 for OWL models, 0.3 for Grounding DINO
    text_threshold: float = 0.25  # Grounding DINO: the score a token needs to be part of a box's label
    max_boxes: int = 16  # per image, the best scoring
    # a box overlapping a better one of the same label by more than this IoU is the same object found twice
    # (transformers' post-processing keeps every box; a layout must count each object once); 1.0: keep all
    nms_iou: float = 0.5
    batch_size: int = 8
    device: str = "cpu"

    def __post_init__(self):
        if isinstance(self.labels, str):
            if self.labels != "captions":
                raise ValueError(f"boxes.labels must be 'captions' or a list of phrases, not {self.labels!r}")
        elif not (isinstance(self.labels, list) and self.labels
                  and all(isinstance(x, str) and x.strip() for x in self.labels)):
            raise ValueError(f"boxes.labels must be 'captions' or a non-empty list of phrases, not {self.labels!r}")
        if self.threshold is not None and not 0 <= self.threshold < 1:
            raise ValueError(f"boxes.threshold must be in [0, 1), not {self.threshold}")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"boxes.nms_iou must be in (0, 1], not {self.nms_iou}")
        for name in ("max_labels", "max_boxes", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"boxes.{name} must be at least 1, not {getattr(self, name)}")

    def queries(self, captions: dict[str, str] | list[str]) -> list[str]:
        """The detector's text queries for one sample, given its captions."""
        if self.labels == "captions":
            return phrases(list(captions.values()) if isinstance(captions, dict) else captions, self.max_labels)
        return [x.strip() for x in self.labels]


# ------------------------------------------------------------------------------ queries from captions

# words that end a noun phrase: relations, verbs of placement, conjunctions
BREAKS = set("""and or with of on in at to into onto from by for near beside besides behind under underneath
beneath above below over inside outside between among around against along across toward towards atop than
next left right top bottom upper lower corner corners center centre middle side edge front while where which that
who whose is are was were be being been has have had sits sit sitting stands stand standing lies lie lying
placed there here it its they their them this these those each other both all another""".split())
# words dropped from a phrase: articles, numbers, quantifiers, intensifiers
SKIP = set("""a an the one two three four five six seven eight nine ten eleven twelve single pair couple dozen
some several many few more most no any every lots lot very directly just exactly only also""".split())
# phrases that name the picture itself, not an object in it
FRAME = set("photo photograph picture image scene view illustration drawing painting rendering render canvas "
            "background foreground shot closeup close-up".split())
WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*|\d+(?:[.,]\d+)?|[^\sa-z\d]")


def singular(word: str) -> str:
    """A plural noun's singular, by the common English rules ("boxes" -> "box", "puppies" -> "puppy")."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def phrases(captions: list[str], limit: int = 8, max_words: int = 4) -> list[str]:
    """Short noun phrases from captions, in order of appearance, without repeats: each caption is cut at
    punctuation and at relation words ("and", "with", "to the left of", ...), articles and numbers are
    dropped, and the head noun (the last word) is made singular, so "two red circles" and "a red circle" are
    one query. At most `limit` phrases of at most `max_words` words (the last ones: the head and what
    qualifies it)."""
    out: list[str] = []
    for text in captions:
        if not text:
            continue
        words: list[str] = []
        for tok in WORD.findall(text.lower()) + ["."]:
            if tok in SKIP or tok[0].isdigit():
                continue
            if tok in BREAKS or not tok[0].isalpha():
                if words and not all(w in FRAME for w in words):
                    phrase = " ".join(words[-max_words:-1] + [singular(words[-1])])
                    if phrase not in out:
                        out.append(phrase)
                        if len(out) == limit:
                            return out
                words = []
            else:
                words.append(tok)
    return out


# ------------------------------------------------------------------------------------------ the detector

_LOADED: dict[tuple[str, str], tuple] = {}  # (folder, device) -> (kind, processor, model): loaded once per process


def detector_kind(path: str) -> tuple[Path, str]:
    """(folder, model_type) of a detector, or an error saying what was expected; reads only its config.json,
    so a run checks it before any image is read."""
    folder = model_folder(path, WHAT)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):
        model_type = None
    if model_type not in KINDS:
        raise ValueError(f"{path} holds a {model_type!r} model, not an {WHAT}: boxes.detector expects a "
                         f"transformers folder whose config.json has model_type {' / '.join(KINDS)}")
    return folder, model_type


def load(path: str, device: str = "cpu") -> tuple[str, object, object]:
    """(kind, processor, model) of a detector folder, loaded once per process (never downloaded unless
    HF_HUB_OFFLINE=0, see models.local)."""
    folder, model_type = detector_kind(path)
    key = (str(folder), device)
    if key not in _LOADED:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            model = AutoModelForZeroShotObjectDetection.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not a complete {model_type} detector folder (it needs the model's "
                             f"weights and its processor: tokenizer and image processor files): {e}") from None
        _LOADED[key] = KINDS[model_type], processor, model.eval().to(device)
    return _LOADED[key]


class Detector:
    """`detect(images, queries)`: the boxes of each image's queries, as fractions of the image's size."""

    def __init__(self, cfg: BoxConfig):
        if not cfg.detector:
            raise ValueError("boxes.detector is not set: pass the folder of an " + WHAT)
        self.cfg = cfg
        self.kind, self.processor, self.model = load(cfg.detector, cfg.device)
        self.threshold = DEFAULT_THRESHOLD[self.kind] if cfg.threshold is None else cfg.threshold

    def detect(self, images: list, queries: list[list[str]]) -> list[list[dict]]:
        """One list per image of {"label": query, "box": [x0, y0, x1, y1], "score"}, best score first: boxes
        in fractions of the image's width and height, clipped to it. An image without queries gets []."""
        out: list[list[dict]] = [[] for _ in images]
        live = [i for i, q in enumerate(queries) if q]
        for s in range(0, len(live), self.cfg.batch_size):
            part = live[s : s + self.cfg.batch_size]
            for i, found in zip(part, self._batch([images[i].convert("RGB") for i in part], [queries[i] for i in part])):
                out[i] = found
        return out

    def _batch(self, images: list, queries: list[list[str]]) -> list[list[dict]]:
        import torch

        sizes = [(im.height, im.width) for im in images]
        if self.kind == "owl":  # one query list per image, all as long as the longest: padded with the image's
            # first query rather than the processor's " ", which would take boxes of its own (and make an
            # image's boxes depend on the other images in its batch)
            n = max(len(q) for q in queries)
            padded = [q + [q[0]] * (n - len(q)) for q in queries]
            inputs = self.processor(text=padded, images=images, return_tensors="pt", truncation=True)
        else:  # Grounding DINO reads one text per image, "a cat. a dog."
            inputs = self.processor(text=queries, images=images, return_tensors="pt", padding=True)
        inputs = inputs.to(self.cfg.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        # pixel boxes in each image's own frame (OWLv2's processor undoes its padding to a square)
        if self.kind == "owl":
            results = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.threshold, target_sizes=sizes)
            labels = [[q[j] if j < len(q) else q[0] for j in r["labels"].tolist()] for r, q in zip(results, queries)]
        else:
            results = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.threshold, text_threshold=self.cfg.text_threshold,
                target_sizes=sizes)
            labels = [[matching(t, q) for t in r["text_labels"]] for r, q in zip(results, queries)]
        return [self._boxes(r, labs, h, w) for r, labs, (h, w) in zip(results, labels, sizes)]

    def _boxes(self, result: dict, labels: list[str | None], height: int, width: int) -> list[dict]:
        found = []
        for label, score, (x0, y0, x1, y1) in zip(labels, result["scores"].tolist(), result["boxes"].tolist()):
            box = [min(max(v / side, 0.0), 1.0) for v, side in ((x0, width), (y0, height), (x1, width), (y1, height))]
            if label is None or box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
                continue  # a label no query matches, or a box outside the image (in OWLv2's padding) or without area
            found.append({"label": label, "box": [round(v, 4) for v in box], "score": round(score, 4)})
        found.sort(key=lambda b: -b["score"])
        return suppress(found, self.cfg.nms_iou)[: self.cfg.max_boxes]


def iou(a: list[float], b: list[float]) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def suppress(boxes: list[dict], max_iou: float) -> list[dict]:
    """Non-maximum suppression per label: boxes (best first) less those overlapping a kept box of the same
    label by more than `max_iou`. Boxes of different labels may overlap (a cup on a table)."""
    kept: list[dict] = []
    for b in boxes:
        if all(k["label"] != b["label"] or iou(k["box"], b["box"]) <= max_iou for k in kept):
            kept.append(b)
    return kept


def matching(text: str, queries: list[str]) -> str | None:
    """The query a Grounding DINO label (the words of its box's tokens, which can be part of a query or run
    over two) stands for: the exact query, else the one sharing most words with it; None if none does."""
    words = re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", re.sub(r"\[[a-z]+\]", " ", text.lower()))  # no [SEP]
    for q in queries:
        if q.lower().split() == words:
            return q
    shared = lambda q: len(set(words) & set(q.lower().split()))
    best = max(queries, key=shared, default=None)  # the first of equals
    return best if best is not None and shared(best) else None


def find_boxes(cfg: BoxConfig, images: list, captions: list[dict[str, str]]) -> list[list[dict]]:
    """The stage as the pipeline runs it: each image's boxes, queried by its captions (or the config's list)."""
    return Detector(cfg).detect(images, [cfg.queries(c) for c in captions])


# ------------------------------------------------------------------------------------ boxes to a layout


def to_layout(boxes: list[dict], width: int, height: int, min_score: float = 0.0,
              min_visible: float = 0.5) -> list[tuple[str, tuple[float, float, float, float]]]:
    """KEY.json's boxes as the layout a planner and a grounded denoiser train on: [(label, (x0, y0, x1, y1))] in
    fractions of the centre square crop that training draws of a width x height image (train/data.py image_of).
    Each box is moved into the crop's frame and clipped to it; a box with under `min_visible` of its area inside
    the crop, or a score under `min_score`, is left out."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    out = []
    for b in boxes:
        if b.get("score", 1.0) < min_score:
            continue
        x0, y0, x1, y1 = b["box"]
        px = [(x0 * width - left) / side, (y0 * height - top) / side, (x1 * width - left) / side, (y1 * height - top) / side]
        clipped = [min(max(v, 0.0), 1.0) for v in px]
        area = (px[2] - px[0]) * (px[3] - px[1])
        inside = max(clipped[2] - clipped[0], 0.0) * max(clipped[3] - clipped[1], 0.0)
        if area <= 0 or inside < min_visible * area or min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < MIN_SIDE:
            continue
        out.append((b["label"], tuple(clipped)))
    return out
