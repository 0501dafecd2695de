"""Duplicate and near-duplicate detection for the curation pipeline: clusters of alike images.

Imagen 3 removes or down-weights near-duplicate images: repeated images are memorised and regurgitated,
and they skew what the model learns towards whatever is popular on the web. Three levels, cheapest first
(the per-image fingerprints and the thumbnail comparison are `limner.data.hashes`):

* exact copies: equal `hashes.exact_key`, a content hash of the decoded pixels.
* `hash_clusters`: near-duplicates (re-encodes, resizes, small crops, colour and brightness edits, blur).
  A candidate link needs the three perceptual hashes of `hashes.image_hashes` to agree: the luminance
  pHash (compared also against two zoomed views of the other image, for crops), the colour hash and the
  edge-orientation hash. Hashes of images with a few small shapes still agree by chance, so every
  candidate is then verified on the two images' 16 px thumbnails (`hashes.thumb_distance`). Links then
  merge clusters only by majority (`hash_clusters`'s linkage), so a look-alike linked to one copy cannot
  chain two distinct images together.
* `embedding_clusters`: cosine similarity of embeddings (semantic near-duplicates, as in SemDeDup).

Hash clusters are grown from the verified links, most similar first, a merge needing links between most of
the two clusters' members (embedding clusters are connected components of their links); a cluster's id is
the index of its lowest-index member. `cluster_weights` and `representatives` turn clusters into sample
weights or a keep-mask. Nothing here is O(n^2): hashes are bucketed by pigeonhole bands and only
bucket-mates are compared; embeddings are blocked by spherical k-means cells.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .hashes import CROP_VIEWS, N_VIEWS, THUMB_TOLERANCE, thumb_distance, thumbnails

# per hash kind (hashes.KINDS): the Hamming distance within which a pair is a candidate, each verified on
# thumbnails within THUMB_TOLERANCE; chosen in benchmarks/dedup.py --sweep (seed 0)
MAX_DISTANCE = (14, 3, 8)


# --- candidate pairs and components --------------------------------------------------------------------

def _popcount_xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b)


def _bands(r: int) -> list[tuple[int, int]]:
    """(shift, mask) of r + 1 contiguous bands of 64 bits: within distance r, some band must agree."""
    e = np.linspace(0, 64, r + 2).round().astype(int)
    return [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(e[:-1], e[1:])]


def _mix(key: np.ndarray, part: np.ndarray) -> np.ndarray:
    # collisions only add candidates, which are verified, so a cheap multiplicative mix will do
    return key * np.uint64(0x9E3779B97F4A7C15) + part


def _collisions(key: np.ndarray) -> int:
    c = np.unique(key, return_counts=True)[1]
    return int((c * (c - 1) // 2).sum())


def _bucket_pairs(key: np.ndarray):
    """Yield (a, b) index arrays of all pairs sharing a key, without materialising buckets."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    p = np.flatnonzero(k[1:] == k[:-1])
    d = 1
    while p.size:
        yield order[p], order[p + d]
        p = p[p + d + 1 < len(k)]
        p = p[k[p] == k[p + d + 1]]
        d += 1


class _Forest:
    """Edges folded into a spanning forest whenever they pile up: memory stays O(n) however many tables
    report the same pair."""

    def __init__(self, n: int, fold_at: int = 1 << 22):
        self.n, self.fold_at, self.a, self.b, self.count = n, fold_at, [], [], 0

    def add(self, a: np.ndarray, b: np.ndarray):
        self.a.append(a)
        self.b.append(b)
        self.count += len(a)
        if self.count > self.fold_at:
            labels = self.labels()
            root = _min_member(labels)[labels]
            keep = root != np.arange(self.n)
            self.a, self.b = [np.flatnonzero(keep)], [root[keep]]
            self.count = len(self.a[0])

    def labels(self) -> np.ndarray:
        a = np.concatenate(self.a + [np.zeros(0, np.int64)]).astype(np.int64)
        b = np.concatenate(self.b + [np.zeros(0, np.int64)]).astype(np.int64)
        g = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(self.n, self.n))
        return connected_components(g, directed=False)[1]


def _min_member(labels: np.ndarray) -> np.ndarray:
    """Per component label, the smallest index carrying it."""
    first = np.full(labels.max() + 1 if len(labels) else 0, len(labels), np.int64)
    np.minimum.at(first, labels, np.arange(len(labels)))
    return first


def _ids(labels: np.ndarray) -> np.ndarray:
    return _min_member(labels)[labels]


# --- clustering ----------------------------------------------------------------------------------------

def _majority(m: int, a: np.ndarray, b: np.ndarray, order: np.ndarray, sample: int = 8) -> np.ndarray:
    """Clusters grown from the links (a, b), taken in `order`: two clusters merge when more than half the
    pairs between their first `sample` members (in the order they joined) are links. So a look-alike linked
    to one copy of an image cannot chain it to another scene. -> (m,) labels."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keys = np.sort(lo * m + hi)
    parent = np.arange(m)
    members: dict[int, list[int]] = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for e in order:
        ra, rb = find(int(a[e])), find(int(b[e]))
        if ra == rb:
            continue
        ma, mb = members.get(ra, [ra]), members.get(rb, [rb])
        if len(ma) > 1 or len(mb) > 1:
            sa, sb = np.array(ma[:sample]), np.array(mb[:sample])
            q = (np.minimum.outer(sa, sb) * m + np.maximum.outer(sa, sb)).ravel()
            pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
            if 2 * int((keys[pos] == q).sum()) <= len(q):
                continue
        if len(mb) > len(ma) or (len(mb) == len(ma) and mb[0] < ma[0]):
            ra, rb, ma, mb = rb, ra, mb, ma
        parent[rb] = ra
        members[ra] = ma + mb
        members.pop(rb, None)
    while True:  # flatten
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def hash_clusters(hashes: np.ndarray, max_distance: int | Sequence[int] = MAX_DISTANCE,
                  views: np.ndarray | None = None, sample: int = 20000, thumb_tolerance: float = THUMB_TOLERANCE,
                  linkage: str = "majority") -> np.ndarray:
    """Clusters of "every column within its Hamming distance (and thumbnails alike)" links -> (n,) int64 ids.

    hashes: (n,) or (n, k) uint64; max_distance: one int for all columns or one per column. views: optional
    (n, v) uint64. With N_VIEWS columns (`hash_matrix`'s second array, what the pipeline passes) these are
    the crop views' pHashes, then the thumbnail's words; otherwise all are crop views. Crop views are alternatives
    to column 0: its distance is the least of full-vs-full and view-vs-full either way round. With
    thumbnails, a pair within the distances links only when `thumb_distance` <= thumb_tolerance.
    linkage: "majority" grows clusters from the links, most alike first (thumbnail distance, else the sum of
    Hamming distances; ties by index), merging two only when most pairs between their first members are
    links (`_majority`); "single" takes connected components (links chain).

    Exact, not O(n^2): split column c into max_distance[c] + 1 bands; a linked pair agrees exactly on at
    least one band of every column (pigeonhole), so bucketing on one band per column, for every combination
    of bands, finds every pair within the distances, and only bucket-mates are compared (thumbnails only for
    pairs within the distances, once each). Which columns to bucket on is chosen per call by estimating
    bucket collisions on a sample (a column that is constant over the data, say the colour hash of
    greyscale photos, is useless to bucket on); identical rows are merged first.
    """
    if linkage not in ("majority", "single"):
        raise ValueError(f"linkage must be 'majority' or 'single', not {linkage!r}")
    h = np.asarray(hashes, np.uint64)
    h = h[:, None] if h.ndim == 1 else h
    n, k = h.shape
    r = np.broadcast_to(np.asarray(max_distance, np.int64), (k,))
    v = np.zeros((n, 0), np.uint64) if views is None else np.asarray(views, np.uint64).reshape(n, -1)
    thumbs = None
    if v.shape[1] == N_VIEWS:
        v, thumbs = v[:, :len(CROP_VIEWS)], v[:, len(CROP_VIEWS):]
    if n == 0:
        return np.zeros(0, np.int64)
    # identical rows (thumbnails too) are linked for free; merging them keeps buckets small on real,
    # duplicate-heavy data
    key_cols = [h, v]
    if thumbs is not None:
        digest = np.zeros(n, np.uint64)
        for c in range(thumbs.shape[1]):
            digest = _mix(digest ^ (digest >> np.uint64(29)), thumbs[:, c])
        key_cols.append(digest[:, None])
    uniq, first, inv = np.unique(np.concatenate(key_cols, 1), axis=0, return_index=True, return_inverse=True)
    by_first = np.argsort(first)  # unique rows numbered in order of first occurrence, so ties go by index
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    uniq, first, inv = uniq[by_first], first[by_first], rank[inv.ravel()]
    h, v = uniq[:, :k], uniq[:, k:k + v.shape[1]]
    m, nv = len(h), v.shape[1]
    words = np.concatenate([h[:, :1], v, h[:, 1:]], 1)  # column 0 and its views (by variant), then 1..k-1
    bands = [_bands(int(x)) for x in r]

    def rows_of(items, cols):
        variants = nv + 1 if 0 in cols else 1
        return np.repeat(items, variants), np.tile(np.arange(variants), len(items))

    def keys(rows, cols, table):
        key = np.zeros(len(rows[0]), np.uint64)
        for c, b in zip(cols, table):
            shift, mask = bands[c][b]
            word = words[rows[0], rows[1]] if c == 0 else words[rows[0], nv + c]
            key = _mix(key, (word >> np.uint64(shift)) & np.uint64(mask))
        return key

    def distance(a, b):
        """Per-pair Hamming distances, column 0 the least over views: (k, p)."""
        d0 = _popcount_xor(h[a, 0], h[b, 0])
        for j in range(nv):
            d0 = np.minimum(d0, np.minimum(_popcount_xor(v[a, j], h[b, 0]), _popcount_xor(h[a, 0], v[b, j])))
        return np.stack([d0] + [_popcount_xor(h[a, c], h[b, c]) for c in range(1, k)])

    # plan: cost ~ rows sorted over all tables + candidate pairs, the latter estimated on a sample
    rng = np.random.default_rng(0)
    probe = np.sort(rng.choice(m, min(m, sample), replace=False))
    scale = (m / len(probe)) ** 2
    best = None
    for size in range(1, k + 1):
        for cols in itertools.combinations(range(k), size):
            tables = list(itertools.product(*(range(len(bands[c])) for c in cols)))
            rows = rows_of(probe, cols)
            pairs = sum(_collisions(keys(rows, cols, t)) for t in tables)
            cost = len(tables) * m * (nv + 1 if 0 in cols else 1) + pairs * scale
            if best is None or cost < best[0]:
                best = (cost, cols, tables)
    _, cols, tables = best

    # every pair within the distances, once (as lo * m + hi), compacted as tables report pairs again
    found, count = [np.zeros(0, np.uint64)], 0
    rows = rows_of(np.arange(m), cols)
    for t in tables:
        for a, b in _bucket_pairs(keys(rows, cols, t)):
            a, b = rows[0][a], rows[0][b]
            keep = a != b
            a, b = a[keep], b[keep]
            ok = (distance(a, b) <= r[:, None]).all(0)
            a, b = a[ok], b[ok]
            found.append(np.minimum(a, b).astype(np.uint64) * np.uint64(m) + np.maximum(a, b).astype(np.uint64))
            count += len(a)
            if count > 1 << 22:
                found, count = [np.unique(np.concatenate(found))], 0
    pairs = np.unique(np.concatenate(found))
    a, b = (pairs // np.uint64(m)).astype(np.int64), (pairs % np.uint64(m)).astype(np.int64)
    if thumbs is not None:
        dist = np.empty(len(a), np.float32)
        for s in range(0, len(a), 4096):
            fa, fb = first[a[s:s + 4096]], first[b[s:s + 4096]]  # rows of the input: no copy of all thumbnails
            dist[s:s + 4096] = thumb_distance(thumbnails(thumbs[fa]), thumbnails(thumbs[fb]))
        ok = dist <= thumb_tolerance
        a, b, dist = a[ok], b[ok], dist[ok]
    else:
        dist = distance(a, b).sum(0).astype(np.float32) if len(a) else np.zeros(0, np.float32)
    if linkage == "single":
        g = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(m, m))
        labels = connected_components(g, directed=False)[1]
    else:  # most alike first; ties by index (a < b already)
        labels = _majority(m, a, b, np.lexsort((b, a, dist)))
    return _ids(labels[inv])


def embedding_clusters(emb: np.ndarray, threshold: float, nlist: int | None = None, nprobe: int = 4,
                       iters: int = 10, seed: int = 0) -> np.ndarray:
    """Connected components of "cosine similarity >= threshold" links -> (n,) int64 cluster ids.

    Blocked like an IVF index, in plain numpy/BLAS: spherical k-means (on a sample) cuts the sphere into
    `nlist` cells (default ~n/1000, one cell, i.e. exact, below 2000 items); every vector is listed in its
    `nprobe` nearest cells, and each cell's own members are compared with everything listed there by one
    matrix product. A pair is found when one's cell is among the other's nprobe nearest, so recall is high
    but not guaranteed (benchmarks/dedup.py measures it); the input is never copied whole.
    """
    x = np.asarray(emb, np.float32)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64)
    inv_norm = 1 / np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x), 1e-24))  # no n x d temporary
    unit = lambda idx: x[idx] * inv_norm[idx, None]  # noqa: E731
    nlist = nlist or max(1, n // 1000)
    nprobe = min(nprobe, nlist)
    rng = np.random.default_rng(seed)

    # spherical k-means on a sample of up to 64 points per cell
    train = unit(np.sort(rng.choice(n, min(n, 64 * nlist), replace=False)))
    cent = train[rng.choice(len(train), nlist, replace=False)]
    for _ in range(iters if nlist > 1 else 0):
        lab = (train @ cent.T).argmax(1)
        sums = coo_matrix((np.ones(len(lab), np.float32), (lab, np.arange(len(lab)))), (nlist, len(lab))) @ train
        empty = np.bincount(lab, minlength=nlist) == 0
        sums[empty] = train[rng.choice(len(train), int(empty.sum()))]
        cent = sums / np.linalg.norm(sums, axis=1, keepdims=True)

    # each vector's nprobe nearest cells, the first its own
    near = np.empty((n, nprobe), np.int64)
    for s in range(0, n, 8192):
        sim = unit(np.arange(s, min(s + 8192, n))) @ cent.T
        top = np.argpartition(-sim, nprobe - 1, axis=1)[:, :nprobe]
        near[s:s + len(sim)] = np.take_along_axis(top, np.argsort(-np.take_along_axis(sim, top, 1), 1), 1)
    listed = np.argsort(near.ravel(), kind="stable")
    starts = np.searchsorted(near.ravel()[listed], np.arange(nlist + 1))
    own = np.argsort(near[:, 0], kind="stable")
    own_starts = np.searchsorted(near[own, 0], np.arange(nlist + 1))

    forest = _Forest(n)
    for c in range(nlist):
        listed_here = listed[starts[c]:starts[c + 1]] // nprobe
        members = own[own_starts[c]:own_starts[c + 1]]
        for s in range(0, len(members), 1024):  # blocks of at most 1024 x 16384 similarities
            a_idx = members[s:s + 1024]
            a = unit(a_idx)
            for t in range(0, len(listed_here), 16384):
                b_idx = listed_here[t:t + 16384]
                i, j = np.nonzero(a @ unit(b_idx).T >= threshold)
                keep = a_idx[i] != b_idx[j]
                forest.add(a_idx[i[keep]], b_idx[j[keep]])
    return _ids(forest.labels())


def cluster_weights(ids: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Per-item sample weight cluster_size ** -alpha: 0 ignores duplication, 1 makes every cluster weigh
    what one image does (all its variants still seen), 0.5 is in between."""
    ids = np.asarray(ids, np.int64)
    return np.bincount(ids, minlength=len(ids))[ids].astype(np.float64) ** -float(alpha)


def representatives(ids: np.ndarray, quality: np.ndarray | None = None) -> np.ndarray:
    """Bool mask keeping one member per cluster: the highest `quality` (ties and NaN: lowest index), or
    without quality the cluster's id item itself."""
    ids = np.asarray(ids, np.int64)
    idx = np.arange(len(ids))
    if quality is None:
        return ids == idx
    q = np.nan_to_num(np.asarray(quality, np.float64), nan=-np.inf)
    order = np.lexsort((idx, -q, ids))
    first = np.r_[True, ids[order][1:] != ids[order][:-1]] if len(ids) else np.zeros(0, bool)
    keep = np.zeros(len(ids), bool)
    keep[order[first]] = True
    return keep
