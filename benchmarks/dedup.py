"""Deduplication benchmark: near-duplicate recall and precision on planted copies, side by side with the
imagededup library's hashes at their defaults; then scale (time, peak RSS) of hash and embedding clustering.

    python benchmarks/dedup.py quality                      # (a) tables, default sizes, held-out seed 1
    python benchmarks/dedup.py quality --seed 0 --sweep     # the tuning run that chose MAX_DISTANCE, THUMB_TOLERANCE
    python benchmarks/dedup.py demo DIR                     # (c) on `limner data demo --out DIR`'s planted pairs
    python benchmarks/dedup.py scale --n 1000000            # (b) 1M hashes and 1M x 384 embeddings
    python benchmarks/dedup.py scale --n 100000 --parts phash8   # one 64-bit column at distance 8, for contrast

(a) Originals are Shapes World scenes (flat shapes on near-white grounds: the hard case for perceptual
hashes) and crops of scikit-image's photographs (no two crops of one photo overlapping by IoU > 0.3), each
with the copies in `copies`; distractors are further scenes with no copies. Recall is over (original, copy)
pairs; precision over all pairs predicted linked among all images (copies of one original are true pairs),
either as linked pairs or as connected components (what hash_clusters returns: links chain); "falsely
linked" is the share of distinct scenes (originals and distractors) or photo crops linked to any other.
imagededup imports torch/torchvision for its CNN at package import; only its hashing module is used here,
so the two torch-backed modules are stubbed in sys.modules (imagededup installed with `pip install
--no-deps imagededup`, plus PyWavelets).
limner's rows: "pairs" are pairs within the hash distances whose thumbnails also agree (`thumb_distance`);
"clusters" are what hash_clusters returns (majority linkage, and single linkage for contrast).
(b) Random hashes / embeddings with planted near-duplicate clusters (hashes with thumbnail words: random,
members sharing their base's, a few levels off); each part runs in a fresh process so its peak RSS
(getrusage) is its own.
(c) The planted corpus of `limner data demo --out DIR` (run it first): the images that reached the pipeline's
dedup stage, decoded as the pipeline does; the pipeline's own clusters (from DIR/curated/manifest.parquet)
against imagededup's hashes at <= 10 (pairs, and their connected components) on the same images. Recall over
the planted (original, near copy) pairs, precision over all linked pairs (exact copies are true pairs).
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import random
import resource
import subprocess
import sys
import time
import types

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from limner.data import dedup as D
from limner.data import hashes as H
from limner.world.scene import render, sample_scene

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "camera", "brick", "grass", "gravel", "moon", "text", "coins", "page", "clock", "cell",
          "stereo_motorcycle"]  # skimage's cat() is chelsea again, so it is left out


# --- (a) data ------------------------------------------------------------------------------------------

def photo_crops(rng: random.Random, n: int, size: int) -> list[Image.Image]:
    import skimage.data
    from skimage.util import img_as_ubyte

    photos = {}
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        a = img_as_ubyte(a[0] if isinstance(a, tuple) else a)
        photos[name] = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    boxes = {k: [] for k in photos}

    def iou(p, q):
        i = max(0, min(p[2], q[2]) - max(p[0], q[0])) * max(0, min(p[3], q[3]) - max(p[1], q[1]))
        return i / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - i)

    out = []
    while len(out) < n:
        name = rng.choice(PHOTOS)
        a = photos[name]
        h, w = a.shape[:2]
        ch = int(rng.uniform(0.3, 0.6) * min(h, w))
        cw = min(w, int(ch * rng.uniform(0.8, 1.25)))
        y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
        box = (x, y, x + cw, y + ch)
        if any(iou(box, b) > 0.3 for b in boxes[name]):
            continue
        boxes[name].append(box)
        im = Image.fromarray(np.ascontiguousarray(a[y:y + ch, x:x + cw]))
        s = size / max(im.size)
        out.append(im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC))
    return out


def _encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(rng):
    def f(im):
        w, h = im.size
        l, t, r, b = (rng.uniform(0, 0.1) for _ in range(4))
        return im.crop((round(l * w), round(t * h), round(w * (1 - r)), round(h * (1 - b))))
    return f


def _colour(rng):
    """Mild colour shift: saturation x0.85-1.15 and per-channel gains x0.95-1.05 (a white-balance nudge)."""
    def f(im):
        im = ImageEnhance.Color(im).enhance(rng.uniform(0.85, 1.15))
        a = np.asarray(im, np.float32) * np.array([rng.uniform(0.95, 1.05) for _ in range(3)], np.float32)
        return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    return f


def copies(rng: random.Random) -> dict:
    crop = _crop(rng)
    return {
        "png": lambda im: _encode(im, "PNG"),
        "jpeg50": lambda im: _encode(im, "JPEG", quality=50),
        "jpeg75": lambda im: _encode(im, "JPEG", quality=75),
        "jpeg95": lambda im: _encode(im, "JPEG", quality=95),
        "webp50": lambda im: _encode(im, "WEBP", quality=50),
        "webp80": lambda im: _encode(im, "WEBP", quality=80),
        "resize0.5": lambda im: im.resize((im.width // 2, im.height // 2), Image.BICUBIC),
        "resize2": lambda im: im.resize((im.width * 2, im.height * 2), Image.BICUBIC),
        "crop<=10%": crop,
        "bright+15%": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
        "bright-15%": lambda im: ImageEnhance.Brightness(im).enhance(0.85),
        "colour": _colour(rng),
        "blur1.5": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
        "crop+0.75x+jpeg75": lambda im: _encode(crop(im).resize((im.width * 3 // 4, im.height * 3 // 4),
                                                                 Image.BICUBIC), "JPEG", quality=75),
    }


def dataset(n_shapes: int, n_photos: int, n_distinct: int, size: int, seed: int):
    """Images, their group (original index; distractors get their own) and kind ("orig", a copy, "distinct")."""
    rng = random.Random(seed)
    originals = [render(sample_scene(rng), size) for _ in range(n_shapes)] + photo_crops(rng, n_photos, size)
    tf = copies(rng)
    items, group, kind = [], [], []
    for g, im in enumerate(originals):
        for k, f in {"orig": lambda x: x, **tf}.items():
            items.append(f(im))
            group.append(g)
            kind.append(k)
    for j in range(n_distinct):
        items.append(render(sample_scene(rng), size))
        group.append(len(originals) + j)
        kind.append("distinct")
    return items, np.array(group), np.array(kind)


# --- (a) methods and scoring ---------------------------------------------------------------------------

def imagededup_hashes(items) -> dict[str, np.ndarray]:
    stub = lambda name, **kw: sys.modules.setdefault(name, types.SimpleNamespace(**kw))  # noqa: E731
    stub("imagededup.utils.models", CustomModel=None)  # torchvision models, for its CNN only
    stub("imagededup.methods.cnn", CNN=None)
    from imagededup.methods.hashing import AHash, DHash, PHash, WHash

    out = {}
    for cls in (PHash, DHash, WHash, AHash):
        m = cls(verbose=False)
        out[f"imagededup {cls.__name__}"] = np.array(
            [int(m.encode_image(image_array=np.asarray(im.convert("RGB"))), 16) for im in items], np.uint64)
    return out


class Pairs:
    """All pairs i < j of the benchmark set, with truth."""

    def __init__(self, group, kind, photo):
        self.i, self.j = np.triu_indices(len(group), 1)
        self.group_i, self.group_j = group[self.i], group[self.j]
        self.same = self.group_i == self.group_j
        self.photo = photo  # per group
        names, code = np.unique(kind, return_inverse=True)
        self.orig = self.same & (kind[self.i] == "orig")
        self.kind_j = code[self.j].astype(np.int8)
        self.copies = {k: int(np.flatnonzero(names == k)[0]) for k in dict.fromkeys(kind)
                       if k not in ("orig", "distinct")}

    def dist(self, h):
        return np.bitwise_count(h[self.i] ^ h[self.j])

    def ours(self, M, V) -> np.ndarray:
        """(k, pairs) uint8 distances of the hash_clusters rule: column 0 the least over views."""
        d = np.stack([self.dist(M[:, c]) for c in range(M.shape[1])]).astype(np.uint8)
        for v in V.T:
            d[0] = np.minimum(d[0], np.minimum(np.bitwise_count(v[self.i] ^ M[self.j, 0]),
                                               np.bitwise_count(M[self.i, 0] ^ v[self.j])))
        return d

    def clustered(self, linked) -> np.ndarray:
        """Same-connected-component indicator of the links, as hash_clusters would cluster them."""
        n = int(self.j[-1]) + 1
        g = coo_matrix((np.ones(int(linked.sum()), np.int8), (self.i[linked], self.j[linked])), (n, n))
        lab = connected_components(g, directed=False)[1]
        return lab[self.i] == lab[self.j]

    def score(self, linked) -> dict:
        tp, fp = int((linked & self.same).sum()), int((linked & ~self.same).sum())
        row = {k: float(linked[self.orig & (self.kind_j == c)].mean()) for k, c in self.copies.items()}
        false = np.zeros(len(self.photo), bool)
        false[self.group_i[linked & ~self.same]] = True
        false[self.group_j[linked & ~self.same]] = True
        row.update(recall=float(linked[self.orig].mean()), precision=tp / max(tp + fp, 1),
                   scenes_linked=float(false[~self.photo].mean()), photos_linked=float(false[self.photo].mean()))
        return row


def thumb_pairs(P, V, candidates) -> np.ndarray:
    """thumb_distance of the candidate pairs (bool over P's pairs); inf elsewhere."""
    idx = np.flatnonzero(candidates)
    T = H.thumbnails(V[:, len(H.CROP_VIEWS):])
    t = np.full(len(P.i), np.inf, np.float32)
    for s in range(0, len(idx), 4096):
        k = idx[s:s + 4096]
        t[k] = H.thumb_distance(T[P.i[k]], T[P.j[k]])
    return t


def quality(a) -> dict:
    t0 = time.time()
    items, group, kind = dataset(a.shapes, a.photos, a.distinct, a.size, a.seed)
    print(f"{len(items)} images in {time.time() - t0:.0f}s", file=sys.stderr)
    hs = [H.image_hashes(im) for im in items]
    M, V = H.hash_matrix(hs)
    CV = V[:, :len(H.CROP_VIEWS)]
    photo = np.zeros(group.max() + 1, bool)
    photo[a.shapes:a.shapes + a.photos] = True
    P = Pairs(group, kind, photo)
    rows = {}
    for name, h in imagededup_hashes(items).items():
        rows[f"{name} <= 10, pairs"] = P.score(P.dist(h) <= 10)
    rows["pHash alone (ours) <= 10, pairs"] = P.score(P.dist(M[:, 0]) <= 10)
    d = P.ours(M, CV)
    within = lambda r: np.logical_and.reduce([d[c] <= r[c] for c in range(len(r))])  # noqa: E731
    default = "/".join(map(str, D.MAX_DISTANCE))
    loosest = (14, 3, 8) if a.sweep else D.MAX_DISTANCE
    t = thumb_pairs(P, V, within(np.maximum(loosest, D.MAX_DISTANCE)))
    rows[f"ours {default}, hashes only, pairs"] = P.score(within(D.MAX_DISTANCE))
    linked = within(D.MAX_DISTANCE) & (t <= H.THUMB_TOLERANCE)
    rows[f"ours {default} + thumbnails <= {H.THUMB_TOLERANCE}, pairs"] = P.score(linked)
    ids = D.hash_clusters(M, D.MAX_DISTANCE, views=V, linkage="single")
    rows["ours, clusters (hash_clusters, single linkage)"] = P.score(ids[P.i] == ids[P.j])
    ids = D.hash_clusters(M, D.MAX_DISTANCE, views=V)
    rows["ours, clusters (hash_clusters, majority linkage: the pipeline)"] = P.score(ids[P.i] == ids[P.j])
    out = {"n_images": len(items), "n_originals": int(a.shapes + a.photos), "rows": rows,
           "speed": hash_speed([render(sample_scene(random.Random(i)), 512) for i in range(200)])}
    if a.sweep:
        out["sweep"] = {}
        for r in itertools.product((10, 12, 14), (1, 2, 3), (4, 6, 8)):
            for tol in (0.08, 0.1, 0.12, 0.15):
                out["sweep"][f"{'/'.join(map(str, r))} + thumbnails <= {tol}, pairs"] = P.score(within(r) & (t <= tol))
    return out


def demo_quality(a) -> dict:
    """(c): the pipeline's clusters vs imagededup's hashes on the planted corpus of `limner data demo`."""
    from pathlib import Path

    from limner.data.report import load
    from limner.data.stages import DecodeConfig, decode

    root = Path(a.dir)
    truth = {t["key"]: t for t in map(json.loads, (root / "ground_truth.jsonl").read_text().splitlines())}
    rows = [r for r in load(root / "curated") if r.get("hash_phash") is not None]  # reached the dedup stage
    raw = {p.stem: p for p in (root / "raw").iterdir() if p.suffix not in (".txt", ".json")}
    images = [decode(raw[r["key"]].read_bytes(), DecodeConfig())[0].image for r in rows]
    keys = [r["key"] for r in rows]
    group = np.unique([truth[k].get("group", k) for k in keys], return_inverse=True)[1].ravel()
    at = {k: n for n, k in enumerate(keys)}
    near = [(at[truth[k]["group"]], at[k]) for k in keys if truth[k]["expected"] == "duplicate:near"]
    i, j = np.triu_indices(len(keys), 1)

    def score(linked):
        same = group[i] == group[j]
        found = np.zeros((len(keys), len(keys)), bool)
        found[i[linked], j[linked]] = True
        found |= found.T
        return {"recall": float(np.mean([found[g, k] for g, k in near])),
                "precision": float((linked & same).sum() / max(linked.sum(), 1)),
                "false_pairs": int((linked & ~same).sum())}

    def components(linked):
        g = coo_matrix((np.ones(int(linked.sum()), np.int8), (i[linked], j[linked])), (len(keys), len(keys)))
        lab = connected_components(g, directed=False)[1]
        return lab[i] == lab[j]

    cluster = np.array([r["cluster"] or r["key"] for r in rows])
    out = {"n_images": len(keys), "n_near_pairs": len(near),
           "rows": {"limner pipeline clusters (manifest)": score(cluster[i] == cluster[j])}}
    for name, h in imagededup_hashes(images).items():
        linked = np.bitwise_count(h[i] ^ h[j]) <= 10
        out["rows"][f"{name} <= 10, pairs"] = score(linked)
        out["rows"][f"{name} <= 10, clusters"] = score(components(linked))
    return out


def hash_speed(images) -> dict:
    """image_hashes on 512 px decoded images, CPU seconds of this process (fair on a busy machine)."""
    for im in images[:5]:
        H.image_hashes(im)
    t = time.process_time()
    for im in images:
        H.image_hashes(im)
    return {"images_per_cpu_s": len(images) / (time.process_time() - t)}


def table(rows: dict, copies: list[str]) -> str:
    head = ["method", "recall", "precision", "scenes falsely linked", "photos falsely linked"] + copies
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['recall']:.3f} | {r['precision']:.4f} | {r['scenes_linked']:.3f} | "
                     f"{r['photos_linked']:.3f} | "
                     + " | ".join(f"{r[k]:.2f}" for k in copies) + " |")
    return "\n".join(lines)


# --- (b) scale -----------------------------------------------------------------------------------------

def planted_hashes(n: int, rng: np.random.Generator):
    """Random (n, 3) hashes + (n, 74) views (crop views, thumbnail words); 10% of items in clusters of 2-5
    whose members each flip at most half of each column's max distance from a shared base, so all members
    link and nothing else does."""
    M = rng.integers(0, 2**63, (n, 3), dtype=np.int64).astype(np.uint64) << np.uint64(1)
    M |= rng.integers(0, 2, (n, 3), dtype=np.int64).astype(np.uint64)
    V = rng.integers(0, 2**63, (n, 2), dtype=np.int64).astype(np.uint64)
    truth = np.arange(n)
    i = 0
    while i < n // 10:
        size = int(rng.integers(2, 6))
        members = np.arange(i, min(i + size, n // 10))
        for c, r in enumerate(D.MAX_DISTANCE):
            for m in members[1:]:
                flips = rng.choice(64, int(rng.integers(0, r // 2 + 1)), replace=False)
                base = M[members[0], c]
                M[m, c] = base ^ np.uint64(sum(1 << int(b) for b in flips))
        truth[members] = members[0]
        i += size
    # thumbnails: random words (noise images); cluster members share their base's, with a few bits flipped
    T = rng.integers(0, 2**63, (n, H.THUMB_WORDS), dtype=np.int64).astype(np.uint64)
    base = truth[:n // 10]
    T[:n // 10] = T[base]
    off = rng.integers(0, H.THUMB_WORDS, (n // 10, 4))
    T[np.arange(n // 10)[:, None], off] ^= np.uint64(1)
    V = np.concatenate([V, T], 1)
    perm = rng.permutation(n)  # clusters scattered over the index range
    inv = np.argsort(perm)
    return M[perm], V[perm], inv[truth[perm]]


def planted_embeddings(n: int, d: int, rng: np.random.Generator):
    """Random (n, d) float32; 10% in clusters of 2-5 (member = base + noise at cos ~0.95 between members)."""
    x = rng.standard_normal((n, d), dtype=np.float32)
    truth = np.arange(n)
    i = 0
    while i < n // 10:
        size = int(rng.integers(2, 6))
        members = np.arange(i, min(i + size, n // 10))
        x[members] = x[members[0]] + 0.23 * rng.standard_normal((len(members), d), dtype=np.float32)
        truth[members] = members[0]
        i += size
    return x, truth


def agreement(ids: np.ndarray, truth: np.ndarray) -> dict:
    """Planted-pair recall and falsely merged pairs, from cluster contingency counts."""
    _, pair_counts = np.unique(np.stack([ids, truth], 1), axis=0, return_counts=True)
    both = int((pair_counts * (pair_counts - 1) // 2).sum())
    pred = int(sum(c * (c - 1) // 2 for c in np.bincount(ids)))
    planted = int(sum(c * (c - 1) // 2 for c in np.bincount(truth)))
    return {"planted_pair_recall": both / max(planted, 1), "false_pairs": pred - both}


def scale_worker(kind: str, n: int) -> dict:
    rng = np.random.default_rng(0)
    if kind == "hashes":
        M, V, truth = planted_hashes(n, rng)
        t, c = time.perf_counter(), time.process_time()
        ids = D.hash_clusters(M, D.MAX_DISTANCE, views=V)
    elif kind == "phash8":  # one random 64-bit column at distance 8, for contrast: time only
        h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
        t, c = time.perf_counter(), time.process_time()
        ids = truth = D.hash_clusters(h, 8)
    else:
        x, truth = planted_embeddings(n, 384, rng)
        t, c = time.perf_counter(), time.process_time()
        ids = D.embedding_clusters(x, 0.9)
    out = {"kind": kind, "n": n, "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    return out | agreement(ids, truth)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--shapes", type=int, default=150)
    q.add_argument("--photos", type=int, default=150)
    q.add_argument("--distinct", type=int, default=600, help="Shapes World distractors without copies")
    q.add_argument("--size", type=int, default=256)
    q.add_argument("--seed", type=int, default=1)
    q.add_argument("--sweep", action="store_true", help="also every (pHash, colour, edges) distance triple")
    s = sub.add_parser("scale")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--parts", default="hashes,embeddings", help="comma list of hashes, embeddings, phash8")
    dm = sub.add_parser("demo")
    dm.add_argument("dir", help="a `limner data demo --out DIR` folder, after the run")
    w = sub.add_parser("scale-worker")
    w.add_argument("kind")
    w.add_argument("n", type=int)
    for p in (q, s, dm):
        p.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    if a.cmd == "scale-worker":
        print(json.dumps(scale_worker(a.kind, a.n)))
        return
    if a.cmd == "scale":
        res = [json.loads(subprocess.run([sys.executable, __file__, "scale-worker", k, str(a.n)], check=True,
                                         capture_output=True, text=True).stdout) for k in a.parts.split(",")]
        print("| part | n | wall s | CPU s | peak RSS GiB | planted-pair recall | false pairs |")
        print("|---|---|---|---|---|---|---|")
        for r in res:
            print(f"| {r['kind']} | {r['n']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gib']:.2f} | "
                  f"{r['planted_pair_recall']:.4f} | {r['false_pairs']} |")
        out = res
    elif a.cmd == "demo":
        out = demo_quality(a)
        print(f"{out['n_images']} images reached dedup; {out['n_near_pairs']} planted near-duplicate pairs\n")
        print("| method | near-pair recall | pair precision | false pairs |")
        print("|---|---|---|---|")
        for name, r in out["rows"].items():
            print(f"| {name} | {r['recall']:.3f} | {r['precision']:.3f} | {r['false_pairs']} |")
    else:
        out = quality(a)
        cps = list(copies(random.Random()))
        print(f"{out['n_images']} images: {out['n_originals']} originals x (1 + {len(cps)} copies) "
              f"+ {out['n_images'] - out['n_originals'] * (1 + len(cps))} distractors, seed {a.seed}\n")
        print(table(out["rows"], cps))
        print(f"\nimage_hashes: {out['speed']['images_per_cpu_s']:.0f} images per CPU-second (512 px, decoded)")
        if a.sweep:
            print("\n" + table({f"ours {k}": v for k, v in out["sweep"].items()}, cps))
    if getattr(a, "json", None):
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
