"""The WebDataset shard format, written and read in one place.

A shard is a plain tar whose members are grouped into samples by key: `KEY.EXT` for every member, the key
being the member's path up to the first dot of its file name, EXT the rest, lower-cased. A sample that
`limner data run` writes (`write_shard`) is

    KEY.jpg | KEY.png | KEY.webp   the image, its bytes as stored
    KEY.json                        {"key": source key, "captions": {kind: text}, "sources": {kind: who wrote it},
                                     "weight": sampling weight}
    KEY.txt                         the alt-text, when kept (the plain WebDataset caption)

and `read_shard` reads any WebDataset tar (other image types too), so `limner data` can curate shards from
elsewhere and `limner train` can read them.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..common.files import atomic_path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


@dataclass
class Sample:
    """One key's members: extension (lower case, without the dot) -> bytes, in the order the tar holds them."""

    key: str
    members: dict[str, bytes]

    def image(self, exts: Iterable[str] = IMAGE_EXTS) -> tuple[str, bytes] | None:
        """(extension, bytes) of the sample's first image member of one of `exts`, or None."""
        exts = tuple(exts)
        return next(((e, data) for e, data in self.members.items() if e in exts), None)

    def text(self) -> str | None:
        """KEY.txt as text (undecodable bytes replaced), or None."""
        return self.members["txt"].decode("utf-8", "replace") if "txt" in self.members else None

    def meta(self) -> dict:
        """KEY.json parsed ({} without one); ValueError when it is not valid JSON."""
        if "json" not in self.members:
            return {}
        try:
            return json.loads(self.members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{self.key}.json is not valid JSON") from None


def read_shard(path: str | Path) -> tuple[list[Sample], str | None]:
    """The samples of a tar in the order their keys first appear, and None; or, for a tar cut short or
    damaged (a download stopped half-way, a full disk), the samples read before the damage and what it was.
    Members that are not regular files, or whose names have no dot, are not part of any sample."""
    groups: dict[str, dict[str, bytes]] = {}
    error = None
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.isfile() or "." not in os.path.basename(m.name):
                    continue
                folder, base = os.path.split(m.name)
                stem, ext = base.split(".", 1)
                groups.setdefault(os.path.join(folder, stem), {})[ext.lower()] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        error = str(e)
    return [Sample(key, members) for key, members in groups.items()], error


def write_shard(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> Path:
    """Write (key, {extension: bytes}) samples as a tar, atomically (a reader never sees half a shard).
    Member times are fixed, so the same samples always make the same bytes. Keys may hold no dots."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        for key, members in samples:
            if "." in os.path.basename(key):
                raise ValueError(f"shard key {key!r} has a dot: readers would split it there")
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return Path(path)
