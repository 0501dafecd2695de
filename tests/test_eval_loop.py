"""The whole evaluation loop, as a user runs it, on tiny models: generate two models' images for a
suite (`limner eval generate`), rate them side by side in the arena over HTTP with a scripted rater,
export the votes, score automatically (`limner eval score`) and build the report (`limner eval report`).
The rater judges by counting colour patches, not with limner's scorer, so votes and scores are two views."""
import io
import json
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

CLI = [sys.executable, "-m", "limner.cli"]
NUMBERS = {w: n for n, w in enumerate("one two three four five six seven eight".split(), 1)} | {"a": 1, "an": 1}


def run(*args):
    out = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def patches(image: Image.Image, colour: str) -> int:
    """How many separate patches of a palette colour an image shows (at least 0.2% of it each): a rater's
    count, with none of limner's scorer (which explains every pixel as a blend of background and colour)."""
    from scipy import ndimage

    from limner.world.scene import COLOURS

    near = np.linalg.norm(np.asarray(image.convert("RGB"), float) - COLOURS[colour], axis=-1) < 60
    labels, n = ndimage.label(near)
    sizes = ndimage.sum(near, labels, range(1, n + 1))
    return int((np.asarray(sizes) >= 0.002 * near.size).sum())


def asked(prompt: str) -> list[tuple[int, str]]:
    """(count, colour) of each "two red circles" in a counting prompt."""
    found = re.findall(r"\b(an?|one|two|three|four|five|six|seven|eight|\d) (\w+) (?:circle|square|triangle)s?\b", prompt)
    assert found, prompt
    return [(int(n) if n.isdigit() else NUMBERS[n], colour) for n, colour in found]


def judge(client: httpx.Client, item: dict) -> dict:
    """A careful rater: counts what the image shows; prefers the image whose counts are nearer the prompt's."""
    look = lambda url: Image.open(io.BytesIO(client.get(url).content))   # noqa: E731
    if item["kind"] == "count":
        colour = re.match(r"How many (\w+) \w+? does", item["text"]).group(1)
        return {"count": patches(look(item["image"]), colour)}
    if item["prompt"] is None:          # visual appeal: the cleaner picture (less pixel-to-pixel noise)
        value = lambda im: -np.abs(np.diff(np.asarray(im.convert("L"), float), axis=1)).mean()   # noqa: E731
    else:
        value = lambda im: -sum(abs(patches(im, c) - n) for n, c in asked(item["prompt"]))   # noqa: E731
    left, right = value(look(item["left"])), value(look(item["right"]))
    return {"choice": "tie" if left == right else ("left" if left > right else "right")}


@pytest.mark.slow
def test_generate_rate_score_report(tmp_path, tiny_sd, start_server, invite):
    gen, db, out = tmp_path / "gen", tmp_path / "arena.sqlite", tmp_path / "report"
    run("eval", "generate", "--suite", "shapes-counting", "--limit", "6", "--model", "shapes-default",
        "--model", str(tiny_sd), "--out", str(gen), "--no-progress")
    manifest = [json.loads(line) for line in (gen / "manifest.jsonl").read_text().splitlines()]
    models = sorted({r["model"] for r in manifest})
    assert len(models) == 2 and len(manifest) == 12

    run("arena", "create", str(gen), "--db", str(db), "--questions", "overall", "alignment", "appeal", "counting")
    url, server = start_server(db)
    try:
        token = invite(db, url)[0]
        answered = 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            while not (item := c.get("/api/next").json()).get("finished"):
                assert c.post("/api/answer", json={"id": item["id"], **judge(c, item)}).status_code == 200
                answered += 1
    finally:
        server.terminate()
        server.wait(10)
    assert answered >= 6 * 3 + 12   # every pair under three questions, every image counted
    run("arena", "export", "--db", str(db), "--out", str(tmp_path))

    run("eval", "score", str(gen), "--rounds", "200", "--no-progress")
    scores = json.loads((gen / "scores.json").read_text())
    correct = {m: s["mean"] for m, s in scores["metrics"]["shapes.correct"]["models"].items()}
    assert set(correct) == set(models)

    run("eval", "report", "--votes", str(tmp_path / "votes.csv"), "--counts", str(tmp_path / "counts.csv"),
        "--generations", str(gen), "--scores", str(gen / "scores.json"), "--out", str(out), "--rounds", "200")
    report = json.loads((out / "report.json").read_text())
    html = (out / "report.html").read_text()
    assert all(m in html for m in models)
    # counting accuracy is what the rater's answers say, per model
    import csv
    rows = list(csv.DictReader(open(tmp_path / "counts.csv")))
    for entry in report["counting"]:
        mine = [int(r["correct"]) for r in rows if r["model"] == entry["model"]]
        assert entry["n"] == len(mine) == 6 and abs(entry["accuracy"] - sum(mine) / 6) < 1e-3
    # the untrained SD draws noise, never the scene asked for; the shipped model draws some prompts exactly
    assert correct["tiny-sd"] == 0 and correct["shapes-default"] > 0
    # the rater, counting patches by itself, prefers the shipped model on alignment, and the ratings say so
    votes = [r for r in csv.DictReader(open(tmp_path / "votes.csv")) if r.get("question") == "alignment"]
    won = [r[r["winner"]] for r in votes if r["winner"] in ("model_a", "model_b")]
    assert won.count("shapes-default") > won.count("tiny-sd"), won
    alignment = report["questions"]["alignment"]
    if "leaderboard" in alignment:
        rating = {r["model"]: r["rating"] for r in alignment["leaderboard"]}
        assert rating["shapes-default"] > rating["tiny-sd"]
    else:  # shapes-default won every decided vote: Bradley–Terry ratings are unbounded, and the report says so
        assert "tiny-sd" not in won and "unbounded" in alignment["error"]
    assert "shapes.count_ok" in report["metrics"]
