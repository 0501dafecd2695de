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

`--threads N` runs every child with OMP_NUM_THREADS=N (the images stay the same pixels): on a machine others
are busy on, torch's OpenMP threads wait on each other while one is descheduled (on the 2-core dev
machine at load 4, one call took 9 s with 2 threads and 2.1 s with 1), which swamps what start-up costs.

`--baseline DIR` measures another source tree in the same rounds (e.g. an older commit:
`git archive COMMIT src | tar -x -C DIR`), run as `python -c "from limner.cli import main; main()"` with
DIR/src first on the path, for a before/after on equal terms (its first run is left out: before the
shipped screen table it distils for minutes).

    python benchmarks/startup.py [--repeats 5] [--prompt "three red circles and a blue square"] [--baseline DIR]
                                 [--out runs/startup.json]
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
from collections import defaultdict
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


def measure(name: str, launcher: list[str], env: dict, prompt: str, work: Path, r: int, first_run: bool,
            wall: dict, cpu: dict) -> list[str]:
    """One round of every measurement for one source tree; returns the pixel digests of its images."""
    generate = [*launcher, "generate", prompt, "--output"]
    w, c, _ = run([*launcher, "--help"], env)
    wall[name, "help"].append(w), cpu[name, "help"].append(c)
    w, c, _ = run([*generate, str(work / f"{name}-warm-{r}.png")], env)
    wall[name, "generate"].append(w), cpu[name, "generate"].append(c)
    images = [pixels(work / f"{name}-warm-{r}.png")]
    _, _, out = run([sys.executable, "-c", IN_PROCESS, prompt], env)
    inner = json.loads(out.strip().splitlines()[-1])
    wall[name, "in process (cold)"].append(inner["cold"]), wall[name, "in process"].append(inner["warm"])
    wall[name, "gap"].append(wall[name, "generate"][-1] - inner["warm"])
    if first_run:
        fresh = work / f"fresh-{r}"
        empty = {"LIMNER_CACHE": str(fresh / "limner"), "XDG_CACHE_HOME": str(fresh / "xdg"), "HF_HOME": str(fresh / "hf")}
        w, c, _ = run([*generate, str(work / f"{name}-first-{r}.png")], {**env, **empty})
        wall[name, "first run"].append(w), cpu[name, "first run"].append(c)
        images.append(pixels(work / f"{name}-first-{r}.png"))
        shutil.rmtree(fresh, ignore_errors=True)
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default="three red circles and a blue square")
    ap.add_argument("--no-first-run", action="store_true", help="skip the fresh-install runs (~30 s each)")
    ap.add_argument("--baseline", help="another source tree (holding src/limner) to measure in the same rounds")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every run [the default: one per core]")
    ap.add_argument("--out", default="runs/startup.json")
    a = ap.parse_args()

    threads = {"OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)} if a.threads else {}
    trees = {"current": (LIMNER, threads)}
    if a.baseline:
        env = {**threads, "PYTHONPATH": str(Path(a.baseline).resolve() / "src")}
        trees["baseline"] = ([sys.executable, "-c", "import sys; from limner.cli import main; sys.exit(main())"], env)
    work = Path(tempfile.mkdtemp(prefix="limner-startup-"))
    reference = None
    for name, (launcher, env) in trees.items():   # warm-up: fills the caches the warm runs use
        run([*launcher, "generate", a.prompt, "--output", str(work / f"{name}-warm-up.png")], env)
        reference = reference or pixels(work / f"{name}-warm-up.png")
    wall: dict = defaultdict(list)
    cpu: dict = defaultdict(list)
    images = []
    load = [os.getloadavg()[0]]
    for r in range(a.repeats):
        for name, (launcher, env) in trees.items():
            images += measure(name, launcher, env, a.prompt, work, r, name == "current" and not a.no_first_run,
                              wall, cpu)
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{a.repeats}: " + ", ".join(f"{n} {k} {v[-1]:.2f} s" for (n, k), v in wall.items()),
              file=sys.stderr)
    same = all(h == reference for h in images)

    figures = {name: {"wall_s": {k: summary(v) for (n, k), v in wall.items() if n == name},
                      "cpu_s": {k: summary(v) for (n, k), v in cpu.items() if n == name}} for name in trees}
    report = {"figures": figures, "targets_s": TARGETS, "images_identical": same, "prompt": a.prompt,
              "repeats": a.repeats, "baseline": a.baseline, "threads": a.threads,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_1min": load},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    print("\n| figure | tree | target | wall median | wall min-max | CPU median |\n|---|---|---:|---:|---:|---:|")
    for k in dict.fromkeys(k for _, k in wall):
        for name in trees:
            s = figures[name]["wall_s"].get(k)
            if s is None:
                continue
            c = figures[name]["cpu_s"].get(k)
            target = TARGETS.get(k)
            print(f"| {k} | {name} | {'<= %g s' % target if target else ''} | {s['median']:.2f} s "
                  f"| {s['min']:.2f}-{s['max']:.2f} s | {'%.2f s' % c['median'] if c else ''} |")
    print(f"\nimages identical across all runs: {same}; load average (1 min) over the run: "
          f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} CPUs; OMP_NUM_THREADS {a.threads or 'unset'}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"written to {a.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
