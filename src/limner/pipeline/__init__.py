"""The text-to-image pipeline that the CLI, the evaluation and the server all call (`core`, which knows no
world and no policy; `extras` attaches both from a model folder), the checks a request must pass (`request`,
light enough to run before any model loads), how its images are saved (`images`), and the other generators
that evaluation compares it with (`backends`)."""

__all__ = ["Pipeline", "grid", "save_png"]


def __getattr__(name):  # lazily: `limner.pipeline.request` must not pull in torch
    if name == "Pipeline":
        from .core import Pipeline

        return Pipeline
    if name in ("grid", "save_png"):
        from . import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
