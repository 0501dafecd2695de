"""The prompt filter on the held-out sets of src/limner/eval/filter_sets (written before the policy was tuned for
them, never used to tune it): block rate per category x variant x language with Wilson 95% intervals, each
obfuscation of those prompts, and false refusals per language.

    OMP_NUM_THREADS=1 python benchmarks/prompt_filter_heldout.py [--split test|dev] [--lexical] [--out DIR]

The test split is reported as aggregate figures only; the prompts the filter missed or refused are listed
only for the dev split (`--split dev`), the one that may be used to improve the filter.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

from limner.common.files import write_atomic
from limner.eval import filter_sets
from limner.eval.redteam import OBFUSCATIONS, obfuscate
from limner.safety.prompt_filter import PromptFilter
from limner.world.evaluate import wilson

CATEGORIES = ("sexual", "minors", "real_person", "self_harm", "violence", "hate", "illegal")


def rate(verdicts: list[bool]) -> dict:
    """verdicts: True where the filter did what it should (blocked an unsafe prompt / refused a benign one)."""
    hits, n = sum(verdicts), len(verdicts)
    lo, hi = wilson(hits, n) if n else (0.0, 0.0)
    return {"n": n, "hits": hits, "rate": hits / n if n else 0.0, "ci95": [round(lo, 4), round(hi, 4)]}


def cell(r: dict) -> str:
    if not r["n"]:
        return "–"
    return f"{100 * r['rate']:.1f}% ({r['hits']}/{r['n']}; {100 * r['ci95'][0]:.0f}–{100 * r['ci95'][1]:.0f})"


def grouped(items: list, verdicts: list[bool], key) -> dict[str, dict]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for item, v in zip(items, verdicts):
        groups[key(item)].append(v)
    return {k: rate(vs) for k, vs in groups.items()}


def evaluate(filt: PromptFilter, split: str, folder: Path, seed: int = 0) -> dict:
    unsafe, benign = filter_sets.load("unsafe", split, folder), filter_sets.load("benign", split, folder)
    blocked = [not v.allowed for v in filt.check_many([p.text for p in unsafe])]
    refused = [not v.allowed for v in filt.check_many([p.text for p in benign])]
    r = {"split": split, "unsafe_all": rate(blocked),
         "by_variant": grouped(unsafe, blocked, lambda p: "translated" if p.variant == "translated" else p.variant),
         "by_language_variant": grouped(unsafe, blocked, lambda p: f"{p.lang}/{p.variant}"),
         "by_category_variant": grouped(unsafe, blocked, lambda p: f"{p.category}/{p.variant}"),
         "by_category_variant_language": grouped(unsafe, blocked, lambda p: f"{p.category}/{p.variant}/{p.lang}"),
         "by_language": grouped(unsafe, blocked, lambda p: p.lang),
         "obfuscations": {}, "benign_all": rate(refused),
         "false_refusals_by_language": grouped(benign, refused, lambda p: p.lang),
         "false_refusals_by_kind": grouped(benign, refused, lambda p: p.variant),
         "false_refusals_by_language_kind": grouped(benign, refused, lambda p: f"{p.lang}/{p.variant}")}
    # obfuscated forms of every prompt the obfuscation changes (it rewrites runs of 4+ ASCII letters, so the
    # Japanese, Chinese and Russian prompts are left out), and attack success: blocked plain, allowed obfuscated
    for how in OBFUSCATIONS:
        pairs = [(i, obfuscate(p.text, how, seed)) for i, p in enumerate(unsafe)]
        pairs = [(i, t) for i, t in pairs if t != unsafe[i].text]
        got = [not v.allowed for v in filt.check_many([t for _, t in pairs])]
        r["obfuscations"][how] = rate(got) | {
            "attack_success": sum(blocked[i] and not g for (i, _), g in zip(pairs, got)) / max(1, sum(blocked[i] for i, _ in pairs))}
    if split == "dev":   # only the dev split's prompts may be read
        r["missed"] = [f"{p.lang}/{p.variant}/{p.category}: {p.text}" for p, b in zip(unsafe, blocked) if not b]
        r["refused"] = [f"{p.lang}/{p.variant}: {p.text} -> {v.category} ({v.layer}: {v.matched})"
                        for p, v in zip(benign, filt.check_many([p.text for p in benign])) if not v.allowed]
    return r


def markdown(r: dict) -> str:
    out = [f"Split: **{r['split']}**. Cells: block rate (blocked/n; Wilson 95% interval in %).", "",
           "| variant | blocked |", "|---|---:|"]
    out += [f"| {k} | {cell(v)} |" for k, v in sorted(r["by_variant"].items())]
    out += [f"| obfuscation: {how} (attack success {100 * v['attack_success']:.1f}%) | {cell(v)} |"
            for how, v in r["obfuscations"].items()]
    out += [f"| **all unsafe (not obfuscated)** | {cell(r['unsafe_all'])} |", "",
            "| language | translated (en: plain) | paraphrase | violent intent | all | false refusals (hard) "
            "| false refusals (ordinary) | false refusals, all |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lv, fr = r["by_language_variant"], r["false_refusals_by_language"]
    empty = {"n": 0}
    for lang in filter_sets.LANGUAGES:
        first = lv.get(f"{lang}/plain") or lv.get(f"{lang}/translated") or empty
        out.append(f"| {lang} | {cell(first)} | {cell(lv.get(f'{lang}/paraphrase', empty))} "
                   f"| {cell(lv.get(f'{lang}/intent', empty))} | {cell(r['by_language'].get(lang, empty))} "
                   f"| {cell(r['false_refusals_by_language_kind'].get(f'{lang}/hard', empty))} "
                   f"| {cell(r['false_refusals_by_language_kind'].get(f'{lang}/ordinary', empty))} | {cell(fr.get(lang, empty))} |")
    out += [f"| **all** | | | | {cell(r['unsafe_all'])} | {cell(r['false_refusals_by_kind'].get('hard', empty))} "
            f"| {cell(r['false_refusals_by_kind'].get('ordinary', empty))} | {cell(r['benign_all'])} |", "",
            "| category | " + " | ".join(v for v in ("plain", "paraphrase", "translated", "intent")) + " |",
            "|---|---:|---:|---:|---:|"]
    cv = r["by_category_variant"]
    for c in CATEGORIES:
        out.append(f"| {c} | " + " | ".join(cell(cv.get(f"{c}/{v}", empty))
                                             for v in ("plain", "paraphrase", "translated", "intent")) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=str(filter_sets.FOLDER), help="the folder with unsafe_/benign_{test,dev}.yaml")
    ap.add_argument("--split", choices=filter_sets.SPLITS, default="test")
    ap.add_argument("--policy", help="a policy file merged over the default (as `limner safety check --policy`)")
    ap.add_argument("--lexical", action="store_true", help="word lists and combinations only (no encoder)")
    ap.add_argument("--out", help="folder for heldout_<split>.json")
    args = ap.parse_args()

    t = time.perf_counter()
    filt = PromptFilter.from_policy(args.policy, semantic=not args.lexical)
    r = evaluate(filt, args.split, Path(args.sets))
    print(f"filter: {'word lists only' if args.lexical else 'shipped cascade (lists, screen, int8, fp32 MiniLM)'}; "
          f"{time.perf_counter() - t:.1f} s; load average {os.getloadavg()[0]:.2f}\n")
    print(markdown(r))
    for key, what in (("missed", "Missed unsafe prompts"), ("refused", "Refused benign prompts")):
        if r.get(key):
            print(f"\n{what} ({len(r[key])}):\n" + "\n".join(f"- {line}" for line in r[key]))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.out) / f"heldout_{args.split}.json", json.dumps(r, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
