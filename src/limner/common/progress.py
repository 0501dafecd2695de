"""One progress bar for every long job (training, curation, generation for a suite, evaluation): tqdm,
on stderr so stdout stays for results. On a terminal it rewrites one line; elsewhere (CI logs, files)
tqdm prints a line at most every `interval` seconds."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int, desc: str, *, unit: str = "it", initial: int = 0, enabled: bool = True,
             interval: float | None = None) -> tqdm:
    """A bar over `total` items starting at `initial` (a resumed job); `enabled=False` gives a silent one
    that still counts. Use `.update(n)`, `.set_postfix(loss=...)`, `.close()` (or `with progress(...)`)."""
    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not enabled, mininterval=interval if interval is not None else (0.1 if tty else 10.0),
                leave=True)
