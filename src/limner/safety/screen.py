"""The semantic layer's fast screen: a static token-vector table distilled from the frozen text encoder.

In the style of Model2Vec (MinishLab): each vocabulary token is run through the encoder on its own
(`[CLS] token [SEP]`), and its mean-pooled output is that token's vector. A sentence's screen vector
is the weighted mean of its tokens' vectors (no attention, no layers: a look-up and a sum, ~0.2 ms),
mapped linearly into the encoder's sentence space and compared there, by cosine, with the semantic
layer's own embeddings of the policy's examples, scored as the semantic layer scores: mean cosine to
a category's top_k closest examples minus the same to the benign examples, worst sentence.

The screen only ever clears. A prompt whose screen score is below `threshold - band` in every
category (policy.yaml: the category thresholds and `semantic.screen.band`) is allowed without
running the encoder; any other prompt (the uncertain band near a threshold, and above it) goes to
the full semantic layer, which decides. So every refusal still comes from the full layer, with its
score and closest example; the screen can change a verdict only by clearing a prompt the full layer
would block, and the band is set so that it clears none of the red-team prompts
(`python benchmarks/prompt_filter.py` counts the verdicts that differ, per set).

The table, built in `distil`:
- a row per token that a normalised prompt can contain (ASCII, not a special or [unused] token): the
  encoder's mean-pooled output for the token alone; weight log(1 + frequency rank), with the id
  order standing for frequency as in WordPiece and BPE vocabularies ("the" weighs least);
- a linear map (ridge regression, with a bias) from the weighted mean of rows to the encoder's
  sentence embedding, fitted on pseudo-sentences: random bags of 2-15 words drawn Zipf-wise from the
  vocabulary and embedded by the encoder. Everything comes from the encoder, nothing from the policy
  or a data set, so one table serves every policy;
- the map folded into the rows, reduced by SVD to `dims` and stored as int8 with a scale per row.

The default encoder's table ships with limner (prompt_screen.npz beside this file, 7 MB compressed:
distilling it takes ~1-6 minutes on one core, the whole budget of a first `limner generate`). It is
made by the release step `python -m limner.safety.screen` (`build_shipped`) and records the digest of
its inputs (`table_inputs`: vocabulary, weight files, recipe), so it is used only for that encoder.
Any other encoder's table is computed once and cached on disk under `limner.cache_root()`
($LIMNER_CACHE, else $XDG_CACHE_HOME/limner, else ~/.cache/limner) as prompt_screen/<key>.npz, the
key a digest of the encoder's configuration, vocabulary and weights (its weight files' digests,
remembered by file stat) and of this recipe: another encoder, or other weights under the same name,
get their own table, never a stale one.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path

import numpy as np

from ..common.cache import cache_root, file_digest
from ..common.files import atomic_path, digest

log = logging.getLogger(__name__)

RECIPE = 1            # bump when distil() changes what it computes: old cached tables are then ignored
DIMS = 256            # kept by the SVD: 27,623 MiniLM tokens x 256 int8 = 7.1 MB
SENTENCES = 8000      # pseudo-sentences the map is fitted on
RIDGE = 1.0
POLICY_WEIGHT = 5.0   # weight of each policy text against a pseudo-sentence when the map is fitted again

SHIPPED = Path(__file__).with_name("prompt_screen.npz")   # the default encoder's table (`build_shipped`)
TABLE = ("ids", "weights", "codes", "scales", "gram", "cross")
# the configuration fields that shape the encoder's outputs (the rest of a saved configuration varies
# with the transformers version that wrote it)
ARCHITECTURE = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "layer_norm_eps", "max_position_embeddings", "position_embedding_type")

# Long prompts are split into sentences, and the worst sentence counts: the semantic layer's rule.
SENTENCE_END = re.compile(r"(?<=[.;!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [p for p in SENTENCE_END.split(text) if p.strip()] or [text]


# ----------------------------------------------------------------------------- the table


def cache_dir() -> Path:
    return cache_root() / "prompt_screen"


def encoder_identity(tokenizer, model, **params) -> str:
    """The cache key of a table: the encoder's identity (`limner.text.encoder.identity`: configuration,
    vocabulary, weights) with this recipe and its parameters."""
    from ..text.encoder import identity

    return identity(tokenizer, model, recipe=RECIPE, **params)


def _tokens(tokenizer) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(token ids kept, their weights, the ids of whole words to draw pseudo-sentences from)."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    ids, surfaces = [], []
    for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        surface = tokenizer.convert_tokens_to_string([token]).strip()
        if i in special or re.fullmatch(r"\[unused\d+\]|<extra_id_\d+>", token) or not surface or not surface.isascii():
            continue
        ids.append(i)
        surfaces.append((token, surface))
    # frequency rank: single characters count as most frequent, then the rest in id order
    rank, weights = 0, []
    for _, surface in surfaces:
        if len(surface.removeprefix("##")) > 1:
            rank += 1
            weights.append(math.log(1 + rank))
        else:
            weights.append(math.log(2))
    words = [i for i, (token, surface) in zip(ids, surfaces)
             if re.fullmatch(r"[a-z]{2,}", surface) and not token.startswith("##")]
    return np.array(ids), np.array(weights, np.float32), words


def _wrap(tokenizer):
    """ids -> ids with the special tokens the tokenizer puts around a text ([CLS] ... [SEP], ... </s>)."""
    special = set(tokenizer.all_special_ids)
    probe = tokenizer("the")["input_ids"]
    inner = [j for j, i in enumerate(probe) if i not in special]
    prefix, suffix = probe[: inner[0]], probe[inner[-1] + 1 :]
    return lambda seq: [*prefix, *seq, *suffix]


def _pooled(model, sequences: list[list[int]], batch_size: int = 256) -> np.ndarray:
    """The encoder's mean-pooled output for each sequence (equal lengths batched together: no padding)."""
    import torch

    out = np.zeros((len(sequences), model.config.hidden_size), np.float32)
    by_length: dict[int, list[int]] = {}
    for j, seq in enumerate(sequences):
        by_length.setdefault(len(seq), []).append(j)
    with torch.inference_mode():
        for idx in by_length.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                x = torch.tensor([sequences[j] for j in chunk])
                states = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
                out[chunk] = states.float().mean(1).numpy()
    return out


def distil(tokenizer, model, dims: int = DIMS, n_sentences: int = SENTENCES, seed: int = 0) -> dict[str, np.ndarray]:
    """The static table: ids (kept token ids), their weights, codes (int8, len(ids) x dims) and scales
    (a row is codes * scale), and the normal equations (gram, cross) of the map from the weighted
    mean of a sentence's rows to its encoder embedding, which `Screen` solves (adding the policy's texts)."""
    ids, weights, words = _tokens(tokenizer)
    special = _wrap(tokenizer)
    rows = _pooled(model, [special([int(i)]) for i in ids])
    rng = np.random.default_rng(seed)
    bags = []
    for _ in range(n_sentences):   # heavy-tailed ranks: mostly content words of middling frequency
        ranks = (800 * rng.pareto(0.7, int(rng.integers(2, 16)))).astype(int)
        bags.append([words[r % len(words)] for r in ranks])
    target = _pooled(model, [special(b) for b in bags])
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    row_of = {int(i): j for j, i in enumerate(ids)}
    bag_rows = [np.array([row_of[i] for i in bag]) for bag in bags]

    def features(vectors):
        return np.stack([weights[r] @ vectors[r] / weights[r].sum() for r in bag_rows])

    gram, cross = _normal_equations(features(rows), target)
    fit = _solve(gram, cross)
    u, s, vt = np.linalg.svd(rows.astype(np.float64) @ fit[:-1], full_matrices=False)   # the map folded in
    dims = min(dims, len(s))
    low = u[:, :dims] * s[:dims]
    scales = (np.abs(low).max(1) / 127 + 1e-12).astype(np.float32)
    codes = np.round(low / scales[:, None]).astype(np.int8)
    # the map from the stored rows, fitted again on the same sentences: it absorbs what SVD and int8 lost
    gram, cross = _normal_equations(features(codes.astype(np.float32) * scales[:, None]), target)
    return {"ids": ids.astype(np.int32), "weights": weights, "codes": codes, "scales": scales, "gram": gram,
            "cross": cross}


def _normal_equations(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X'X and X'Y of a least-squares fit of y on [x, 1]."""
    xb = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    return xb.T @ xb, xb.T @ y.astype(np.float64)


def _solve(gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """Ridge solution, (features + 1, hidden): the last row is the bias, which is not shrunk."""
    reg = RIDGE * np.eye(len(gram))
    reg[-1, -1] = 0.0
    return np.linalg.solve(gram + reg, cross)


def table_inputs(tokenizer, model, **params) -> str | None:
    """A digest of what a table is computed from that no library version changes: the vocabulary, the
    weight files' contents, the architecture and the recipe. None for a model without weight files."""
    from ..text.encoder import vocabulary, weight_files

    files = weight_files(model)
    if not files:
        return None
    arch = {k: getattr(model.config, k, None) for k in ARCHITECTURE}
    return digest(RECIPE, json.dumps({"params": params, "architecture": arch}, sort_keys=True, default=str),
                  vocabulary(tokenizer), *(f"{f.name}:{file_digest(f)}" for f in files), size=24)


def load_shipped(tokenizer, model, path: str | Path = SHIPPED, **params) -> dict[str, np.ndarray] | None:
    """The shipped table if it was made from this encoder with these parameters, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    inputs = table_inputs(tokenizer, model, **params)
    try:
        with np.load(path, allow_pickle=False) as z:
            if inputs is None or str(z["inputs"]) != inputs:
                return None
            return {**{k: z[k] for k in TABLE}, "key": inputs}
    except (OSError, ValueError, KeyError) as e:   # a damaged file: the cache, or distilling, takes over
        log.warning("prompt screen: ignoring the unreadable shipped table %s (%s)", path, e)
        return None


def save_table(table: dict[str, np.ndarray], path: str | Path, compressed: bool = False, **extra) -> None:
    """Write a table (and `extra` arrays) atomically: a reader never sees a part of one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **{k: table[k] for k in TABLE}, **extra)


def load_table(tokenizer, model, cache: str | Path | None = None, shipped: str | Path | None = SHIPPED,
               **params) -> dict[str, np.ndarray]:
    """The table for this encoder: the shipped one if it was made from this encoder, else from the cache,
    else distilled now and cached (written atomically, so that two processes starting together at worst
    both compute it)."""
    params = {"dims": DIMS, "n_sentences": SENTENCES, **params}
    if shipped is not None:
        table = load_shipped(tokenizer, model, shipped, **params)
        if table is not None:
            return table
    key = encoder_identity(tokenizer, model, **params)
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {**{k: z[k] for k in z.files}, "key": key}
        except (OSError, ValueError) as e:   # a damaged file is computed again
            log.warning("prompt screen: ignoring unreadable table %s (%s)", path, e)
    log.warning("prompt screen: distilling the static table from the text encoder (once per encoder, "
                "about a minute on one core) into %s", path)
    start = time.perf_counter()
    table = distil(tokenizer, model, **params)
    log.info("prompt screen: table of %d tokens x %d distilled in %.0f s", *table["codes"].shape,
             time.perf_counter() - start)
    try:
        save_table(table, path)
    except OSError as e:   # a read-only home: the screen still works, it is just distilled again next time
        log.warning("prompt screen: could not cache the table in %s (%s)", folder, e)
    return {**table, "key": key}


def build_shipped(path: str | Path = SHIPPED) -> Path:
    """The release step: distil the default encoder's table with the default recipe and write it where
    limner ships it, with the digest of its inputs. Deterministic on one machine (the same bytes again)."""
    from ..text.encoder import DEFAULT, load, resolve

    tokenizer, model, _ = load(resolve(DEFAULT))
    params = {"dims": DIMS, "n_sentences": SENTENCES}
    table = distil(tokenizer, model, **params)
    save_table(table, path, compressed=True, inputs=np.array(table_inputs(tokenizer, model, **params)))
    return Path(path)


# ----------------------------------------------------------------------------- the screen


class Screen:
    """Screen scores for the semantic layer's K categories, and which prompts they clear.

    `examples` holds, per category, the semantic layer's unit embeddings of its description and
    examples (n_k, hidden); `benign` those of the benign examples and allow phrases. A prompt is
    cleared when its screen score is below `limits` (threshold - band) in every category."""

    def __init__(self, table: dict, tokenizer, examples: list[np.ndarray], benign: np.ndarray,
                 limits: list[float], top_k: int = 1, max_length: int = 64,
                 fit_texts: list[str] = (), fit_weight: float = POLICY_WEIGHT):
        self.tokenizer, self.top_k, self.max_length, self.key = tokenizer, top_k, max_length, table.get("key")
        ids = table["ids"]
        self.row = np.full(max(int(ids.max()) + 1, len(tokenizer)), -1, np.int64)
        self.row[ids] = np.arange(len(ids))
        self.weights = table["weights"]
        self.vectors = table["codes"].astype(np.float32) * table["scales"][:, None]
        self.limits = np.asarray(limits, np.float32)
        self.spans = np.cumsum([0, *map(len, examples)])
        targets = np.concatenate([*examples, benign]).astype(np.float32)
        self.examples = targets.T.copy()   # (hidden, all examples)
        fit = self._cached_fit(table, targets, list(fit_texts), fit_weight)
        self.proj, self.bias = fit[:-1], fit[-1]

    def _fit(self, table: dict, targets: np.ndarray, fit_texts: list[str], fit_weight: float) -> np.ndarray:
        """The map into the encoder's space: the table's fit on pseudo-sentences, plus, when given, the
        policy's texts (`fit_texts`, in the order of examples then benign) with their encoder
        embeddings: the screen is then most faithful near the examples, where the decisions are."""
        gram, cross = table["gram"], table["cross"]
        if len(fit_texts):
            x = self._mean_rows(fit_texts)
            ok = ~np.isnan(x).any(1)
            g, c = _normal_equations(x[ok], targets[ok])
            gram, cross = gram + fit_weight * g, cross + fit_weight * c
        return _solve(gram, cross).astype(np.float32)

    def _cached_fit(self, table: dict, targets: np.ndarray, fit_texts: list[str], fit_weight: float) -> np.ndarray:
        """`_fit`, cached under limner.cache_root()/prompt_screen_fit/ for a table that has a key (one from
        `load_table`), keyed by it and everything else the fit reads. Why: the solve is small, but
        OpenBLAS runs it on all cores, and on a busy machine that alone has cost 0.15 s of every start."""
        if table.get("key") is None:
            return self._fit(table, targets, fit_texts, fit_weight)
        key = digest(table["key"], RECIPE, RIDGE, fit_weight, self.max_length, json.dumps(fit_texts),
                     targets.tobytes(), size=24)
        path = cache_root() / "prompt_screen_fit" / f"{key}.npy"
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):   # not cached yet (or a damaged file): computed now
            pass
        fit = self._fit(table, targets, fit_texts, fit_weight)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, fit)
        except OSError:   # a read-only cache: computed again next time
            pass
        return fit

    def _mean_rows(self, texts: list[str]) -> np.ndarray:
        """The weighted mean of each text's token rows; NaN for a text with no known token."""
        seqs = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        out = np.full((len(texts), self.vectors.shape[1]), np.nan, np.float32)
        for vec, seq in zip(out, seqs):
            rows = self.row[np.asarray(seq, np.int64)]
            rows = rows[rows >= 0]
            if len(rows):
                w = self.weights[rows]
                vec[:] = w @ self.vectors[rows] / w.sum()
        return out

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), hidden) unit vectors; a row of NaN for a text with no known token."""
        y = self._mean_rows(texts) @ self.proj + self.bias
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    def _top_mean(self, sim: np.ndarray) -> np.ndarray:
        k = min(self.top_k, sim.shape[1])
        return np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:].mean(1)

    def scores(self, texts: list[str]) -> np.ndarray:
        """(len(texts), K): per category, the highest screen score among the text's sentences (NaN: a
        sentence without a known token). The semantic layer scores the text by its most suspicious
        sentence; the highest per category is never below that, so it clears no more than it should."""
        chunks, owner = [], []
        for i, text in enumerate(texts):
            parts = sentences(text)
            chunks += parts
            owner += [i] * len(parts)
        sim = self.embed(chunks) @ self.examples
        s = self.spans
        margin = np.stack([self._top_mean(sim[:, s[k] : s[k + 1]]) for k in range(len(s) - 1)], 1)
        margin -= self._top_mean(sim[:, s[-1] :])[:, None]
        out = np.full((len(texts), margin.shape[1]), -np.inf, np.float32)
        np.maximum.at(out, np.array(owner), margin)   # a NaN sentence makes its text NaN
        return out

    def clears(self, texts: list[str]) -> list[float | None]:
        """Per text: its highest screen score if below the limit in every category (allowed without
        the encoder), else None (the full semantic layer decides; always for an unknown text)."""
        scores = self.scores(texts)
        clear = (scores < self.limits).all(1)   # NaN compares False: never cleared
        return [float(m) if c else None for m, c in zip(scores.max(1), clear)]


if __name__ == "__main__":   # python -m limner.safety.screen: rebuild the shipped table (a release step, minutes)
    print(build_shipped())
