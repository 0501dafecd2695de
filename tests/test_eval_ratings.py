import argparse
import functools
import json
import math

import numpy as np
import pytest

from limner.eval import ratings as R
from limner.cli.eval import add_elo_parser, cmd_elo

MODELS = ["imagen-3", "sd3", "dalle-3", "mj-v6", "imagen-2", "sdxl"]
TRUTH = np.array([1098, 1047, 1028, 1027, 941, 860.0])   # the Imagen 3 report's overall Elo


@pytest.fixture(scope="module")
def simulate(simulate_votes):
    """simulate(n, tie_rate=0.15, seed=0, questions=None): votes between MODELS, whose true ratings are TRUTH."""
    return functools.partial(simulate_votes, strengths=TRUTH, models=MODELS)


def write_jsonl(path, votes):
    names = {R.A_WINS: "model_a", R.B_WINS: "model_b", R.TIE: "tie"}
    with open(path, "w") as f:
        for a, b, o, q in zip(votes.model_a, votes.model_b, votes.outcome, votes.question):
            f.write(json.dumps({"model_a": a, "model_b": b, "winner": names[int(o)], "question": q}) + "\n")


def arena_mle_elo(votes):
    """Chatbot Arena's compute_mle_elo, without pandas: every battle twice, a tie as one win each way,
    logistic regression with no intercept on +-ln(10) rows, rating = 1000 + 400 * coefficient."""
    from sklearn.linear_model import LogisticRegression

    models, ia, ib = votes.encode()
    n, m = len(ia), len(models)
    rows = np.arange(2 * n)
    x = np.zeros((2 * n, m))
    x[rows, np.r_[ia, ia]] = math.log(10)
    x[rows, np.r_[ib, ib]] = -math.log(10)
    y = np.zeros(2 * n)
    y[np.r_[votes.outcome == R.A_WINS, votes.outcome == R.A_WINS]] = 1
    y[np.r_[votes.outcome == R.TIE, np.zeros(n, bool)]] = 1
    lr = LogisticRegression(fit_intercept=False, C=1e12, tol=1e-10, max_iter=10_000).fit(x, y)
    return dict(zip(models, 400 * lr.coef_[0] + 1000))


def test_bradley_terry_equals_chatbot_arena_logistic_regression(simulate):
    votes = simulate(3000, seed=1)
    ours = R.rate(votes, rounds=0)
    theirs = arena_mle_elo(votes)
    assert max(abs(r - theirs[m]) for m, r in zip(ours.models, ours.rating)) < 0.5
    assert ours.rating.mean() == pytest.approx(1000)


def test_batched_fit_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    w = rng.integers(1, 30, (5, 7, 7)).astype(float) * (1 - np.eye(7))
    batched = R.fit_bt(w)
    for k in range(5):
        np.testing.assert_allclose(batched[k], R.fit_bt(w[k]), atol=1e-9)


def test_bootstrap_intervals_cover_the_truth_at_their_nominal_rate(simulate):
    # 200 tournaments of 3,000 votes from known ratings: a 95% interval should hold the truth ~95% of
    # the time (binomial sd over 1,200 cases ~ 0.6 points, more with correlation within a tournament).
    # With ~40 votes a pair (600 votes) percentile intervals run a little short: ~92%.
    truth = TRUTH - TRUTH.mean() + 1000                  # ratings average 1000
    hits, estimates, widths = [], [], []
    for t in range(200):
        r = R.rate(simulate(3000, seed=100 + t), rounds=300, seed=t)
        order = [r.models.index(m) for m in MODELS]
        hits += list((r.lower[order] <= truth) & (truth <= r.upper[order]))
        estimates.append(r.rating[order])
        widths.append(r.upper[order] - r.lower[order])
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)
    # not covering by being wide: the intervals match the estimates' real spread across tournaments
    real = 2 * 1.96 * np.std(estimates, 0)
    np.testing.assert_allclose(np.mean(widths, 0), real, rtol=0.2)


def test_multinomial_bootstrap_matches_resampling_votes(simulate):
    # resampling votes with replacement and drawing the (pair, outcome) cells from a multinomial are
    # the same distribution: the rounds' spreads agree within Monte Carlo error
    votes = simulate(2000, seed=7)
    models, ia, ib = votes.encode()
    m, rng = len(models), np.random.default_rng(1)
    lo, hi, counts = R.cell_counts(m, ia, ib, votes.outcome)
    fast = R.bootstrap_bt(m, lo, hi, counts, 2000, rng)
    picks = (rng.integers(0, len(ia), len(ia)) for _ in range(2000))
    slow = np.array([R.fit_bt(R.win_matrix(m, ia[i], ib[i], votes.outcome[i])) for i in picks])
    np.testing.assert_allclose(fast.std(0), slow.std(0), rtol=0.1)
    np.testing.assert_allclose(fast.mean(0), slow.mean(0), atol=0.2 * slow.std(0).min())


def test_anchoring_pins_one_model_and_keeps_differences(simulate):
    votes = simulate(3000, seed=2)
    free = R.rate(votes, rounds=200)
    pinned = R.rate(votes, rounds=200, anchor=("sdxl", 860))
    f, p = dict(zip(free.models, free.rating)), dict(zip(pinned.models, pinned.rating))
    assert p["sdxl"] == pytest.approx(860)
    assert p["imagen-3"] - p["sdxl"] == pytest.approx(f["imagen-3"] - f["sdxl"])
    i = pinned.models.index("sdxl")
    assert pinned.lower[i] == pytest.approx(860) and pinned.upper[i] == pytest.approx(860)
    with pytest.raises(ValueError, match="anchor model 'nope'"):
        R.rate(votes, rounds=0, anchor=("nope", 1000))


def test_online_elo_depends_on_order_but_lands_near_bradley_terry(simulate):
    votes = simulate(50_000, seed=3)
    models, ia, ib = votes.encode()
    forward = R.online_elo(models, ia, ib, votes.outcome)
    backward = R.online_elo(models, ia[::-1], ib[::-1], votes.outcome[::-1])
    assert np.abs(forward - backward).max() > 1          # same votes, other order, other ratings
    # with K=4 each run keeps jittering around the MLE (sd ~ 20 points here), so average random orders
    rng = np.random.default_rng(0)
    runs = [R.online_elo(models, ia[o], ib[o], votes.outcome[o])
            for o in (rng.permutation(len(ia)) for _ in range(20))]
    bt = R.to_ratings(R.fit_bt(R.win_matrix(len(models), ia, ib, votes.outcome)), models)
    assert np.abs(np.mean(runs, 0) - bt).max() < 15
    assert np.abs(np.std(runs, 0)).max() > 5


def test_win_rates_and_vote_counts():
    votes = R.Votes(["a", "a", "b", "a"], ["b", "b", "a", "c"], np.array([0, 2, 0, 1], np.int8),
                    [None] * 4, [None] * 4, [None] * 4)
    models, ia, ib = votes.encode()
    w = R.win_matrix(3, ia, ib, votes.outcome)
    # a beat b once and tied once, b beat a once; c beat a once
    np.testing.assert_allclose(w, [[0, 1.5, 0], [1.5, 0, 0], [1, 0, 0]])


def test_per_question_results_and_combined(simulate):
    votes = simulate(2000, seed=4, questions=["overall", "alignment"])
    out = R.rate_by_question(votes, rounds=50)
    assert set(out) == {"overall", "alignment", "all"}
    assert out["overall"].n_votes == 1000 and out["all"].n_votes == 2000
    d = out["all"].to_dict()
    assert sum(row["votes"] for row in d["leaderboard"]) == 2 * 2000
    assert d["win_rate"][0][0] is None and 0 < d["win_rate"][0][1] < 1
    with pytest.raises(ValueError, match="no votes on question 'appeal'"):
        R.rate(votes, "appeal")


def test_tiny_data_bootstraps_without_failing():
    # some rounds draw no votes at all for "c"; they must not break the batched solve
    votes = R.Votes(["a", "a", "b", "c", "a"], ["b", "b", "a", "a", "c"], np.array([0, 2, 0, 1, 1], np.int8),
                    *[[None] * 5] * 3)
    r = R.rate(votes, rounds=500)
    assert np.isfinite(r.rating).all() and np.isfinite(r.lower).all() and (r.lower <= r.upper).all()


def test_unbounded_ratings_are_refused():
    votes = R.Votes(["a", "a", "b"], ["b", "c", "c"], np.array([0, 0, 2], np.int8), *[[None] * 3] * 3)
    with pytest.raises(ValueError, match="unbounded"):
        R.rate(votes, rounds=0)


@pytest.mark.parametrize("text, suffix, message", [
    ("model_a,model_b\nx,y\n", ".csv", "line 1: missing column.*winner"),
    ("model_a,model_b,winner\nx,y,model_a\nx,y,a\n", ".csv", "line 3: winner 'a' is not one of"),
    ('{"model_a": "x", "model_b": "y", "winner": "tie"}\n{"model_a": "x", "winner": "tie"}\n', ".jsonl",
     "line 2: missing model_b"),
    ('{"model_a": "x", "model_b": "y", "winner": "tie"}\n{oops\n', ".jsonl", "line 2: not valid JSON"),
    ('[{"model_a": "x", "model_b": "y", "winner": "bad"}]', ".json", "record 1: winner 'bad'"),
    ("", ".csv", "empty file"),
    ("model_a,model_b,winner\n", ".csv", "no votes"),
    ("model_a,model_b,winner\nx,x,tie\n", ".csv", "line 2: model_a and model_b are both 'x'"),
])
def test_input_errors_name_the_problem(tmp_path, text, suffix, message):
    path = tmp_path / f"votes{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        R.load_votes(path)


def test_loads_csv_jsonl_and_arena_json_alike(tmp_path):
    csv_path = tmp_path / "v.csv"
    csv_path.write_text("model_a,model_b,winner,question,rater\nx,y,model_a,overall,r1\n"
                        "y,x,tie (bothbad),overall,\nx,y,model_b,,r2\n")
    json_path = tmp_path / "v.json"
    json_path.write_text(json.dumps([{"model_a": "x", "model_b": "y", "winner": "model_a", "question": "overall",
                                      "rater": "r1", "anonymous": True},
                                     {"model_a": "y", "model_b": "x", "winner": "tie (bothbad)",
                                      "question": "overall"},
                                     {"model_a": "x", "model_b": "y", "winner": "model_b", "rater": "r2"}]))
    for path in (csv_path, json_path):
        v = R.load_votes(path)
        assert v.outcome.tolist() == [R.A_WINS, R.TIE, R.B_WINS]
        assert v.question == ["overall", "overall", None] and v.rater == ["r1", None, "r2"]
    with pytest.raises(FileNotFoundError):
        R.load_votes(tmp_path / "missing.csv")


def test_agreement_counts_pairs_ordered_like_the_humans():
    human = {"a": 1100, "b": 1050, "c": 1000, "d": 900}
    assert R.agreement({"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}, human)["agreement"] == 1.0
    out = R.agreement({"a": 0.9, "b": 0.6, "c": 0.7, "d": 0.1, "e": 0.5}, human)
    assert out["pairs"] == 6 and out["agreement"] == pytest.approx(5 / 6)
    assert out["disagreeing_pairs"] == [["b", "c"]]
    assert out["kendall_tau"] == pytest.approx(4 / 6)


def cli_args(path, **kw):
    return argparse.Namespace(votes=str(path), json=kw.get("json", False), rounds=kw.get("rounds", 200),
                              anchor=kw.get("anchor"), question=kw.get("question"), seed=0)


def test_cli_json_output(tmp_path, capsys, simulate):
    path = tmp_path / "votes.jsonl"
    write_jsonl(path, simulate(3000, seed=5, questions=["overall", "appeal"]))
    assert cmd_elo(cli_args(path, json=True, anchor="sdxl=860")) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["questions"]) == {"overall", "appeal", "all"}
    board = out["questions"]["all"]["leaderboard"]
    assert board[0]["model"] == "imagen-3" and board[-1]["model"] == "sdxl" and board[-1]["rating"] == 860
    assert all(row["ci_low"] <= row["rating"] <= row["ci_high"] for row in board)


def test_cli_text_output_and_parser(tmp_path, capsys, simulate):
    path = tmp_path / "votes.jsonl"
    write_jsonl(path, simulate(1000, seed=6, questions=["overall"]))
    p = argparse.ArgumentParser()
    add_elo_parser(p.add_subparsers(dest="verb"))
    args = p.parse_args(["elo", str(path), "--rounds", "100", "--question", "overall", "--anchor", "sdxl=860"])
    assert args.fn(args) == 0
    text = capsys.readouterr().out
    assert "question: overall  (1000 votes, 100 bootstrap rounds, sdxl anchored at 860)" in text
    assert "imagen-3" in text.splitlines()[2]
    with pytest.raises(ValueError, match="MODEL=RATING"):
        cmd_elo(cli_args(path, anchor="sdxl"))
