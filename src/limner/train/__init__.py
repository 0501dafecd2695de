"""Training: `run(config)` trains whatever the config's `kind:` names.

    loop.py         the one step loop (DDP/FSDP, AdamW + schedule, EMA, checkpoints, resume, metrics, progress)
    autoencoder.py  kind: autoencoder   the image autoencoder
    denoiser.py     kind: denoiser      the diffusion transformer (needs a trained autoencoder)
    planner.py      kind: planner       the layout planner, exported into a copy of the model folder it plans for
    reward.py       kind: reward        post-training of an exported model against the Shapes World scorer
    upsampler.py    kind: upsampler     the super-resolution stage, exported into a copy of the model folder
    data.py         the training data: Shapes World or WebDataset shards, cached latents and text states

Each kind module has a typed `Config` (defaults that construct; its `model:` section is the model's own
config dataclass, so an unknown key is an error that names it) and `run(cfg, resume, quiet)`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

KINDS = ("autoencoder", "denoiser", "planner", "reward", "upsampler")  # each a module of this package
DEFAULT_KIND = "denoiser"  # what a config without `kind:` trains (as before kinds were modules)


def kind_module(kind: str):
    """The module that trains `kind` (imported only when asked for: each pulls in torch and its models)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return importlib.import_module(f"{__name__}.{kind}")


def load_config(config: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()):
    """The typed config of a YAML file or a dict, for the kind it names, with `overrides` ("data.seed=3",
    values read as YAML) applied first. Unknown keys, nested ones included, are errors naming the key."""
    import copy

    import yaml

    from ..common.config import build

    if isinstance(config, dict):
        raw, where = copy.deepcopy(config), "config"
    else:
        path = Path(config)
        if not path.exists():
            raise FileNotFoundError(f"config {path} does not exist (see configs/ for examples)")
        raw, where = yaml.safe_load(path.read_text()) or {}, str(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of keys to values, not {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            if node.get(p) is None:  # a section the YAML leaves out (or empty): its defaults plus this key
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[leaf] = yaml.safe_load(value)
    for section in ("data", "model"):  # `data:` left empty in YAML: the defaults
        if section in raw and raw[section] is None:
            raw[section] = {}
    Config = kind_module(raw.get("kind", DEFAULT_KIND)).Config
    return build(Config, raw, where)


def run(config, resume: bool = False, quiet: bool = False) -> Path:
    """Train a config (a typed config, a dict, or a YAML path) with its kind's module; returns the exported
    model folder."""
    cfg = load_config(config) if isinstance(config, (str, Path, dict)) else config
    return kind_module(cfg.kind).run(cfg, resume=resume, quiet=quiet)
