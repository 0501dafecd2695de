"""The evaluation report on known data: votes from known strengths, a real generation folder of Shapes
World renders, counting answers and a scores.json; the page's numbers, files, escaping, CLI and errors."""
import csv
import html
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limner.cli import main
from limner.eval import ratings as R
from limner.eval.report import build_report
from limner.world.scene import render, sample_scene

ODD = "<b>&co"                                        # a model name the page must escape
MODELS = ["imagen-3", "sd3", ODD, "sdxl"]             # best first
STRENGTHS = np.array([1150, 1050, 950, 850.0])
GENERATED = ("imagen-3", ODD)                          # the two models with images
PROMPTS = [f'{n} red circles <b>& "{n}" blue squares' for n in range(1, 7)]


def image(model: str, prompt_id: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9-]+', '-', model)}/{prompt_id}-s0.png"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, simulate_votes) -> dict:
    root = tmp_path_factory.mktemp("report-inputs")
    gen = root / "generations"
    rng = random.Random(0)
    rows = []
    for model in GENERATED:
        for i, text in enumerate(PROMPTS):
            (gen / image(model, f"p{i}")).parent.mkdir(parents=True, exist_ok=True)
            render(sample_scene(rng), 64).save(gen / image(model, f"p{i}"))
            rows.append({"model": model, "prompt_id": f"p{i}", "prompt": text, "seed": 0, "path": image(model, f"p{i}"),
                         "suite": "counting" if i % 2 else "spatial", "tags": {}, "constraints": None,
                         "cache_key": f"{model}-{i}"})
    (gen / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    votes = simulate_votes(2400, STRENGTHS, MODELS, seed=5, questions=["overall", "alignment", "appeal", "detailed"])
    with (root / "votes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model_a", "model_b", "winner", "question", "prompt_id", "rater", "image_a", "image_b"])
        for n, (a, b, o, q) in enumerate(zip(votes.model_a, votes.model_b, votes.outcome, votes.question)):
            pid = f"p{n % len(PROMPTS)}"
            imgs = [image(a, pid), image(b, pid)] if {a, b} == set(GENERATED) else ["", ""]
            w.writerow([a, b, {R.A_WINS: "model_a", R.B_WINS: "model_b", R.TIE: "tie"}[o], q, pid, f"r{n % 7}", *imgs])

    accuracy = {"imagen-3": 0.9, "sd3": 0.6, ODD: 0.45, "sdxl": 0.2}
    gen_rng = np.random.default_rng(1)
    with (root / "counts.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "prompt_id", "image", "expected", "answer", "correct", "rater"])
        for model, p in accuracy.items():
            for k in range(200):
                expected, ok = 1 + k % 8, gen_rng.random() < p
                w.writerow([model, f"p{k % 6}", f"{model}/{k}.png", expected, expected if ok else expected + 1,
                            int(ok), "r1"])

    def metric(better: bool, means: list[float], tags: bool = False) -> dict:
        return {"higher_is_better": better, "kind": "per_image", "models": {
            m: {"mean": x, "ci": [x - 0.01, x + 0.01], "n": 100,
                "by_tag": {f"skill={s}": {"mean": x + d, "ci": [x + d - 0.02, x + d + 0.02], "n": 50}
                           for s, d in (("counting", -0.05), ("<spatial>", 0.02))} if tags else {}}
            for m, x in zip(MODELS, means)}}

    scores = {"suite": "genai_bench", "n_images": 400, "metrics": {
        "clip_score": metric(True, [0.34, 0.32, 0.30, 0.25], tags=True),
        "fid": metric(False, [12.0, 15.0, 20.0, 31.0]),
        "backwards": metric(True, [0.1, 0.2, 0.3, 0.4])}}
    (root / "scores.json").write_text(json.dumps(scores))
    return {"root": root, "votes": root / "votes.csv", "counts": root / "counts.csv", "gen_dir": gen,
            "scores": root / "scores.json"}


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return build_report(out, votes=inputs["votes"], counts=inputs["counts"], gen_dir=inputs["gen_dir"],
                        scores=inputs["scores"], rounds=200, samples=4)


def test_numbers_match_the_known_strengths(report):
    data = json.loads((report.parent / "report.json").read_text())
    for q in ("overall", "alignment", "appeal", "detailed", "all"):
        board = data["questions"][q]["leaderboard"]
        assert [row["model"] for row in board] == MODELS, q
        assert all(row["ci_low"] <= row["rating"] <= row["ci_high"] for row in board)
    assert data["summary"]["votes"] == 2400 and data["summary"]["raters"] == 7
    # suites come from the manifest by prompt_id (the votes carry no suite column)
    assert set(data["suites"]) == {"counting", "spatial"}
    assert [a["model"] for a in data["counting"]] == MODELS
    assert all(a["ci"][0] <= a["accuracy"] <= a["ci"][1] for a in data["counting"])
    agree = {m: d["agreement"]["overall"] for m, d in data["metrics"].items()}
    assert agree["clip_score"]["agreement"] == 1.0 and agree["clip_score"]["pairs"] == 6
    assert agree["fid"]["agreement"] == 1.0            # lower is better: flipped before comparing
    assert agree["backwards"]["agreement"] == 0.0 and len(agree["backwards"]["disagreeing_pairs"]) == 6


def test_page_files_exist_and_text_is_escaped(report):
    page = report.read_text()
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len([s for s in srcs if s.startswith("samples/")]) == 8           # 4 pairs, 2 images each
    assert any(s.startswith("winrate-") for s in srcs) and any(s.startswith("skills-") for s in srcs)
    for src in srcs:
        assert not src.startswith(("/", "data:")), src                       # relative: the folder moves
        with Image.open(report.parent / src) as img:
            img.verify()
    for name in report.parent.glob("*.png"):
        assert name.name in srcs                                              # no stray plots
    assert ODD not in page and "<spatial>" not in page and "<b>&" not in page
    assert html.escape(ODD) in page and html.escape(PROMPTS[0]) in page
    assert "agreement (overall)" in page and "100.0%" in page and "0.0%" in page
    data = json.loads((report.parent / "report.json").read_text())
    pairs = data["samples"]
    assert len({p["prompt_id"] for p in pairs}) == 4 and all(p["votes"] for p in pairs)
    assert all({p["model_a"], p["model_b"]} == set(GENERATED) for p in pairs)


def test_samples_from_the_manifest_without_votes(inputs, tmp_path):
    page = build_report(tmp_path, scores=inputs["scores"], gen_dir=inputs["gen_dir"], samples=3)
    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["samples"]) == 3 and "questions" not in data
    for s in data["samples"]:
        assert {s["model_a"], s["model_b"]} == set(GENERATED)
        for f in s["files"]:
            assert Image.open(tmp_path / f).size == (256, 256)                # 64 px grown by whole pixels
    assert "Leaderboards per question" not in page.read_text()


def test_cli_prints_the_page(inputs, tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["eval", "report", "--votes", str(inputs["votes"]), "--generations", str(inputs["gen_dir"]),
               "--out", str(out), "--rounds", "50", "--anchor", "sdxl=860", "--samples", "2"])
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    board = json.loads((out / "report.json").read_text())["questions"]["overall"]["leaderboard"]
    assert board[-1]["model"] == "sdxl" and board[-1]["rating"] == 860


@pytest.mark.parametrize("args, message", [
    ([], "nothing to report"),
    (["--votes", "/no/such/votes.csv"], "no votes file at /no/such/votes.csv"),
    (["--scores", "/no/scores.json"], "limner eval score"),
    (["--votes", "{votes}", "--generations", "/no/gen"], "no generation folder"),
    (["--votes", "{votes}", "--anchor", "nope=1000"], "anchor model 'nope'"),
    (["--votes", "{votes}", "--anchor", "1000"], "MODEL=RATING"),
    (["--scores", "{bad_scores}"], "higher_is_better"),
    (["--scores", "{not_json}"], "not valid JSON"),
    (["--votes", "{votes}", "--counts", "{bad_counts}"], "correct is 'maybe'"),
])
def test_bad_input_says_what_is_wrong(args, message, inputs, tmp_path, capsys):
    bad = json.loads(inputs["scores"].read_text())
    del bad["metrics"]["fid"]["higher_is_better"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "not.json").write_text('{"metrics": ')
    (tmp_path / "counts.csv").write_text("model,expected,answer,correct\nsd3,3,3,maybe\n")
    files = {"votes": inputs["votes"], "bad_scores": tmp_path / "bad.json", "not_json": tmp_path / "not.json",
             "bad_counts": tmp_path / "counts.csv"}
    rc = main(["eval", "report", "--out", str(tmp_path / "r"), *(a.format(**files) for a in args)])
    assert rc == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_page_renders_in_chromium(report, tmp_path):
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not chromium:
        pytest.skip("chromium is not installed")
    shot = tmp_path / "page.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=60, check=False)
    img = np.asarray(Image.open(shot).convert("L"), float)
    assert img.std() > 10                                                     # text, tables and plots, not blank


def test_a_sparse_question_is_reported_not_fatal(tmp_path):
    # "appeal": x always wins, so its ratings are unbounded; the rest of the page is still written
    rows = [{"model_a": a, "model_b": b, "winner": w, "question": q, "suite": s}
            for q, s, pairs in (("overall", "s1", [("x", "y", "model_a"), ("y", "x", "model_a"), ("x", "z", "tie"),
                                                   ("z", "y", "model_b"), ("y", "z", "model_a")]),
                                ("appeal", "s2", [("x", "y", "model_a"), ("x", "z", "model_a")]))
            for a, b, w in pairs * 3]
    (tmp_path / "votes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = build_report(tmp_path / "r", votes=tmp_path / "votes.jsonl", rounds=20).read_text()
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "unbounded" in data["questions"]["appeal"]["error"] and "no ratings: ratings are unbounded" in page
    assert data["questions"]["overall"]["leaderboard"] and data["summary"]["headline"] == "overall"
    assert set(data["suites"]) == {"s1", "s2"} and "error" in data["suites"]["s2"]
