"""`limner eval suites list|show|export`: look at and export the prompt suites of `limner.eval.suites`."""
from __future__ import annotations

import json
from pathlib import Path

from . import suites


def cmd_suites_list(args) -> int:
    listing = suites.list_suites(getattr(args, "benchmarks", None))
    width = max(map(len, listing))
    for name, desc in listing.items():
        print(f"{name:{width}s}  {desc}")
    return 0


def _load(args) -> list[suites.Prompt]:
    return suites.load_suite(args.name, getattr(args, "format", None), getattr(args, "limit", None),
                             getattr(args, "benchmarks", None))


def _tags(tags: dict) -> str:
    return "; ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in tags.items())


def cmd_suites_show(args) -> int:
    for p in _load(args):
        if getattr(args, "json", False):
            print(json.dumps(p.to_dict(), ensure_ascii=False))
        else:
            print(f"{p.id}\t{p.text}" + (f"\t[{_tags(p.tags)}]" if p.tags else ""))
    return 0


def cmd_suites_export(args) -> int:
    prompts = _load(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the JSONL that load_suite reads back (format "jsonl"), ids and constraints kept
    out.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    print(f"wrote {len(prompts)} prompts to {out}")
    return 0


def add_eval_suites_parser(eval_subparsers) -> None:
    """Register `suites` with `list`, `show` and `export` under the `limner eval` sub-parsers."""
    s = eval_subparsers.add_parser("suites", help="list, show or export prompt suites (benchmarks, Shapes World)")
    s.add_argument("--benchmarks", help="the shared benchmarks folder [$LIMNER_BENCHMARKS]")
    s.set_defaults(fn=cmd_suites_list)   # bare `limner eval suites` lists
    verbs = s.add_subparsers(dest="suites_verb")
    verbs.add_parser("list", help="suite names, descriptions and prompt counts").set_defaults(fn=cmd_suites_list)

    def source(p):
        p.add_argument("name", help="a suite name (see `list`), a file or folder, or an http(s) URL")
        p.add_argument("--format", choices=list(suites.FORMATS), help="the file format (default: from the name)")
        p.add_argument("--limit", type=int, help="only the first N prompts")

    sh = verbs.add_parser("show", help="print a suite's prompts: id, text, tags")
    source(sh)
    sh.add_argument("--json", action="store_true", help="one JSON object per prompt")
    sh.set_defaults(fn=cmd_suites_show)
    ex = verbs.add_parser("export", help="write a suite as JSONL (one prompt record per line)")
    source(ex)
    ex.add_argument("--out", required=True, help="the .jsonl file to write")
    ex.set_defaults(fn=cmd_suites_export)
