"""Read the constraints back out of a Shapes World count or spatial prompt.

"three red circles and a large blue square" -> two groups; "a yellow triangle to the left of two green
circles" -> two groups and a relation. Lets `limner world score` check any image whose prompt is in
the world's language, even without a sidecar file.
"""
from __future__ import annotations

import re

from . import captions as C
from .scene import COLOURS, SIZES
from .scorer import Constraints

_NUM = {w: i for i, w in enumerate(C.NUMBER_WORDS)} | {"a": 1, "an": 1}
_NOUNS = {}
for shape, words in C.SYNONYMS.items():
    for w in words:
        _NOUNS[w] = shape
        _NOUNS[w + ("es" if w == "box" else "s")] = shape
_GROUP = re.compile(
    r"\b(?P<num>\d+|" + "|".join(sorted(_NUM, key=len, reverse=True)) + r")\s+"
    r"(?:(?P<size>" + "|".join(SIZES) + r")\s+)?(?P<colour>" + "|".join(COLOURS) + r")\s+"
    r"(?P<noun>" + "|".join(sorted(_NOUNS, key=len, reverse=True)) + r")\b"
)
_REL = {phrase: rel for rel, phrases in C.RELATIONS.items() for phrase in phrases}
_REL_RE = re.compile(r"\s(" + "|".join(sorted(map(re.escape, _REL), key=len, reverse=True)) + r")\s")


def parse_prompt(text: str) -> Constraints | None:
    t = " ".join(text.lower().replace(",", " ").replace(";", " ").split())
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", t) if x]
    summary = [x for x in sentences if x.startswith(("there are ", "there is ")) and _GROUP.search(x)]
    if len(sentences) > 2 and summary:
        # a detailed caption names each group once ("There are 5 yellow circles.") and then every object
        # again ("A small yellow circle sits on the right."): count the summary sentences only
        t = " ".join(summary)
    groups, spans = [], []
    for m in _GROUP.finditer(t):
        n = int(m["num"]) if m["num"].isdigit() else _NUM[m["num"]]
        g = {"colour": m["colour"], "shape": _NOUNS[m["noun"]], "count": n}
        if m["size"]:
            g["size"] = m["size"]
        groups.append(g)
        spans.append(m.span())
    if not groups:
        return None
    rels = []
    for r in _REL_RE.finditer(t):
        before = [i for i, s in enumerate(spans) if s[1] <= r.start() + 1]
        after = [i for i, s in enumerate(spans) if s[0] >= r.end() - 1]
        if before and after:
            a, b = groups[before[-1]], groups[after[0]]
            rels.append({"a": [a["colour"], a["shape"]], "rel": _REL[r[1]], "b": [b["colour"], b["shape"]]})
    # the same (colour, shape) named twice with different sizes stays two groups; merge exact repeats
    return Constraints(groups, rels, True, "spatial" if rels else "count")
