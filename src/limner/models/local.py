"""A transformers model by path: the one place that turns what a user passes (a folder, or a Hugging Face hub
name) into something to load, for captioners in curation and the metric models of evaluation.

Nothing is downloaded unless the user opts in with HF_HUB_OFFLINE=0: a hub name is taken only when it is
already in the Hugging Face cache, so a typo fails at once instead of starting a multi-gigabyte download.
"""
from __future__ import annotations

import os
from pathlib import Path


def local_model(path: str, what: str = "model") -> str:
    """A folder to load from, never a download unless HF_HUB_OFFLINE=0 is set: a local folder, or a hub name
    already in the Hugging Face cache (or, online, the hub name itself). `what` names the kind of model in
    the error ("vision-language model")."""
    if Path(path).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "0":
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, local_files_only=True)
    except (OSError, ValueError):  # not in the cache, or not even a valid hub name
        raise FileNotFoundError(
            f"no local model at {path!r}: pass the folder of a {what} (download one first, e.g. "
            f"`hf download {path} --local-dir DIR`), or set HF_HUB_OFFLINE=0 to let transformers download it"
        ) from None


def model_folder(path: str | Path, what: str) -> Path:
    """A local model folder with its config.json (or a hub name already in the Hugging Face cache), else an
    error saying what to pass."""
    try:
        folder = Path(local_model(str(path), what))
    except FileNotFoundError:
        folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a {what} folder (no config.json): pass a folder written by "
                                f"save_pretrained, e.g. `hf download <model> --local-dir DIR`")
    return folder
