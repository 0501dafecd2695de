"""`limner eval score`: automatic scores of a `limner eval generate` folder, per model and per tag.

Per image: exact Shapes World checks (`shapes.*`), CLIPScore and VQAScore from models the user points to.
Per model and image set: FID and KID from a pluggable feature extractor, CMMD from CLIP embeddings, each
against a folder of reference images. Means come with percentile bootstrap 95% intervals over prompts
(a prompt's seeds are resampled together, as they are not independent draws), per model and per tag
value ("skill=counting", "category=Animals": a list-valued tag counts the row once in each value).

    GEN_DIR/scores.json     the summary (the schema `limner eval report` reads)
    GEN_DIR/scores.jsonl    one row per image with each per-image score; also the cache: an image is
                            scored again only if its cache_key or the scorer (model files, settings) changed
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .. import __version__
from ..common.files import atomic_path, digest
from ..common.progress import progress as progress_bar
from ..world.scene import COLOURS, SHAPES
from ..world.scorer import Constraints, detect, score
from . import ratings as R
from .generate import MANIFEST, load_generations
from .metric_models import VQA_QUESTION, Clip, FeatureExtractor, TransformersFeatures, Vqa, load_features

SCORES, SCORES_ROWS = "scores.json", "scores.jsonl"
SCORERS = {"shapes": ("shapes.count_ok", "shapes.binding", "shapes.relations_ok", "shapes.correct"),
           "clipscore": ("clipscore",), "vqascore": ("vqascore",)}
SET_METRICS = ("fid", "kid", "cmmd")
METRICS = (*SCORERS, *SET_METRICS)
CLIP_W = 2.5                                   # Hessel et al. 2021: CLIPScore = 2.5 * max(cos, 0)
CLIP_PREFIX = "A photo depicts "               # ... and the prefix their reference code puts before captions
CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0          # Jayasumana et al. 2024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_HELP = {"clipscore": "--clip PATH (a transformers CLIPModel folder, or open_clip:NAME[:WEIGHTS])",
         "vqascore": "--vqa PATH (a transformers VQA / vision-to-text model folder, e.g. BLIP VQA)",
         "fid": "--features PATH (a transformers vision model or CLIP folder) and --reference DIR (real images)",
         "cmmd": "--clip PATH and --reference DIR (real images)"}
_HELP["kid"] = _HELP["fid"]


# --- per-image scorers ------------------------------------------------------------------------------

def shapes_constraints(c) -> Constraints | None:
    """The row's constraints as Shapes World `Constraints`, or None for another benchmark's (GenEval's, ...)."""
    groups = c.get("groups") if isinstance(c, dict) else None
    if not groups or not all(isinstance(g, dict) and g.get("colour") in COLOURS and g.get("shape") in SHAPES
                             and isinstance(g.get("count"), int) for g in groups):
        return None
    try:
        return Constraints.from_dict(c)
    except TypeError:
        return None


def shapes_scores(image: Image.Image, c: Constraints) -> dict[str, float]:
    """Counts for every prompt, binding = counts on binding prompts, relations where the prompt asks for
    any (a prompt with none would pass them trivially), and the whole scene."""
    r = score(detect(image), c)
    out = {"shapes.count_ok": float(r["count_ok"]), "shapes.correct": float(r["correct"])}
    if c.category == "binding":
        out["shapes.binding"] = out["shapes.count_ok"]
    if c.relations:
        out["shapes.relations_ok"] = float(r["relations_ok"])
    return out


def clipscores(clip: Clip, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
    """CLIPScore (Hessel et al. 2021): 2.5 * max(cos(image, "A photo depicts " + prompt), 0)."""
    unique = sorted(set(prompts))
    text = dict(zip(unique, clip.texts([CLIP_PREFIX + p for p in unique])))
    cos = (clip.images(images) * np.stack([text[p] for p in prompts])).sum(1)
    return CLIP_W * np.maximum(cos, 0.0)


@dataclass
class Scorer:
    name: str                                                # a key of SCORERS
    identity: str                                            # what decides its scores: cached under it
    applies: Callable[[dict], bool]
    score: Callable[[list[Image.Image], list[dict]], list[dict[str, float]]]


def scorer(name: str, model=None, device: str = "cpu", batch_size: int = 16) -> Scorer:
    """A per-image scorer; `model` is a path (or a loaded `Clip` / `Vqa`) for clipscore and vqascore."""
    if name == "shapes":
        return Scorer(name, digest("shapes", __version__), lambda r: shapes_constraints(r.get("constraints")) is not None,
                      lambda ims, rows: [shapes_scores(im, shapes_constraints(r["constraints"])) for im, r in zip(ims, rows)])
    if model is None:
        raise ValueError(f"{name} needs {_HELP[name]}")
    if name == "clipscore":
        clip = model if isinstance(model, Clip) else Clip(model, device, batch_size)
        if not clip.has_text:
            raise ValueError(f"{clip.spec} has no CLIP text tower: CLIPScore needs a full CLIPModel folder")
        return Scorer(name, digest(name, clip.identity, CLIP_PREFIX), lambda r: bool(r.get("prompt")),
                      lambda ims, rows: [{name: float(v)} for v in clipscores(clip, ims, [r["prompt"] for r in rows])])
    if name == "vqascore":
        vqa = model if isinstance(model, Vqa) else Vqa(model, device=device, batch_size=batch_size)
        return Scorer(name, digest(name, vqa.identity), lambda r: bool(r.get("prompt")),
                      lambda ims, rows: [{name: float(v)} for v in vqa(ims, [r["prompt"] for r in rows])])
    raise ValueError(f"unknown per-image metric {name!r}; choose from {', '.join(SCORERS)}")


# --- set statistics ---------------------------------------------------------------------------------

def frechet_distance(mu1, s1, mu2, s2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2). tr (S1 S2)^1/2 is read off the symmetric
    S1^1/2 S2 S1^1/2 (same eigenvalues), which stays real and stable where sqrtm(S1 S2) needs patching."""
    w, v = np.linalg.eigh(np.asarray(s1, np.float64))
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ np.asarray(s2, np.float64) @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (Heusel et al. 2017)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2: within-set kernel means leave out the diagonal (i = j)."""
    n, m = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / d + 1)^3,
    averaged over random subsets as torchmetrics does when the sets are larger than `subset_size`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    poly = lambda a, b: (a @ b.T / x.shape[1] + 1) ** 3   # noqa: E731
    if len(x) <= subset_size and len(y) <= subset_size:
        return mmd2_unbiased(poly(x, x), poly(y, y), poly(x, y))
    rng, k = np.random.default_rng(seed), min(subset_size, len(x), len(y))
    vals = []
    for _ in range(subsets):
        a, b = x[rng.choice(len(x), k, replace=False)], y[rng.choice(len(y), k, replace=False)]
        vals.append(mmd2_unbiased(poly(a, a), poly(b, b), poly(a, b)))
    return float(np.mean(vals))


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD (Jayasumana et al. 2024): MMD^2 with a Gaussian RBF kernel on CLIP embeddings, times 1000;
    the reference code's estimator, whose kernel means keep the diagonal."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    gamma = 1 / (2 * sigma**2)

    def k(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * d2).mean()

    return float(scale * (k(x, x) + k(y, y) - 2 * k(x, y)))


SET_FNS = {"fid": fid, "kid": kid, "cmmd": cmmd}


def reference_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no reference folder at {folder}: pass --reference DIR, a folder of real images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"the reference folder {folder} holds {len(files)} images ({'/'.join(IMAGE_SUFFIXES)}); "
                         f"FID, KID and CMMD need at least 2, and a few thousand to be stable")
    return files


# --- aggregation ------------------------------------------------------------------------------------

def bootstrap_mean(values, groups, rounds: int = 1000, seed: int = 0) -> tuple[float, list[float] | None]:
    """The mean of `values` and its percentile 95% interval over resampled groups (prompts): each round
    draws as many groups as there are, with replacement, and takes the mean of all their values."""
    values = np.asarray(values, np.float64)
    _, g = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    sums, counts = np.bincount(g, values), np.bincount(g).astype(np.float64)
    mean, k = float(values.mean()), len(sums)
    if rounds <= 0 or k < 2:
        return mean, None
    rng, est = np.random.default_rng(seed), []
    block = max(1, 2**22 // k)   # rounds x groups indices at a time, so memory stays small
    for start in range(0, rounds, block):
        picks = rng.integers(0, k, (min(block, rounds - start), k))
        est.append(sums[picks].sum(1) / counts[picks].sum(1))
    lo, hi = np.percentile(np.concatenate(est), [2.5, 97.5])
    return mean, [float(lo), float(hi)]


def tag_values(row: dict, with_suite: bool = False) -> list[str]:
    """"key=value" for each tag of a row, once per value of a list-valued tag."""
    out = [f"{k}={x}" for k, v in (row.get("tags") or {}).items() for x in (v if isinstance(v, list) else [v])]
    return out + ([f"suite={row.get('suite')}"] if with_suite else [])


def summarise(rows: list[dict], values: Sequence[float], rounds: int, seed: int, with_suite: bool = False) -> dict:
    """Mean, interval and n of one model's scores, overall and per tag value."""
    values = np.asarray(values, np.float64)
    prompts = np.array([str(r["prompt_id"]) for r in rows], dtype=object)
    mean, ci = bootstrap_mean(values, prompts, rounds, seed)
    tags: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        for t in dict.fromkeys(tag_values(r, with_suite)):
            tags.setdefault(t, []).append(i)
    by_tag = {}
    for t, idx in sorted(tags.items()):
        m, c = bootstrap_mean(values[idx], prompts[idx], rounds, seed)
        by_tag[t] = {"mean": m, "ci": c, "n": len(idx)}
    return {"mean": mean, "ci": ci, "n": len(values), "by_tag": by_tag}


def metric_agreement(scores_json: dict, ratings: dict[str, float]) -> dict[str, dict]:
    """metric -> `ratings.agreement` of its model means with human ratings (model -> rating), lower-is-better
    metrics negated first; a metric that cannot be compared gets {"error": why}."""
    out = {}
    for name, m in scores_json["metrics"].items():
        sign = 1.0 if m["higher_is_better"] else -1.0
        means = {model: sign * s["mean"] for model, s in m["models"].items() if s.get("mean") is not None}
        try:
            out[name] = R.agreement(means, ratings)
        except ValueError as e:
            out[name] = {"error": str(e)}
    return out


# --- scoring a generation folder --------------------------------------------------------------------

def load_rows(gen_dir: Path) -> list[dict]:
    rows = load_generations(gen_dir)
    if not rows:
        raise ValueError(f"{gen_dir / MANIFEST} lists no images")
    return rows


def choose_metrics(rows: list[dict], metrics, clip, vqa, features, reference) -> list[str]:
    """The metrics asked for, checked; by default shapes (on Shapes World rows) and whatever the given
    models and reference folder make possible."""
    shapes = any(shapes_constraints(r.get("constraints")) for r in rows)
    if not metrics:
        metrics = (["shapes"] * shapes + ["clipscore"] * (clip is not None) + ["vqascore"] * (vqa is not None)
                   + ["fid", "kid"] * (features is not None and reference is not None)
                   + ["cmmd"] * (clip is not None and reference is not None))
        if not metrics:
            raise ValueError("nothing to score: these images have no Shapes World constraints, so pass a model: "
                             + "; ".join(f"{m}: {_HELP[m]}" for m in ("clipscore", "vqascore", "fid", "cmmd")))
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
        if m == "shapes" and not shapes:
            raise ValueError("shapes scores Shapes World prompts only, and no image here has their constraints: "
                             "generate a shapes-* suite (see `limner eval suites`), or score with clipscore/vqascore")
        given = {"clipscore": clip, "vqascore": vqa, "fid": features, "kid": features, "cmmd": clip}
        if m in given and (given[m] is None or (m in SET_METRICS and reference is None)):
            raise ValueError(f"{m} needs {_HELP[m]}")
    return list(dict.fromkeys(metrics))


def read_cache(path: Path) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(cache_key, scorer) -> {scorer identity: its scores} from scores.jsonl, the latest identity last."""
    cache: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                for name, ident in row["scorers"].items():
                    _put(cache, (row["cache_key"], name), ident, {m: row[m] for m in SCORERS[name] if m in row})
            except (ValueError, KeyError, TypeError, AttributeError):
                continue   # a line cut short by a kill (or not ours): those images are scored again
    return cache


def _put(cache: dict, key: tuple[str, str], ident: str, scores: dict[str, float]) -> None:
    entries = cache.setdefault(key, {})
    entries.pop(ident, None)
    entries[ident] = scores   # last = latest, which the compacted scores.jsonl keeps


def score_generations(gen_dir: str | Path, metrics: Sequence[str] | None = None, *, clip=None, vqa=None,
                      features=None, reference: str | Path | None = None, rounds: int = 1000, seed: int = 0,
                      device: str = "cpu", batch_size: int = 16, progress: bool = True) -> dict:
    """Score a `limner eval generate` folder: the scores.json summary (returned), with per-image scores in
    GEN_DIR/scores.jsonl. `clip`, `vqa` and `features` are paths, or a loaded `Clip`, `Vqa`, FeatureExtractor."""
    gen_dir = Path(gen_dir)
    rows = load_rows(gen_dir)
    metrics = choose_metrics(rows, metrics, clip, vqa, features, reference)
    refs = reference_images(reference) if any(m in SET_METRICS for m in metrics) else []
    images = [r for r in rows if r.get("path") and (gen_dir / r["path"]).is_file()]
    missing = sum(bool(r.get("path")) for r in rows) - len(images)
    if missing:
        print(f"{missing} images listed in {MANIFEST} are not on disk; they are left out", file=sys.stderr)
    if not images:
        raise ValueError(f"no image of {gen_dir / MANIFEST} is on disk (all refused or deleted): nothing to score")
    if isinstance(clip, (str, Path)) and ("clipscore" in metrics or "cmmd" in metrics):
        clip = Clip(str(clip), device, batch_size)
    scorers = [scorer(m, {"clipscore": clip, "vqascore": vqa}.get(m), device, batch_size)
               for m in metrics if m in SCORERS]

    cache = read_cache(gen_dir / SCORES_ROWS)
    scored: dict[str, list[tuple[dict, dict]]] = {}   # scorer -> (row, scores) of this run
    with (gen_dir / SCORES_ROWS).open("a", encoding="utf-8") as log:
        for sc in scorers:
            rows_here = [r for r in images if sc.applies(r)]
            todo = [r for r in rows_here if sc.identity not in cache.get((r["cache_key"], sc.name), {})]
            bar = progress_bar(len(todo), f"scoring {sc.name}", unit="img", enabled=progress and len(todo) > 0)
            try:
                for i in range(0, len(todo), batch_size):
                    batch = todo[i:i + batch_size]
                    for r, s in zip(batch, sc.score([_open(gen_dir / r["path"]) for r in batch], batch)):
                        log.write(json.dumps(_entry(r) | s | {"scorers": {sc.name: sc.identity}}) + "\n")
                        _put(cache, (r["cache_key"], sc.name), sc.identity, s)
                    log.flush()
                    bar.update(len(batch))
            finally:
                bar.close()
            scored[sc.name] = []
            for r in rows_here:
                s = cache[(r["cache_key"], sc.name)][sc.identity]
                _put(cache, (r["cache_key"], sc.name), sc.identity, s)
                scored[sc.name].append((r, s))
    _write_rows(gen_dir / SCORES_ROWS, images, cache)

    with_suite = len({r.get("suite") for r in images}) > 1
    models = list(dict.fromkeys(r["model"] for r in images))
    out: dict[str, dict] = {}
    for name, got in scored.items():
        for metric in SCORERS[name]:
            per_model = {m: [(r, s[metric]) for r, s in got if r["model"] == m and metric in s] for m in models}
            out[metric] = {"higher_is_better": True, "kind": "per_image", "models": {
                m: summarise([r for r, _ in rv], [v for _, v in rv], rounds, seed, with_suite)
                for m, rv in per_model.items() if rv}}
    sets = [m for m in metrics if m in SET_METRICS]
    if sets:
        if isinstance(features, (str, Path)) and ("fid" in sets or "kid" in sets):
            features = load_features(str(features), device, batch_size)
        out |= set_metrics(sets, {m: [gen_dir / r["path"] for r in images if r["model"] == m] for m in models},
                           refs, {"fid": features, "kid": features, "cmmd": clip}, progress)
    suites = sorted({str(r["suite"]) for r in images if r.get("suite")})
    return {"suite": ", ".join(suites) or None, "n_images": len(images),
            "metrics": {k: v for k, v in out.items() if v["models"]}}


def _entry(row: dict) -> dict:
    return {k: row.get(k) for k in ("model", "prompt_id", "seed", "path", "cache_key")}


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _write_rows(path: Path, images: list[dict], cache: dict) -> None:
    """scores.jsonl compacted to one row per image of the manifest, each scorer's latest scores, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for r in images:
            row, which = _entry(r), {}
            for name in SCORERS:
                entries = cache.get((r["cache_key"], name))
                if entries:
                    ident = next(reversed(entries))
                    row |= entries[ident]
                    which[name] = ident
            if which:
                f.write(json.dumps(row | {"scorers": which}, ensure_ascii=False) + "\n")


def set_metrics(metrics: Sequence[str], images: dict[str, list[Path]], refs: list[Path],
                extractors: dict[str, FeatureExtractor], progress: bool = True) -> dict:
    """FID/KID/CMMD of each model's images (model -> files) against the reference files; each
    extractor's features are computed once for all the metrics that use it."""
    out, feats = {}, {}
    for metric in metrics:
        embed = extractors[metric]
        if id(embed) not in feats:
            feats[id(embed)] = (_embed(embed, refs, "reference", progress),
                                {m: _embed(embed, files, m, progress) for m, files in images.items()})
        ref, f = feats[id(embed)]
        small = [m for m in images if len(f[m]) < 2]
        if small:
            print(f"{metric}: {', '.join(small)} left out (fewer than 2 images)", file=sys.stderr)
        out[metric] = {"higher_is_better": False, "kind": "set", "models": {
            m: {"mean": SET_FNS[metric](f[m], ref), "ci": None, "n": len(f[m]), "by_tag": {}}
            for m in images if m not in small}}
    return out


def _embed(fn: FeatureExtractor, paths: list[Path], what: str, progress: bool, chunk: int = 64) -> np.ndarray:
    bar = progress_bar(len(paths), "features", unit="img", enabled=progress and len(paths) > 0)
    out = []
    try:
        for i in range(0, len(paths), chunk):
            out.append(np.asarray(fn([_open(p) for p in paths[i:i + chunk]]), np.float64))
            bar.set_postfix_str(what, refresh=False)
            bar.update(len(out[-1]))
    finally:
        bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0))


# --- text output ------------------------------------------------------------------------------------

def table(scores: dict) -> str:
    lines = []
    for name, m in scores["metrics"].items():
        width = max(5, *(len(x) for x in m["models"]))
        lines += [f"{name} ({'higher' if m['higher_is_better'] else 'lower'} is better)",
                  f"  {'model':<{width}}  {'mean':>9}  {'95% CI':>21}  {'n':>6}"]
        for model, s in sorted(m["models"].items(), key=lambda kv: -kv[1]["mean"] * (1 if m["higher_is_better"] else -1)):
            ci = f"[{s['ci'][0]:.4g}, {s['ci'][1]:.4g}]" if s["ci"] else "–"
            lines.append(f"  {model:<{width}}  {s['mean']:9.4g}  {ci:>21}  {s['n']:>6}")
        lines.append("")
    return "\n".join(lines).rstrip()

