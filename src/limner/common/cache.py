"""limner's on-disk cache: one root for everything derived and kept between runs.

`cache_root()` is $LIMNER_CACHE, else $XDG_CACHE_HOME/limner, else ~/.cache/limner; each user of the
cache takes a folder of its own under it (prompt_screen/, text_onnx/, suites/, digests/).

`file_digest(path)` is the content digest of a file, computed once and then remembered under
digests/, keyed by the file's resolved path, size, inode, modification and change times: a file
rewritten in place, replaced, or copied over with its old modification time kept (`cp -p`, rsync -t,
tar) gets a new change time, so its digest is computed again; a remembered digest is only ever
reused for the very file it was computed from.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .files import write_atomic


def cache_root() -> Path:
    if os.environ.get("LIMNER_CACHE"):
        return Path(os.environ["LIMNER_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "limner"
    return Path.home() / ".cache" / "limner"


def _hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path, cache: str | Path | None = None) -> str:
    """blake2b digest of the file's bytes, remembered by its stat (see the module's docstring)."""
    path = Path(path).resolve()
    st = path.stat()
    stat_key = json.dumps([str(path), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns])
    memo = Path(cache) if cache is not None else cache_root() / "digests"
    entry = memo / (hashlib.blake2b(stat_key.encode(), digest_size=16).hexdigest() + ".json")
    try:
        record = json.loads(entry.read_text())
        if record.get("stat") == stat_key:
            return record["digest"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    digest = _hash_file(path)
    try:
        write_atomic(entry, json.dumps({"stat": stat_key, "digest": digest}).encode())
    except OSError:   # a read-only cache: the digest is just computed again next time
        pass
    return digest
