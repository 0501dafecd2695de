"""`limner data init DATA`: a pipeline config for the user's own images that runs as written.

demo.yaml is the demo's pipeline: its stand-in checker exists only in a folder `limner data demo` made, and
its oracle captioner only reads Shapes World scenes, so a copy of it fails on anyone else's data. The
template (template.yaml) has the same keys and defaults without those two, and its source is checked here
before the file is written, so `limner data run` on it works first time.
"""
from __future__ import annotations

import json
from pathlib import Path
from string import Template

import yaml

from ..common.files import write_atomic
from .pipeline import PipelineConfig
from .sources import shards

TEMPLATE = Path(__file__).with_name("template.yaml")


def source_of(data: Path) -> tuple[str, str]:
    """(source kind, source path) for a folder of images, a folder of WebDataset .tar shards, a .tar, or parquet."""
    if data.is_file():
        if data.suffix in (".parquet", ".tar"):
            return ("parquet" if data.suffix == ".parquet" else "webdataset"), str(data)
        raise ValueError(f"{data} is a {data.suffix or 'plain'} file: give a folder of images (with .txt/.json "
                         f"side files), a folder of WebDataset .tar shards, or a .parquet manifest")
    if not data.is_dir():
        raise FileNotFoundError(f"{data} does not exist: give the folder that holds your images")
    for kind, pattern in (("webdataset", "*.tar"), ("parquet", "*.parquet")):
        if any(data.glob(pattern)):
            return kind, str(data / pattern)
    return "folder", str(data)


def _stem(data: Path) -> str:
    return (data.name if data.is_dir() else data.stem) or "data"


def default_config_path(data: Path) -> Path:
    return Path(f"{_stem(data)}-curate.yaml")


def write_template(data: str | Path, config: str | Path | None = None, out_dir: str | Path | None = None,
                   force: bool = False) -> tuple[Path, PipelineConfig, list]:
    """Write the template for `data` to `config` (default: DATA-curate.yaml here); returns the file, the
    config it holds and its source's shards. Paths are written absolute, so the file works from any
    folder. Refuses to overwrite a file unless `force`."""
    data = Path(data).resolve()
    config = Path(config) if config else default_config_path(data)
    kind, path = source_of(data)
    out = Path(out_dir).resolve() if out_dir else data.with_name(f"{_stem(data)}-curated")
    if kind == "folder" and out.is_relative_to(data):
        # a folder source reads every image below it: the curated output would be read back next time
        raise ValueError(f"out_dir {out} is inside the source folder {data}: choose a folder outside it")
    if config.exists() and not force:
        raise FileExistsError(f"{config} exists: pass --force to overwrite it, or --config for another file")
    text = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        kind=kind, path=json.dumps(path), out_dir=json.dumps(str(out)), config=config)
    cfg = PipelineConfig.from_dict(yaml.safe_load(text), str(config))   # the file must load exactly as written
    parts = shards(cfg.source)   # and its source must have something to curate (else: a clear error now)
    write_atomic(config, text)
    return config, cfg, parts
