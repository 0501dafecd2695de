"""limner.data.hashes and limner.data.dedup: hash robustness and discrimination, thumbnail verification, exact
keys, and clustering against brute force."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from limner.data import dedup as D
from limner.data import hashes as H
from limner.world.scene import Obj, Scene, render, sample_scene


def _encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(l, t, r, b):
    return lambda im: im.crop((round(im.width * l), round(im.height * t),
                               round(im.width * (1 - r)), round(im.height * (1 - b))))


def _gain(g):
    return lambda im: Image.fromarray(np.clip(np.asarray(im, np.float32) * g, 0, 255).astype(np.uint8))


EDITS = {
    "jpeg50": lambda im: _encode(im, "JPEG", quality=50),
    "jpeg90": lambda im: _encode(im, "JPEG", quality=90),
    "webp": lambda im: _encode(im, "WEBP", quality=75),
    "png": lambda im: _encode(im, "PNG"),
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.BICUBIC),
    "double": lambda im: im.resize((im.width * 2, im.height * 2), Image.BICUBIC),
    "bright+15": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "bright-15": lambda im: ImageEnhance.Brightness(im).enhance(0.85),
    "colour": _gain(np.array([1.04, 1.0, 0.96], np.float32)),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
}
CROPS = [_crop(0.1, 0, 0, 0), _crop(0.05, 0.05, 0.05, 0.05), _crop(0.1, 0.1, 0.1, 0.1), _crop(0, 0.08, 0.03, 0)]


@pytest.fixture(scope="module")
def originals():
    import skimage.data

    scenes = [render(sample_scene(random.Random(i)), 256) for i in range(10)]
    photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB").resize((256, 256), Image.BICUBIC)
              for n in ("astronaut", "coffee", "chelsea", "rocket", "camera")]
    return scenes + photos


def _clusters(images):
    M, V = H.hash_matrix([H.image_hashes(im) for im in images])
    return D.hash_clusters(M, views=V)


def test_hash_values():
    h = H.image_hashes(Image.new("RGBA", (700, 500), (10, 200, 30, 128)))
    assert set(h) == set(H.KINDS + H.CROP_VIEWS + ("dhash", "thumb"))
    assert all(isinstance(v, int) and 0 <= v < 2**64 for k, v in h.items() if k != "thumb")
    assert isinstance(h["thumb"], bytes) and len(h["thumb"]) == H.THUMB_WORDS * 8
    assert H.image_hashes(Image.new("L", (20, 20), 128))["phash"] >= 0  # tiny and grey images work


def test_copies_link(originals):
    edits = list(EDITS.values()) + CROPS
    ids = _clusters([e(im) for im in originals for e in [lambda x: x] + edits]).reshape(len(originals), -1)
    linked = ids[:, 1:] == ids[:, :1]
    assert linked[:, :len(EDITS)].all(), [n for n, ok in zip(EDITS, linked.all(0)) if not ok]
    # <= 10% off a side moves everything; most, not all, such crops are caught (the benchmark has the rates)
    assert linked[:, len(EDITS):].mean() >= 0.8
    assert len(np.unique(ids[:, 0])) == len(originals)


def test_distinct_images_stay_apart(originals):
    scenes = [render(sample_scene(random.Random(100 + i)), 256) for i in range(40)]
    ids = _clusters(originals + scenes)
    # photos never; of ~1300 Shapes World pairs, at most one look-alike (same shape and colour, nearby)
    assert len(np.unique(ids)) >= len(ids) - 1
    assert all((ids == ids[i]).sum() == 1 for i in range(10, 15))


def _scene(background, *objects):
    return Scene(background, [Obj(*o) for o in objects])


def _three(big=("circle", 0.3, 0.35), blue=("square", 0.7, 0.65), green=("triangle", 0.65, 0.25)):
    return _scene("ivory", (big[0], "red", "large", *big[1:]), (blue[0], "blue", "small", *blue[1:]),
                  (green[0], "green", "small", *green[1:]))


# distinct scenes whose three hashes agree (so only the thumbnails can tell them apart): same colours and
# layout with two shapes swapped over, one shape changed, one moved; and two of the limner data demo's false
# links before the thumbnail check (one large purple square vs it with two small circles; one green square
# vs three)
LOOKALIKES = {  # name: (scene, look-alike, how each is rendered)
    "swapped": (_three(), _three(blue=("square", 0.65, 0.25), green=("triangle", 0.7, 0.65)), 256, 256),
    "shape": (_three(), _three(big=("triangle", 0.3, 0.35)), 256, 256),
    "moved": (_three(), _three(blue=("square", 0.7, 0.8)), 256, 256),
    "demo 35/173": (_scene("pale blue", ("circle", "purple", "small", 0.5776, 0.9266),
                            ("circle", "red", "small", 0.3140, 0.5031), ("square", "purple", "large", 0.8294, 0.3825)),
                    _scene("pale blue", ("square", "purple", "large", 0.8684, 0.4593)), "384 jpeg", "384 jpeg"),
    "demo 66/118": (_scene("ivory", ("square", "green", "small", 0.8198, 0.8132)),
                    _scene("ivory", ("square", "green", "small", 0.1139, 0.5258),
                           ("square", "green", "large", 0.7667, 0.7825), ("square", "green", "small", 0.6370, 0.1271)),
                    320, 256),
}


def _draw(scene, how):
    side, *fmt = str(how).split()
    im = render(scene, int(side))
    return _encode(im, "JPEG", quality=95) if fmt else im


# the edits limner data demo plants (src/limner/data/demo.py), and a 10% crop off one side
DEMO_EDITS = {
    "jpeg60": lambda im: _encode(im, "JPEG", quality=60),
    "webp80": lambda im: _encode(im, "WEBP", quality=80),
    "resize0.5": lambda im: im.resize((im.width // 2, im.height // 2), Image.LANCZOS),
    "crop6%": _crop(0.06, 0.06, 0.06, 0.06),
    "colour": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(0.92)).enhance(1.15),
    "crop10%left": _crop(0.1, 0, 0, 0),
}


def test_thumbnail_words_round_trip():
    im = render(sample_scene(random.Random(3)), 256)
    h = H.image_hashes(im)
    t = H.thumbnails(H.thumb_words([h["thumb"]]))[0]
    ref = np.asarray(im.resize((16, 16), Image.BOX), np.float32).transpose(2, 0, 1)
    assert t.shape == (3, 16, 16) and np.abs(t - ref).max() <= 255 / 63 / 2 + 1
    assert H.thumb_distance(t[None], t[None])[0] == 0
    with pytest.raises(ValueError, match="576 bytes"):
        H.thumb_words([h["thumb"][:-1]])


def test_lookalikes_are_not_linked_but_their_copies_are():
    for name, (a, b, how_a, how_b) in LOOKALIKES.items():
        ims = [_draw(a, how_a), _draw(b, how_b)]
        ims += [e(ims[0]) for e in DEMO_EDITS.values()]
        M, V = H.hash_matrix([H.image_hashes(im) for im in ims])
        # the hashes alone link the look-alike: only the thumbnail check keeps it out
        assert D.hash_clusters(M[:2], views=V[:2], thumb_tolerance=np.inf)[1] == 0, name
        ids = D.hash_clusters(M, views=V)
        assert ids[1] == 1, name
        assert (ids[2:] == 0).all(), (name, [e for e, i in zip(DEMO_EDITS, ids[2:]) if i != 0])


def _flip_bits(h, column, bits):
    h = h.copy()
    h[column] ^= np.uint64(sum(1 << b for b in bits))
    return h


def test_majority_linkage_does_not_chain():
    a = _random_hashes(np.random.default_rng(5), 3)
    copy = _flip_bits(a, 1, [40])                                    # within reach of a (colour hash: 1 of 3)
    lookalike = _flip_bits(_flip_bits(copy, 1, [41, 42, 43]), 0, [3])  # of the copy (3), not of a (4), and farther
    H = np.stack([a, copy, lookalike])
    within = lambda i, j: (np.bitwise_count(H[i] ^ H[j]) <= D.MAX_DISTANCE).all()  # noqa: E731
    assert within(0, 1) and within(1, 2) and not within(0, 2)
    assert D.hash_clusters(H, linkage="single").tolist() == [0, 0, 0]   # connected components chain
    assert D.hash_clusters(H).tolist() == [0, 0, 2]                     # majority linkage does not
    for perm in ([2, 1, 0], [1, 2, 0], [2, 0, 1]):                      # whatever the order of the items
        ids = D.hash_clusters(H[perm])
        assert ids[perm.index(0)] == ids[perm.index(1)] != ids[perm.index(2)], perm  # the closer link wins
    # a look-alike between two distinct images, equally near both: it joins one of them, never both
    p, q = a, _flip_bits(a, 1, [40, 41, 42, 43])
    mid = _flip_bits(a, 1, [40, 41])
    for H in (np.stack([p, mid, q]), np.stack([mid, q, p]), np.stack([q, p, mid])):
        assert len(np.unique(D.hash_clusters(H))) == 2
        assert len(np.unique(D.hash_clusters(H, linkage="single"))) == 1
    # a true cluster (five copies, all within reach of each other) stays whole in any order
    rng = np.random.default_rng(6)
    c = np.stack([a] + [np.array([_flip(rng, a[k], b) for k, b in enumerate((5, 1, 3))], np.uint64)
                        for _ in range(4)])
    for perm in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        assert len(np.unique(D.hash_clusters(c[perm]))) == 1


def test_exact_key_matches_identical_pixels_only(originals):
    im = originals[0]
    a, b = io.BytesIO(), io.BytesIO()
    im.save(a, format="PNG", compress_level=1)
    _encode(im, "PNG").save(b, format="PNG", compress_level=9, optimize=True)  # PNG -> PNG, other bytes
    assert a.getvalue() != b.getvalue()
    key = H.exact_key(a.getvalue())
    assert H.exact_key(b.getvalue()) == key == H.exact_key(np.asarray(im)) == H.exact_key(im.convert("RGBA"))
    assert H.exact_key(np.asarray(im.convert("L"))) == H.exact_key(im.convert("L").convert("RGB"))
    px = np.asarray(im).copy()
    px[0, 0, 0] ^= 1
    assert H.exact_key(px) != key
    assert H.exact_key(np.asarray(_encode(im, "JPEG", quality=95))) != key
    assert H.exact_key(np.asarray(im)[:128]) != H.exact_key(np.asarray(im)[:128].reshape(256, 128, 3))


# --- clustering vs brute force -------------------------------------------------------------------------

def _brute_ids(M, r, V=None):
    """O(n^2) distances and a plain union-find: the reference."""
    M = M[:, None] if M.ndim == 1 else M
    pc = lambda a, b: np.bitwise_count(a[:, None] ^ b[None, :])  # noqa: E731
    d0 = pc(M[:, 0], M[:, 0])
    for v in ([] if V is None else V.T):
        d0 = np.minimum(d0, np.minimum(pc(v, M[:, 0]), pc(M[:, 0], v)))
    ok = d0 <= r[0]
    for c in range(1, M.shape[1]):
        ok &= pc(M[:, c], M[:, c]) <= r[c]
    return _union_find(len(M), np.argwhere(ok))


def _brute_links(M, r, V):
    """All linked pairs i < j and their summed distances (column 0 the least over views)."""
    pc = lambda a, b: np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int64)  # noqa: E731
    d = [pc(M[:, 0], M[:, 0])]
    for v in V.T:
        d[0] = np.minimum(d[0], np.minimum(pc(v, M[:, 0]), pc(M[:, 0], v)))
    d += [pc(M[:, c], M[:, c]) for c in range(1, M.shape[1])]
    ok = np.logical_and.reduce([d[c] <= r[c] for c in range(len(d))])
    i, j = np.nonzero(np.triu(ok, 1))
    return list(zip(i.tolist(), j.tolist())), sum(d)[i, j].tolist()


def _majority_ref(n, edges, dist, sample=8):
    """Links taken most alike first (ties by index); two clusters merge when more than half the pairs between
    their first `sample` members are links; the bigger cluster (then the lower first member) absorbs."""
    linked = set(edges)
    root, members = list(range(n)), {i: [i] for i in range(n)}
    for e in sorted(range(len(edges)), key=lambda e: (dist[e], edges[e])):
        a, b = root[edges[e][0]], root[edges[e][1]]
        if a == b:
            continue
        ma, mb = members[a], members[b]
        if len(ma) > 1 or len(mb) > 1:
            hits = sum((min(x, y), max(x, y)) in linked for x in ma[:sample] for y in mb[:sample])
            if 2 * hits <= len(ma[:sample]) * len(mb[:sample]):
                continue
        if len(mb) > len(ma) or (len(mb) == len(ma) and mb[0] < ma[0]):
            a, b, ma, mb = b, a, mb, ma
        for x in mb:
            root[x] = a
        members[a] = ma + members.pop(b)
    return np.array([min(members[root[i]]) for i in range(n)])


def _union_find(n, edges):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in edges:
        a, b = find(int(i)), find(int(j))
        parent[max(a, b)] = min(a, b)  # the root is always the component's smallest index
    return np.array([find(i) for i in range(n)])


def _flip(rng, h, bits):
    return h ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, bits, replace=False)))


def _random_hashes(rng, shape):
    return rng.integers(0, 2**63, shape, dtype=np.int64).astype(np.uint64) * np.uint64(2) \
        + rng.integers(0, 2, shape).astype(np.uint64)


def test_hash_clusters_single_column_matches_brute_force():
    rng = np.random.default_rng(0)
    h = _random_hashes(rng, 3000)
    for i in rng.choice(3000, 900, replace=False):  # near pairs and chains, some just out of reach (11, 12)
        h[i] = _flip(rng, h[rng.integers(3000)], int(rng.integers(0, 13)))
    h[:50] = h[50:100]  # exact copies
    for r in (0, 3, 10):
        ids = D.hash_clusters(h, r, linkage="single")
        assert np.array_equal(ids, _brute_ids(h, [r])), r
    assert len(np.unique(D.hash_clusters(h, 10, linkage="single"))) < 2900


def test_hash_clusters_columns_and_views_match_brute_force():
    rng = np.random.default_rng(1)
    n = 2000
    M, V = _random_hashes(rng, (n, 3)), _random_hashes(rng, (n, 2))
    for i in rng.choice(n, 800, replace=False):
        j = rng.integers(n)
        M[i] = [_flip(rng, M[j, c], int(rng.integers(0, r + 3))) for c, r in enumerate(D.MAX_DISTANCE)]
        if rng.random() < 0.3:  # i is a crop of j: j's view is near i's full pHash, the full ones far apart
            V[j, rng.integers(2)] = _flip(rng, M[i, 0], int(rng.integers(0, 14)))
    ids = D.hash_clusters(M, D.MAX_DISTANCE, views=V, linkage="single")
    ref = _brute_ids(M, D.MAX_DISTANCE, V)
    assert np.array_equal(ids, ref)
    assert len(np.unique(ref)) < n - 200
    assert not np.array_equal(ref, _brute_ids(M, D.MAX_DISTANCE))  # the views mattered
    # majority linkage (the default) against a plain-Python replay of the same rule on the brute-force links
    edges, dist = _brute_links(M, D.MAX_DISTANCE, V)
    maj = D.hash_clusters(M, D.MAX_DISTANCE, views=V)
    assert np.array_equal(maj, _majority_ref(n, edges, dist))
    assert len(np.unique(maj)) > len(np.unique(ref)) + 20  # chains were cut
    assert len(np.unique(maj)) < n - 200


@pytest.mark.parametrize("nlist", [None, 8])
def test_embedding_clusters_matches_brute_force(nlist):
    rng = np.random.default_rng(2)
    n, d = 1500, 48
    x = rng.standard_normal((n, d)).astype(np.float32)
    for i in rng.choice(n, 500, replace=False):  # near pairs at cosine ~0.8-0.99, either side of 0.9
        x[i] = x[rng.integers(n)] + rng.uniform(0.1, 0.75) * rng.standard_normal(d).astype(np.float32)
    x *= rng.uniform(0.5, 2, (n, 1)).astype(np.float32)  # cosine, not dot product
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = _union_find(n, np.argwhere(u @ u.T >= 0.9))
    assert np.array_equal(D.embedding_clusters(x, 0.9, nlist=nlist), ref)
    assert len(np.unique(ref)) < n - 100


def test_weights_and_representatives():
    ids = np.array([0, 0, 0, 3, 3, 5, 6, 6])
    w = D.cluster_weights(ids, 1.0)
    assert np.allclose(np.bincount(ids, w), np.bincount(ids) > 0)  # every cluster weighs one image
    assert np.allclose(D.cluster_weights(ids, 0.0), 1)
    assert np.allclose(D.cluster_weights(ids, 0.5)[:3], 3 ** -0.5)
    assert D.representatives(ids).tolist() == [True, False, False, True, False, True, True, False]
    q = np.array([0.1, 0.9, 0.5, np.nan, 0.2, 0.0, 0.3, 0.3])
    assert D.representatives(ids, q).tolist() == [False, True, False, False, True, True, True, False]
    assert D.representatives(ids, q).sum() == len(np.unique(ids))
