"""Optional API keys and a per-key rate limit.

The key file holds only SHA-256 digests of keys, one per line (`#` comments; anything after the digest is
a label), so a leaked file gives no key away. `limner serve --new-key FILE` makes a key, appends its digest
and prints the key once.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from pathlib import Path

from ..common.files import write_atomic

DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_digests(path: str | Path) -> set[str]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no API key file at {str(path)!r}: make one with `limner serve --new-key {path}`")
    digests = set()
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        word = line.split("#", 1)[0].split()
        if not word:
            continue
        if not DIGEST.match(word[0]):
            raise ValueError(f"{path}:{n}: expected a SHA-256 hex digest of a key (64 hex digits), not {word[0][:20]!r}; "
                             "the file keeps digests only: make keys with `limner serve --new-key FILE`")
        digests.add(word[0])
    if not digests:
        raise ValueError(f"{path} holds no key digests: add one with `limner serve --new-key {path}`")
    return digests


def new_key(path: str | Path, label: str = "") -> str:
    """A fresh key; its digest is appended to `path` (created if missing). The key itself is kept nowhere."""
    key = "lk-" + secrets.token_urlsafe(32)
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_atomic(path, old + f"{digest(key)}  {label}".rstrip() + "\n")
    return key


class ApiKeys:
    """Checks `Authorization: Bearer KEY` against the digests; a token bucket per key (a burst of
    `per_minute` requests, refilled evenly over the minute)."""

    def __init__(self, path: str | Path, per_minute: float):
        self.digests = read_digests(path)
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}   # digest -> (tokens, at)
        self._lock = threading.Lock()

    def identify(self, authorization: str | None) -> str | None:
        """The key's digest, or None for a missing or unknown key."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        d = digest(key.strip())
        # compare against every digest in constant time, so timing tells nothing about near misses
        return d if any(hmac.compare_digest(d, known) for known in self.digests) else None

    def take(self, key_digest: str) -> float:
        """0 when the request may go; else the seconds until the key has a request again."""
        rate = self.per_minute / 60
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.get(key_digest, (self.per_minute, now))
            tokens = min(self.per_minute, tokens + (now - at) * rate)
            if tokens >= 1:
                self._buckets[key_digest] = (tokens - 1, now)
                return 0.0
            self._buckets[key_digest] = (tokens, now)
            return (1 - tokens) / rate
