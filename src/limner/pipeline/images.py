"""Saving and showing what the pipeline makes."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..common.files import atomic_path


def save_png(img: Image.Image, path: str | Path, metadata: bool = True) -> Path:
    """Write a PNG atomically, with its generation parameters as a `parameters` text chunk."""
    from ..safety.provenance import png_parameters

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=png_parameters(img.info.get("parameters") if metadata else None))
    return Path(path)


def grid(images: list[Image.Image], cols: int = 4, scale: int = 2) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    out = Image.new("RGB", (cols * w * scale, rows * h * scale), "white")
    for i, im in enumerate(images):
        out.paste(im.resize((w * scale, h * scale), Image.NEAREST), ((i % cols) * w * scale, (i // cols) * h * scale))
    return out
