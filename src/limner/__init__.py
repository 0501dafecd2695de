"""limner: an open, reproducible Imagen-3-style text-to-image system."""
from .common.cache import cache_root

__version__ = "0.1.0"
__all__ = ["Pipeline", "cache_root"]


def __getattr__(name):  # keep `import limner` light; the pipeline pulls in torch and transformers
    if name == "Pipeline":
        from .pipeline.core import Pipeline

        return Pipeline
    raise AttributeError(name)
