"""`limner <verb>`: one module per verb, each with `add_parser(subparsers)` and its command functions.

Building the parser imports no model code (no torch): a verb's parser needs at most the names its help
lists. A command checks its arguments first and imports the library that does the work only then, so a
bad flag is refused in a moment and `limner --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from . import arena, data, eval, generate, safety, serve, train, upscale, watermark, world

VERBS = (generate, upscale, train, world, eval, safety, data, arena, watermark, serve)   # in the order `limner --help` lists


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="limner", description="Imagen-3-style text-to-image, end to end.")
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    # a user's mistake (or no network for a download): one line, no traceback
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as e:
        print(f"limner: error: {e}", file=sys.stderr)
        return 2
