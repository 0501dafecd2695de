"""`limner data report MANIFEST`: what each stage did, as a table, PNG plots and one HTML page.

Counts of kept and dropped images and of each reason, histograms of the quality scores with their
thresholds, and the largest duplicate clusters with thumbnails (read back from the source).
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..common.files import write_atomic

SCORES = {"sharpness": "min_sharpness", "contrast": "min_contrast", "blockiness": "max_blockiness",
          "overexposed": "max_clipped", "underexposed": "max_clipped", "mean_luma": "min_mean_luma"}


def load(manifest: str | Path) -> list[dict]:
    import pyarrow.parquet as pq

    path = Path(manifest)
    if path.is_dir():
        path = path / "manifest.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {manifest} (limner data run writes OUT_DIR/manifest.parquet)")
    return pq.read_table(path).to_pylist()


def table(rows: list[dict]) -> str:
    fates = Counter(r["fate"] for r in rows)
    reasons = Counter(r["reason"] for r in rows if r["reason"])
    by_stage = Counter(r["reason"].split(":")[0] for r in rows if r["reason"])
    kept = [r for r in rows if r["fate"] == "kept"]
    lines = [f"{len(rows)} inputs: {fates['kept']} kept, {fates['dropped']} dropped",
             f"kept images' total sampling weight {sum(r['weight'] or 0 for r in kept):.1f}",
             "", f"{'stage / reason':<40} {'images':>7}"]
    for stage, n in by_stage.most_common():
        lines.append(f"{stage:<40} {n:>7}")
        for reason, m in reasons.most_common():
            if reason.split(":")[0] == stage:
                lines.append(f"  {reason:<38} {m:>7}")
    pii = Counter(k for r in rows for k in (r.get("alt_pii") or "").split(",") if k)
    if pii:
        lines += ["", "personal data scrubbed from alt-texts: " + ", ".join(f"{k} {n}" for k, n in pii.most_common())]
    caps = Counter(k for r in kept for k in json.loads(r["captions"] or "{}"))
    lines += ["", "captions of kept images: " + ", ".join(f"{k} {n}" for k, n in caps.most_common())]
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(rows: list[dict], config: dict | None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    reasons = Counter(r["reason"] or "kept" for r in rows)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(reasons) + 1))
    names = [k for k, _ in reasons.most_common()][::-1]
    ax.barh(names, [reasons[k] for k in names], color=["#3a7" if k == "kept" else "#c55" for k in names])
    ax.set_xlabel("images")
    ax.set_title("fate of every input")
    out["fates"] = _png(fig)
    plt.close(fig)
    q = (config or {}).get("quality", {})
    present = [k for k in SCORES if any(r.get(k) is not None for r in rows)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.6))
        for ax, k in zip(np.atleast_1d(axes), present):
            vals = np.array([r[k] for r in rows if r.get(k) is not None], float)
            ax.hist(vals, bins=40, color="#57a")
            if SCORES[k] in q:
                ax.axvline(q[SCORES[k]], color="#c33", ls="--", label="threshold")
                ax.legend(fontsize=7)
            ax.set_title(k, fontsize=9)
        fig.tight_layout()
        out["scores"] = _png(fig)
        plt.close(fig)
    return out


def clusters(rows: list[dict], top: int = 8) -> list[list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        if r.get("cluster") is not None:
            groups[r["cluster"]].append(r)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)[:top]


def _thumbs(rows: list[dict], config: dict | None, side: int = 96) -> dict[str, str]:
    """Data URLs of thumbnails for the given rows, read back from the source they came from."""
    if not config:
        return {}
    from PIL import Image

    from .pipeline import PipelineConfig
    from .sources import read, shards

    cfg = PipelineConfig.from_dict(config)
    want = defaultdict(set)
    for r in rows:
        want[r["shard"]].add(r["index"])
    out = {}
    try:
        parts = shards(cfg.source)
    except (FileNotFoundError, ValueError):  # the source moved: the report goes without pictures
        return {}
    for s in parts:
        if s.index not in want:
            continue
        for i, item in enumerate(read(s, cfg.source)):
            if i in want[s.index] and item.data:
                try:
                    img = Image.open(io.BytesIO(item.data)).convert("RGB")
                except Exception:
                    continue
                img.thumbnail((side, side))
                buf = io.BytesIO()
                img.save(buf, "PNG")
                out[item.key] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def write(manifest: str | Path, out_dir: str | Path | None = None) -> Path:
    """report.html and the PNG plots beside it (default: next to the manifest)."""
    rows = load(manifest)
    mpath = Path(manifest) if not Path(manifest).is_dir() else Path(manifest) / "manifest.parquet"
    out = Path(out_dir or mpath.parent)
    out.mkdir(parents=True, exist_ok=True)
    stamp = mpath.parent / "work" / "config.json"
    config = json.loads(stamp.read_text())["config"] if stamp.exists() else None
    pngs = plots(rows, config)
    for name, data in pngs.items():
        (out / f"report-{name}.png").write_bytes(data)
    top = clusters(rows)
    thumbs = _thumbs([r for g in top for r in g[:8]], config)
    parts = [f"<h1>limner data report</h1><pre>{html.escape(table(rows))}</pre>"]
    parts += [f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}">' for n, d in pngs.items()]
    if top:
        parts.append("<h2>largest duplicate clusters</h2>")
        for g in top:
            cells = "".join(f'<figure><img src="{thumbs.get(r["key"], "")}"><figcaption>{html.escape(r["key"])}<br>'
                            f'{html.escape(r["reason"] or "kept")} w={r["weight"] or 0:.2f}</figcaption></figure>' for r in g[:8])
            parts.append(f'<div class="cluster"><b>{len(g)} images</b>{cells}</div>')
    style = ("body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:4px;font-size:11px;"
             "text-align:center}figure img{width:96px;height:96px;object-fit:contain;background:#eee}"
             ".cluster{border-top:1px solid #ccc;padding:6px 0}")
    return write_atomic(out / "report.html", f"<!doctype html><meta charset=utf-8><title>limner data report</title>"
                        f"<style>{style}</style>" + "".join(parts))
