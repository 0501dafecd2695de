"""`limner serve` under load (issue 25): what the server adds to a request, what batching buys, and how it
behaves when far more clients come than its queue holds. Every server is a real `limner serve` process
(one at a time), driven over HTTP.

- overhead:  the same default-model request (prompt, seed, the model's default steps), in turn: a direct
  `Pipeline` call in this process, and POST /v1/images/generations (b64_json) to a server started with
  --max-batch 1. Both give the same pixels (checked). Overhead = (HTTP - direct) / direct, medians.
  Target: <= 5%. Also the server's own share: HTTP time minus the pipeline call inside the server (its
  limner_batch_seconds metric), which a busy machine's noise in the drawing itself does not move.
- batching:  8 concurrent requests of one shape (different seeds) against --max-batch 8 and --max-batch 1;
  requests/s = 8 / wall time of the 8. Target: >= 1.5x.
- overload:  --clients (200) concurrent clients at once against --queue 16: each must get its images (200)
  or a 429 within 100 ms; nothing else, no hang. The server's RSS is sampled before, during and after;
  afterwards a plain request must succeed and the queue be empty.

    python benchmarks/serve_load.py [--rounds 3] [--clients 200] [--queue 16] [--threads N]
                                    [--only overhead|batching|overload] [--out runs/serve_load.json]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from limner.serve.process import ServerProcess

PROMPT = "three red circles and a blue square"


# one client, made once: httpx.post() would build a client (and load a CA bundle) per request, tens of ms
# that are the client's, not the server's
HTTP = httpx.Client(timeout=900, limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))


def post(url: str, **body) -> tuple[int, float, dict]:
    began = time.perf_counter()
    r = HTTP.post(url + "/v1/images/generations", json={"prompt": PROMPT, **body})
    return r.status_code, time.perf_counter() - began, r.json()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def drawing_seconds(url: str) -> float:
    """The server's total time inside pipeline calls so far (limner_batch_seconds_sum)."""
    for line in HTTP.get(url + "/metrics").text.splitlines():
        if line.startswith("limner_batch_seconds_sum "):
            return float(line.split()[1])
    return 0.0


def overhead(rounds: int, env: dict) -> dict:
    import limner

    pipe = limner.Pipeline.from_pretrained("shapes-default")
    pipe(PROMPT, seed=0)   # warm: first-call costs belong to neither side
    direct, http, inside = [], [], []
    with ServerProcess("--max-batch", "1", env=env) as server:
        post(server.url, seed=0)
        for r in range(rounds):
            began = time.perf_counter()
            img = pipe(PROMPT, seed=100 + r)[0]
            direct.append(time.perf_counter() - began)
            drawn = drawing_seconds(server.url)
            code, seconds, body = post(server.url, seed=100 + r)
            assert code == 200, body
            http.append(seconds)
            inside.append(drawing_seconds(server.url) - drawn)
            assert np.array_equal(pixels(body["data"][0]["b64_json"]), np.asarray(img)), "HTTP image differs"
    d, h = statistics.median(direct), statistics.median(http)
    own = statistics.median([(t - i) / t for t, i in zip(http, inside)])
    return {"direct_s": direct, "http_s": http, "in_server_pipeline_s": inside, "direct_median_s": d,
            "http_median_s": h, "overhead": (h - d) / d, "server_share": own}


def batching(rounds: int, env: dict, concurrent: int = 8) -> dict:
    out = {}
    for max_batch in (concurrent, 1):
        walls = []
        with ServerProcess("--max-batch", str(max_batch), "--queue", str(concurrent), env=env) as server:
            post(server.url, seed=0)
            for r in range(rounds):
                began = time.perf_counter()
                with ThreadPoolExecutor(concurrent) as pool:
                    codes = list(pool.map(lambda i: post(server.url, seed=1000 * r + i)[0], range(concurrent)))
                walls.append(time.perf_counter() - began)
                assert codes == [200] * concurrent, codes
        out[f"max_batch_{max_batch}"] = {"wall_s": walls, "requests_per_s": concurrent / statistics.median(walls)}
    out["speedup"] = out[f"max_batch_{concurrent}"]["requests_per_s"] / out["max_batch_1"]["requests_per_s"]
    return out


def overload(clients: int, queue: int, env: dict) -> dict:
    with ServerProcess("--queue", str(queue), "--max-batch", "8", "--job-timeout", "900", env=env) as server:
        post(server.url, seed=0)
        rss = {"before": server.rss_bytes(), "peak": 0}
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                rss["peak"] = max(rss["peak"], server.rss_bytes())
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        # asyncio clients: 200 threads in one Python process would time their own GIL queue, not the server
        async def everyone():
            async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=clients)) as http:
                async def client(i):
                    began = time.perf_counter()
                    try:
                        r = await http.post(server.url + "/v1/images/generations", json={"prompt": PROMPT, "seed": i})
                    except httpx.HTTPError as e:
                        return type(e).__name__, None
                    return r.status_code, time.perf_counter() - began

                return await asyncio.gather(*(client(i) for i in range(clients)))

        began = time.perf_counter()
        results = asyncio.run(everyone())
        wall = time.perf_counter() - began
        sampling.set()
        sampler.join()
        rss["after"] = server.rss_bytes()
        code, seconds, body = post(server.url, seed=7)
        ready = HTTP.get(server.url + "/readyz").json()
        metrics = HTTP.get(server.url + "/metrics").text
    want = ('code="429"', 'route="/v1/images/generations"')
    server_429 = {line.split('le="')[1].split('"')[0]: float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("limner_http_request_seconds_bucket{") and all(w in line for w in want)}
    fast = server_429.get("0.1", 0.0)
    refused = sorted(s for c, s in results if c == 429)
    served = sorted(s for c, s in results if c == 200)
    other = [c for c, _ in results if c not in (200, 429)]
    return {"clients": clients, "queue": queue, "served": len(served), "refused_429": len(refused),
            "other": other, "max_429_s": max(refused, default=None),
            "p99_429_s": refused[int(0.99 * (len(refused) - 1))] if refused else None,
            "p50_429_s": refused[len(refused) // 2] if refused else None,
            "server_429_within_100ms": fast / len(refused) if refused else None,
            "server_429_seconds_buckets": server_429,
            "max_served_s": max(served, default=None), "wall_s": wall,
            "rss_mb": {k: v / 2**20 for k, v in rss.items()},
            "afterwards": {"code": code, "seconds": seconds, "queue_depth": ready["queue_depth"]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--only", choices=["overhead", "batching", "overload"], default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads here and OMP_NUM_THREADS for the servers (a busy machine: 1)")
    ap.add_argument("--out", default="runs/serve_load.json")
    a = ap.parse_args(argv)
    env = dict(os.environ)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
        env["OMP_NUM_THREADS"] = str(a.threads)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
              "date": time.strftime("%Y-%m-%d")}
    if a.only in (None, "overhead"):
        report["overhead"] = o = overhead(a.rounds, env)
        print(f"overhead: direct {o['direct_median_s']:.3f} s, HTTP {o['http_median_s']:.3f} s -> "
              f"{100 * o['overhead']:+.1f}% (target <= 5%); the server's own share of the HTTP time "
              f"{100 * o['server_share']:.2f}%", flush=True)
    if a.only in (None, "batching"):
        report["batching"] = b = batching(a.rounds, env)
        print(f"batching: {b['max_batch_8']['requests_per_s']:.3f} vs {b['max_batch_1']['requests_per_s']:.3f} "
              f"req/s -> {b['speedup']:.2f}x (target >= 1.5x)", flush=True)
    if a.only in (None, "overload"):
        report["overload"] = o = overload(a.clients, a.queue, env)
        print(f"overload: {o['served']} served, {o['refused_429']} refused (429, median {o['p50_429_s']:.3f} s, max "
              f"{o['max_429_s']:.3f} s at the client, target <= 0.1 s; within 0.1 s inside the server: "
              f"{100 * o['server_429_within_100ms']:.0f}%), other {o['other']}; RSS MB "
              f"{ {k: round(v) for k, v in o['rss_mb'].items()} }; afterwards {o['afterwards']}", flush=True)
    report["load_after"] = os.getloadavg()[0]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
