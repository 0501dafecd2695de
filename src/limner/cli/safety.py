"""`limner safety check | eval`: the prompt filter on prompts you give, and its red-team report."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def read_prompts(args) -> list[tuple[int | None, str]]:
    """(line number, prompt) pairs: the prompt argument (no line), else the non-blank lines of --file, else
    those of stdin ("-" or nothing). Line numbers count from 1 and include blank lines, as an editor shows them."""
    prompt = getattr(args, "prompt", None)
    if prompt is not None and prompt != "-":
        return [(None, prompt)]
    if getattr(args, "file", None):
        path = Path(args.file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {path} not found")
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = sys.stdin.read().splitlines()
    prompts = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise ValueError("no prompts to check: give one as an argument, or lines in --file or on stdin")
    return prompts


def cmd_safety_check(args) -> int:
    """One line per prompt; exit 0 if every prompt is allowed, 1 if any is blocked. A JSON line carries its
    prompt (and its line number in the file or stdin), so lines can be matched up after filtering or sorting."""
    from ..safety.prompt_filter import default_filter

    numbered = read_prompts(args)
    prompts = [p for _, p in numbered]
    verdicts = default_filter(getattr(args, "policy", None)).check_many(prompts)
    for (line, prompt), v in zip(numbered, verdicts):
        if getattr(args, "json", False):
            where = {} if line is None else {"line": line}
            print(json.dumps({**where, "prompt": prompt, **v.to_dict()}, ensure_ascii=False))
        elif v.allowed:
            print(f"allowed  {prompt}")
        else:
            print(f"blocked  {v.category} ({v.layer}: {v.matched})  {prompt}")
    return 0 if all(v.allowed for v in verdicts) else 1


def cmd_safety_eval(args) -> int:
    from ..eval import redteam
    from ..safety.prompt_filter import PromptFilter

    filt = PromptFilter.from_policy(getattr(args, "policy", None))
    report = redteam.evaluate(filt, getattr(args, "benchmarks", None) or redteam.DEFAULT_BENCHMARKS,
                              getattr(args, "benign", None) or redteam.DEFAULT_BENIGN,
                              limit=getattr(args, "limit", None))
    print(json.dumps(report, indent=2) if getattr(args, "json", False) else redteam.format_report(report))
    if getattr(args, "out", None):
        for path in redteam.write_outputs(report, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    from ..eval.redteam import BENIGN_SETS, DEFAULT_BENCHMARKS, DEFAULT_BENIGN

    s = subparsers.add_parser("safety", help="the prompt filter: check prompts, red-team report")
    ss = s.add_subparsers(dest="safety_verb", required=True)
    c = ss.add_parser("check", help="check prompts against the content policy (exit 1 if any is blocked)")
    c.add_argument("prompt", nargs="?", help="the prompt; '-' or nothing reads one prompt per line from stdin")
    c.add_argument("--file", help="a file with one prompt per line")
    c.add_argument("--json", action="store_true", help='one JSON line per prompt: {"line" (with --file or stdin), '
                   '"prompt", "allowed", "category", "score", "layer", "matched"}')
    c.add_argument("--policy", help="a policy YAML merged over the shipped one")
    c.set_defaults(fn=cmd_safety_check)
    e = ss.add_parser("eval", help="red-team report: block rates, obfuscations, false refusals, latency")
    e.add_argument("--benchmarks", default=str(DEFAULT_BENCHMARKS),
                   help="the shared/benchmarks folder with the benign prompt sets (default: %(default)s)")
    e.add_argument("--benign", action="append", choices=[*BENIGN_SETS, "shapes_world"],
                   help=f"benign sets for false refusals (repeatable; default: {' '.join(DEFAULT_BENIGN)})")
    e.add_argument("--limit", type=int, help="only the first N prompts of every set (a quick run)")
    e.add_argument("--policy", help="a policy YAML merged over the shipped one")
    e.add_argument("--json", action="store_true", help="the whole report as JSON")
    e.add_argument("--out", help="folder for report.json and false_refusals.tsv (to tune the policy)")
    e.set_defaults(fn=cmd_safety_eval)
