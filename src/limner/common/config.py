"""Typed configs from YAML: one parser for every config dataclass (training, the data pipeline)."""
from __future__ import annotations

import dataclasses


def build(cls, raw: dict, where: str):
    """A `cls` dataclass from nested dicts, naming any unknown key and the keys that are known. Fields
    whose default is a dataclass are built from their dict the same way; each class checks its own values
    in `__post_init__`, so a config built in Python is checked like one read from YAML."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    kw = {}
    for k, v in raw.items():
        sub = fields[k].default_factory if fields[k].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and isinstance(v, dict):
            kw[k] = build(sub, v, f"{where}: {k}")
        else:
            kw[k] = v
    try:
        return cls(**kw)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
