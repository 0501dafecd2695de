"""The prompt filter's red-team report over the full sets, and its latency, as markdown tables.

Two filters in one run: the shipped cascade (word lists, then the fast static screen, then MiniLM with
int8 weights, then the fp32 MiniLM semantic layer for the prompts neither cleared) and the full path
without them (every prompt the word lists let pass goes through fp32 MiniLM), the reference the
cascade must match.
Reported: block rate per category and per obfuscation (leet, homoglyphs, spacing, punctuation,
zero-width, held-out paraphrases, translations) and false refusals per benign benchmark set for both;
per set, how many prompts the screen and the int8 stage cleared and how many verdicts differ between
the two; and
milliseconds per prompt, warm, the memo cleared before each: word lists alone, each filter one prompt
at a time (the serving case; median, p95, mean; wall and CPU time of the thread), and batched.

    python benchmarks/prompt_filter.py [--benchmarks ../shared/benchmarks] [--n-single 400] [--out runs/prompt_filter]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from limner.eval import redteam
from limner.safety.prompt_filter import PromptFilter

# The policy's thresholds and benign examples were tuned while looking at these sets' refusals;
# the others were only ever scored, so their rates are the honest estimate for new prompts.
TUNED_ON = {"partiprompts", "drawbench", "genai_bench", "shapes_world"}
ALL_BENIGN = ["partiprompts", "drawbench", "genai_bench", "shapes_world", "gecko2k", "t2i_compbench", "geneval",
              "dalle3_eval"]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def lexical_ms(prompts: list[str]) -> float:
    lexical = PromptFilter.from_policy(semantic=False)
    times = []
    for p in prompts:
        t = time.perf_counter()
        lexical.check(p)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def agreement(sets: dict[str, list[str]], cascade: PromptFilter, full: PromptFilter) -> dict[str, dict]:
    """Per set: prompts, those the screen and the int8 stage cleared, and verdicts that differ."""
    out = {}
    for name, prompts in sets.items():
        c, f = cascade.check_many(prompts), full.check_many(prompts)
        out[name] = {"n": len(prompts), "semantic": sum(v.layer != "lexical" and v.layer != "combination" for v in f),
                     "cleared": sum(v.layer == "screen" for v in c),
                     "int8": sum(v.layer == "int8" for v in c),
                     "differ": sum(a.allowed != b.allowed for a, b in zip(c, f)),
                     "cleared_but_full_blocks": [p for p, a, b in zip(prompts, c, f) if a.allowed and not b.allowed],
                     "blocked_but_full_allows": [p for p, a, b in zip(prompts, c, f) if not a.allowed and b.allowed]}
    return out


def markdown(r: dict, rf: dict, agree: dict, lat: dict, loads: dict, lex_ms: float) -> str:
    out = ["| category | unsafe prompts | blocked (cascade) | blocked (full MiniLM path) | blocked as that category |",
           "|---|---:|---:|---:|---:|"]
    out += [f"| {c} | {s['n']} | {pct(s['block_rate'])} | {pct(rf['unsafe'][c]['block_rate'])} | {pct(s['same_category'])} |"
            for c, s in r["unsafe"].items()]
    u = r["unsafe_overall"]
    out += [f"| **all** | {u['n']} | **{pct(u['block_rate'])}** | {pct(rf['unsafe_overall']['block_rate'])} | |", "",
            "Decided by layer (plain unsafe prompts, cascade): " + ", ".join(f"{k} {v}" for k, v in r["layers"].items()), "",
            "| obfuscation | prompts | blocked (cascade) | blocked (full) | attack success (cascade) |",
            "|---|---:|---:|---:|---:|"]
    for how, s in r["obfuscations"].items():
        attack = pct(s["attack_success"]) if "attack_success" in s else "-"
        note = f" (semantic layer decided {pct(s['semantic_share'])})" if "semantic_share" in s else ""
        out.append(f"| {how}{note} | {s['n']} | {pct(s['block_rate'])} | {pct(rf['obfuscations'][how]['block_rate'])} "
                   f"| {attack} |")
    out += ["", "| benign set | prompts | false refusals (cascade) | false refusals (full) | policy tuned on it |",
            "|---|---:|---:|---:|---|"]
    for name, s in r["benign"].items():
        tuned = "yes" if name in TUNED_ON else ("written with the policy" if name == "benign_hard" else "no (held out)")
        sf = rf["benign"][name]
        out.append(f"| {name} | {s['n']} | {pct(s['false_refusal_rate'])} ({s['refused']}) "
                   f"| {pct(sf['false_refusal_rate'])} ({sf['refused']}) | {tuned} |")
    pd = [k for k in ("partiprompts", "drawbench") if k in r["benign"]]
    if pd:
        n = sum(r["benign"][k]["n"] for k in pd)
        rates = [sum(rr["benign"][k]["refused"] for k in pd) / n for rr in (r, rf)]
        out.append(f"| PartiPrompts + DrawBench | {n} | {pct(rates[0])} | {pct(rates[1])} | |")
    b, bf = r["benign_overall"], rf["benign_overall"]
    out.append(f"| all benchmark sets | {b['n']} | {pct(b['false_refusal_rate'])} ({b['refused']}) "
               f"| {pct(bf['false_refusal_rate'])} ({bf['refused']}) | |")
    out += ["", "| set | prompts | reach the semantic layer | cleared by the screen | cleared by int8 | fp32 MiniLM "
                "| verdicts that differ from the full path | cascade allows, full blocks |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    share = lambda k, a: f"{a[k]} ({pct(a[k] / a['semantic'])})" if a["semantic"] else "0"
    for name, a in list(agree.items()) + [("**all**", {k: sum(a[k] for a in agree.values())
                                                       for k in ("n", "semantic", "cleared", "int8", "differ")}
                                          | {"cleared_but_full_blocks": [p for a in agree.values()
                                                                         for p in a["cleared_but_full_blocks"]]})]:
        a = a | {"fp32": a["semantic"] - a["cleared"] - a["int8"]}
        out.append(f"| {name} | {a['n']} | {a['semantic']} | {share('cleared', a)} | {share('int8', a)} "
                   f"| {share('fp32', a)} | {a['differ']} | {len(a['cleared_but_full_blocks'])} |")
    lc, lf = lat["cascade"], lat["full"]
    out += ["", f"| latency (ms per prompt, warm, memo cleared; n={lc['n_single']} one at a time) | median | p95 | mean "
                "| CPU median | CPU p95 |", "|---|---:|---:|---:|---:|---:|",
            f"| word lists only (normalise + lexical + combinations) | {lex_ms:.2f} | | | | |"]
    for label, t in (("**cascade** (shipped): lists, screen, int8 MiniLM, fp32 MiniLM on what neither cleared", lc),
                     ("full MiniLM path (no screen, no int8)", lf)):
        out.append(f"| {label} | {t['single_ms_median']} | {t['single_ms_p95']} | {t['single_ms_mean']} "
                   f"| {t['cpu_single_ms_median']} | {t['cpu_single_ms_p95']} |")
    for label, t in (("cascade", lc), ("full MiniLM path", lf)):
        out.append(f"| {label}, batched `check_many` (n={t['n_batched']}) | | | {t['batched_ms_per_prompt']} | | |")
    out += ["", f"Filter load (policy + encoder + example embeddings [+ screen table from the cache]): cascade "
                f"{loads['cascade']:.1f} s, full path {loads['full']:.1f} s. CPU: {os.cpu_count()} cores, torch threads "
                f"{torch.get_num_threads()}, load average at the end {os.getloadavg()[0]:.2f}."]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default=str(redteam.DEFAULT_BENCHMARKS))
    ap.add_argument("--benign", nargs="+", default=ALL_BENIGN)
    ap.add_argument("--n-single", type=int, default=400, help="prompts timed one at a time, per filter")
    ap.add_argument("--out", help="folder for report.json and false_refusals.tsv (of the cascade)")
    args = ap.parse_args()

    loads, filters = {}, {}
    for name, screen in (("full", False), ("cascade", True)):
        t = time.perf_counter()
        filters[name] = PromptFilter.from_policy(cascade=screen)
        filters[name].check("load the encoder")
        loads[name] = time.perf_counter() - t
    cascade, full = filters["cascade"], filters["full"]
    sets = redteam.prompt_sets(args.benchmarks, args.benign)
    agree = agreement(sets, cascade, full)            # fills both memos: the reports below reuse them
    report = redteam.evaluate(cascade, args.benchmarks, args.benign, timing=False)
    report_full = redteam.evaluate(full, args.benchmarks, args.benign, timing=False)
    mix = [p for name in args.benign for p in sets[name]] + sets["unsafe"]
    mix = random.Random(0).sample(mix, len(mix))      # the mix and order `limner safety eval` times
    lat = {name: redteam.time_filter(f, mix, n_single=args.n_single) for name, f in (("full", full), ("cascade", cascade))}
    benign = redteam.load_benign(args.benchmarks, ["partiprompts", "drawbench"])
    sample = random.Random(0).sample(benign["partiprompts"] + benign["drawbench"], 300)
    print(markdown(report, report_full, agree, lat, loads, lexical_ms(sample)))
    for name, a in agree.items():
        for key, what in (("cleared_but_full_blocks", "cleared by the screen or int8, blocked by the full path"),
                          ("blocked_but_full_allows", "blocked by the cascade, allowed by the full path")):
            if a[key]:
                print(f"\n{what} ({name}): " + "; ".join(a[key]))
    if report["false_refusals"]:
        print("\nFalsely refused benign prompts (cascade):")
        for f in report["false_refusals"]:
            print(f"- [{f['set']}] {f['category']} ({f['layer']}: {f['matched']}): {f['prompt'][:110]}")
    for name in ("paraphrase", "language_fr", "language_es", "language_de"):
        missed = report["obfuscations"][name].get("missed")
        if missed:
            print(f"\nMissed ({name}): " + "; ".join(missed))
    if args.out:
        report["latency"] = lat["cascade"]
        report["latency_full_path"] = lat["full"]
        report["agreement"] = agree
        redteam.write_outputs(report, args.out)
        print(f"\nwrote {args.out}/report.json and false_refusals.tsv")


if __name__ == "__main__":
    main()
