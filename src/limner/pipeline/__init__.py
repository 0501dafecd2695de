"""The text-to-image pipeline that the CLI, the evaluation and the server all call (`core`), and the other
generators that evaluation compares with it (`backends`)."""
from .core import Pipeline, grid, save_png

__all__ = ["Pipeline", "grid", "save_png"]
