"""Where image-text pairs come from: a folder, WebDataset tar shards, or a parquet manifest.

A source is cut into shards that a worker can read on its own (a list of files, one tar, a row range
of a parquet file), so the local and the Ray executor split the same work the same way, and a resumed
run can skip whole shards that are already done.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Iterator

from . import shards as webdataset

IMAGE_EXTS = tuple(f".{e}" for e in webdataset.IMAGE_EXTS)  # a folder source takes what a shard may hold
CAPTION_KEYS = ("alt", "caption", "text", "alt_text", "txt")


@dataclass
class SourceConfig:
    kind: str = "folder"  # "folder", "webdataset" or "parquet"
    path: str = ""  # a folder; a glob of .tar files; a parquet file (or a glob of them)
    shard_size: int = 256  # items per shard (folder and parquet; a tar is one shard)
    image_column: str = "image"  # parquet: image bytes, or a path (absolute or relative to the file)
    caption_column: str = "caption"


@dataclass
class Item:
    key: str  # unique and stable within the source
    data: bytes | None  # the encoded image as stored; None when it could not be read
    alt: str | None = None  # the original alt-text
    meta: dict = field(default_factory=dict)  # side-file metadata (e.g. a Shapes World scene)
    error: str | None = None  # why `data` is None


@dataclass
class Shard:
    index: int
    kind: str
    location: str  # a tar or parquet path; for a folder, the folder
    members: list[str] = field(default_factory=list)  # folder: relative image paths
    rows: tuple[int, int] = (0, 0)  # parquet: [start, stop)


def shards(cfg: SourceConfig) -> list[Shard]:
    if cfg.kind == "folder":
        root = Path(cfg.path)
        if not root.is_dir():
            raise FileNotFoundError(f"source folder {cfg.path!r} does not exist")
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) under {cfg.path!r}")
        n = cfg.shard_size
        return [Shard(i, "folder", str(root), files[j : j + n]) for i, j in enumerate(range(0, len(files), n))]
    if cfg.kind == "webdataset":
        paths = sorted(glob(cfg.path))
        if not paths:
            raise FileNotFoundError(f"no WebDataset shards match {cfg.path!r}")
        return [Shard(i, "webdataset", p) for i, p in enumerate(paths)]
    if cfg.kind == "parquet":
        import pyarrow.parquet as pq

        paths = sorted(glob(cfg.path))
        if not paths:
            raise FileNotFoundError(f"no parquet files match {cfg.path!r}")
        out = []
        for p in paths:
            n = pq.ParquetFile(p).metadata.num_rows
            out += [Shard(len(out), "parquet", p, rows=(j, min(j + cfg.shard_size, n))) for j in range(0, n, cfg.shard_size)]
        return out
    raise ValueError(f"unknown source kind {cfg.kind!r}: use folder, webdataset or parquet")


def read(shard: Shard, cfg: SourceConfig) -> Iterator[Item]:
    """The shard's items in a fixed order; unreadable entries come back with `error`, never raise."""
    if shard.kind == "folder":
        yield from _read_folder(shard)
    elif shard.kind == "webdataset":
        yield from _read_tar(shard)
    else:
        yield from _read_parquet(shard, cfg)


def _alt_and_meta(text: str | None, meta: dict) -> tuple[str | None, dict]:
    alt = text.strip() if text else None
    for k in CAPTION_KEYS:
        if not alt and isinstance(meta.get(k), str):
            alt = meta[k].strip()
    if not alt and isinstance(meta.get("captions"), dict):
        alt = meta["captions"].get("alt")
    return alt or None, meta


def _read_folder(shard: Shard) -> Iterator[Item]:
    root = Path(shard.location)
    for rel in shard.members:
        path = root / rel
        stem = path.with_suffix("")
        try:
            data = path.read_bytes()
            err = None
        except OSError as e:
            data, err = None, f"unreadable: {e.strerror or e}"
        txt = stem.with_suffix(".txt")
        meta = _json_file(stem.with_suffix(".json"))
        alt, meta = _alt_and_meta(txt.read_text(errors="replace") if txt.exists() else None, meta)
        yield Item(Path(rel).with_suffix("").as_posix(), data, alt, meta, err)


def _json_file(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {"json": value}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"json_error": f"{path.name} is not valid JSON"}


def _read_tar(shard: Shard) -> Iterator[Item]:
    samples, error = webdataset.read_shard(shard.location)
    for sample in samples:
        try:
            meta = sample.meta()
        except ValueError:
            meta = {"json_error": "the .json member is not valid JSON"}
        alt, meta = _alt_and_meta(sample.text(), meta if isinstance(meta, dict) else {})
        image = sample.image()
        if image is None:
            yield Item(sample.key, None, alt, meta, "no image member")
        else:
            yield Item(sample.key, image[1], alt, meta)
    if error is not None:  # a truncated tar still yields what came before
        yield Item(f"{Path(shard.location).name}:truncated", None, error=f"tar: {error}")


def _read_parquet(shard: Shard, cfg: SourceConfig) -> Iterator[Item]:
    import pyarrow.parquet as pq

    start, stop = shard.rows
    table = pq.read_table(shard.location)
    cols = table.column_names
    if cfg.image_column not in cols:
        raise ValueError(f"{shard.location}: no column {cfg.image_column!r} (columns: {', '.join(cols)}); "
                         "set source.image_column")
    rows = table.slice(start, stop - start).to_pylist()
    base = Path(shard.location).parent
    for i, row in enumerate(rows, start):
        key = str(row.get("key") or row.get("id") or f"{Path(shard.location).stem}/{i:08d}")
        value, err = row[cfg.image_column], None
        if isinstance(value, dict):  # HF datasets style {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, str):
            try:
                value = (Path(value) if os.path.isabs(value) else base / value).read_bytes()
            except OSError as e:
                value, err = None, f"unreadable: {e.strerror or e}"
        meta = {k: v for k, v in row.items() if k != cfg.image_column and isinstance(v, (str, int, float, bool))}
        text = row.get(cfg.caption_column)
        alt, meta = _alt_and_meta(text if isinstance(text, str) else None, meta)
        yield Item(key, value if isinstance(value, bytes) else None, alt, meta, err or (None if value else "no image"))
