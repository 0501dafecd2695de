"""limner's responsibility layer: the prompt filter (and, beside it, image-level safety tools).

Every entry point that turns text into an image calls `enforce(prompt)` first; it raises
`PromptBlocked` (a ValueError naming the category, `code = "content_policy_violation"`).
Names are imported lazily so that `import limner.safety` stays cheap.
"""
from __future__ import annotations

_PROMPT_FILTER = ("PromptBlocked", "PromptFilter", "Verdict", "check_prompt", "default_filter", "enforce",
                  "load_policy", "normalise")
__all__ = list(_PROMPT_FILTER)


def __getattr__(name):
    if name in _PROMPT_FILTER:
        from . import prompt_filter

        return getattr(prompt_filter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
