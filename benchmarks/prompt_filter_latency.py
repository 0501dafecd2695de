"""Prompt-filter latency, one prompt at a time, of the shipped cascade with the encoder in PyTorch and
through ONNX Runtime (1 and 2 threads), side by side in one run: python benchmarks/prompt_filter_latency.py
(benchmarks/prompt_filter_runtime.py is the longer run that also checks every verdict against PyTorch)."""
import copy, random, torch, os
from limner.safety import redteam
from limner.safety.prompt_filter import PromptFilter, load_policy
import sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prompt_filter_runtime import ALL_BENIGN
torch.set_num_threads(1)
sets = redteam.prompt_sets(redteam.DEFAULT_BENCHMARKS, ALL_BENIGN)
mix = [p for n in ALL_BENIGN for p in sets[n]] + sets["unsafe"]
mix = random.Random(0).sample(mix, len(mix))
for label, rt, threads in [("cascade torch", "torch", 1), ("cascade onnx 1 thread", "onnx", 1), ("cascade onnx 2 threads", "onnx", 2)]:
    pol = copy.deepcopy(load_policy()); pol["semantic"]["runtime"] = rt; pol["semantic"]["onnx_threads"] = threads
    f = PromptFilter(pol); f.check("warm up")
    t = redteam.time_filter(f, mix, n_single=400, batched=False)
    print(label, {k: v for k, v in t.items() if "single" in k}, flush=True)
print("load", os.getloadavg())
