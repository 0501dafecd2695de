"""What `limner eval report` shows, computed: its inputs read and checked (the arena's votes, the counting
task's answers, `limner eval score`'s scores.json), Bradley–Terry ratings per question and per suite,
counting accuracy, each metric's agreement with the human ratings, and the sample pairs to show.
`limner.eval.report` renders them (plots and HTML); nothing here draws or writes.
"""
from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np

from . import ratings as R

QUESTIONS = ("overall", "alignment", "appeal", "detailed")   # the arena's, shown in this order
HEADLINE = ("overall", R.ALL)          # the ratings the metrics are checked against: the first present
COUNT_COLUMNS = "model, prompt_id, image, expected, answer, correct (0/1), rater"


# --- inputs -----------------------------------------------------------------------------------------

def load_vote_rows(path) -> tuple[R.Votes, list[dict]]:
    """The votes, and each vote's row as read: the arena's export adds image_a, image_b, suite, prompt."""
    rows = R.read_vote_rows(path)
    return R.Votes.from_rows(rows, str(path)), [row for _, row in rows]


def load_counts(path) -> list[dict]:
    """The counting task's answers (CSV or JSONL): model, the number asked for, and whether it was right."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no counting answers at {path} (the arena's counting export: {COUNT_COLUMNS})")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"{path}: empty file, no counting answers")
    if R.is_json(path, text):
        rows = R.json_rows(text, path)
    else:
        rows = [(f"line {n}", row) for n, row in enumerate(csv.DictReader(text.splitlines()), 2)]
    out = []
    for where, row in rows:
        if not isinstance(row, dict) or row.get("model") in (None, ""):
            raise ValueError(f"{path} {where}: no model; counting answers need the columns {COUNT_COLUMNS}")
        correct = row.get("correct")
        if correct in (None, ""):
            if row.get("expected") in (None, "") or row.get("answer") in (None, ""):
                raise ValueError(f"{path} {where}: needs correct (0/1), or expected and answer to compare")
            correct = _number(row["answer"]) == _number(row["expected"])
        elif str(correct).strip().lower() in ("1", "true", "1.0", "0", "false", "0.0"):
            correct = str(correct).strip().lower() in ("1", "true", "1.0")
        else:
            raise ValueError(f"{path} {where}: correct is {correct!r}, not 0 or 1")
        out.append({"model": str(row["model"]).strip(), "expected": _number(row.get("expected")),
                    "correct": bool(correct)})
    if not out:
        raise ValueError(f"{path}: no counting answers")
    return out


def _number(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load_scores(path) -> dict:
    """scores.json of `limner eval score`, checked for what the report reads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scores at {path} (`limner eval score` writes scores.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"{path}: no \"metrics\" object with at least one metric; is it the scores.json "
                         f"of `limner eval score`?")
    for name, m in metrics.items():
        if not isinstance(m, dict) or not isinstance(m.get("higher_is_better"), bool):
            raise ValueError(f"{path}: metric {name!r} needs \"higher_is_better\": true or false")
        if not isinstance(m.get("models"), dict) or not m["models"]:
            raise ValueError(f"{path}: metric {name!r} has no \"models\" with scores")
        for model, s in m["models"].items():
            if not isinstance(s, dict) or not isinstance(s.get("mean"), (int, float, type(None))):
                raise ValueError(f"{path}: metric {name!r}, model {model!r}: \"mean\" must be a number")
    return data


# --- numbers ----------------------------------------------------------------------------------------

def _subset(votes: R.Votes, keep: list[int]) -> R.Votes:
    pick = lambda xs: [xs[i] for i in keep]   # noqa: E731
    return R.Votes(pick(votes.model_a), pick(votes.model_b), votes.outcome[keep], pick(votes.question),
                   pick(votes.prompt_id), pick(votes.rater))


def _rate(votes: R.Votes, question: str | None, rounds: int, seed: int, anchor) -> R.Ratings | str:
    """Ratings, or why there are none (too few votes to connect the models): one sparse question or
    suite should not keep the rest of the report from being written."""
    try:
        return R.rate(votes, question, rounds, seed, anchor)
    except ValueError as e:
        return str(e)


def rate_questions(votes: R.Votes, rounds: int, seed: int, anchor) -> dict[str, R.Ratings | str]:
    """Per question in the arena's order, then every vote combined (as `limner eval elo`)."""
    qs = [q for q in QUESTIONS if q in votes.questions] + [q for q in votes.questions if q not in QUESTIONS]
    out = {q: _rate(votes, q, rounds, seed, anchor) for q in qs}
    if len(qs) != 1 or any(q is None for q in votes.question):
        out[R.ALL] = _rate(votes, None, rounds, seed, anchor)
    return out


def rate_suites(votes: R.Votes, suites: list[str | None], question: str | None, rounds: int, seed: int,
                anchor) -> dict[str, R.Ratings | str]:
    """The headline question's ratings within each suite; nothing when all votes are from one suite."""
    names = sorted({s for s in suites if s})
    if len(names) < 2:
        return {}
    out = {}
    for s in names:
        sub = _subset(votes, [i for i, x in enumerate(suites) if x == s])
        out[s] = _rate(sub, question if question in sub.questions else None, rounds, seed, anchor)
    return out


def _interval(correct: list[bool], rounds: int, rng: np.random.Generator) -> dict:
    """Accuracy and its percentile bootstrap interval: resampling n answers is a binomial draw."""
    n, k = len(correct), sum(correct)
    ci = None
    if rounds > 0:
        lo, hi = np.percentile(rng.binomial(n, k / n, rounds) / n, [2.5, 97.5])
        ci = [round(float(lo), 4), round(float(hi), 4)]
    return {"accuracy": round(k / n, 4), "ci": ci, "n": n}


def counting_accuracy(rows: list[dict], rounds: int, seed: int) -> list[dict]:
    """Per model, best first: accuracy with a 95% interval, overall and by the number asked for."""
    rng = np.random.default_rng(seed)
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    out = []
    for model, rs in by_model.items():
        by_n: dict[float, list[bool]] = defaultdict(list)
        for r in rs:
            if r["expected"] is not None:
                by_n[r["expected"]].append(r["correct"])
        out.append({"model": model, **_interval([r["correct"] for r in rs], rounds, rng),
                    "by_expected": {f"{n:g}": _interval(c, rounds, rng) for n, c in sorted(by_n.items())}})
    return sorted(out, key=lambda d: (-d["accuracy"], d["model"]))


def metric_agreement(scores: dict, ratings: dict[str, R.Ratings | str], headline: str | None) -> dict:
    """metric -> question -> ratings.agreement (the headline question first), or why it could not be."""
    from .metrics import metric_agreement as per_question

    rated = {q: r for q, r in ratings.items() if isinstance(r, R.Ratings)}
    out: dict[str, dict] = {name: {} for name in scores["metrics"]}
    for q in sorted(rated, key=lambda q: q != headline):
        for name, a in per_question(scores, dict(zip(rated[q].models, map(float, rated[q].rating)))).items():
            out[name][q] = a
    return out


def pick_pairs(vote_rows: list[dict], manifest: list[dict], order: list[str], k: int, seed: int,
               gen_dir: Path) -> list[dict]:
    """Up to k pairs of images of one prompt by two models, spread over as many prompts and model pairs
    as there are: the votes' image_a/image_b when the arena export has them, else from the manifest."""
    rank = {m: i for i, m in enumerate(order)}
    better = lambda m: (rank.get(m, len(rank)), m)   # noqa: E731  the higher rated model goes left
    cands = [(r.get("prompt_id"), str(r["model_a"]).strip(), r["image_a"], str(r["model_b"]).strip(), r["image_b"])
             for r in vote_rows if r.get("image_a") and r.get("image_b")]
    cands = [c if better(c[1]) <= better(c[3]) else (c[0], c[3], c[4], c[1], c[2]) for c in cands]
    if not cands:
        images: dict[str, dict[str, str]] = defaultdict(dict)
        for r in sorted(manifest, key=lambda r: -(r.get("seed") or 0)):   # each model's lowest seed
            if r.get("path"):
                images[r["prompt_id"]][r["model"]] = r["path"]
        for pid, ims in images.items():
            for a, b in combinations(sorted(ims, key=better), 2):
                cands.append((pid, a, ims[a], b, ims[b]))
    cands = [c for c in dict.fromkeys(cands) if (gen_dir / c[2]).is_file() and (gen_dir / c[4]).is_file()]
    random.Random(seed).shuffle(cands)
    picked, keys, prompts_used, pairs_used = [], set(), set(), set()
    for fresh_prompt, fresh_pair in ((True, True), (True, False), (False, False)):   # then relax
        for c in cands:
            pair = frozenset((c[1], c[3]))
            if len(picked) == k or (c[0], pair) in keys or (fresh_prompt and c[0] in prompts_used) \
                    or (fresh_pair and pair in pairs_used):
                continue
            picked.append(c)
            keys.add((c[0], pair))
            prompts_used.add(c[0])
            pairs_used.add(pair)
    return [{"prompt_id": c[0], "model_a": c[1], "image_a": c[2], "model_b": c[3], "image_b": c[4]} for c in picked]


def tally(votes: R.Votes | None, prompt_id, a: str, b: str) -> dict[str, list[int]]:
    """question -> [wins of a, wins of b, ties] in the votes on this prompt between these two models."""
    out: dict[str, list[int]] = {}
    if votes is None or prompt_id is None:
        return out
    for ma, mb, o, q, pid in zip(votes.model_a, votes.model_b, votes.outcome, votes.question, votes.prompt_id):
        if pid == prompt_id and {ma, mb} == {a, b}:
            cell = out.setdefault(q or R.ALL, [0, 0, 0])
            cell[2 if o == R.TIE else 0 if (o == R.A_WINS) == (ma == a) else 1] += 1
    known = QUESTIONS + (R.ALL,)
    return dict(sorted(out.items(), key=lambda kv: (known.index(kv[0]) if kv[0] in known else len(known), kv[0])))
