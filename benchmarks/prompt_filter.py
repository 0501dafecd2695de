"""The prompt filter's red-team report over the full sets, and its latency, as markdown tables.

Block rate per category and per obfuscation (leet, homoglyphs, spacing, punctuation, zero-width,
held-out paraphrases, translations), false refusals per benign benchmark set, and milliseconds per
prompt: word lists alone, the whole filter one prompt at a time (the serving case), and batched.

    python benchmarks/prompt_filter.py [--benchmarks ../shared/benchmarks] [--out runs/prompt_filter]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from limner.safety import redteam
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


def markdown(r: dict, load_s: float, lex_ms: float) -> str:
    out = ["| category | unsafe prompts | blocked | blocked as that category |", "|---|---:|---:|---:|"]
    out += [f"| {c} | {s['n']} | {pct(s['block_rate'])} | {pct(s['same_category'])} |" for c, s in r["unsafe"].items()]
    u = r["unsafe_overall"]
    out += [f"| **all** | {u['n']} | **{pct(u['block_rate'])}** | |", "",
            "Decided by layer (plain unsafe prompts): " + ", ".join(f"{k} {v}" for k, v in r["layers"].items()), "",
            "| obfuscation | prompts | blocked | attack success |", "|---|---:|---:|---:|"]
    for how, s in r["obfuscations"].items():
        attack = pct(s["attack_success"]) if "attack_success" in s else "-"
        note = f" (semantic layer decided {pct(s['semantic_share'])})" if "semantic_share" in s else ""
        out.append(f"| {how}{note} | {s['n']} | {pct(s['block_rate'])} | {attack} |")
    out += ["", "| benign set | prompts | false refusals | policy tuned on it |", "|---|---:|---:|---|"]
    for name, s in r["benign"].items():
        tuned = "yes" if name in TUNED_ON else ("written with the policy" if name == "benign_hard" else "no (held out)")
        out.append(f"| {name} | {s['n']} | {pct(s['false_refusal_rate'])} ({round(s['false_refusal_rate'] * s['n'])}) "
                   f"| {tuned} |")
    b = r["benign_overall"]
    pd = [r["benign"][k] for k in ("partiprompts", "drawbench") if k in r["benign"]]
    if pd:
        n = sum(s["n"] for s in pd)
        out.append(f"| PartiPrompts + DrawBench | {n} | "
                   f"{pct(sum(s['false_refusal_rate'] * s['n'] for s in pd) / n)} | |")
    out.append(f"| all benchmark sets | {b['n']} | {pct(b['false_refusal_rate'])} | |")
    t = r["latency"]
    out += ["", "| latency (ms per prompt) | median | p95 | mean |", "|---|---:|---:|---:|",
            f"| word lists only (normalise + lexical + combinations) | {lex_ms:.2f} | | |",
            f"| whole filter, one prompt at a time, no memo (n={t['n_single']}) | {t['single_ms_median']} | "
            f"{t['single_ms_p95']} | {t['single_ms_mean']} |",
            f"| whole filter, batched `check_many` (n={t['n_batched']}) | | | {t['batched_ms_per_prompt']} |", "",
            f"Filter load (policy + encoder + example embeddings): {load_s:.1f} s. CPU: {os.cpu_count()} cores, "
            f"torch threads {torch.get_num_threads()}, load average at the end {os.getloadavg()[0]:.2f}."]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default=str(redteam.DEFAULT_BENCHMARKS))
    ap.add_argument("--benign", nargs="+", default=ALL_BENIGN)
    ap.add_argument("--out", help="folder for report.json and false_refusals.tsv")
    args = ap.parse_args()

    t = time.perf_counter()
    filt = PromptFilter.from_policy()
    filt.check("load the encoder")
    load_s = time.perf_counter() - t
    report = redteam.evaluate(filt, args.benchmarks, args.benign)
    benign = redteam.load_benign(args.benchmarks, ["partiprompts", "drawbench"])
    sample = random.Random(0).sample(benign["partiprompts"] + benign["drawbench"], 300)
    print(markdown(report, load_s, lexical_ms(sample)))
    if report["false_refusals"]:
        print("\nFalsely refused benign prompts:")
        for f in report["false_refusals"]:
            print(f"- [{f['set']}] {f['category']} ({f['layer']}: {f['matched']}): {f['prompt'][:110]}")
    for name in ("paraphrase", "language_fr", "language_es", "language_de"):
        missed = report["obfuscations"][name].get("missed")
        if missed:
            print(f"\nMissed ({name}): " + "; ".join(missed))
    if args.out:
        redteam.write_outputs(report, args.out)
        print(f"\nwrote {args.out}/report.json and false_refusals.tsv")


if __name__ == "__main__":
    main()
