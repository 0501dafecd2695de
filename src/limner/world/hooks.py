"""Shapes World's parts of generation, which a pipeline attaches when its model folder says
`"world": "shapes"` (the core pipeline itself knows no world):

- `notice(prompt, model)`: a warning naming words the world's captions never use;
- `rule_planner(prompts, seeds)`: places the objects a detailed prompt names, read by the rule parser (a
  research baseline: a model folder with a learned planner uses that instead);
- `verifier(prompt)`: the prompt's exact constraints as a score of an image, for best-of search. It is the
  benchmark's own grader: a research oracle, not part of the model.
"""
from __future__ import annotations

import functools
import random
import re

from . import captions as C
from .scene import sample_scene


@functools.lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Every word the world's captions use: all caption kinds and every training captioner over many scenes (the
    planner reads the captioners' words: "big", "in the top-left corner" are known, not news to warn about)."""
    from . import captioners

    rng = random.Random(0)
    text = " ".join(" ".join([*C.captions(scene, rng).values(), *captioners.caption(scene, rng).values()])
                    for scene in (sample_scene(rng) for _ in range(600)))
    return frozenset(re.findall(r"[a-z]+", text.lower())) | set(C.NUMBER_WORDS) | {"center", "boxes"}


def unknown_words(prompt: str) -> list[str]:
    known = vocabulary()
    return [t for t in re.findall(r"[a-z]+", prompt.lower()) if t not in known]


def notice(prompt: str, model: str) -> str | None:
    unknown = unknown_words(prompt)
    if not unknown:
        return None
    return (f"{model} only knows Shapes World (circles, squares and triangles in red, green, blue, yellow, "
            f"purple, orange; counts, sizes, positions): it has never seen {', '.join(sorted(set(unknown))[:8])!r}")


def verifier(prompt: str):
    """A function image -> how well it meets the prompt's constraints, or None if the prompt is unreadable."""
    from .parse import parse_prompt   # the grader's parser and scorer load only when search is asked for
    from .scorer import detect, reward, score

    cons = parse_prompt(prompt)
    return None if cons is None else (lambda img: reward(score(detect(img), cons), cons))


def rule_planner(prompts: list[str], seeds: list[int]) -> list:
    """Layouts read by the rule parser: each prompt that places its objects (the detailed template's wording)
    gets a plan drawn from its seed, the others None. A research baseline for the learned planner."""
    from . import layout
    from .parse import parse_prompt

    placed = {p: getattr(parse_prompt(p), "objects", None) for p in dict.fromkeys(prompts)}  # candidates repeat prompts
    return [layout.plan(placed[p], random.Random(s)) if placed[p] else None for p, s in zip(prompts, seeds)]


HOOKS = {"shapes": {"notice": notice, "verifier": verifier, "planner": rule_planner}}
