"""Start-up figures, measured side by side (issue 22): `limner --help`; a warm `limner generate PROMPT`, whole
process; the same work inside one Python process; and the first `limner generate` after a fresh install.

Each round runs every measurement once, in turn, so that a busy machine slows them alike; the table gives
the median and the range over the rounds, wall time and the CPU time (user + system) of the process.

- help:      `limner --help`.
- generate:  `limner generate PROMPT` with the caches of earlier runs (a warm-up run fills them first).
- in process: a fresh Python process imports limner, then times `Pipeline.from_pretrained` + one call
  (cold: the first in the process, lazy imports and model loads included) and the same again (warm:
  the issue's "in-process call"). `gap` = generate - in process (warm): what the command adds.
- first run: `limner generate PROMPT` with empty cache folders ($LIMNER_CACHE, $XDG_CACHE_HOME, $HF_HOME:
  a fresh install; installed packages keep their compiled bytecode, as pip leaves them).

Every image must be the same pixels (checked). Targets: help <= 1 s, generate <= 5 s and within 3 s of
the in-process call, first run <= 30 s.

    python benchmarks/startup.py [--repeats 5] [--prompt "three red circles and a blue square"] [--out runs/startup.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the console script installed beside this interpreter (a venv's bin/), else the one on PATH
LIMNER = [str(Path(sys.executable).with_name("limner")) if Path(sys.executable).with_name("limner").is_file()
          else shutil.which("limner") or "limner"]
IN_PROCESS = """
import json, sys, time
t = time.perf_counter()
import limner
imported = time.perf_counter() - t
times = []
for _ in range(2):
    t = time.perf_counter()
    pipe = limner.Pipeline.from_pretrained("shapes-default")
    images = pipe(sys.argv[1], seed=0)
    times.append(time.perf_counter() - t)
print(json.dumps({"import": imported, "cold": times[0], "warm": times[1]}))
"""
TARGETS = {"help": 1.0, "generate": 5.0, "gap": 3.0, "first run": 30.0}


def run(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, stdout) of one command; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stdout


def pixels(path: Path) -> str:
    import numpy as np
    from PIL import Image

    return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()[:16]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default="three red circles and a blue square")
    ap.add_argument("--no-first-run", action="store_true", help="skip the fresh-install runs (~30 s each)")
    ap.add_argument("--out", default="runs/startup.json")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="limner-startup-"))
    generate = [*LIMNER, "generate", a.prompt, "--output"]
    run([*generate, str(work / "warm-up.png")])       # fills the caches the warm runs use
    reference = pixels(work / "warm-up.png")
    wall: dict[str, list[float]] = {k: [] for k in ("help", "generate", "in process (cold)", "in process", "gap",
                                                    "first run")}
    cpu: dict[str, list[float]] = {k: [] for k in ("help", "generate", "first run")}
    images = []
    load = [os.getloadavg()[0]]
    for r in range(a.repeats):
        w, c, _ = run([*LIMNER, "--help"])
        wall["help"].append(w), cpu["help"].append(c)
        w, c, _ = run([*generate, str(work / f"warm-{r}.png")])
        wall["generate"].append(w), cpu["generate"].append(c)
        images.append(pixels(work / f"warm-{r}.png"))
        _, _, out = run([sys.executable, "-c", IN_PROCESS, a.prompt])
        inner = json.loads(out.strip().splitlines()[-1])
        wall["in process (cold)"].append(inner["cold"]), wall["in process"].append(inner["warm"])
        wall["gap"].append(wall["generate"][-1] - inner["warm"])
        if not a.no_first_run:
            fresh = work / f"fresh-{r}"
            env = {"LIMNER_CACHE": str(fresh / "limner"), "XDG_CACHE_HOME": str(fresh / "xdg"),
                   "HF_HOME": str(fresh / "hf")}
            w, c, _ = run([*generate, str(work / f"first-{r}.png")], env)
            wall["first run"].append(w), cpu["first run"].append(c)
            images.append(pixels(work / f"first-{r}.png"))
            shutil.rmtree(fresh, ignore_errors=True)
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{a.repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in wall.items() if v),
              file=sys.stderr)
    same = all(h == reference for h in images)

    report = {"wall_s": {k: summary(v) for k, v in wall.items() if v},
              "cpu_s": {k: summary(v) for k, v in cpu.items() if v},
              "targets_s": TARGETS, "images_identical": same, "prompt": a.prompt, "repeats": a.repeats,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_1min": load},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"\n| figure | target | wall median | wall min-max | CPU median |\n|---|---:|---:|---:|---:|")
    for k, s in report["wall_s"].items():
        target = TARGETS.get(k)
        c = report["cpu_s"].get(k)
        print(f"| {k} | {'<= %g s' % target if target else ''} | {s['median']:.2f} s | {s['min']:.2f}-{s['max']:.2f} s "
              f"| {'%.2f s' % c['median'] if c else ''} |")
    print(f"\nimages identical across all runs: {same}; load average (1 min) over the run: "
          f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} CPUs")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"written to {a.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
