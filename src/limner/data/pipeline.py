"""`limner data run PIPELINE.yaml`: image-text pairs in, curated WebDataset shards and a manifest out.

Three passes, so that the one global decision (which images duplicate which) sits between two that
run shard by shard in parallel:

1. analyse (per shard): decode and validate -> quality -> safety -> AI-generated -> hashes, and the
   alt-text's PII scrub and safety check. Cheap stages first, so expensive ones see fewer images.
2. deduplicate (global): exact copies and near-duplicate clusters over every surviving image's hashes;
   keep one representative of each cluster, or keep all and down-weight them (weight ~ size^-alpha).
3. write (per shard): synthetic captions for the kept images, their scrub and safety check, optionally
   object boxes from an open-vocabulary detector queried with the captions' phrases (boxes.py), then
   WebDataset shards (`KEY.jpg|png|webp`, `KEY.txt` alt-text, `KEY.json` with every caption, the
   sampling weight and any boxes), which `limner train` reads.

Every shard's result is written atomically and finished shards are skipped, so a killed run resumes
where it stopped. `manifest.parquet` has one row per input: its fate (kept, or dropped and why), each
stage's scores, its cluster and weight, and all its captions with their sources.
"""
from __future__ import annotations

import dataclasses
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..common.config import build
from ..common.files import atomic_path, digest, write_atomic
from ..common.progress import progress
from . import stages as S
from .boxes import BoxConfig
from .pii import PIIConfig
from . import shards as webdataset
from .sources import Shard, SourceConfig, read, shards

MANIFEST = "manifest.parquet"


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True  # perceptual hashes
    max_distance: list | None = None  # per hash kind (dedup.KINDS); None: the measured defaults
    embedder: str | None = None  # a CLIP folder: also link images whose embeddings are this close...
    threshold: float = 0.95  # ...in cosine similarity
    action: str = "downweight"  # near-duplicates: "downweight" (keep all, weight ~ size^-alpha) or "drop"
    alpha: float = 1.0

    def __post_init__(self):
        if self.action not in ("downweight", "drop"):
            raise ValueError(f"action must be 'downweight' or 'drop', not {self.action!r}")


@dataclass
class CaptionConfig:
    keep_alt: bool = True
    captioners: list = field(default_factory=list)  # build_captioner specs, e.g. [{"type": "oracle"}]
    safety: str = "lexical"  # the prompt filter on every caption: "lexical", "semantic" or "none"
    unsafe_alt: str = "drop_image"  # an unsafe alt-text: "drop_image" or "drop_caption"
    pii: PIIConfig | None = field(default_factory=PIIConfig)  # None (YAML null) turns scrubbing off

    def __post_init__(self):
        if self.safety not in ("lexical", "semantic", "none"):
            raise ValueError(f"safety must be lexical, semantic or none, not {self.safety!r}")
        if self.unsafe_alt not in ("drop_image", "drop_caption"):
            raise ValueError(f"unsafe_alt must be drop_image or drop_caption, not {self.unsafe_alt!r}")


@dataclass
class PipelineConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    out_dir: str = "curated"
    workers: int = 2
    executor: str = "local"  # "local" (processes) or "ray"
    ray_address: str | None = None  # None: a local Ray instance; or "auto" / "ray://host:10001"
    image_format: str = "keep"  # stored images: "keep" the bytes as they came (if decodable), or "png" / "jpeg"
    decode: S.DecodeConfig = field(default_factory=S.DecodeConfig)
    quality: S.QualityConfig = field(default_factory=S.QualityConfig)
    safety: S.SafetyConfig = field(default_factory=S.SafetyConfig)
    ai_generated: S.AIGeneratedConfig = field(default_factory=S.AIGeneratedConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    boxes: BoxConfig = field(default_factory=BoxConfig)  # object boxes from a detector; off unless boxes.detector is set

    def __post_init__(self):
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', not {self.executor!r}")
        if self.image_format not in ("keep", "png", "jpeg"):
            raise ValueError(f"image_format must be keep, png or jpeg, not {self.image_format!r}")

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"pipeline config {path} does not exist (`limner data init FOLDER` writes "
                                    f"one for a folder of images)")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {}, str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "pipeline config") -> "PipelineConfig":
        return build(cls, raw, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ small helpers


def _write_rows(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # from_pylist takes its columns from the first row alone: give every row every column
    columns = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k) for k in columns} for r in rows]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def _read_rows(paths: list[Path]) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in paths]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables, promote_options="permissive").to_pylist() if tables else []


def _fingerprint(cfg: PipelineConfig) -> str:
    d = cfg.to_dict()
    for k in ("workers", "executor", "ray_address"):  # how it runs does not change what it makes
        d.pop(k)
    if not cfg.boxes.detector:  # the stage off: runs from before it existed resume
        d.pop("boxes")
    return digest(json.dumps(d, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------- the stages


class _Captions:
    """PII scrubbing and the safety check of captions, built once per worker."""

    def __init__(self, cfg: CaptionConfig):
        from .pii import Scrubber

        self.scrubber = Scrubber(cfg.pii) if cfg.pii is not None else None
        self.filter = None
        if cfg.safety != "none":
            from ..safety.prompt_filter import PromptFilter

            self.filter = PromptFilter.from_policy(semantic=cfg.safety == "semantic")

    def clean(self, texts: list[str | None]) -> list[tuple[str | None, list[str], str | None]]:
        """(scrubbed text, PII kinds found, unsafe category or None) for each text."""
        out = []
        for t in texts:
            if not t:
                out.append((t, [], None))
                continue
            found = []
            if self.scrubber:
                t, findings = self.scrubber.scrub(t)
                found = sorted({f.kind for f in findings})
            out.append((t, found, None))
        if self.filter:
            idx = [i for i, (t, _, _) in enumerate(out) if t]
            for i, v in zip(idx, self.filter.check_many([out[i][0] for i in idx])):
                if not v.allowed:
                    out[i] = (out[i][0], out[i][1], v.category)
        return out


def analyse_shard(cfg: PipelineConfig, shard: Shard, out: Path) -> int:
    """Pass 1 on one shard: a row per item with its scores, hashes and (for now) fate."""
    from .hashes import exact_key, image_hashes

    captions = _Captions(cfg.captions)
    rows, images = [], []
    for i, item in enumerate(read(shard, cfg.source)):
        row = {"key": item.key, "shard": shard.index, "index": i, "reason": None, "alt": item.alt,
               "meta": json.dumps(item.meta, default=str)}
        dec, scores, reason = S.decode(item.data, cfg.decode) if item.error is None else (None, {}, "decode:unreadable")
        row.update(scores)
        if reason is None:
            qs, reason = S.quality(dec, cfg.quality)
            row.update(qs)
        if reason is None:
            ai, reason = S.ai_generated(dec, item.data, cfg.ai_generated)
            row.update(ai)
        if reason is None:
            row["exact"] = exact_key(np.asarray(dec.image))
            hashes = image_hashes(dec.image)
            row["thumb"] = hashes.pop("thumb")  # one binary column of 576 bytes
            # 64-bit hashes stored as int64 (parquet has no uint64 that every reader takes), bits unchanged
            row.update({f"hash_{k}": v - (1 << 64) if v >= 1 << 63 else v for k, v in hashes.items()})
            images.append((len(rows), dec.image))
        row["reason"] = reason
        rows.append(row)
    if cfg.dedup.embedder and images:  # semantic near-duplicates: CLIP image embeddings
        from ..models.clip import ClipEmbedder

        emb = ClipEmbedder(cfg.dedup.embedder).images([im for _, im in images]).numpy()
        for (j, _), e in zip(images, emb):
            rows[j]["embedding"] = e.astype(np.float32).tolist()
    # batched stages, on what the cheap ones kept
    for what in (S.safety, S.ai_classifier):
        conf = cfg.safety if what is S.safety else cfg.ai_generated
        live = [(j, im) for j, im in images if rows[j]["reason"] is None]
        for (j, _), (scores, reason) in zip(live, what([im for _, im in live], conf)):
            rows[j].update(scores)
            rows[j]["reason"] = reason
    for row, (alt, pii, unsafe) in zip(rows, captions.clean([r["alt"] for r in rows])):
        row["alt"], row["alt_pii"], row["alt_unsafe"] = alt, ",".join(pii), unsafe
        if unsafe and row["reason"] is None and cfg.captions.unsafe_alt == "drop_image":
            row["reason"] = f"caption:unsafe_{unsafe}"
    _write_rows(rows, out)
    return len(rows)


def deduplicate(cfg: PipelineConfig, rows: list[dict]) -> dict[str, dict]:
    """Pass 2 over every analysed row: {key: {"cluster", "cluster_size", "weight", "reason"}}."""
    from .dedup import MAX_DISTANCE, cluster_weights, embedding_clusters, hash_clusters, representatives
    from .hashes import CROP_VIEWS, KINDS, thumb_words

    live = [r for r in rows if r["reason"] is None]
    out = {r["key"]: {"cluster": None, "cluster_size": 1, "weight": 1.0, "reason": None} for r in live}
    if not live:
        return out
    quality = np.array([r.get("sharpness") or 0.0 for r in live])
    if cfg.dedup.exact:
        first: dict[str, int] = {}
        order = np.argsort(-quality, kind="stable")  # the sharpest copy stays
        for j in order:
            k = live[j]["exact"]
            if k in first:
                out[live[j]["key"]].update(reason="duplicate:exact", cluster=live[first[k]]["key"])
            else:
                first[k] = j
        live = [r for r in live if out[r["key"]]["reason"] is None]
        quality = np.array([r.get("sharpness") or 0.0 for r in live])
    ids = np.arange(len(live))
    if cfg.dedup.near and live:
        cols = lambda kinds: np.array([[r[f"hash_{k}"] for k in kinds] for r in live], np.int64).view(np.uint64)
        views = np.concatenate([cols(CROP_VIEWS), thumb_words([r["thumb"] for r in live])], 1)
        ids = hash_clusters(cols(KINDS), cfg.dedup.max_distance or MAX_DISTANCE, views=views)
    if cfg.dedup.embedder and live:
        ids = _union(ids, embedding_clusters(np.array([r["embedding"] for r in live], np.float32), cfg.dedup.threshold))
    sizes = np.bincount(ids, minlength=len(live))[ids]
    weights = cluster_weights(ids, cfg.dedup.alpha)
    keep = representatives(ids, quality)
    for j, r in enumerate(live):
        o = out[r["key"]]
        o.update(cluster=live[ids[j]]["key"], cluster_size=int(sizes[j]))
        if cfg.dedup.action == "drop":
            o["reason"] = None if keep[j] else "duplicate:near"
        else:
            o["weight"] = float(weights[j])
    for o in out.values():  # exact copies join the cluster of the copy that stayed
        if o["reason"] == "duplicate:exact":
            o["cluster"] = out[o["cluster"]]["cluster"]
    return out


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Clusters linked by either labelling; ids are each component's lowest index, as dedup's are."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(a)
    idx = np.arange(n)
    graph = coo_matrix((np.ones(2 * n), (np.concatenate([idx, idx]), np.concatenate([a, b]))), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n)
    np.minimum.at(first, labels, idx)
    return first[labels]


def write_shard(cfg: PipelineConfig, shard: Shard, decisions: dict[str, dict], out_tar: Path, out_rows: Path) -> int:
    """Pass 3 on one shard: synthetic captions for its kept images, then its WebDataset tar.

    The alt-text comes from `decisions`, as pass 1 scrubbed and checked it, not from the source again: it
    is scrubbed once, and captioners are shown it without its personal data (or not at all if unsafe)."""
    from .captioners import build_captioner

    captions = _Captions(cfg.captions)
    captioners = [build_captioner(dict(spec)) for spec in cfg.captions.captioners]
    kept = []
    for i, item in enumerate(read(shard, cfg.source)):
        d = decisions.get(item.key)
        if d is None or d["reason"] is not None:
            continue
        dec, _, _ = S.decode(item.data, cfg.decode)
        kept.append((i, item, dec))
    rows, samples = [], []
    synthetic: list[dict] = [{} for _ in kept]  # kind -> (caption, the captioner that wrote it)
    failures: list[list[str]] = [[] for _ in kept]
    alts = [decisions[it.key]["alt"] for _, it, _ in kept]
    unsafe_alts = [decisions[it.key]["alt_unsafe"] for _, it, _ in kept]
    for cap in captioners:
        shown = [None if unsafe else alt for alt, unsafe in zip(alts, unsafe_alts)]
        got = cap.caption([dec.image for _, _, dec in kept], shown, [it.meta for _, it, _ in kept])
        for j, g in enumerate(got):
            synthetic[j].update({kind: (text, cap.kind) for kind, text in g.items()})
            if getattr(cap, "errors", None) and cap.errors[j]:
                failures[j].append(f"{cap.kind}: {cap.errors[j]}")
    cleaned = []  # (captions, their sources, what was dropped) per kept image
    for alt, alt_unsafe, syn in zip(alts, unsafe_alts, synthetic):
        caps, sources, dropped = {}, {}, []
        if cfg.captions.keep_alt and alt:
            if alt_unsafe:
                dropped.append(f"alt:unsafe_{alt_unsafe}")
            else:
                caps["alt"], sources["alt"] = alt, "alt-text"
        texts = list(syn.items())
        for (kind, (_, source)), (text, _, unsafe) in zip(texts, captions.clean([t for _, (t, _) in texts])):
            if unsafe:
                dropped.append(f"{kind}:unsafe_{unsafe}")
            elif text:
                caps[kind], sources[kind] = text, source
        cleaned.append((caps, sources, dropped))
    boxes = [None] * len(kept)
    if cfg.boxes.detector:  # after the captions: their phrases are the detector's queries
        from .boxes import find_boxes

        boxes = find_boxes(cfg.boxes, [dec.image for _, _, dec in kept], [caps for caps, _, _ in cleaned])
    for (i, item, dec), (caps, sources, dropped), failed, found in zip(kept, cleaned, failures, boxes):
        name = f"{shard.index:05d}_{i:06d}"  # tar keys may hold no dots; the source key is in the JSON
        ext, data = _stored(item.data, dec, cfg.image_format)
        d = decisions[item.key]
        meta = {"key": item.key, "captions": caps, "sources": sources, "weight": d["weight"]}
        if found is not None:
            meta["boxes"] = found
        members = {ext: data, "json": json.dumps(meta).encode()}
        if "alt" in caps:
            members["txt"] = caps["alt"].encode()
        samples.append((name, members))
        rows.append({"key": item.key, "captions": json.dumps(caps), "caption_sources": json.dumps(sources),
                     "captions_dropped": ",".join(dropped), "caption_errors": "; ".join(failed),
                     "tar": out_tar.name, "member": name, **({} if found is None else {"boxes": json.dumps(found)})})
    webdataset.write_shard(out_tar, samples)
    _write_rows(rows, out_rows)  # written last: its presence marks the shard as done
    return len(rows)


def _stored(data: bytes, dec: S.Decoded, fmt: str) -> tuple[str, bytes]:
    if fmt == "keep" and dec.format in ("JPEG", "PNG", "WEBP") and not dec.notes:
        return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[dec.format], data
    buf = io.BytesIO()
    if fmt == "jpeg":
        dec.image.save(buf, "JPEG", quality=95)
        return "jpg", buf.getvalue()
    dec.image.save(buf, "PNG")  # converted images (CMYK, 16-bit, ...) are stored as 8-bit RGB PNG
    return "png", buf.getvalue()


# ------------------------------------------------------------------------------------------- executors


def _task(args: tuple) -> int:
    """One unit of work for a worker process or a Ray task: (pass, config dict, shard dict, paths...)."""
    kind, cfg_d, shard_d, *paths = args
    cfg, shard = PipelineConfig.from_dict(cfg_d), Shard(**shard_d)
    if kind == "analyse":
        return analyse_shard(cfg, shard, Path(paths[0]))
    decisions = json.loads(Path(paths[0]).read_text())
    return write_shard(cfg, shard, decisions, Path(paths[1]), Path(paths[2]))


def _run_tasks(cfg: PipelineConfig, tasks: list[tuple], what: str, quiet: bool) -> None:
    if not tasks:
        return
    with progress(len(tasks), what, unit="shard", enabled=not quiet) as bar:
        images = 0
        for n in _results(cfg, tasks):
            images += n
            bar.set_postfix(images=images, refresh=False)
            bar.update()


def _results(cfg: PipelineConfig, tasks: list[tuple]):
    """Each task's image count, as the tasks finish, on the configured executor."""
    if cfg.executor == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=cfg.ray_address, num_cpus=None if cfg.ray_address else cfg.workers,
                     include_dashboard=False, log_to_driver=False)
        import ray.data

        ds = ray.data.from_items([{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
        results = ds.map(lambda row: {"n": _task(tuple(json.loads(row["task"])))}, num_cpus=1,
                         concurrency=cfg.workers if not cfg.ray_address else None)
        for r in results.iter_rows():
            yield r["n"]
    elif cfg.workers <= 1:
        for t in tasks:
            yield _task(t)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: workers must not inherit the parent's threads and half-initialised libraries
        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(_task, t) for t in tasks]):
                yield fut.result()


def _has_results(out: Path) -> bool:
    """Whether a run in `out` finished any piece of work (a shard's analysis, the dedup decisions, a shard's
    tar, the manifest): what a run with another configuration must not be mixed with."""
    work = out / "work"
    return (any(work.glob("analysed-*.parquet")) or (work / "decisions.json").exists()
            or any(work.glob("written-*.parquet")) or any((out / "shards").glob("*.tar")) or (out / MANIFEST).exists())


def _check_classifier_folders(cfg: PipelineConfig) -> None:
    """A CLIP checker folder that is not there fails now, in words, not in the first worker."""
    for section, specs in (("safety.classifier", cfg.safety.classifier), ("ai_generated.classifier",
                                                                          cfg.ai_generated.classifier)):
        for spec in specs if isinstance(specs, list) else [specs]:
            path = spec.get("path") if isinstance(spec, dict) else (spec or "").partition(":")[2] or None
            if path and not Path(path).exists():
                hint = (" It is the demo's stand-in checker, which only `limner data demo` makes: remove that "
                        "entry, or start from `limner data init FOLDER`." if "standin-checker" in path else "")
                raise FileNotFoundError(f"{section}: no checker folder at {path}.{hint}")


def run(cfg: PipelineConfig, quiet: bool = False) -> Path:
    """Run (or resume) the pipeline; returns the manifest's path."""
    if cfg.boxes.detector:  # a wrong folder fails now, not after the analysis pass
        from .boxes import detector_kind

        detector_kind(cfg.boxes.detector)
    _check_classifier_folders(cfg)
    parts = shards(cfg.source)   # a wrong source fails here, before out_dir holds anything
    out = Path(cfg.out_dir)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / "config.json"
    if stamp.exists() and json.loads(stamp.read_text())["fingerprint"] != _fingerprint(cfg):
        if _has_results(out):
            raise ValueError(f"{out} holds a run with another configuration; choose a new out_dir, or delete "
                             f"{out} to start over (finished shards are reused only with the same configuration)")
        # the earlier run failed before it finished any shard: nothing to mix, so this configuration takes over
        if not quiet:
            print(f"{out}: the earlier run there wrote nothing; starting over with this configuration", file=sys.stderr)
    write_atomic(stamp, json.dumps({"fingerprint": _fingerprint(cfg), "config": cfg.to_dict()}, default=str))
    cfg_d = cfg.to_dict()

    analysed = [work / f"analysed-{s.index:05d}.parquet" for s in parts]
    _run_tasks(cfg, [("analyse", cfg_d, dataclasses.asdict(s), str(p)) for s, p in zip(parts, analysed) if not p.exists()],
               "analyse", quiet)
    rows = _read_rows(analysed)
    decisions_path = work / "decisions.json"
    if not decisions_path.exists():
        decisions = deduplicate(cfg, rows)
        for r in rows:  # what pass 3 needs of pass 1: the scrubbed alt-text and its safety verdict
            if r["key"] in decisions:
                decisions[r["key"]].update(alt=r["alt"], alt_unsafe=r["alt_unsafe"])
        write_atomic(decisions_path, json.dumps(decisions))
    decisions = json.loads(decisions_path.read_text())

    written = [work / f"written-{s.index:05d}.parquet" for s in parts]
    tars = [out / "shards" / f"{s.index:05d}.tar" for s in parts]
    _run_tasks(cfg, [("write", cfg_d, dataclasses.asdict(s), str(decisions_path), str(t), str(w))
                     for s, t, w in zip(parts, tars, written) if not w.exists()], "write", quiet)
    return write_manifest(out, rows, decisions, _read_rows(written))


def write_manifest(out: Path, rows: list[dict], decisions: dict, written: list[dict]) -> Path:
    by_key = {w["key"]: w for w in written}
    boxes = any("boxes" in w for w in written)  # a column only when the boxes stage ran
    manifest = []
    for r in rows:
        d = decisions.get(r["key"], {})
        w = by_key.get(r["key"], {})
        reason = r["reason"] or d.get("reason")
        manifest.append({**r, "fate": "kept" if reason is None else "dropped", "reason": reason,
                         "cluster": d.get("cluster"), "cluster_size": d.get("cluster_size"),
                         "weight": d.get("weight", 0.0) if reason is None else 0.0,
                         "captions": w.get("captions", json.dumps({"alt": r["alt"]} if r["alt"] else {})),
                         "caption_sources": w.get("caption_sources"), "captions_dropped": w.get("captions_dropped"),
                         "caption_errors": w.get("caption_errors"),
                         "tar": w.get("tar"), "member": w.get("member"),
                         **({"boxes": w.get("boxes")} if boxes else {})})
    path = out / MANIFEST
    _write_rows(manifest, path)
    return path


def summary(manifest: list[dict]) -> dict:
    from collections import Counter

    fates = Counter(r["fate"] for r in manifest)
    reasons = Counter(r["reason"] for r in manifest if r["reason"])
    return {"inputs": len(manifest), "kept": fates["kept"], "dropped": fates["dropped"], "reasons": dict(reasons.most_common())}
