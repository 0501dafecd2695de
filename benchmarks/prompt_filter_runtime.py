"""The prompt filter's semantic layer in PyTorch and through ONNX Runtime, side by side in one run.

Filters, all on the shipped policy: the full path (no screen, no int8 stage: every prompt the word lists
let pass runs the fp32 encoder) and the shipped cascade (screen, int8 stage with ONNX Runtime, fp32
encoder), each with the encoder in PyTorch and through ONNX Runtime (fp32, one intra-op thread, each graph
optimisation level for the full path), and the full path through the int8 graph alone (it deciding every
verdict: not shipped). Reported against the PyTorch full path, on every prompt of every set of
benchmarks/prompt_filter.py: the largest difference of the unit sentence embeddings, the largest
|score difference|, and the verdicts that differ; and milliseconds per prompt, warm, memo cleared,
one at a time (median, p95, mean, wall and thread CPU time).

    python benchmarks/prompt_filter_runtime.py [--benchmarks ../shared/benchmarks] [--n-single 400] [--latency-only]
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from limner.eval import redteam
from limner.safety.prompt_filter import PromptFilter, load_policy, normalise
from limner.text.onnx_runtime import LEVELS, OnnxEncoder

ALL_BENIGN = ["partiprompts", "drawbench", "genai_bench", "shapes_world", "gecko2k", "t2i_compbench", "geneval",
              "dalle3_eval"]


def make_filter(runtime: str, screen: bool, level: str = "all", threads: int = 1, int8: bool = True) -> PromptFilter:
    policy = copy.deepcopy(load_policy())
    policy["semantic"]["runtime"] = "torch" if runtime == "int8" else runtime
    policy["semantic"]["onnx_threads"] = threads
    policy["semantic"]["int8"]["enabled"] = int8
    filt = PromptFilter(policy, cascade=screen)
    layer = filt.semantic
    if runtime == "onnx":
        assert layer.runtime == "onnx", "ONNX Runtime did not load: see the log"
        if level != "all":
            layer.onnx = OnnxEncoder(layer.onnx.path, level=level)
    return filt


def quantised(filt: PromptFilter, folder: Path) -> PromptFilter:
    """The PyTorch full path's filter with its encoder swapped for an int8 graph of the cached fp32 one;
    the policy's examples embedded again through it, as a shipped int8 runtime would."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from limner.text.onnx_runtime import load_onnx

    layer = filt.semantic
    fp32 = load_onnx(layer.encoder.tokenizer, layer.encoder.model)
    out = folder / "int8.onnx"
    quantize_dynamic(fp32.path, out, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    layer.onnx = OnnxEncoder(out)
    layer.example_emb = [layer.embed(texts) for texts in layer.examples]
    benign = [*filt.policy.get("benign_examples", []), *filt.policy.get("allow", [])]
    layer.benign_emb = layer.embed(benign)
    return filt


def sentence_embeddings(filt: PromptFilter, sets: dict[str, list[str]]) -> torch.Tensor:
    """The semantic layer's unit embeddings of every sentence of every prompt, as the layer sees them."""
    texts = sorted({filt._strip_allowed(normalise(p)) for ps in sets.values() for p in ps})
    return filt.semantic._embed_sentences(texts, 64)[0]


def compare(reference: PromptFilter, ref_emb: torch.Tensor, other: PromptFilter, sets: dict[str, list[str]]) -> dict:
    """Against the reference, over every set: max |unit embedding difference| of every sentence,
    max |score difference| of the prompts both decide semantically, and differing verdicts."""
    a, b = ref_emb, sentence_embeddings(other, sets)
    out = {"sentences": len(a), "max_emb_diff": float((a - b).abs().max()), "differ": 0, "max_score_diff": 0.0}
    for name, prompts in sets.items():
        va, vb = reference.check_many(prompts), other.check_many(prompts)
        out["differ"] += sum(x.allowed != y.allowed for x, y in zip(va, vb))
        out["max_score_diff"] = max([out["max_score_diff"]] + [abs(x.score - y.score) for x, y in zip(va, vb)
                                                              if x.layer not in ("lexical", "combination", "screen")
                                                              and y.layer not in ("lexical", "combination", "screen")])
    out["prompts"] = sum(map(len, sets.values()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default=str(redteam.DEFAULT_BENCHMARKS))
    ap.add_argument("--n-single", type=int, default=400, help="prompts timed one at a time, per filter")
    ap.add_argument("--latency-only", action="store_true",
                    help="only time the cascade (PyTorch; ONNX Runtime with and without the int8 stage, on 1 and "
                         "2 threads), no verdict comparison")
    args = ap.parse_args()
    torch.set_num_threads(1)

    sets = redteam.prompt_sets(args.benchmarks, ALL_BENIGN)
    mix = [p for name in ALL_BENIGN for p in sets[name]] + sets["unsafe"]
    mix = random.Random(0).sample(mix, len(mix))      # the mix and order `limner safety eval` times
    if args.latency_only:
        print("| cascade, encoder in | median | p95 | mean | CPU median | CPU p95 | CPU mean |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
        for label, runtime, threads, int8 in (("PyTorch (no int8 stage)", "torch", 1, False),
                                              ("ONNX Runtime, 1 thread, no int8 stage", "onnx", 1, False),
                                              ("**ONNX Runtime, 1 thread, int8 stage** (shipped)", "onnx", 1, True),
                                              ("ONNX Runtime, 2 threads, int8 stage", "onnx", 2, True)):
            filt = make_filter(runtime, True, threads=threads, int8=int8)
            filt.check("load the encoder")
            t = redteam.time_filter(filt, mix, n_single=args.n_single, batched=False)
            print(f"| {label} | {t['single_ms_median']} | {t['single_ms_p95']} | {t['single_ms_mean']} "
                  f"| {t['cpu_single_ms_median']} | {t['cpu_single_ms_p95']} | {t['cpu_single_ms_mean']} |", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
        return
    rows, loads = {}, {}
    for label, runtime, screen, level in (("full path, PyTorch", "torch", False, "all"),
                                          ("full path, ONNX Runtime", "onnx", False, "all"),
                                          *((f"full path, ONNX Runtime, {lv}", "onnx", False, lv)
                                            for lv in LEVELS if lv != "all"),
                                          ("cascade, PyTorch", "torch", True, "all"),
                                          ("**cascade, ONNX Runtime** (shipped)", "onnx", True, "all")):
        t = time.perf_counter()
        rows[label] = make_filter(runtime, screen, level)
        rows[label].check("load the encoder")
        loads[label] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        rows["full path, ONNX Runtime int8 (not shipped)"] = quantised(make_filter("torch", False), Path(tmp))
        reference = rows["full path, PyTorch"]
        ref_emb = sentence_embeddings(reference, sets)
        print("| runtime | median | p95 | mean | CPU median | CPU p95 | CPU mean | max \\|Δ embedding\\| "
              "| max \\|Δ score\\| | verdicts that differ from the PyTorch full path |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, filt in rows.items():
            t = redteam.time_filter(filt, mix, n_single=args.n_single, batched=False)
            if label == "full path, PyTorch":
                agree = "reference"
            else:
                c = compare(reference, ref_emb, filt, sets)
                agree = f"{c['max_emb_diff']:.1e} | {c['max_score_diff']:.1e} | {c['differ']} of {c['prompts']:,}"
            print(f"| {label} | {t['single_ms_median']} | {t['single_ms_p95']} | {t['single_ms_mean']} "
                  f"| {t['cpu_single_ms_median']} | {t['cpu_single_ms_p95']} | {t['cpu_single_ms_mean']} | {agree} |",
                  flush=True)
    print(f"\nFilter load (policy, encoder, ONNX graph from the cache, examples, screen table): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in loads.items()))
    print(f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average at the end "
          f"{os.getloadavg()[0]:.2f}; n={args.n_single} prompts one at a time, of {len(mix):,} (benign + unsafe mix).")


if __name__ == "__main__":
    main()
