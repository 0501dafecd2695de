"""Files that are whole or absent, and content digests: the one home for both.

Every writer in limner goes through `atomic_path` (a file any library writes: PNG, safetensors, torch
checkpoints, parquet) or `atomic_dir` (a model folder): a reader, or a run killed half-way, sees the old
file or the whole new one, never a part.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` (text is UTF-8) to `path` through a temporary file in the same folder."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; when the block ends without an error it replaces `path`,
    otherwise it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path, lambda p: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(folder: str | Path):
    """Yield an empty temporary folder beside `folder`; when the block ends without an error it takes
    `folder`'s place (an old folder is removed first), otherwise it is removed and `folder` is kept."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(folder, os.mkdir)
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _beside(path: Path, make) -> Path:
    """A new, unused `.NAME.RANDOM.tmp` beside `path`, made by `make`. Not tempfile's mkstemp/mkdtemp: they
    create 0600 files and 0700 folders, and os.replace would keep that; made like this, the umask decides,
    as for any file written directly."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            make(tmp)
            return tmp
        except FileExistsError:
            continue


def digest(*parts: bytes | str | int | float, size: int = 16) -> str:
    """A short hex digest of the parts (bytes as they are, anything else as its str), each part delimited so
    that ("ab", "c") and ("a", "bc") differ. For cache keys, not for security."""
    h = hashlib.blake2b(digest_size=min(64, (size + 1) // 2))
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:size]
