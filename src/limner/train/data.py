"""Training data: Shapes World or WebDataset shards, with every caption kept per image.

Text states and latents are computed once and cached on disk under a key made of their content
(encoder or autoencoder identity plus the exact inputs), so later epochs and later runs skip the
encoders. Batches are a pure function of (seed, step), which is what makes `--resume` continue the
same data order.
"""
from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..common.files import atomic_path, digest
from ..common.cache import cache_root
from ..common.progress import progress
from ..data.shards import read_shard
from ..world import captions as C
from ..world.captioners import caption
from ..world.scene import Scene, render, sample_scene
from ..world.suites import held_out_prompts, normalise

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class DataConfig:
    source: str = "shapes"  # "shapes" or "webdataset"
    shards: str | None = None  # glob of .tar shards for webdataset
    scenes: int = 20000  # shapes: how many scenes
    resolution: int = 64
    seed: int = 0
    detailed_fraction: float = 0.25  # shapes: share of scenes that also get a long caption
    # shapes: spatial captions also name the groups their relations leave out, so every caption but the
    # alt-text describes the whole scene (a partial caption teaches the model to add unasked objects)
    complete_spatial: bool = False
    # how often each caption kind is picked when an image has it (alt-text vs synthetic kinds)
    caption_weights: dict = field(default_factory=lambda: {"alt": 0.1, "count": 0.4, "spatial": 0.25, "detailed": 0.25})
    # shapes: more captioners (world/captioners.py: terse, prose_count, relational, scene_walk, inventory,
    # british_detailed, templates), each adding its caption under its own name; weigh them in caption_weights
    captioners: list = field(default_factory=list)
    # a language model that rewrites one caption per image into a "paraphrase" caption, weighed in caption_weights
    # (or by its own `weight`): {base_url, model, api_key_env} or {path}, plus n, ... (data/paraphrase.py)
    paraphraser: dict | None = None
    cache_dir: str | None = None  # cached latents, text states and paraphrases; None: <limner cache>/train

    def __post_init__(self):
        from ..data.paraphrase import kind_weight
        from ..world.captioners import CAPTIONERS

        self.caption_weights = kind_weight(self.paraphraser, self.caption_weights, "data.caption_weights")
        unknown = [c for c in self.captioners if c not in CAPTIONERS]
        if unknown:
            raise ValueError(f"data.captioners: unknown {unknown}; known: {', '.join(CAPTIONERS)}")


@dataclass
class Record:
    captions: dict[str, str]
    scene: dict | None = None  # shapes
    image: bytes | None = None  # webdataset
    weight: float = 1.0
    boxes: list[dict] | None = None  # webdataset: KEY.json's "boxes" (`limner data`'s boxes stage)


def save_tensors(obj, path: Path) -> None:
    with atomic_path(path) as tmp:  # a cache entry is whole or absent
        torch.save(obj, tmp)


def shapes_records(cfg: DataConfig) -> list[Record]:
    rng = random.Random(cfg.seed)
    held = held_out_prompts()
    out = []
    for i in range(cfg.scenes):
        scene = sample_scene(rng)
        kinds = ["alt", "count", "spatial"] + (["detailed"] if rng.random() < cfg.detailed_fraction else [])
        caps = C.captions(scene, rng, kinds, cfg.complete_spatial)
        if cfg.captioners:   # their own stream: the scenes and template captions stay those of the same config without
            caps |= caption(scene, random.Random(f"captioners-{cfg.seed}-{i}"), cfg.captioners)
        caps = {k: v for k, v in caps.items() if normalise(v) not in held}
        out.append(Record(caps, scene=scene.to_dict()))
    return out


def webdataset_records(pattern: str) -> list[Record]:
    """Samples grouped by key, WebDataset style: KEY.jpg/png/webp + KEY.txt and/or KEY.json.

    KEY.json may hold {"captions": {kind: text, ...}, "weight": w} as `limner data` writes it; a bare
    KEY.txt is taken as the alt-text.
    """
    paths = sorted(glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no WebDataset shards match {pattern!r}")
    out = []
    for path in paths:
        samples, error = read_shard(path)
        if error is not None:
            raise ValueError(f"WebDataset shard {path} is damaged ({error}): rewrite it, or leave it out of data.shards")
        for s in samples:
            image = s.image(IMAGE_EXTS)
            if image is None:
                continue
            meta, text = s.meta(), s.text()
            caps = dict(meta.get("captions", {}))
            if text is not None:
                caps.setdefault("alt", text.strip())
            if caps:
                out.append(Record(caps, image=image[1], weight=float(meta.get("weight", 1.0)), boxes=meta.get("boxes")))
    return out


def layout_of(rec: Record):
    """A record's layout [(phrase, (x0, y0, x1, y1))] on the square that `image_of` draws: a Shapes World scene's
    true boxes, or a detector's boxes from curation; None without either (such images train the text path)."""
    if rec.scene is not None:
        from ..world.layout import of_scene

        return of_scene(Scene.from_dict(rec.scene).objects)
    if not rec.boxes:
        return None
    from ..data.boxes import to_layout

    with Image.open(io.BytesIO(rec.image)) as im:   # reads the header only
        width, height = im.size
    return to_layout(rec.boxes, width, height) or None


def load_records(cfg: DataConfig) -> list[Record]:
    if cfg.source == "shapes":
        records = shapes_records(cfg)
    elif cfg.source == "webdataset":
        if not cfg.shards:
            raise ValueError("data.source is webdataset but data.shards (a glob of .tar files) is not set")
        records = webdataset_records(cfg.shards)
    else:
        raise ValueError(f"unknown data.source {cfg.source!r}: use 'shapes' or 'webdataset'")
    if cfg.paraphraser is not None:
        from ..data.paraphrase import add_paraphrases

        held = held_out_prompts() if cfg.source == "shapes" else set()   # the suites are Shapes World's
        add_paraphrases([r.captions for r in records], cfg.paraphraser, cfg.seed, cache_folder(cfg.cache_dir) /
                        "paraphrase", allowed=lambda text: normalise(text) not in held)
    return records


def training_records(cfg: DataConfig) -> tuple[list[Record], np.ndarray | None]:
    """The records a kind trains on, and their sampling weights (None when all are 1)."""
    records = load_records(cfg)
    if not records:
        raise ValueError("the data source yielded no image-caption pairs")
    weights = np.array([r.weight for r in records]) if any(r.weight != 1.0 for r in records) else None
    return records, weights


def image_of(rec: Record, resolution: int) -> Image.Image:
    if rec.scene is not None:
        return render(Scene.from_dict(rec.scene), resolution)
    img = Image.open(io.BytesIO(rec.image)).convert("RGB")
    side = min(img.size)  # centre crop to a square, then resize
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)


def cache_folder(cache_dir: str | None) -> Path:
    """Where cached latents and text states live: `data.cache_dir`, else the limner cache's train/ folder."""
    return Path(cache_dir) if cache_dir else cache_root() / "train"


def cached_text(encoder, texts: list[str], cache_dir: str | None, chunk: int = 4096, show: bool = False):
    """Token states for unique texts: a flat (tokens, dim) fp16 tensor, offsets and an index by text."""
    # similar lengths batch with little padding; ties broken by the text, so that the chunks (and with them
    # the cache keys) do not depend on set order, which Python randomises per process
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    bar = progress(len(unique), "text states", unit="text", enabled=show)
    flat, lengths = [], []
    for i in range(0, len(unique), chunk):
        part = unique[i : i + chunk]
        path = cache_folder(cache_dir) / "text" / f"{digest(encoder.name, encoder.max_length, *part)}.pt"
        if path.exists():
            states = torch.load(path)
        else:
            states = [s.half() for s in encoder.encode(part)]
            save_tensors(states, path)
        flat += states
        lengths += [len(s) for s in states]
        bar.update(len(part))
    bar.close()
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return torch.cat(flat), offsets, {t: j for j, t in enumerate(unique)}


def cached_text_blocks(encoder, blocks: list[list[str]], cache_dir: str | None, show: bool = False):
    """`cached_text` of each block, merged: a block's cache entries depend only on its own texts, so a dataset
    that grows by whole blocks re-encodes only the new ones."""
    flats, lengths, index = [], [], {}
    for texts in blocks:
        flat, offsets, idx = cached_text(encoder, texts, cache_dir, show=show)
        for t, j in idx.items():
            if t not in index:
                index[t] = len(lengths)
                flats.append(flat[offsets[j] : offsets[j + 1]])
                lengths.append(int(offsets[j + 1] - offsets[j]))
    return torch.cat(flats), np.concatenate([[0], np.cumsum(lengths)]), index


@torch.no_grad()
def cached_latents(vae, vae_id: str, records: list[Record], resolution: int, cache_dir: str | None,
                   chunk: int = 2048, show: bool = False) -> torch.Tensor:
    from ..models.autoencoder import to_latent

    bar = progress(len(records), "latents", unit="image", enabled=show)
    out = []
    for i in range(0, len(records), chunk):
        part = records[i : i + chunk]
        key = digest(vae_id, resolution, *[json.dumps(r.scene, sort_keys=True) if r.scene else r.image for r in part])
        path = cache_folder(cache_dir) / "latents" / f"{key}.pt"
        if path.exists():
            z = torch.load(path)
        else:
            zs = []
            for j in range(0, len(part), 256):
                x = torch.stack([to_tensor(image_of(r, resolution)) for r in part[j : j + 256]])
                zs.append(to_latent(vae, x).half())
            z = torch.cat(zs)
            save_tensors(z, path)
        out.append(z)
        bar.update(len(part))
    bar.close()
    return torch.cat(out)


def unweighted_kinds(records: list[Record], weights: dict) -> list[str]:
    """Weighted caption kinds that no record carries: a misspelt kind would otherwise be drawn never, and an
    image none of whose kinds is weighted falls back to all its captions alike (see `pick_captions`)."""
    present = {k for r in records for k in r.captions}
    return sorted(k for k, w in weights.items() if w > 0 and k not in present)


def pick_captions(records: list[Record], idx: np.ndarray, weights: dict, rng: np.random.Generator) -> list[str]:
    """One caption per image, drawn by kind weight among the kinds this image has."""
    out = []
    for i in idx:
        caps = records[i].captions
        kinds = [k for k in caps if weights.get(k, 0) > 0] or list(caps)
        w = np.array([weights.get(k, 1.0) for k in kinds], np.float64)
        out.append(caps[kinds[rng.choice(len(kinds), p=w / w.sum())]])
    return out


def batch_indices(n: int, step: int, batch: int, seed: int, rank: int = 0, world: int = 1,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Indices of this rank's share of the global batch at `step`: epochs are seeded permutations,
    or, with per-record weights, seeded weighted draws. Stateless, so a resumed run continues exactly."""
    glob_b = batch * world
    if weights is not None:
        rng = np.random.default_rng([seed, step])
        idx = rng.choice(n, size=glob_b, p=weights / weights.sum())
    else:
        start = step * glob_b
        idx = np.empty(glob_b, np.int64)
        for j in range(glob_b):
            epoch, pos = divmod(start + j, n)
            if j == 0 or pos == 0:
                perm = np.random.default_rng([seed, epoch]).permutation(n)
            idx[j] = perm[pos]
    return idx[rank * batch : (rank + 1) * batch]
