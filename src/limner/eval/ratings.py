"""Ratings from side-by-side votes: Bradley–Terry with bootstrap intervals, online Elo, win rates.

Votes follow the Chatbot Arena convention: one battle per row with ``model_a``, ``model_b`` and
``winner`` in {model_a, model_b, tie, tie (bothbad)}, optionally ``question`` (overall, alignment,
appeal, ...), ``prompt_id`` and ``rater``. Ratings use the same scale as Chatbot Arena's
``compute_mle_elo``: P(a beats b) = 1 / (1 + 10 ** ((r_b - r_a) / 400)), ties count as half a win to
each side, and the ratings average 1000 unless anchored to a chosen model's rating.

Speed comes from never touching single votes after loading: Bradley–Terry depends on the votes only
through the win-count matrix W (W[i, j] = wins of i over j, ties adding 0.5 to both sides), and a
bootstrap resample of the votes is a multinomial draw of the (pair, outcome) cell counts. So all
rounds' matrices come from one ``rng.multinomial`` call and one batched Newton iteration fits them all.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCALE, BASE, INIT = 400.0, 10.0, 1000.0   # Chatbot Arena's constants
K_FACTOR = 4.0                            # ... and its online-Elo step
REQUIRED = ("model_a", "model_b", "winner")
OPTIONAL = ("question", "prompt_id", "rater")
WINNERS = {"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2}
A_WINS, B_WINS, TIE = 0, 1, 2
ALL = "all"                               # the name of the all-questions-combined group
_NAT = SCALE / math.log(BASE)            # rating points per unit of natural log-odds


# --- votes ------------------------------------------------------------------------------------------

@dataclass
class Votes:
    """Battles as parallel lists, in file order (online Elo depends on the order)."""
    model_a: list[str]
    model_b: list[str]
    outcome: np.ndarray                   # int8: A_WINS, B_WINS or TIE
    question: list[str | None]
    prompt_id: list[str | None]
    rater: list[str | None]

    def __len__(self) -> int:
        return len(self.model_a)

    @property
    def models(self) -> list[str]:
        return sorted(set(self.model_a) | set(self.model_b))

    @property
    def questions(self) -> list[str]:
        return sorted({q for q in self.question if q is not None})

    def subset(self, question: str | None) -> "Votes":
        """The votes on one question; ``None`` or ``"all"`` keeps every vote."""
        if question is None or question == ALL:
            return self
        keep = [i for i, q in enumerate(self.question) if q == question]
        if not keep:
            raise ValueError(f"no votes on question {question!r}; questions: {', '.join(self.questions) or 'none'}")
        pick = lambda xs: [xs[i] for i in keep]   # noqa: E731
        return Votes(pick(self.model_a), pick(self.model_b), self.outcome[keep], pick(self.question),
                     pick(self.prompt_id), pick(self.rater))

    def encode(self, models: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(models, index of model_a, index of model_b) as integer arrays."""
        models = models or self.models
        index = {m: i for i, m in enumerate(models)}
        return models, np.array([index[m] for m in self.model_a], np.intp), \
            np.array([index[m] for m in self.model_b], np.intp)

    @classmethod
    def from_rows(cls, rows, source: str = "votes") -> "Votes":
        """Validate rows, ``(where, dict)`` pairs with ``where`` like "line 3", and build the columns."""
        a, b, out, q, pid, rater = [], [], [], [], [], []
        for place, row in rows:
            where = f"{source} {place}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object with {', '.join(REQUIRED)}, got {row!r}")
            missing = [c for c in REQUIRED if row.get(c) in (None, "")]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)} (a vote needs {', '.join(REQUIRED)})")
            winner = str(row["winner"]).strip()
            if winner not in WINNERS:
                raise ValueError(f"{where}: winner {winner!r} is not one of {', '.join(WINNERS)}")
            ma, mb = str(row["model_a"]).strip(), str(row["model_b"]).strip()
            if ma == mb:
                raise ValueError(f"{where}: model_a and model_b are both {ma!r}")
            a.append(ma)
            b.append(mb)
            out.append(WINNERS[winner])
            q.append(_optional(row.get("question")))
            pid.append(_optional(row.get("prompt_id")))
            rater.append(_optional(row.get("rater")))
        if not a:
            raise ValueError(f"{source}: no votes")
        return cls(a, b, np.array(out, np.int8), q, pid, rater)


def _optional(v) -> str | None:
    return None if v is None or v == "" else str(v)


def load_votes(path) -> Votes:
    """Read votes from CSV, JSONL, or a JSON list (the Chatbot Arena export); errors name the line."""
    return Votes.from_rows(read_vote_rows(path), str(path))


def read_vote_rows(path) -> list[tuple[str, dict]]:
    """The rows of a votes file as ``(where, row)`` pairs, every column kept (the arena's export has more)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no votes file at {path}")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"{path}: empty file, no votes")
    return json_rows(text, path) if is_json(path, text) else _csv_rows(text, path)


def is_json(path: Path, text: str) -> bool:
    return path.suffix.lower() in (".jsonl", ".json", ".ndjson") or text.lstrip()[:1] in ("{", "[")


def json_rows(text: str, path: Path) -> list[tuple[str, object]]:
    """A JSON list or JSON lines, as ``(where, record)`` pairs; errors name the line."""
    if text.lstrip().startswith("["):   # one JSON list of battles
        try:
            return [(f"record {n}", row) for n, row in enumerate(json.loads(text), 1)]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {n}: not valid JSON ({e.msg})") from None
    return rows


def _csv_rows(text: str, path: Path):
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path} line 1: missing column(s) {', '.join(missing)}; "
                         f"a votes file needs {', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})")
    reader.fieldnames = header
    # line numbers count the header as line 1 (rows with quoted newlines would shift them; rare in votes)
    return [(f"line {n}", row) for n, row in enumerate(reader, 2)]


# --- counting ---------------------------------------------------------------------------------------

def win_matrix(m: int, ia: np.ndarray, ib: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    """W[i, j]: wins of model i over model j, ties counting half to each side."""
    score_a = np.array([1.0, 0.0, 0.5])[outcome]   # a's share of each vote; b gets the rest
    w = np.bincount(ia * m + ib, score_a, m * m) + np.bincount(ib * m + ia, 1.0 - score_a, m * m)
    return w.reshape(m, m)


def cell_counts(m: int, ia, ib, outcome) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Votes per (unordered pair, outcome) cell: (lo, hi, counts) with counts[:, 0] = lo wins,
    [:, 1] = hi wins, [:, 2] = ties. Which side a model sat on does not matter to Bradley–Terry."""
    lo, hi = np.minimum(ia, ib), np.maximum(ia, ib)
    lo_wins = np.where(outcome == TIE, 2, np.where((outcome == A_WINS) == (ia == lo), 0, 1))
    flat = np.bincount((lo * m + hi) * 3 + lo_wins, minlength=m * m * 3).reshape(m * m, 3)
    used = np.flatnonzero(flat.sum(1))
    return used // m, used % m, flat[used]


def matrices_from_cells(m: int, lo, hi, counts: np.ndarray) -> np.ndarray:
    """Win matrices from cell counts; counts may carry leading (rounds) axes: (..., cells, 3)."""
    w = np.zeros(counts.shape[:-2] + (m, m))
    w[..., lo, hi] = counts[..., 0] + 0.5 * counts[..., 2]
    w[..., hi, lo] = counts[..., 1] + 0.5 * counts[..., 2]
    return w


# --- Bradley–Terry ----------------------------------------------------------------------------------

def fit_bt(w: np.ndarray, tol: float = 1e-10, max_iter: int = 100, max_step: float = 3.0) -> np.ndarray:
    """Bradley–Terry maximum likelihood strengths (natural log-odds, mean zero) from win matrices
    w (..., m, m), batched over any leading axes.

    Newton's method on the aggregated log-likelihood sum_ij W_ij log sigmoid(t_i - t_j): it needs a
    handful of iterations where the MM (Zermelo) iteration needs hundreds when strengths differ a lot,
    and each iteration is one batched m x m solve. The Hessian is singular along the all-ones vector
    (adding a constant changes nothing); adding 11^T/m fixes that, and as the gradient sums to zero the
    step keeps the mean at zero, which is where lbfgs from zero lands in Chatbot Arena's fit too.
    Steps are capped at ``max_step`` nats so data with no finite optimum (a model that never lost)
    drifts instead of overflowing.
    """
    w = np.asarray(w, float)
    m = w.shape[-1]
    n = w + np.swapaxes(w, -1, -2)
    wins = w.sum(-1)
    theta = np.zeros(w.shape[:-1])
    # 11^T/m, plus a whisker of ridge for bootstrap rounds that drew no votes for some model
    fix = np.ones((m, m)) / m + 1e-9 * np.eye(m)
    for _ in range(max_iter):
        p = _sigmoid(theta[..., :, None] - theta[..., None, :])   # P(i beats j)
        grad = wins - (n * p).sum(-1)
        v = n * p * (1.0 - p)
        hess = np.eye(m) * v.sum(-1)[..., None] - v + fix         # negative Hessian + fix
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        big = np.abs(step).max(-1, keepdims=True)
        step *= np.minimum(1.0, max_step / np.maximum(big, 1e-300))
        theta += step
        if big.max() < tol:
            break
    return theta - theta.mean(-1, keepdims=True)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))   # no overflow warnings for large |x|


def to_ratings(theta: np.ndarray, models: list[str], anchor: tuple[str, float] | None = None) -> np.ndarray:
    """Natural log-odds -> rating points: 1000 on average, or the anchor model at its given rating."""
    r = INIT + _NAT * theta
    if anchor is not None:
        name, value = anchor
        if name not in models:
            raise ValueError(f"anchor model {name!r} has no votes; models: {', '.join(models)}")
        r = r + (value - r[..., models.index(name)])[..., None]
    return r


def check_connected(w: np.ndarray, models: list[str]) -> None:
    """Finite Bradley–Terry ratings need every model to be reachable from every other through
    "beat or tied" edges (Hunter's condition); otherwise some ratings run off to infinity."""
    beat = (w > 0)
    m = len(models)
    reach = beat | np.eye(m, dtype=bool)
    for _ in range(max(1, int(np.ceil(np.log2(max(m, 2))))) + 1):   # transitive closure by squaring
        reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
    if not reach.all():
        i, j = np.argwhere(~reach)[0]
        raise ValueError(f"ratings are unbounded: no chain of wins or ties leads from {models[i]!r} "
                         f"to {models[j]!r} (a model that never lost or never won, or models never "
                         f"compared); collect more votes")


def bootstrap_bt(m: int, lo, hi, counts: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """Strengths (rounds, m) on resampled votes: resampling n votes with replacement is a multinomial
    draw over the (pair, outcome) cells, so every round's win matrix comes from one call."""
    flat = counts.reshape(-1)
    total = int(flat.sum())
    draws = rng.multinomial(total, flat / total, size=rounds).reshape(rounds, *counts.shape)
    return fit_bt(matrices_from_cells(m, lo, hi, draws))


# --- online Elo -------------------------------------------------------------------------------------

def online_elo(models: list[str], ia, ib, outcome, k: float = K_FACTOR) -> np.ndarray:
    """Chatbot Arena's online Elo, in vote order. Each update depends on the one before, so this is
    a loop by nature; on plain Python floats it runs about a million votes a second."""
    r = [INIT] * len(models)
    score_a = (1.0, 0.0, 0.5)
    for a, b, o in zip(ia.tolist(), ib.tolist(), outcome.tolist()):
        ea = 1.0 / (1.0 + BASE ** ((r[b] - r[a]) / SCALE))
        d = k * (score_a[o] - ea)
        r[a] += d
        r[b] -= d
    return np.array(r)


# --- results ----------------------------------------------------------------------------------------

@dataclass
class Ratings:
    question: str
    models: list[str]                    # sorted by rating, best first
    rating: np.ndarray                   # Bradley–Terry, rating points
    lower: np.ndarray                    # 2.5th bootstrap percentile
    upper: np.ndarray                    # 97.5th
    elo: np.ndarray                      # online Elo, in vote order
    votes: np.ndarray                    # votes per model
    pair_votes: np.ndarray               # votes per pair (m, m)
    win_rate: np.ndarray                 # row beats column, ties half; NaN where never compared
    n_votes: int
    rounds: int
    anchor: tuple[str, float] | None = None

    def to_dict(self) -> dict:
        def nan_to_none(a):
            return [[None if math.isnan(x) else round(float(x), 4) for x in row] for row in a]
        return {
            "question": self.question, "n_votes": self.n_votes, "bootstrap_rounds": self.rounds,
            "anchor": list(self.anchor) if self.anchor else None,
            "scale": {"scale": SCALE, "base": BASE, "init": INIT, "elo_k": K_FACTOR},
            "leaderboard": [
                {"rank": rank, "model": m, "rating": round(float(r), 2),
                 "ci_low": round(float(lo), 2), "ci_high": round(float(hi), 2),
                 "elo": round(float(e), 2), "votes": int(v)}
                for rank, m, r, lo, hi, e, v in zip(self.ranks(), self.models, self.rating, self.lower,
                                                    self.upper, self.elo, self.votes)],
            "models": self.models, "pair_votes": self.pair_votes.astype(int).tolist(),
            "win_rate": nan_to_none(self.win_rate),
        }

    def ranks(self) -> list[int]:
        """Chatbot Arena's rank: 1 + the number of models whose lower bound beats this one's upper."""
        return [1 + int((self.lower > hi).sum()) for hi in self.upper]

    def leaderboard(self) -> str:
        width = max(5, *(len(m) for m in self.models))
        ci = "95% CI" if self.rounds else "CI"
        lines = [f"question: {self.question}  ({self.n_votes} votes, {self.rounds} bootstrap rounds"
                 + (f", {self.anchor[0]} anchored at {self.anchor[1]:g}" if self.anchor else "") + ")",
                 f"{'rank':>4}  {'model':<{width}}  {'rating':>7}  {ci:>13}  {'elo':>7}  {'votes':>7}"]
        for rank, m, r, lo, hi, e, v in zip(self.ranks(), self.models, self.rating, self.lower,
                                            self.upper, self.elo, self.votes):
            lines.append(f"{rank:>4}  {m:<{width}}  {r:7.1f}  {f'-{max(r - lo, 0):.1f}/+{max(hi - r, 0):.1f}':>13}  "
                         f"{e:7.1f}  {int(v):>7}")
        return "\n".join(lines)


def parse_anchor(text: str | None) -> tuple[str, float] | None:
    """``"sdxl=860"`` -> ``("sdxl", 860.0)``, the ``anchor`` of `rate`; nothing -> None."""
    if not text:
        return None
    model, sep, value = text.rpartition("=")
    try:
        if not sep or not model:
            raise ValueError
        return model, float(value)
    except ValueError:
        raise ValueError(f"--anchor wants MODEL=RATING (e.g. sdxl=860), got {text!r}") from None


def rate(votes: Votes, question: str | None = None, rounds: int = 1000, seed: int = 0,
         anchor: tuple[str, float] | None = None) -> Ratings:
    """Bradley–Terry ratings with percentile bootstrap intervals, online Elo, win rates and counts for
    the votes on one question (``None``/``"all"``: every vote)."""
    v = votes.subset(question)
    models, ia, ib = v.encode()
    m = len(models)
    if m < 2:
        raise ValueError("need votes between at least two models")
    w = win_matrix(m, ia, ib, v.outcome)
    check_connected(w, models)
    rating = to_ratings(fit_bt(w), models, anchor)
    if rounds > 0:
        lo, hi, counts = cell_counts(m, ia, ib, v.outcome)
        boot = to_ratings(bootstrap_bt(m, lo, hi, counts, rounds, np.random.default_rng(seed)), models, anchor)
        lower, upper = np.percentile(boot, [2.5, 97.5], axis=0)
    else:
        lower = upper = rating
    elo = online_elo(models, ia, ib, v.outcome)
    if anchor is not None:   # read online Elo on the same footing as the anchored ratings
        elo = elo + (anchor[1] - elo[models.index(anchor[0])])
    n = w + w.T
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = np.where(n > 0, w / n, np.nan)
    pair_votes = np.bincount(ia * m + ib, minlength=m * m).reshape(m, m).astype(float)
    pair_votes += pair_votes.T
    order = np.argsort(-rating, kind="stable")
    pick = lambda a: a[order]   # noqa: E731
    return Ratings(question or ALL, [models[i] for i in order], pick(rating), pick(lower), pick(upper),
                   pick(elo), pick(pair_votes.sum(1)), pair_votes[np.ix_(order, order)],
                   win_rate[np.ix_(order, order)], len(v), rounds, anchor)


def rate_by_question(votes: Votes, rounds: int = 1000, seed: int = 0, anchor=None,
                     combined: bool | None = None) -> dict[str, Ratings]:
    """Ratings per question, plus ``"all"`` combined (by default when there are several questions).
    Votes with no question are counted only in the combined group."""
    questions = votes.questions
    if combined is None:
        combined = len(questions) != 1 or any(q is None for q in votes.question)
    out = {q: rate(votes, q, rounds, seed, anchor) for q in questions}
    if combined:
        out[ALL] = rate(votes, None, rounds, seed, anchor)
    return out


# --- agreement with a metric ------------------------------------------------------------------------

def agreement(metric_scores: dict[str, float], ratings: dict[str, float]) -> dict:
    """How often an automatic metric orders a pair of models as the human ratings do, over every pair
    of models both know (ties in either count half), and Kendall's tau-b between the two."""
    from scipy.stats import kendalltau

    models = sorted(set(metric_scores) & set(ratings))
    if len(models) < 2:
        raise ValueError("agreement needs at least two models scored by both the metric and the ratings")
    x = np.array([metric_scores[m] for m in models], float)
    y = np.array([ratings[m] for m in models], float)
    i, j = np.triu_indices(len(models), 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    agree = np.where((sx == 0) | (sy == 0), 0.5, (sx == sy).astype(float))
    tau, p = kendalltau(x, y)
    return {"models": models, "pairs": int(len(i)), "agreement": float(agree.mean()),
            "disagreeing_pairs": [[models[a], models[b]] for a, b, s, t in zip(i, j, sx, sy) if s * t < 0],
            "kendall_tau": None if math.isnan(tau) else float(tau),
            "kendall_p": None if math.isnan(p) else float(p)}
