"""The text-to-image pipeline that the CLI, the evaluation and the server all call (`core`, which knows no
world and no policy; `extras` attaches both from a model folder), how its images are saved (`images`), and
the other generators that evaluation compares it with (`backends`)."""
from .core import Pipeline
from .images import grid, save_png

__all__ = ["Pipeline", "grid", "save_png"]
