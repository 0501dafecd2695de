"""`limner eval report`: the whole evaluation on one HTML page, with its PNG plots and report.json.

From the arena's votes: Bradley–Terry leaderboards with bootstrap intervals per question and per suite,
and win-rate heat maps; from the single-image counting task: counting accuracy per model; from
`limner eval score`: each automatic metric's leaderboard, its per-skill breakdown and how often it orders
a pair of models as the human ratings do; from `limner eval generate`: sample pairs (one prompt, two
models). Plots and samples are files beside report.html, referenced relatively, so the folder can be
moved or shared as it is.

This module draws and writes the page; what it shows is computed in `limner.eval.report_data`.
"""
from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..common.files import write_atomic
from . import ratings as R
from .generate import load_generations, safe_name
from .report_data import (HEADLINE, counting_accuracy, load_counts, load_scores, load_vote_rows, metric_agreement,
                          pick_pairs, rate_questions, rate_suites, tally)

MAX_TAG_VALUES = 30                    # a tag with more values (ids, entity lists) is left out of the page
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222;line-height:1.4}"
         "h2{border-bottom:2px solid #ccc;margin-top:2em}h3{margin-bottom:.3em}"
         "table{border-collapse:collapse;margin:.4em 0 1em;font-size:14px}"
         "th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right;vertical-align:top}"
         "th{background:#f3f3f3}.l{text-align:left}.note{color:#666;font-size:13px}"
         "img.plot{max-width:100%;margin:4px 12px 12px 0;vertical-align:top}"
         ".row{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}.row p{max-width:420px}"
         ".pair{display:inline-block;vertical-align:top;width:540px;border-top:1px solid #ddd;padding:10px 0;"
         "margin-right:28px}.pair figure{display:inline-block;margin:0 12px 0 0;"
         "text-align:center;font-size:13px}.pair figure img{width:256px;height:256px;object-fit:contain;"
         "background:#eee}.prompt{font-style:italic;max-width:900px}")


# --- plots ------------------------------------------------------------------------------------------

def _text(s) -> str:
    """A label matplotlib shows as it is: a '$' would start mathtext."""
    return str(s).replace("$", r"\$")


class Plots:
    """PNG files written into the report folder, each under a name of its own."""

    def __init__(self, out: Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.out, self.plt, self.names = out, plt, set()

    def save(self, fig, stem: str) -> str:
        name, i = f"{safe_name(stem)}.png", 1
        while name in self.names:
            i += 1
            name = f"{safe_name(stem)}-{i}.png"
        self.names.add(name)
        fig.savefig(self.out / name, dpi=110, bbox_inches="tight")
        self.plt.close(fig)
        return name

    def intervals(self, title: str, labels: list[str], values, lows, highs, xlabel: str, stem: str) -> str:
        """Points with 95% interval bars, best at the top."""
        fig, ax = self.plt.subplots(figsize=(5.5, 0.3 * len(labels) + 1.0))
        y = np.arange(len(labels))[::-1]
        v = np.asarray(values, float)
        err = np.array([v - np.asarray(lows, float), np.asarray(highs, float) - v]).clip(0)
        ax.errorbar(v, y, xerr=err, fmt="o", color="#2a5caa", ecolor="#7a9cd0", capsize=3)
        ax.set_yticks(y, [_text(m) for m in labels])
        ax.set_xlabel(xlabel)
        ax.set_title(_text(title), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        return self.save(fig, stem)

    def win_rates(self, r: R.Ratings, stem: str) -> str:
        """Row beats column, ties half; cells never compared are left blank."""
        m = len(r.models)
        fig, ax = self.plt.subplots(figsize=(0.62 * m + 2.4, 0.55 * m + 1.6))
        cmap = self.plt.get_cmap("RdBu").with_extremes(bad="white")
        im = ax.imshow(np.ma.masked_invalid(r.win_rate), cmap=cmap, vmin=0, vmax=1)
        size = max(5, min(10, 70 / m))
        for i, j in np.ndindex(m, m):
            if not np.isnan(r.win_rate[i, j]):
                x = r.win_rate[i, j]
                ax.text(j, i, f"{100 * x:.0f}", ha="center", va="center", fontsize=size,
                        color="white" if abs(x - 0.5) > 0.3 else "black")
        names = [_text(s) for s in r.models]
        ax.set_xticks(range(m), names, rotation=45, ha="right")
        ax.set_yticks(range(m), names)
        ax.set_xlabel("against")
        ax.set_title(_text(f"{r.question}: % of votes the row model wins (ties half)"), fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        return self.save(fig, stem)

    def by_tag(self, metric: str, key: str, values: list[str], table: dict, models: list[str], stem: str) -> str:
        """One row per tag value, a point per model with its interval."""
        fig, ax = self.plt.subplots(figsize=(7, 0.32 * len(values) * max(1, len(models) / 3) + 1.4))
        y = np.arange(len(values))[::-1].astype(float)
        width = 0.7 / max(len(models), 1)
        for n, model in enumerate(models):
            pts = [(y[i] + 0.35 - width * (n + 0.5), table[v].get(model)) for i, v in enumerate(values)]
            pts = [(yy, s) for yy, s in pts if s and s.get("mean") is not None]
            if not pts:
                continue
            means = np.array([s["mean"] for _, s in pts], float)
            ci = np.array([s["ci"] if s.get("ci") else [s["mean"]] * 2 for _, s in pts], float)
            ax.errorbar(means, [yy for yy, _ in pts], xerr=np.array([means - ci[:, 0], ci[:, 1] - means]).clip(0),
                        fmt="o", ms=4, capsize=2, label=_text(model))
        ax.set_yticks(y, [_text(v) for v in values])
        ax.set_xlabel(_text(metric))
        ax.set_title(_text(f"{metric} by {key}"), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        return self.save(fig, stem)


# --- the page ---------------------------------------------------------------------------------------

def _esc(x) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list], left: tuple[int, ...] = ()) -> str:
    """An HTML table of plain text cells, every one escaped; columns in `left` align left."""
    cls = lambda i: ' class="l"' if i in left else ""   # noqa: E731
    th = "".join(f"<th{cls(i)}>{_esc(h)}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _row(*parts: str) -> str:
    """Side by side while the page is wide enough, one under the other when not."""
    return '<div class="row">' + "".join(f"<div>{p}</div>" for p in parts if p) + "</div>"


def _img(name: str, alt: str) -> str:
    return f'<img class="plot" src="{_esc(name)}" alt="{_esc(alt)}">'


def _ci(ci, fmt: str = "{:.1f}") -> str:
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else "–"


def _leaderboard(r: R.Ratings | str) -> str:
    if isinstance(r, str):
        return f'<p class="note">no ratings: {_esc(r)}</p>'
    rows = [[d["rank"], d["model"], f"{d['rating']:.1f}", _ci((d["ci_low"], d["ci_high"])) if r.rounds else "–",
             f"{d['elo']:.1f}", d["votes"]] for d in r.to_dict()["leaderboard"]]
    note = f"{r.n_votes} votes, {r.rounds} bootstrap rounds" + (
        f", {r.anchor[0]} anchored at {r.anchor[1]:g}" if r.anchor else ", ratings average 1000")
    return (_table(["rank", "model", "rating", "95% CI", "Elo", "votes"], rows, left=(1,))
            + f'<p class="note">{_esc(note)}; a rank is 1 + the number of models whose interval lies wholly above.</p>')


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _path(p) -> str | None:
    return None if p is None else str(p)


def build_report(out_dir, votes=None, counts=None, gen_dir=None, scores=None, rounds: int = 1000,
                 seed: int = 0, anchor: tuple[str, float] | None = None, samples: int = 6) -> Path:
    """Write OUT/report.html, its PNG plots, samples/ and report.json; return the page's path."""
    if votes is None and scores is None:
        raise ValueError("nothing to report: give votes (--votes, the arena's export or any CSV/JSONL of "
                         "battles) and/or automatic scores (--scores, the scores.json of `limner eval score`)")
    if rounds < 0:
        raise ValueError("--rounds must be 0 (no intervals) or more")
    if samples < 0:
        raise ValueError("--samples must be 0 or more")
    v, vote_rows = load_vote_rows(votes) if votes is not None else (None, [])
    answers = load_counts(counts) if counts is not None else None
    manifest = load_generations(gen_dir) if gen_dir is not None else []
    sc = load_scores(scores) if scores is not None else None
    if anchor is not None and v is not None and anchor[0] not in v.models:
        raise ValueError(f"anchor model {anchor[0]!r} has no votes; models: {', '.join(v.models)}")

    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    plots = Plots(out)
    prompts = {r["prompt_id"]: r for r in manifest}
    data: dict = {"inputs": {"votes": _path(votes), "counts": _path(counts), "generations": _path(gen_dir),
                             "scores": _path(scores)}, "bootstrap_rounds": rounds, "seed": seed,
                  "anchor": list(anchor) if anchor else None}
    body: list[str] = []

    ratings = rate_questions(v, rounds, seed, anchor) if v is not None else {}
    headline = next((q for q in HEADLINE if isinstance(ratings.get(q), R.Ratings)),
                    next((q for q, r in ratings.items() if isinstance(r, R.Ratings)), None))
    suites = [row.get("suite") or prompts.get(pid, {}).get("suite") for row, pid in
              zip(vote_rows, v.prompt_id if v is not None else [])]
    by_suite = rate_suites(v, suites, headline, rounds, seed, anchor) if v is not None else {}
    order = ratings[headline].models if headline else []

    body.append(_summary_section(v, ratings, headline, answers, manifest, sc, data))
    if ratings:
        body.append(_ratings_section(ratings, by_suite, headline, plots, data))
    if answers is not None:
        body.append(_counting_section(answers, rounds, seed, plots, data))
    if sc is not None:
        agree = metric_agreement(sc, ratings, headline) if ratings else {}
        data["metrics"] = {name: dict(m, agreement=agree.get(name, {})) for name, m in sc["metrics"].items()}
        body.append(_metrics_section(sc, agree, headline, plots))
        body.append(_skills_section(sc, plots, data))

    pairs = pick_pairs(vote_rows, manifest, order, samples, seed, Path(gen_dir)) if gen_dir is not None else []
    body.append(_samples_section(pairs, prompts, vote_rows, v, Path(gen_dir) if gen_dir else None, out, data))

    write_atomic(out / "report.json", json.dumps(data, indent=2, ensure_ascii=False))
    return write_atomic(out / "report.html", "<!doctype html><html lang=en><meta charset=utf-8><title>limner "
                        f"evaluation report</title><style>{STYLE}</style><h1>limner evaluation report</h1>"
                        + "".join(body) + "</html>")


def _summary_section(v: R.Votes | None, ratings: dict, headline: str | None, answers: list[dict] | None,
                     manifest: list[dict], sc: dict | None, data: dict) -> str:
    metric_models = {m for x in (sc or {}).get("metrics", {}).values() for m in x["models"]}
    models = sorted(set(v.models if v else []) | {r["model"] for r in answers or []}
                    | {r["model"] for r in manifest} | metric_models)
    summary: dict = {"models": models}
    lines = [f"<b>models</b> ({len(models)}): " + ", ".join(_esc(m) for m in models)]
    if v is not None:
        raters = {x for x in v.rater if x}
        per_q = {q: r.n_votes for q, r in ratings.items() if isinstance(r, R.Ratings)}
        prompts = len({p for p in v.prompt_id if p})
        summary |= {"votes": len(v), "raters": len(raters) or None, "questions": v.questions,
                    "votes_per_question": per_q, "prompts_voted": prompts or None, "headline": headline}
        lines += [f"<b>votes</b>: {len(v)} from {len(raters) if raters else 'unrecorded'} raters"
                  + (f" on {prompts} prompts" if prompts else ""),
                  "<b>questions</b>: " + (", ".join(f"{_esc(q)} ({n} votes)" for q, n in per_q.items()) or "none")]
    if answers is not None:
        summary["counting_answers"] = len(answers)
        lines.append(f"<b>counting answers</b>: {len(answers)}")
    if manifest:
        made = [r for r in manifest if r.get("path")]
        prompts = len({r["prompt_id"] for r in manifest})
        summary |= {"images": len(made), "prompts": prompts,
                    "suites": sorted({r.get("suite") for r in manifest if r.get("suite")})}
        lines.append(f"<b>generations</b>: {len(made)} images of {prompts} prompts"
                     + (f", {len(manifest) - len(made)} refused" if len(made) < len(manifest) else "")
                     + (" from suites " + ", ".join(map(_esc, summary["suites"])) if summary["suites"] else ""))
    if sc is not None:
        summary |= {"scored_suite": sc.get("suite"), "scored_images": sc.get("n_images"),
                    "metrics": list(sc["metrics"])}
        lines.append(f"<b>automatic metrics</b>: {', '.join(_esc(m) for m in sc['metrics'])}"
                     + (f" on {sc['n_images']} images" if sc.get("n_images") else "")
                     + (f" of suite {_esc(sc['suite'])}" if sc.get("suite") else ""))
    data["summary"] = summary
    return "<h2>Summary</h2><ul>" + "".join(f"<li>{x}</li>" for x in lines) + "</ul>"


def _board(r: R.Ratings | str, name: str, stem: str, plots: Plots) -> str:
    """A leaderboard's table with its plot beside it."""
    if isinstance(r, str):
        return f"<h3>{_esc(name)}</h3>" + _leaderboard(r)
    plot = plots.intervals(f"{name}: rating with 95% interval", r.models, r.rating, r.lower, r.upper, "rating", stem)
    return f"<h3>{_esc(name)}</h3>" + _row(_leaderboard(r), _img(plot, f"{name} leaderboard"))


def _ratings_section(ratings: dict, by_suite: dict, headline: str | None, plots: Plots, data: dict) -> str:
    def as_dict(rs: dict) -> dict:
        return {k: r.to_dict() if isinstance(r, R.Ratings) else {"error": r} for k, r in rs.items()}

    data["questions"] = as_dict(ratings)
    parts = ["<h2>Leaderboards per question</h2><p class=note>Bradley–Terry ratings on the Chatbot Arena scale "
             "(400 points: 10 to 1 odds), 95% percentile bootstrap intervals, online Elo in vote order.</p>"]
    parts += [_board(r, q, f"leaderboard-{q}", plots) for q, r in ratings.items()]
    parts.append("<h2>Win rates</h2><p class=note>How often the row model beat the column model (ties count "
                 "half); blank where the two were never compared.</p>")
    parts += [_img(plots.win_rates(r, f"winrate-{q}"), f"{q} win rates")
              for q, r in ratings.items() if isinstance(r, R.Ratings)]
    if by_suite:
        data["suites"] = as_dict(by_suite)
        parts.append(f"<h2>Leaderboards per suite</h2><p class=note>question: {_esc(headline)}</p>")
        parts += [_board(r, s, f"suite-{s}", plots) for s, r in by_suite.items()]
    return "".join(parts)


def _counting_section(answers: list[dict], rounds: int, seed: int, plots: Plots, data: dict) -> str:
    acc = data["counting"] = counting_accuracy(answers, rounds, seed)
    ci = [a["ci"] or [a["accuracy"]] * 2 for a in acc]
    table = _table(["model", "accuracy", "95% CI", "answers"],
                   [[a["model"], _pct(a["accuracy"]), _ci(a["ci"], "{:.1%}"), a["n"]] for a in acc], left=(0,))
    plot = plots.intervals("counting accuracy", [a["model"] for a in acc], [a["accuracy"] for a in acc],
                           [c[0] for c in ci], [c[1] for c in ci], "accuracy", "counting")
    parts = ["<h2>Counting accuracy</h2><p class=note>Numerical reasoning as a single-image task: the rater "
             "says how many of an object the image shows; 95% bootstrap intervals.</p>",
             _row(table, _img(plot, "counting accuracy"))]
    numbers = sorted({n for a in acc for n in a["by_expected"]}, key=float)
    if len(numbers) > 1:
        rows = [[a["model"]] + [_pct(a["by_expected"][n]["accuracy"]) if n in a["by_expected"] else "–"
                                for n in numbers] for a in acc]
        parts.append("<h3>by the number asked for</h3>" + _table(["model"] + numbers, rows, left=(0,)))
    return "".join(parts)


def _metrics_section(sc: dict, agree: dict, headline: str | None, plots: Plots) -> str:
    parts = ["<h2>Automatic metrics</h2>"]
    for name, m in sc["metrics"].items():
        better = m["higher_is_better"]
        rows = sorted(((model, s) for model, s in m["models"].items() if s.get("mean") is not None),
                      key=lambda x: -x[1]["mean"] if better else x[1]["mean"])
        parts.append(f"<h3>{_esc(name)} <span class=note>({'higher' if better else 'lower'} is better"
                     f"{', per image' if m.get('kind') == 'per_image' else ', over the set' if m.get('kind') else ''})"
                     "</span></h3>")
        table = _table(["model", "mean", "95% CI", "n"], [[model, f"{s['mean']:.4g}", _ci(s.get("ci"), "{:.4g}"),
                                                            s.get("n", "–")] for model, s in rows], left=(0,))
        ci = [s.get("ci") or [s["mean"]] * 2 for _, s in rows]
        plot = _img(plots.intervals(f"{name} ({'higher' if better else 'lower'} is better)", [x for x, _ in rows],
                                    [s["mean"] for _, s in rows], [c[0] for c in ci], [c[1] for c in ci], name,
                                    f"metric-{name}"), f"{name} by model") if rows else ""
        parts.append(_row(table, plot))
    if agree:
        qs = list(next(iter(agree.values())))
        head = ["metric", "model pairs", f"agreement ({headline})", "Kendall τ", "p", "pairs ordered otherwise"]
        head += [f"agreement ({q})" for q in qs if q != headline]
        rows = []
        for name, by_q in agree.items():
            a = by_q.get(headline, {"error": "no ratings"})
            if "error" in a:
                row = [name, "–", a["error"], "–", "–", "–"]
            else:
                row = [name, a["pairs"], _pct(a["agreement"]),
                       "–" if a["kendall_tau"] is None else f"{a['kendall_tau']:.2f}",
                       "–" if a["kendall_p"] is None else f"{a['kendall_p']:.2g}",
                       "; ".join(f"{x} vs {y}" for x, y in a["disagreeing_pairs"]) or "none"]
            row += [_pct(by_q[q]["agreement"]) if "agreement" in by_q[q] else "–" for q in qs if q != headline]
            rows.append(row)
        parts.append("<h3>Agreement with the human ratings</h3><p class=note>The share of model pairs that a "
                     "metric orders as the Bradley–Terry ratings do (ties half), over the models both know, "
                     "and Kendall's τ-b between the two orders.</p>"
                     + _table(head, rows, left=(0, 5)))
    else:
        parts.append('<p class="note">agreement with the human ratings needs votes (--votes)</p>')
    return "".join(parts)


def _skills_section(sc: dict, plots: Plots, data: dict) -> str:
    """Per metric and tag key (skill, category, ...): a table of tag value x model and its plot."""
    parts, left_out = [], set()
    for name, m in sc["metrics"].items():
        models = [x for x, s in m["models"].items() if s.get("by_tag")]
        tables: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
        for model in models:
            for tag, s in m["models"][model]["by_tag"].items():
                key, _, value = tag.partition("=")
                tables[key][value][model] = s
        for key, table in tables.items():
            if len(table) > MAX_TAG_VALUES:
                left_out.add(key)
                continue
            values = sorted(table)
            rows = [[value] + [f"{table[value][x]['mean']:.3g} (n={table[value][x].get('n', '?')})"
                               if table[value].get(x, {}).get("mean") is not None else "–" for x in models]
                    for value in values]
            parts.append(f"<h3>{_esc(name)} by {_esc(key)}</h3>" + _row(
                _table([key] + models, rows, left=(0,)),
                _img(plots.by_tag(name, key, values, table, models, f"skills-{name}-{key}"), f"{name} by {key}")))
    if not parts:
        return ""
    note = (f'<p class="note">left out (more than {MAX_TAG_VALUES} values; see report.json): '
            f"{_esc(', '.join(sorted(left_out)))}</p>") if left_out else ""
    data["skills_left_out"] = sorted(left_out)
    return "<h2>Per-skill breakdowns</h2>" + note + "".join(parts)


def copy_image(src: Path, dst: Path) -> None:
    """A copy small enough to embed many of, and large enough to see: big images shrink to 384 px, tiny
    ones (Shapes World's 64 px) grow by whole pixels."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    if max(img.size) > 384:
        img.thumbnail((384, 384), Image.LANCZOS)
    elif max(img.size) < 256:
        f = 256 // max(img.size)
        img = img.resize((img.width * f, img.height * f), Image.NEAREST)
    img.save(dst, "PNG")


def _samples_section(pairs: list[dict], prompts: dict, vote_rows: list[dict], votes: R.Votes | None,
                     gen_dir: Path | None, out: Path, data: dict) -> str:
    if gen_dir is None:
        return ('<h2>Sample pairs</h2><p class="note">no generation folder given (--generations, the --out '
                'folder of `limner eval generate`)</p>')
    texts = {r.get("prompt_id"): r["prompt"] for r in vote_rows if r.get("prompt")}
    parts, data["samples"] = ["<h2>Sample pairs</h2>"], []
    for i, p in enumerate(pairs):
        files = [f"samples/{i:02d}-{side}.png" for side in "ab"]
        try:
            for side, name in zip("ab", files):
                copy_image(gen_dir / p[f"image_{side}"], out / name)
        except OSError as e:   # a truncated or foreign file: say so, show the others
            parts.append(f'<p class="note">sample {i}: cannot read {_esc(e)}</p>')
            continue
        row = prompts.get(p["prompt_id"], {})
        text = row.get("prompt") or texts.get(p["prompt_id"]) or ""
        votes_here = tally(votes, p["prompt_id"], p["model_a"], p["model_b"])
        data["samples"].append(dict(p, prompt=text, suite=row.get("suite"), files=files, votes=votes_here))
        said = "; ".join(f"{q}: {n[0]} – {n[1]}" + (f", {n[2]} tie{'s' * (n[2] > 1)}" if n[2] else "")
                         for q, n in votes_here.items())
        figs = "".join(f'<figure><img src="{f}" alt="{_esc(m)}"><figcaption>{_esc(m)}</figcaption></figure>'
                       for f, m in zip(files, (p["model_a"], p["model_b"])))
        meta = " · ".join(_esc(x) for x in (p["prompt_id"], row.get("suite")) if x)
        parts.append(f'<div class="pair"><p class="prompt">{_esc(text) or "(prompt unknown)"}</p>{figs}'
                     f'<p class="note">{meta}' + (f" — votes (left – right): {_esc(said)}" if said else "")
                     + "</p></div>")
    if not pairs:
        parts.append('<p class="note">no prompt with images from two models in the generation folder</p>')
    return "".join(parts)

