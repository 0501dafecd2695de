"""Ratings benchmark: 1,000 bootstrap rounds over 500,000 votes among 20 models, vectorised (one
multinomial draw of the (pair, outcome) cell counts, one batched Newton fit) against straightforward
per-round refits in the same run:

  * per-round, own fitter: resample the votes' indices, count them into a win matrix, fit it;
  * per-round, Chatbot Arena: resample the votes and refit sklearn's LogisticRegression on the
    2-rows-per-vote design of the notebook's compute_mle_elo (timed on a few rounds, extrapolated).

    nice -n 10 python benchmarks/elo.py                 # markdown table
    nice -n 10 python benchmarks/elo.py --arena-rounds 0   # skip the slow sklearn baseline
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from limner.eval import ratings as R


def synthetic_votes(n: int, m: int, seed: int = 0) -> R.Votes:
    rng = np.random.default_rng(seed)
    strengths = rng.normal(1000, 120, m)
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    p = 1 / (1 + 10 ** ((strengths[b] - strengths[a]) / 400))
    tie = 0.6 * p * (1 - p)   # ties take half from each side: expected score stays p
    u = rng.random(n)
    outcome = np.where(u < p - tie / 2, R.A_WINS, np.where(u < p + tie / 2, R.TIE, R.B_WINS)).astype(np.int8)
    names = [f"model-{i:02d}" for i in range(m)]
    return R.Votes([names[i] for i in a], [names[i] for i in b], outcome, [None] * n, [None] * n, [None] * n)


def vectorised(m, ia, ib, outcome, rounds, seed):
    lo, hi, counts = R.cell_counts(m, ia, ib, outcome)
    return R.bootstrap_bt(m, lo, hi, counts, rounds, np.random.default_rng(seed))


def per_round(fit, m, ia, ib, outcome, rounds, seed):
    """The straightforward bootstrap: resample the votes, refit, once per round."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        i = rng.integers(0, len(ia), len(ia))
        out.append(fit(m, ia[i], ib[i], outcome[i]))
    return np.array(out)


def own_fit(m, ia, ib, outcome):
    return R.fit_bt(R.win_matrix(m, ia, ib, outcome))


def arena_fit(m, ia, ib, outcome):
    """Chatbot Arena's compute_mle_elo on raw votes (natural log-odds, mean zero)."""
    from sklearn.linear_model import LogisticRegression

    n = len(ia)
    rows = np.arange(2 * n)
    x = np.zeros((2 * n, m))
    x[rows, np.r_[ia, ia]] = math.log(10)
    x[rows, np.r_[ib, ib]] = -math.log(10)
    y = np.zeros(2 * n)
    y[np.r_[outcome == R.A_WINS, outcome == R.A_WINS]] = 1
    y[np.r_[outcome == R.TIE, np.zeros(n, bool)]] = 1
    coef = LogisticRegression(fit_intercept=False, C=1e12, tol=1e-8, max_iter=1000).fit(x, y).coef_[0]
    return coef * math.log(10)   # log10 units -> natural log-odds


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=500_000)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--own-rounds", type=int, default=1000, help="per-round refits with limner's fitter")
    ap.add_argument("--arena-rounds", type=int, default=3, help="per-round sklearn refits (extrapolated)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    votes = synthetic_votes(a.votes, a.models, a.seed)
    models, ia, ib = votes.encode()
    m, o = len(models), votes.outcome
    to_pts = R.SCALE / math.log(R.BASE)

    boot, t_vec = timed(vectorised, m, ia, ib, o, a.rounds, a.seed)
    result, t_rate = timed(R.rate, votes, None, a.rounds, a.seed)
    rows = [("vectorised: multinomial cells + batched Newton", a.rounds, t_vec, t_vec),
            ("`rate()` end to end (+ point fit, online Elo, win rates)", a.rounds, t_rate, t_rate)]
    own = None
    if a.own_rounds:
        own, t = timed(per_round, own_fit, m, ia, ib, o, a.own_rounds, a.seed + 1)
        rows.append(("per round: resample votes, count, Newton fit", a.own_rounds, t, t * a.rounds / a.own_rounds))
    if a.arena_rounds:
        _, t = timed(per_round, arena_fit, m, ia, ib, o, a.arena_rounds, a.seed + 2)
        rows.append(("per round: resample votes, sklearn LogisticRegression (Chatbot Arena)", a.arena_rounds, t,
                     t * a.rounds / a.arena_rounds))

    print(f"{a.votes:,} votes, {m} models, {a.rounds:,} bootstrap rounds\n")
    print("| method | rounds timed | seconds | seconds for {:,} rounds | vectorised is faster by |".format(a.rounds))
    print("|---|---:|---:|---:|---:|")
    for name, n, t, full in rows:
        faster = f"{full / t_vec:,.0f}x" if name.startswith("per round") else "—"
        print(f"| {name} | {n:,} | {t:.2f} | {full:.2f}{'' if n == a.rounds else ' (extrapolated)'} | {faster} |")

    point = R.fit_bt(R.win_matrix(m, ia, ib, o))
    arena, t_arena = timed(arena_fit, m, ia, ib, o)
    print(f"\nfull data: max |limner - sklearn (Chatbot Arena)| rating difference = "
          f"{np.abs(point - arena).max() * to_pts:.2e} points (sklearn fit {t_arena:.1f} s)")
    ci_vec = np.percentile(boot * to_pts, [2.5, 97.5], axis=0)
    print(f"95% interval half-width, vectorised: median {np.median(np.diff(ci_vec, axis=0)) / 2:.2f} points")
    if own is not None:
        ci_own = np.percentile(own * to_pts, [2.5, 97.5], axis=0)
        print(f"95% interval endpoints, vectorised vs per-round (different random draws): max |diff| "
              f"{np.abs(ci_vec - ci_own).max():.2f} points; bootstrap sd ratio "
              f"{np.median((boot * to_pts).std(0) / (own * to_pts).std(0)):.3f}")


if __name__ == "__main__":
    main()
