"""A limner model folder: what `limner train` exports and `Pipeline.from_pretrained` loads.

    limner.json            resolution, text encoder, denoiser config, sampling defaults, world, name
    denoiser.safetensors   the denoiser's (EMA) weights
    autoencoder/           a diffusers AutoencoderKL folder
    planner/               optional: the layout planner (limner.json's "planner")
    upsampler/             optional: the super-resolution model, its weights and config.json; without it
                           outputs keep the native resolution

`resolve` turns a shipped name or a path into the folder, `load` reads one, `save` writes one atomically.
Torch and the model classes are imported only by `load` and `save`, so resolving a name stays instant.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..common.files import atomic_dir

SHIPPED = {"shapes-default": "shapes-default"}  # name -> folder under limner/weights/


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model's folder, or `name_or_path` if it is a model folder."""
    if str(name_or_path) in SHIPPED:
        return Path(str(resources.files("limner") / "weights" / SHIPPED[str(name_or_path)]))
    path = Path(name_or_path)
    if not (path / "limner.json").exists():
        raise FileNotFoundError(f"no limner model at {str(name_or_path)!r}: expected a folder with limner.json "
                                f"(as `limner train` exports) or a shipped name ({', '.join(SHIPPED)})")
    return path


def autoencoder_folder(name_or_path: str | Path) -> Path:
    """An exported autoencoder's folder, or the autoencoder/ of a model folder or shipped name (a denoiser trained
    in the latent space of a model that already exists)."""
    path = Path(name_or_path)
    if (path / "config.json").exists():
        return path
    try:
        return resolve(name_or_path) / "autoencoder"
    except FileNotFoundError:
        raise FileNotFoundError(f"no autoencoder at {str(name_or_path)!r}: give the folder `limner train` exported an "
                                f"autoencoder to (e.g. runs/autoencoder-default/model), a model folder or a shipped "
                                f"name ({', '.join(SHIPPED)})") from None


def model_name(name_or_path: str, path: Path, meta: dict) -> str:
    """What outputs and watermarks call a model: its exported name, else the shipped name or folder name."""
    return meta.get("name") or (name_or_path if name_or_path in SHIPPED else path.name)


def read_meta(path: Path) -> dict:
    return json.loads((Path(path) / "limner.json").read_text())


def denoiser_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(Path(path) / "denoiser.safetensors").items()}


def load(name_or_path: str | Path, device: str = "cpu"):
    """(denoiser, autoencoder, meta) of a model folder; meta["name"] is the model's name."""
    from . import autoencoder as AE
    from .dit import DiT, DiTConfig

    path = resolve(name_or_path)
    meta = read_meta(path)
    meta["name"] = model_name(str(name_or_path), path, meta)
    denoiser = DiT(DiTConfig(**meta["denoiser"]))
    denoiser.load_state_dict(denoiser_weights(path))
    vae = AE.load(str(path / "autoencoder"))
    return denoiser.to(device).eval(), vae.to(device), meta


PARTS = ("planner", "upsampler")  # parts trained after the base model, each whole in its own subfolder


def save(folder: str | Path, denoiser, vae, meta: dict, parts_from: str | Path | None = None) -> Path:
    """Write a self-contained model folder (replacing any old one only once the new one is complete).
    `parts_from`: a model folder whose planner/ and upsampler/ come along (a denoiser post-trained from it)."""
    import shutil

    from safetensors.torch import save_file

    meta = {"denoiser": denoiser.cfg.to_dict(), **{k: v for k, v in meta.items() if k not in ("name", "denoiser")}}
    with atomic_dir(folder) as tmp:
        for part in PARTS if parts_from is not None else ():
            if (Path(parts_from) / part).is_dir():
                shutil.copytree(Path(parts_from) / part, tmp / part)
        vae.save_pretrained(tmp / "autoencoder")
        save_file({k: v.contiguous() for k, v in denoiser.state_dict().items()}, tmp / "denoiser.safetensors")
        (tmp / "limner.json").write_text(json.dumps(meta, indent=2))
    return Path(folder)


def save_planner(base: str | Path, planner, to: str | Path) -> Path:
    """A copy of the model folder `base` with `planner` added (planner/ and limner.json's "planner")."""
    return save_part(base, to, "planner", planner, entry=planner.cfg.to_dict())


def save_part(base: str | Path, to: str | Path, part: str, module, entry: dict | None = None,
              config: dict | None = None) -> Path:
    """A copy of the model folder `base` with `module`'s weights in `part`/`part`.safetensors, `entry` as
    limner.json's `part` and `config` as `part`/config.json (parts trained after the base model: a planner,
    an upsampler)."""
    import shutil

    from safetensors.torch import save_file

    base, meta = Path(base), read_meta(base)
    meta.pop("name", None)
    if entry is not None:
        meta[part] = entry
    with atomic_dir(to) as tmp:
        shutil.copytree(base, tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / part, ignore_errors=True)
        (tmp / part).mkdir()
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / part / f"{part}.safetensors")
        if config is not None:
            (tmp / part / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "limner.json").write_text(json.dumps(meta, indent=2))
    return Path(to)


def plan_temperature(meta: dict) -> float:
    """The temperature a folder's planner samples places at (limner.json's defaults; 1 before there was one)."""
    return float(meta.get("defaults", {}).get("plan_temperature", 1.0))


def load_planner(path: str | Path, meta: dict, device: str = "cpu"):
    """The folder's layout planner, or None when it has none."""
    if not meta.get("planner"):
        return None
    from safetensors.torch import load_file

    from .planner import Planner, PlannerConfig

    planner = Planner(PlannerConfig(**{"object_query": False, **meta["planner"]}))  # saved before the field: without
    planner.load_state_dict(load_file(Path(path) / "planner" / "planner.safetensors"))
    return planner.to(device).eval()


def save_upsampler(base: str | Path, upsampler, sampling: dict, to: str | Path) -> Path:
    """A copy of the model folder `base` with `upsampler` added: upsampler/ holds its weights and its config.json
    (the model config and how to sample it), so the part is whole in its own folder."""
    return save_part(base, to, "upsampler", upsampler, config={"model": upsampler.cfg.to_dict(), "sampling": sampling})


def load_upsampler(path: str | Path, device: str = "cpu"):
    """(the folder's super-resolution model, its sampling settings), or None when it has none (older folders:
    outputs keep their native size)."""
    part = Path(path) / "upsampler"
    if not (part / "config.json").exists():
        return None
    from safetensors.torch import load_file

    from .upsampler import Upsampler, UpsamplerConfig

    config = json.loads((part / "config.json").read_text())
    model = Upsampler(UpsamplerConfig(**config["model"]))
    model.load_state_dict({k: v.float() for k, v in load_file(part / "upsampler.safetensors").items()})
    return model.to(device).eval(), config.get("sampling", {})
