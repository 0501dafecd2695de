"""What a model folder's metadata attaches to the core pipeline: the guard from the safety layer, and the
hooks of the world the model was trained on (`"world": "shapes"`: Shapes World's notice, layout planner and
best-of verifier). A model of the user's own data names no world and gets only the guard."""
from __future__ import annotations

from ..safety.guard import Guard, SafetyConfig
from ..world.hooks import HOOKS


def extras(meta: dict, encoder, safety: SafetyConfig | None = None) -> dict:
    """Keyword arguments for `Pipeline(...)`: guard, planner, verifier, notice."""
    hooks = HOOKS.get(meta.get("world") or "", {})
    return {"guard": Guard(safety), "planner": hooks.get("planner"), "verifier": hooks.get("verifier"),
            "notice": hooks.get("notice")}
