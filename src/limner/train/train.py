"""Compatibility only: the flat `TrainConfig` and `run` of the old single-module trainer, kept for the callers
not yet switched (the `limner train` command, benchmarks/tiny_training.py). New code calls
`limner.train.load_config(path_or_dict, overrides)` and `limner.train.run(config)`, which use the typed
config of the config's kind (autoencoder.py, denoiser.py, reward.py). Remove once nothing imports it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any

from ..common.config import build
from .autoencoder import AutoencoderTrainConfig
from .data import DataConfig
from .denoiser import DenoiserTrainConfig
from .loop import lr_at  # noqa: F401  (its old home)


def _flat_fields() -> list:
    """Every key of the autoencoder and denoiser configs; None means "the kind's default"."""
    out, seen = [], set()
    for cls in (AutoencoderTrainConfig, DenoiserTrainConfig):
        for f in dataclasses.fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            if f.name == "data":
                out.append(("data", DataConfig, field(default_factory=DataConfig)))
            elif f.name == "model":  # typed by the kind when converted
                out.append(("model", dict, field(default_factory=dict)))
            else:
                out.append((f.name, Any, field(default=None)))
    return out


def _load(cls, path: str | Path):
    import yaml

    from . import load_config

    load_config(path)  # checked by the kind's own config: unknown keys, nested ones too, and values
    return _flat(cls, yaml.safe_load(Path(path).read_text()) or {}, str(path))


def _from_dict(cls, raw: dict, where: str = "config"):
    from . import load_config

    load_config(raw)
    return _flat(cls, raw, where)


def _flat(cls, raw: dict, where: str):
    # keeps `model:` as written (a preset, not the widths it implies), so a CLI override of the preset works
    return build(cls, {k: {} if k in ("data", "model") and v is None else v for k, v in raw.items()}, where)


def _typed(self):
    """The kind's own typed config."""
    from . import load_config

    return load_config({k: v for k, v in dataclasses.asdict(self).items() if v is not None})


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", _flat_fields(),
    namespace={"load": classmethod(_load), "from_dict": classmethod(_from_dict), "typed": _typed})
TrainConfig.__module__ = __name__


def run(cfg, resume: bool = False, quiet: bool = False) -> Path:
    """`limner.train.run`, also for a flat TrainConfig."""
    from . import run as run_kind

    return run_kind(cfg.typed() if isinstance(cfg, TrainConfig) else cfg, resume=resume, quiet=quiet)
