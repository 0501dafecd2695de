"""The captions ablation (issue 23): does caption diversity, and then a learned layout, make the model follow
prompts? Four denoisers at one training budget (configs/ablation.yaml: same scenes, steps, model and seed),
differing only in the captions they are trained on; each then drawn alone (20 steps, best of 1, no search) on
the held-out suites in the template wordings and in wordings no captioner uses.

    python benchmarks/ablation.py                       # train what is missing (resumable), then score all four
    python benchmarks/ablation.py --per-cell 10 --only c d --out ablation.json
    python benchmarks/ablation.py --only p1 p7 --per-cell 25   # the planner: one captioner against seven

Training runs as `limner train` subprocesses, one at a time; a run whose model folder exists is not retrained.
Variant (d) is drawn with the shipped planner (trained separately, on its own captions: its 72 min are outside
the equal budget, which covers the denoisers).
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from limner.common.files import write_atomic
from limner.models import folder

VARIANTS = {   # key: (folder name, label, --set overrides of configs/ablation.yaml)
    "a": ("alt-only", "(a) alt-text only", ["data.caption_weights={alt: 1.0}"]),
    "b": ("one-captioner", "(b) one synthetic captioner (the templates)",
          ["data.caption_weights={alt: 0.05, count: 0.35, spatial: 0.2, detailed: 0.4}"]),
    "c": ("all-captioners", "(c) all captioners", []),
    "d": ("all-captioners-layout", "(d) (c) + learned layout", ["model.grounding=true", "layout_dropout=0.5"]),
}
# The planner, where words become objects and boxes, at one budget (configs/planner-default.yaml's stage 1 at a
# third of its scenes and steps): one synthetic captioner against the seven of the shipped mix. Scored on the plans
# alone (benchmarks/plan_following.py), with its dev wordings too.
PLANNER_CONFIG = "configs/planner-default.yaml"
PLANNER_BUDGET = ["data.scenes=20000", "steps=1000", "data.easy_steps=200", "ckpt_every=250"]
PLANNERS = {
    "p1": ("planner-one-captioner", "(p1) planner, one captioner (the templates)", ["data.captioners={templates: 1.0}"]),
    "p7": ("planner-seven-captioners", "(p7) planner, seven captioners (the shipped mix)", []),
}
ALL = {**VARIANTS, **PLANNERS}


def train(key: str, root: Path, config: str, extra: list[str]) -> float | None:
    """Train one variant unless its model exists; the seconds it took (None when it was there already)."""
    name, _, sets = ALL[key]
    if key in PLANNERS:
        config, sets = PLANNER_CONFIG, PLANNER_BUDGET + sets
    out = root / name
    if (out / "model" / "limner.json").exists():
        return None
    cmd = [sys.executable, "-m", "limner.cli", "train", config, "--set", f"out_dir={out}"]
    for s in sets + extra:
        cmd += ["--set", s]
    if (out / "checkpoint.pt").exists():
        cmd.append("--resume")
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def with_planner(model: Path, planner_from: str) -> Path:
    """A copy of `model` with the planner (and its place temperature) of `planner_from`, a model folder."""
    src = folder.resolve(planner_from)
    meta = folder.read_meta(src)
    planner = folder.load_planner(src, meta)
    out = model.parent / "model-planned"
    if out.exists():
        shutil.rmtree(out)
    folder.save_planner(model, planner, out)
    mine = folder.read_meta(out)
    mine.setdefault("defaults", {})["plan_temperature"] = folder.plan_temperature(meta)
    write_atomic(out / "limner.json", json.dumps(mine, indent=2))
    return out


def score(model: Path, per_cell: int, seed: int) -> dict:
    from limner.pipeline import Pipeline
    from limner.safety.guard import SafetyConfig
    from limner.world.evaluate import score_families

    pipe = Pipeline.from_pretrained(str(model), safety=SafetyConfig.off())
    return score_families(pipe, per_cell, seed=seed, steps=20, best_of=1)


def score_plans(model: Path, per_cell: int, seed: int) -> dict:
    """benchmarks/plan_following.py on `model` (a subprocess: that file is a script): its families and dev rows."""
    out = model.parent / "plan_following.json"
    subprocess.run([sys.executable, str(Path(__file__).with_name("plan_following.py")), "--model", str(model),
                    "--per-cell", str(per_cell), "--seed", str(seed), "--dev", "100", "--out", str(out)], check=True)
    res = json.loads(out.read_text())
    return {**res["families"], "dev": res["dev"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/ablation.yaml")
    ap.add_argument("--root", default="runs/ablation")
    ap.add_argument("--only", nargs="+", choices=list(ALL), default=list(VARIANTS),
                    help="denoiser variants a-d (the default) and/or planner variants p1, p7")
    ap.add_argument("--set", action="append", default=[], help="more overrides for every variant, e.g. steps=200")
    ap.add_argument("--planner", default="shapes-default", help="the model folder whose planner draws variant (d)")
    ap.add_argument("--per-cell", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/ablation/results.json")
    a = ap.parse_args()

    root = Path(a.root)
    results = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    for key in a.only:   # every training first: a later one reuses the text and latent caches of the first
        seconds = train(key, root, a.config, a.set)
        if seconds is not None:
            results.setdefault(key, {})["train_seconds"] = round(seconds)
    for key in a.only:
        name, label, _ = ALL[key]
        model = root / name / "model"
        if key == "d":
            model = with_planner(model, a.planner)
        t0 = time.time()
        grade = score_plans if key in PLANNERS else score
        results.setdefault(key, {}).update(label=label, model=str(model), per_cell=a.per_cell, seed=a.seed,
                                           suites=grade(model, a.per_cell, a.seed),
                                           score_seconds=round(time.time() - t0))
        write_atomic(a.out, json.dumps(results, indent=1))
    print(f"{'variant':46} {'templates: count bind spat detail':34} unseen: count bind spat detail")
    for key in ALL:
        if "suites" not in results.get(key, {}):
            continue
        r = results[key]["suites"]
        row = lambda f: " ".join(f"{r[f][s]['acc']:.2f}" for s in ("counting", "binding", "spatial", "detailed"))
        dev = " dev: " + " ".join(f"{r['dev'][s]['acc']:.2f}" for s in r["dev"]) if "dev" in r else ""
        print(f"{results[key]['label']:46} {row('templates'):34} {row('unseen')}{dev}")


if __name__ == "__main__":
    main()
