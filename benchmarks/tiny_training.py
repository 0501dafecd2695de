"""Wall time of the tiny debug configs (autoencoder, then denoiser) that the test suite trains: the issue's
"a few hundred steps in under a minute". A benchmark, not a test assertion, because the machine is shared.

    python benchmarks/tiny_training.py
"""
import json
import tempfile
import time
from pathlib import Path

from limner.train import load_config, run

ROOT = Path(__file__).resolve().parents[1]
with tempfile.TemporaryDirectory() as tmp:
    times, steps, cpu0 = {}, 0, time.process_time()
    t0 = time.time()
    ae = None
    for kind in ("autoencoder", "denoiser"):
        cfg = load_config(ROOT / f"configs/{kind}-tiny.yaml")
        cfg.out_dir, cfg.data.cache_dir, cfg.threads = f"{tmp}/{kind}", f"{tmp}/cache", 1
        if ae:
            cfg.autoencoder = str(ae)
        t = time.time()
        ae = run(cfg, quiet=True)
        times[kind], steps = round(time.time() - t, 1), steps + cfg.steps
    print(json.dumps({**times, "total_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - cpu0, 1),
                      "steps": steps, "threads": 1}))
