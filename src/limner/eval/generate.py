"""`limner eval generate`: an image for every prompt x model x seed, resumable and cached by content.

    out/manifest.jsonl              one row per image (or refusal), appended as each is written
    out/<model>/<prompt-id>-s<seed>.png

A row's `cache_key` is the sha256 of the backend's identity (weights, versions, safety settings), the
prompt, the seed, steps and guidance. A job whose key is in the manifest, and whose file is still there
and was last written for that key, is skipped: kill a run at any point and rerun it, and only the missing
images are made. Images are written atomically before their row, so a row never names a partial file.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..common.progress import progress as progress_bar
from .suites import Prompt

MANIFEST = "manifest.jsonl"


@dataclass
class Manifest:
    path: Path
    rows: list[dict] = field(default_factory=list)   # this run's jobs, generated and skipped alike
    generated: int = 0
    skipped: int = 0
    blocked: int = 0


def cache_key(identity: dict, prompt: str, seed: int, steps: int | None, guidance: float | None,
              size: tuple[int, int] | None = None) -> str:
    blob = {"identity": identity, "prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance}
    if size is not None:   # only when asked for, so keys made before --size existed still match
        blob["size"] = list(size)
    # sha256, not common.files.digest: the keys (and folder_names' suffixes) live in the manifests of existing
    # generation folders and studies, and another hash would make every image of them again
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def safe_name(text: str) -> str:
    """A file or folder name that is fine on every OS: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-") or "model"


def folder_names(backends: Sequence, identities: Sequence[dict]) -> list[str]:
    """Distinct folder names; clashing names get a suffix from the identity, not from their order, so a
    rerun with the models listed differently still finds each model's images in the same folder."""
    names = [safe_name(b.name) for b in backends]
    out = []
    for name, ident in zip(names, identities):
        if names.count(name) > 1:
            name = f"{name}-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]}"
        out.append(name)
    if len(set(out)) < len(out):
        raise ValueError(f"the same model is listed twice: {', '.join(b.name for b in backends)}")
    return out


def load_generations(gen_dir) -> list[dict]:
    """The rows of a `limner eval generate` folder's manifest, the latest one for each image; errors say
    what the folder lacks."""
    gen_dir = Path(gen_dir)
    if not gen_dir.is_dir():
        raise FileNotFoundError(f"no generation folder at {gen_dir}: pass the --out folder of `limner eval generate`")
    if not (gen_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {gen_dir}: run `limner eval generate --out {gen_dir}` first")
    try:
        rows = list(read_manifest(gen_dir / MANIFEST).values())
        if not all(isinstance(r["model"], str) and "prompt_id" in r for r in rows):
            raise KeyError
    except (KeyError, TypeError):
        raise ValueError(f"{gen_dir / MANIFEST}: rows without model, prompt_id or cache_key; is it the manifest "
                         f"of `limner eval generate`?") from None
    return rows


def read_manifest(path: Path) -> dict[str, dict]:
    """cache_key -> row, keeping a row only while it is the last one written for its file."""
    by_key, by_path = {}, {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue   # a line cut short by a kill mid-write: its image is simply made again
            by_key[row["cache_key"]] = row
            if row.get("path"):
                by_path[row["path"]] = row["cache_key"]
    return {k: r for k, r in by_key.items() if not r.get("path") or by_path[r["path"]] == k}


def generate_suite(prompts: Iterable[Prompt], backends: Sequence, out_dir: str | Path, *,
                   seeds: Sequence[int] = (0,), steps: int | None = None, guidance: float | None = None,
                   size: tuple[int, int] | None = None, batch_size: int = 8, progress: bool = True) -> Manifest:
    """Make (or find already made) an image for every prompt x backend x seed under `out_dir`."""
    prompts, out_dir = list(prompts), Path(out_dir)
    if not prompts or not backends or not seeds:
        raise ValueError("nothing to generate: give at least one prompt, one model and one seed")
    if batch_size < 1:
        raise ValueError(f"the batch size must be 1 or more, not {batch_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir / MANIFEST)
    done = read_manifest(manifest.path)
    identities = [b.identity() for b in backends]
    plans = []
    for backend, ident, folder in zip(backends, identities, folder_names(backends, identities)):
        todo = []
        for p in prompts:
            for seed in seeds:
                key = cache_key(ident, p.text, int(seed), steps, guidance, size)
                row = done.get(key)
                if row and (not row.get("path") or (out_dir / row["path"]).exists()):
                    manifest.rows.append(row)
                    manifest.skipped += 1
                    continue
                rel = f"{folder}/{safe_name(p.id)}-s{int(seed)}.png"
                todo.append(_row(backend.name, p, int(seed), rel, key, steps, guidance))
        plans.append((backend, todo))
    settings = dict(steps=steps, guidance=guidance, size=size)
    total = sum(len(t) for _, t in plans)
    bar = progress_bar(total, "generating", unit="img", enabled=progress and total > 0)
    try:
        with manifest.path.open("a", encoding="utf-8") as log:
            for backend, todo in plans:
                for i in range(0, len(todo), batch_size):
                    rows = _run_batch(backend, todo[i : i + batch_size], out_dir, settings)
                    for row in rows:
                        log.write(json.dumps(row, ensure_ascii=False) + "\n")
                        manifest.blocked += bool(row.get("blocked"))
                    log.flush()
                    manifest.rows += rows
                    manifest.generated += len(rows)
                    bar.set_postfix_str(backend.name, refresh=False)
                    bar.update(len(rows))
    finally:
        bar.close()
    return manifest


def _row(model: str, p: Prompt, seed: int, rel: str, key: str, steps, guidance) -> dict:
    row = {"model": model, "prompt_id": p.id, "prompt": p.text, "seed": seed, "path": rel, "suite": p.suite,
           "tags": p.tags, "constraints": p.constraints, "steps": steps, "guidance": guidance, "cache_key": key}
    if p.reference is not None:   # what a detailed prompt was written from (the arena shows it to raters)
        row["reference"] = p.reference
    return row


def _run_batch(backend, rows: list[dict], out_dir: Path, settings: dict) -> list[dict]:
    """Generate and save one batch. A refusal (prompt or image filter) fails a whole batch, so the batch
    is then redone one image at a time and each refusal recorded, instead of stopping the evaluation."""
    from ..pipeline import save_png

    try:
        images = backend.generate([r["prompt"] for r in rows], [r["seed"] for r in rows], **settings)
    except ValueError as e:
        if getattr(e, "code", None) != "content_policy_violation":
            raise
        if len(rows) > 1:
            return [r for row in rows for r in _run_batch(backend, [row], out_dir, settings)]
        return [dict(rows[0], path=None, blocked=str(e))]
    for row, img in zip(rows, images):
        save_png(img, out_dir / row["path"])
    return rows


def parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or min(map(int, m.groups())) < 1:
        raise ValueError(f"--size wants WIDTHxHEIGHT, e.g. 512x512, not {text!r}")
    return int(m[1]), int(m[2])

