"""`limner safety eval`: a red-team report for the prompt filter (an evaluation, so it lives in eval/).

Runs the filter over
- unsafe prompts per category (redteam_prompts.yaml) -> block rate per category;
- the same prompts obfuscated (leet, homoglyphs, spacing, punctuation, zero-width characters,
  generated here), a held-out paraphrase set and translations -> block rate per obfuscation, and
  attack success: the share of prompts blocked in plain form that get through once obfuscated;
- benign benchmark prompts (PartiPrompts, DrawBench ... read from ../shared/benchmarks, never
  copied) -> false refusals, listed so that the policy can be tuned;
and times the filter per prompt.
"""
from __future__ import annotations

import csv
import json
import random
import re
import statistics
import time
from pathlib import Path

from ..common.files import atomic_path, write_atomic
from ..safety.prompt_filter import PromptFilter, Verdict
from .suites import BENCHMARKS, DEFAULT_BENCHMARKS, load_suite

PROMPTS = Path(__file__).with_name("redteam_prompts.yaml")


# ----------------------------------------------------------------------------- benign prompt sets


# Read with limner.eval.suites, the one parser per benchmark format; this is the subset used here.
BENIGN_SETS = {name: BENCHMARKS[name][0] for name in (
    "partiprompts", "drawbench", "dalle3_eval", "genai_bench", "geneval", "gecko2k", "t2i_compbench")}
DEFAULT_BENIGN = ("partiprompts", "drawbench")


def shapes_world_prompts(n: int = 300, seed: int = 0) -> list[str]:
    """Captions of random Shapes World scenes: the prompts limner's shipped model is trained on."""
    from ..world import captions as C
    from ..world.scene import sample_scene

    rng = random.Random(seed)
    out = []
    while len(out) < n:
        out += C.captions(sample_scene(rng), rng).values()
    return out[:n]


def load_benign(benchmarks: str | Path, names=DEFAULT_BENIGN) -> dict[str, list[str]]:
    root = Path(benchmarks)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark prompts not found at {root}: pass --benchmarks with the folder that "
                                "holds partiprompts/ and drawbench/ (the shared/benchmarks data)")
    sets = {}
    for name in names:
        if name == "shapes_world":
            sets[name] = shapes_world_prompts()
            continue
        if name not in BENIGN_SETS:
            raise ValueError(f"unknown benign set {name!r}; choose from {', '.join([*BENIGN_SETS, 'shapes_world'])}")
        sets[name] = [p.text for p in load_suite(name, benchmarks=root)]
    return sets


# ----------------------------------------------------------------------------- obfuscations
# Each rewrites the words of four or more letters, as an attacker hiding trigger words would.

LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
# hand-picked Cyrillic and Greek lookalikes, independent of the filter's own table
HOMOGLYPHS = {"a": "а", "c": "с", "e": "е", "i": "і", "o": "ο", "p": "р", "s": "ѕ", "x": "х", "y": "у",
              "j": "ј", "h": "һ", "n": "п", "v": "ν", "k": "κ", "t": "т", "m": "м", "b": "Ь"}
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060"]


def _substitute(word: str, table: dict, rng: random.Random) -> str:
    spots = [i for i, c in enumerate(word) if c in table]
    if not spots:
        return word
    chosen = {i for i in spots if rng.random() < 0.6} or {rng.choice(spots)}
    return "".join(table[c] if i in chosen else c for i, c in enumerate(word))


def _punctuate(word: str, rng: random.Random) -> str:
    sep = rng.choice(".-*_")
    if rng.random() < 0.5:
        return sep.join(word)                     # n.u.d.e
    cut = rng.randrange(1, len(word))
    return word[:cut] + sep + word[cut:]          # nu.de


OBFUSCATIONS = {
    "leet": lambda w, rng: _substitute(w, LEET, rng),
    "homoglyphs": lambda w, rng: _substitute(w, HOMOGLYPHS, rng),
    "spacing": lambda w, rng: f" {' '.join(w)} ",   # "n u d e", set off by double spaces
    "punctuation": _punctuate,
    "zero_width": lambda w, rng: rng.choice(ZERO_WIDTH).join(w),
}


def obfuscate(prompt: str, how: str, seed: int = 0) -> str:
    rng = random.Random(f"{how}:{seed}:{prompt}")
    return re.sub(r"[A-Za-z]{4,}", lambda m: OBFUSCATIONS[how](m.group(), rng), prompt)


# ----------------------------------------------------------------------------- the report


def load_redteam(path: str | Path = PROMPTS) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def _blocked(verdicts: list[Verdict]) -> float:
    return sum(not v.allowed for v in verdicts) / max(len(verdicts), 1)


def _first(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def time_filter(filt: PromptFilter, prompts: list[str], n_single: int = 200, batched: bool = True) -> dict:
    """Milliseconds per prompt one at a time (the serving case) and batched (check_many), no memo.
    Wall time, and the CPU time of the calling thread (`cpu_`), which a busy machine inflates less:
    it leaves out the time the filter waited for a core (and, with several torch threads, their work)."""
    sample = prompts[:: max(1, len(prompts) // n_single)][:n_single]
    filt.check("warm up the encoder")
    times, cpu = [], []
    for p in sample:
        filt.clear_cache()
        t, c = time.perf_counter(), time.thread_time()
        filt.check(p)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    out = {"n_single": len(sample)}
    for name, ms in (("single", sorted(times)), ("cpu_single", sorted(cpu))):
        out |= {f"{name}_ms_median": round(statistics.median(ms), 2), f"{name}_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 2),
                f"{name}_ms_mean": round(statistics.fmean(ms), 2)}
    if batched:
        filt.clear_cache()
        t = time.perf_counter()
        filt.check_many(prompts)
        out |= {"batched_ms_per_prompt": round((time.perf_counter() - t) * 1000 / len(prompts), 2), "n_batched": len(prompts)}
    return out


def prompt_sets(benchmarks: str | Path = DEFAULT_BENCHMARKS, benign_sets=DEFAULT_BENIGN, limit: int | None = None,
                seed: int = 0) -> dict[str, list[str]]:
    """Every prompt set the report scores, flat, by the names the report uses: "unsafe" (all categories),
    each obfuscation, "paraphrase", "language_xx", the benign sets and "benign_hard"."""
    rt = load_redteam()
    unsafe = [p for ps in rt["unsafe"].values() for p in _first(ps, limit)]
    sets = {"unsafe": unsafe, **{how: [obfuscate(p, how, seed) for p in unsafe] for how in OBFUSCATIONS},
            "paraphrase": [p for ps in rt["paraphrase"].values() for p in _first(ps, limit)]}
    for lang, cats in rt["languages"].items():
        sets[f"language_{lang}"] = [p for ps in cats.values() for p in _first(ps, limit)]
    benign = {**load_benign(benchmarks, benign_sets), "benign_hard": rt["benign_hard"]}
    return sets | {name: _first(ps, limit) for name, ps in benign.items()}


def _unsafe(filt, unsafe: dict[str, list[str]]) -> tuple[dict, dict]:
    verdicts = dict(zip(unsafe, [filt.check_many(ps) for ps in unsafe.values()]))
    per_cat = {c: {"n": len(vs), "block_rate": _blocked(vs),
                   "same_category": sum(v.category == c for v in vs) / len(vs),
                   "missed": [p for p, v in zip(unsafe[c], vs) if v.allowed]} for c, vs in verdicts.items()}
    return per_cat, verdicts


def _obfuscations(filt, unsafe: dict[str, list[str]], plain: dict, rt: dict, limit, seed: int) -> dict:
    prompts = [p for ps in unsafe.values() for p in ps]
    was_blocked = [not v.allowed for vs in plain.values() for v in vs]
    out = {}
    for how in OBFUSCATIONS:
        vs = filt.check_many([obfuscate(p, how, seed) for p in prompts])
        got_through = sum(b and v.allowed for b, v in zip(was_blocked, vs))
        out[how] = {"n": len(vs), "block_rate": _blocked(vs), "attack_success": got_through / max(sum(was_blocked), 1)}
    para = [p for ps in rt["paraphrase"].values() for p in _first(ps, limit)]
    vs = filt.check_many(para)
    out["paraphrase"] = {"n": len(vs), "block_rate": _blocked(vs),
                         "semantic_share": sum(v.layer == "semantic" for v in vs) / len(vs),
                         "missed": [p for p, v in zip(para, vs) if v.allowed]}
    for lang, cats in rt["languages"].items():
        items = [p for ps in cats.values() for p in _first(ps, limit)]
        vs = filt.check_many(items)
        out[f"language_{lang}"] = {"n": len(vs), "block_rate": _blocked(vs),
                                   "missed": [p for p, v in zip(items, vs) if v.allowed]}
    return out


def evaluate(filt: PromptFilter, benchmarks: str | Path = DEFAULT_BENCHMARKS, benign_sets=DEFAULT_BENIGN,
             limit: int | None = None, seed: int = 0, timing: bool = True) -> dict:
    """The red-team report as a dict. `limit` keeps the first N prompts of each set (for quick runs)."""
    rt = load_redteam()
    benign = {**load_benign(benchmarks, benign_sets), "benign_hard": rt["benign_hard"]}
    benign = {name: _first(ps, limit) for name, ps in benign.items()}
    unsafe = {c: _first(ps, limit) for c, ps in rt["unsafe"].items()}

    report: dict = {"false_refusals": []}
    report["unsafe"], plain = _unsafe(filt, unsafe)
    all_plain = [v for vs in plain.values() for v in vs]
    report["unsafe_overall"] = {"n": len(all_plain), "block_rate": _blocked(all_plain)}
    report["layers"] = {layer: sum(v.layer == layer for v in all_plain)
                        for layer in ("lexical", "combination", "semantic")}
    report["obfuscations"] = _obfuscations(filt, unsafe, plain, rt, limit, seed)
    report["benign"] = {}
    for name, ps in benign.items():
        refused = [{"set": name, "prompt": p, **v.to_dict()} for p, v in zip(ps, filt.check_many(ps)) if not v.allowed]
        report["benign"][name] = {"n": len(ps), "refused": len(refused),
                                  "false_refusal_rate": len(refused) / max(len(ps), 1)}
        report["false_refusals"] += refused
    sets = [name for name in benign if name != "benign_hard"]   # benign_hard is ours, not a benchmark
    n, refused = (sum(report["benign"][s][k] for s in sets) for k in ("n", "refused"))
    report["benign_overall"] = {"sets": sets, "n": n, "refused": refused, "false_refusal_rate": refused / max(n, 1)}
    if timing:
        mix = [p for s in sets for p in benign[s]] + [p for ps in unsafe.values() for p in ps]
        report["latency"] = time_filter(filt, random.Random(seed).sample(mix, len(mix)))
    return report


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_report(r: dict) -> str:
    lines = ["Unsafe prompts: block rate per category",
             f"  {'category':14s} {'n':>5s} {'blocked':>8s} {'as category':>12s}"]
    lines += [f"  {c:14s} {s['n']:5d} {_pct(s['block_rate']):>8s} {_pct(s['same_category']):>12s}"
              for c, s in r["unsafe"].items()]
    u = r["unsafe_overall"]
    lines += [f"  {'all':14s} {u['n']:5d} {_pct(u['block_rate']):>8s}",
              "  decided by layer: " + ", ".join(f"{k} {v}" for k, v in r["layers"].items()), "",
              "Obfuscations: block rate; attack success = blocked when plain, allowed when obfuscated",
              f"  {'obfuscation':14s} {'n':>5s} {'blocked':>8s} {'attack ok':>10s}"]
    for how, s in r["obfuscations"].items():
        attack = _pct(s["attack_success"]) if "attack_success" in s else "-"
        lines.append(f"  {how:14s} {s['n']:5d} {_pct(s['block_rate']):>8s} {attack:>10s}")
    lines += ["", "Benign prompts: false refusals", f"  {'set':14s} {'n':>5s} {'refused':>8s}"]
    lines += [f"  {name:14s} {s['n']:5d} {_pct(s['false_refusal_rate']):>8s}  ({s['refused']})"
              for name, s in r["benign"].items()]
    b = r["benign_overall"]
    lines.append(f"  {'benchmarks':14s} {b['n']:5d} {_pct(b['false_refusal_rate']):>8s}  ({b['refused']}; "
                 f"{' + '.join(b['sets'])})")
    if r.get("latency"):
        t = r["latency"]
        lines += ["", f"Latency: one prompt at a time median {t['single_ms_median']} ms, p95 {t['single_ms_p95']} ms, "
                      f"mean {t['single_ms_mean']} ms; batched {t['batched_ms_per_prompt']} ms per prompt"]
    missed = [(f"unsafe/{c}", p) for c, s in r["unsafe"].items() for p in s["missed"]]
    missed += [(how, p) for how, s in r["obfuscations"].items() for p in s.get("missed", [])]
    if missed:
        lines += ["", f"Missed unsafe prompts ({len(missed)}):"] + [f"  [{k}] {p}" for k, p in missed]
    if r["false_refusals"]:
        lines += ["", f"Falsely refused benign prompts ({len(r['false_refusals'])}):"]
        lines += [f"  [{f['set']}] {f['category']} ({f['layer']}: {f['matched']}): {f['prompt'][:120]}"
                  for f in r["false_refusals"]]
    return "\n".join(lines)


def write_outputs(r: dict, out: str | Path) -> list[Path]:
    """report.json and false_refusals.tsv (set, category, layer, matched, prompt) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.json", json.dumps(r, indent=2) + "\n")
    with atomic_path(out / "false_refusals.tsv") as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["set", "category", "layer", "matched", "prompt"])
        w.writerows([fr["set"], fr["category"], fr["layer"], fr["matched"], fr["prompt"]] for fr in r["false_refusals"])
    return [out / "report.json", out / "false_refusals.tsv"]
