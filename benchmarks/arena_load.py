"""Arena load benchmark: N concurrent raters voting against `limner arena serve` on loopback.

    python benchmarks/arena_load.py [--raters 50] [--seconds 30] [--think 0 1] [--db sqlite|URL]

Each rater is a real HTTP client (aiohttp, asyncio, its own connection) that loops: GET /api/next, GET its
images (as the page does), wait `think` seconds (how long a person looks at the pair), POST /api/answer. The server is the CLI in a
subprocess, one uvicorn worker, on a study of 3 models x 300 prompts (Shapes World renders). Reports
p50/p95/p99 latency of the vote (POST /api/answer) and of /api/next, votes per second, and checks the
database afterwards: every vote the server acknowledged is stored once with its answer (none lost),
and no item holds two answers from one rater (none duplicated).

Both client and server share the machine's cores, so the figures are a pessimistic bound.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "limner.cli"]


def make_generations(out: Path, prompts: int = 300, models=("alpha", "beta", "gamma")) -> None:
    from limner.world.scene import render, sample_scene

    rows = []
    for i in range(prompts):
        for m in models:
            rng = random.Random(f"{m}-{i}")
            path = f"{m}/p{i:04d}-s0.png"
            (out / m).mkdir(parents=True, exist_ok=True)
            render(sample_scene(rng), 128).save(out / path)
            rows.append({"model": m, "prompt_id": f"p{i:04d}", "prompt": f"prompt {i}", "seed": 0, "path": path,
                         "suite": "bench", "tags": {}, "constraints": None, "cache_key": f"{m}-{i}"})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def rater(session, url: str, token: str, stop: float, think: float, stats: dict):
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    await asyncio.sleep(random.uniform(0, think))   # raters arrive over a second, not in the same millisecond
    while time.perf_counter() < stop:
        try:
            if not await one_item(session, url, headers, think, stats):
                return
        except aiohttp.ClientError as e:   # a dropped connection is a failure to report, not a crash
            stats["errors"].append(f"{type(e).__name__}: {e}")


async def one_item(session, url: str, headers: dict, think: float, stats: dict) -> bool:
    """One item as the page does it: ask, load its images, look, vote. False when nothing is left."""
    t0 = time.perf_counter()
    async with session.get(url + "/api/next", headers=headers) as r:
        item = await r.json()
    stats["next_ms"].append((time.perf_counter() - t0) * 1000)
    if item.get("finished"):
        return False
    for key in ("left", "right", "image", "reference"):
        if item.get(key):
            async with session.get(url + item[key], headers=headers) as r:
                await r.read()
    if think:
        await asyncio.sleep(random.uniform(0.5, 1.5) * think)
    body = {"id": item["id"], "choice": random.choice(["left", "right", "tie"])} if item["kind"] == "pair" \
        else {"id": item["id"], "count": random.randint(0, 9)}
    t0 = time.perf_counter()
    async with session.post(url + "/api/answer", json=body, headers=headers) as r:
        await r.read()
        status = r.status
    stats["vote_ms"].append((time.perf_counter() - t0) * 1000)
    (stats["acked"] if status == 200 else stats["errors"]).append(body)
    return True


async def load(url: str, tokens: list[str], seconds: float, think: float) -> dict:
    import aiohttp

    stats = {"vote_ms": [], "next_ms": [], "acked": [], "errors": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(tokens) + 5)) as session:
        stop = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(rater(session, url, t, stop, think, stats) for t in tokens))
        stats["wall"] = time.perf_counter() - t0
    return stats


def check_db(db: str, acked: list[dict]) -> dict:
    from sqlalchemy import func, select

    from limner.eval.arena.store import Assignment, Store

    store = Store(db)
    with store.session() as s:
        rows = {a.id: a for a in s.scalars(select(Assignment).where(Assignment.answered_at.is_not(None)))}
        dup = s.execute(select(Assignment.rater_id, Assignment.task_id, Assignment.attention, func.count())
                        .group_by(Assignment.rater_id, Assignment.task_id, Assignment.attention)
                        .having(func.count() > 1)).all()
    lost = [b for b in acked if b["id"] not in rows
            or (rows[b["id"]].choice if "choice" in b else rows[b["id"]].count) != b.get("choice", b.get("count"))]
    return {"stored": len(rows), "acked": len(acked), "lost": len(lost), "duplicated": len(dup),
            "unacknowledged_stored": len(rows) - len(acked) + len(lost)}


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def run_one(db: str, gen: Path, raters: int, seconds: float, think: float, fresh: bool) -> dict:
    if fresh:
        subprocess.run(CLI + ["arena", "create", str(gen), "--db", db, "--votes-per-item", "5"], check=True,
                       capture_output=True)
    out = subprocess.run(CLI + ["arena", "invite", "--db", db, "-n", str(raters)], check=True, capture_output=True,
                         text=True).stdout
    tokens = [line.split("token=")[1] for line in out.split()]
    port = free_port()
    server = subprocess.Popen(CLI + ["arena", "serve", "--db", db, "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx
        for _ in range(300):
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        res = asyncio.run(load(url, tokens, seconds, think))
    finally:
        server.terminate()
        server.wait(20)
    checked = check_db(db, res["acked"])
    return {"raters": raters, "think_s": think, "seconds": round(res["wall"], 1), "votes": len(res["vote_ms"]),
            "votes_per_s": round(len(res["vote_ms"]) / res["wall"], 1),
            "vote_p50_ms": round(pct(res["vote_ms"], 50), 1), "vote_p95_ms": round(pct(res["vote_ms"], 95), 1),
            "vote_p99_ms": round(pct(res["vote_ms"], 99), 1), "next_p50_ms": round(pct(res["next_ms"], 50), 1),
            "next_p95_ms": round(pct(res["next_ms"], 95), 1), "errors": len(res["errors"]), **checked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raters", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--think", type=float, nargs="+", default=[0.0, 1.0],
                    help="mean seconds a rater looks before voting (0: vote as fast as the server answers)")
    ap.add_argument("--db", default="sqlite", help="'sqlite' (a temp file) or a PostgreSQL URL")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(tmp) / "gen"
        make_generations(gen)
        print(f"{'db':10s} {'raters':>6s} {'think':>5s} {'votes':>6s} {'votes/s':>7s} {'vote p50':>8s} {'p95':>6s} "
              f"{'p99':>6s} {'next p95':>8s} {'lost':>4s} {'dup':>4s} {'errors':>6s}")
        for think in args.think:
            db = str(Path(tmp) / f"arena-{think}.sqlite") if args.db == "sqlite" else args.db
            if args.db != "sqlite":   # a clean schema for each run
                from limner.eval.arena.store import Base, Store
                Base.metadata.drop_all(Store(db, create=True).engine)
            r = run_one(db, gen, args.raters, args.seconds, think, fresh=True)
            name = "sqlite" if args.db == "sqlite" else "postgresql"
            print(f"{name:10s} {r['raters']:6d} {think:5.1f} {r['votes']:6d} {r['votes_per_s']:7.1f} "
                  f"{r['vote_p50_ms']:8.1f} {r['vote_p95_ms']:6.1f} {r['vote_p99_ms']:6.1f} {r['next_p95_ms']:8.1f} "
                  f"{r['lost']:4d} {r['duplicated']:4d} {r['errors']:6d}", flush=True)


if __name__ == "__main__":
    main()
