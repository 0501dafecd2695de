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
- overload:  --clients (200) concurrent clients at once against --queue 16, --overloads (3) times on one
  server: each must get its images (200) or a 429 within 100 ms; nothing else, no hang. 429 latency at the
  client (bare sockets by default, so the client's own HTTP library is not timed) and inside the server (its
  request histogram); the server's RSS after each burst must stay bounded; afterwards a plain request must
  succeed and the queue be empty.
- replicas (only with --only replicas; needs limner[ray]):  `limner serve --ray` with 1 and 2 CPU replicas of
  --replica-cpus 0.5, rounds interleaved; 48 default requests from 8 threads; the ratio of median walls.

    python benchmarks/serve_load.py [--rounds 3] [--clients 200] [--queue 16] [--overloads 3] [--client raw|httpx]
                                    [--threads N] [--only overhead|batching|overload|replicas] [--out runs/serve_load.json]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
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

    shipped = limner.Pipeline.from_pretrained("shapes-default")
    # the server draws the base size unless asked for more: so does the direct call
    sized = {"size": shipped.resolution} if hasattr(shipped, "check_size") else {}

    def pipe(prompt, seed):
        return shipped(prompt, seed=seed, **sized)

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


def replicas(rounds: int, env: dict, requests: int = 48, concurrent: int = 8, cpus: float = 0.5) -> dict:
    """Ray Serve with 1 and 2 replicas (`limner serve --ray`), rounds interleaved 1, 2, 1, 2, ...: `requests`
    default requests from `concurrent` threads after a warm-up; requests/s per run and the ratio of medians."""
    walls = {1: [], 2: []}
    for r in range(rounds):
        for n in (1, 2):
            with ServerProcess("--ray", "--replicas", str(n), "--replica-cpus", str(cpus), env=env,
                               ready_timeout=600) as server:
                with ThreadPoolExecutor(concurrent) as pool:   # every replica loaded and warm
                    list(pool.map(lambda i: post(server.url, seed=i), range(2 * n)))
                began = time.perf_counter()
                with ThreadPoolExecutor(concurrent) as pool:
                    codes = list(pool.map(lambda i: post(server.url, seed=1000 * r + i)[0], range(requests)))
                walls[n].append(time.perf_counter() - began)
                assert codes == [200] * requests, collections.Counter(codes)
    out = {f"replicas_{n}": {"wall_s": w, "requests_per_s": [requests / x for x in w]} for n, w in walls.items()}
    out["speedup"] = statistics.median(walls[1]) / statistics.median(walls[2])
    return out


async def raw_post(port: int, body: bytes) -> tuple[int, float, float]:
    """One POST on a fresh connection with nothing but asyncio streams: (status, seconds from the start,
    seconds from the request's last byte written). httpx's own work per request (a few ms of this process's
    CPU, 200 at once) would be timed as the server's otherwise; the second time also leaves out this client's
    own connecting, 200 sockets at once in one Python process."""
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/images/generations HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    sent = time.perf_counter()
    status = int((await reader.readline()).split()[1])
    await reader.read()   # headers and body, to the close
    done = time.perf_counter()
    writer.close()
    return status, done - began, done - sent


async def httpx_post(http, url: str, body: bytes) -> tuple[int, float, None]:
    began = time.perf_counter()
    r = await http.post(url + "/v1/images/generations", content=body, headers={"content-type": "application/json"})
    return r.status_code, time.perf_counter() - began, None


def burst(server, clients: int, first_seed: int, client: str) -> tuple[list, float]:
    """`clients` requests at once: [(status or error name, seconds)], wall time."""
    async def everyone():
        bodies = [json.dumps({"prompt": PROMPT, "seed": first_seed + i}).encode() for i in range(clients)]

        async def guarded(call):
            try:
                return await call
            except (OSError, httpx.HTTPError, ValueError, IndexError) as e:
                return type(e).__name__, None, None

        if client == "raw":
            return await asyncio.gather(*(guarded(raw_post(server.port, b)) for b in bodies))
        async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=clients)) as http:
            return await asyncio.gather(*(guarded(httpx_post(http, server.url, b)) for b in bodies))

    began = time.perf_counter()
    results = asyncio.run(everyone())
    return results, time.perf_counter() - began


def server_429_buckets(url: str) -> dict[str, float]:
    """The server's own time to answer 429 on the generations route: cumulative histogram buckets."""
    want = ('code="429"', 'route="/v1/images/generations"')
    return {line.split('le="')[1].split('"')[0]: float(line.split()[-1])
            for line in HTTP.get(url + "/metrics").text.splitlines()
            if line.startswith("limner_http_request_seconds_bucket{") and all(w in line for w in want)}


def overload(clients: int, queue: int, env: dict, rounds: int = 3, client: str = "raw") -> dict:
    """`rounds` bursts of `clients` against one server, its RSS after each (and its peak during each)."""
    with ServerProcess("--queue", str(queue), "--max-batch", "8", "--job-timeout", "900", env=env) as server:
        post(server.url, seed=0)
        rss_start = server.rss_bytes()
        runs = []
        for r in range(rounds):
            peak, sampling = [0], threading.Event()

            def sample():
                while not sampling.is_set():
                    peak[0] = max(peak[0], server.rss_bytes())
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample)
            sampler.start()
            before = server_429_buckets(server.url)
            results, wall = burst(server, clients, 1000 * (r + 1), client)
            sampling.set()
            sampler.join()
            after = server_429_buckets(server.url)
            refused = sorted(s for c, s, _ in results if c == 429)
            refused_sent = sorted(s for c, _, s in results if c == 429 and s is not None)
            served = sorted(s for c, s, _ in results if c == 200)
            inside = {le: after[le] - before.get(le, 0.0) for le in after}
            runs.append({
                "served": len(served), "refused_429": len(refused),
                "other": [c for c, _, _ in results if c not in (200, 429)],
                "p50_429_after_sent_s": refused_sent[len(refused_sent) // 2] if refused_sent else None,
                "p50_429_s": refused[len(refused) // 2] if refused else None,
                "p99_429_s": refused[int(0.99 * (len(refused) - 1))] if refused else None,
                "max_429_s": max(refused, default=None), "max_served_s": max(served, default=None), "wall_s": wall,
                "server_429_within_s": {le: n / len(refused) for le, n in inside.items()} if refused else {},
                "rss_after_mb": server.rss_bytes() / 2**20, "rss_peak_mb": peak[0] / 2**20})
        code, seconds, body = post(server.url, seed=7)
        ready = HTTP.get(server.url + "/readyz").json()
    rss = [run["rss_after_mb"] for run in runs]
    return {"clients": clients, "queue": queue, "client": client, "rounds": runs, "rss_start_mb": rss_start / 2**20,
            # bounded: after the first burst (which loads what a burst touches), later ones add no more than
            # the finished jobs they leave (17 small images a burst, kept for the results' TTL) and allocator slack
            "rss_growth_after_first_mb": rss[-1] - rss[0],
            "afterwards": {"code": code, "seconds": seconds, "queue_depth": ready["queue_depth"]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--overloads", type=int, default=3, help="bursts of --clients against one server [3]")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw",
                    help="overload clients: bare asyncio sockets (the server's latency) or httpx's AsyncClient [raw]")
    ap.add_argument("--only", choices=["overhead", "batching", "overload", "replicas"], default=None,
                    help="one section; replicas (Ray Serve, 1 vs 2 replicas; needs limner[ray]) runs only when named")
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
        report["overload"] = o = overload(a.clients, a.queue, env, a.overloads, a.client)
        for k, run in enumerate(o["rounds"], 1):
            inside = ", ".join(f"<= {float(le) * 1000:g} ms {100 * f:.0f}%" for le, f in run["server_429_within_s"].items()
                               if float(le) <= 0.1)
            print(f"overload {k}/{len(o['rounds'])} ({a.client} client): {run['served']} served, {run['refused_429']} "
                  f"refused (429 at the client: median {run['p50_429_s']:.3f} s, p99 {run['p99_429_s']:.3f} s, max "
                  f"{run['max_429_s']:.3f} s; from the request sent: median "
                  f"{run['p50_429_after_sent_s'] or float('nan'):.3f} s; target <= 0.1 s; inside the server: {inside}), "
                  f"other {run['other']}; "
                  f"RSS after {run['rss_after_mb']:.0f} MB (peak {run['rss_peak_mb']:.0f})", flush=True)
        after = ", ".join(f"{r['rss_after_mb']:.0f}" for r in o["rounds"])
        print(f"overload: RSS {o['rss_start_mb']:.0f} MB before, {after} MB after each burst "
              f"(+{o['rss_growth_after_first_mb']:.1f} MB after the first); afterwards {o['afterwards']}", flush=True)
    if a.only == "replicas":
        report["replicas"] = o = replicas(a.rounds, env)
        rate = {n: ", ".join(f"{x:.2f}" for x in o[f"replicas_{n}"]["requests_per_s"]) for n in (1, 2)}
        print(f"replicas: 1 replica {rate[1]} req/s, 2 replicas {rate[2]} req/s -> {o['speedup']:.2f}x (ratio of "
              f"median walls)", flush=True)
    report["load_after"] = os.getloadavg()[0]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
