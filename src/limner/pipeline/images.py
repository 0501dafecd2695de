"""Saving and showing what the pipeline makes."""
from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, PngImagePlugin

from ..common.files import atomic_path


def save_png(img: Image.Image, path: str | Path, metadata: bool = True) -> Path:
    """Write a PNG atomically, with its generation parameters as a `parameters` text chunk."""
    from ..safety.provenance import png_parameters

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=png_parameters(img.info.get("parameters") if metadata else None))
    return Path(path)


class GeneratedImage(Image.Image):
    """A PIL image that writes its generation parameters (`info["parameters"]`) into the PNG it is saved as,
    so a plain `images[0].save("out.png")` records how it was made; an explicit `pnginfo=` wins."""

    def save(self, fp, format=None, **params):
        name = os.fspath(fp) if isinstance(fp, (str, os.PathLike)) else getattr(fp, "name", "")
        is_png = (format or "").upper() == "PNG" or (not format and str(name).lower().endswith(".png"))
        if is_png and "pnginfo" not in params and self.info.get("parameters"):
            # the chunk safety.provenance.png_parameters writes, built here: the core path imports no safety
            params["pnginfo"] = PngImagePlugin.PngInfo()
            params["pnginfo"].add_text("parameters", json.dumps(self.info["parameters"]))
        return super().save(fp, format, **params)


def carrying_parameters(img: Image.Image) -> GeneratedImage:
    """The same image object, now saving its parameters (only the class changes: pixels and info are shared)."""
    if type(img) is Image.Image:  # an image of a PIL plugin class (PngImageFile...) is left as it is
        img.__class__ = GeneratedImage
    return img


def grid(images: list[Image.Image], cols: int = 4, scale: int = 2) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    out = Image.new("RGB", (cols * w * scale, rows * h * scale), "white")
    for i, im in enumerate(images):
        out.paste(im.resize((w * scale, h * scale), Image.NEAREST), ((i % cols) * w * scale, (i // cols) * h * scale))
    return out
