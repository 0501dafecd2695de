"""Read the constraints back out of a Shapes World count, spatial or detailed prompt.

"three red circles and a large blue square" -> two groups; "a yellow triangle to the left of two green
circles" -> two groups and a relation; a detailed caption -> its groups split by size, where it puts each
object, and the relations it states. Lets `limner world score` check any image whose prompt is in
the world's language, even without a sidecar file.
"""
from __future__ import annotations

import re
from collections import Counter

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
# a detailed caption's sentences about one object ("A small red circle sits in the upper left.") and
# between groups named without numbers ("The red circles are to the left of the blue square.")
_CELLS = {place: [row, col] for row, places in enumerate(C.PLACES) for col, place in enumerate(places)}
_WHERE = r"(?P<where>" + "|".join(sorted(map(re.escape, _CELLS), key=len, reverse=True)) + r")"
_WHAT = r"(?P<size>" + "|".join(SIZES) + r")\s+(?P<colour>" + "|".join(COLOURS) + r")\s+(?P<noun>\w+)"
_OBJECT = [re.compile(r"^(?:a|an|one)\s+" + _WHAT + r"\s+(?:sits|is placed)\s+" + _WHERE + r"\b"),
           re.compile(r"^" + _WHERE + r"\s+there is an?\s+" + _WHAT + r"\b")]
_BETWEEN = re.compile(r"^the\s+(?P<ac>" + "|".join(COLOURS) + r")\s+(?P<an>\w+)\s+(?:is|are)\s+(?P<rel>"
                      + "|".join(sorted(map(re.escape, _REL), key=len, reverse=True)) + r")\s+the\s+(?P<bc>"
                      + "|".join(COLOURS) + r")\s+(?P<bn>\w+)")


def parse_prompt(text: str) -> Constraints | None:
    t = " ".join(text.lower().replace(",", " ").replace(";", " ").split())
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", t) if x]
    summary = [x for x in sentences if x.startswith(("there are ", "there is ")) and _GROUP.search(x)]
    if len(sentences) > 2 and summary:
        # a detailed caption names each group once ("There are 5 yellow circles.") and then every object
        # again ("A small yellow circle sits on the right."): count the summary sentences, read the rest
        # for each object's size and place and the relations it states
        return _detailed(_phrases(" ".join(summary)), sentences)
    return _phrases(t)


def _phrases(t: str) -> Constraints | None:
    """Groups with numbers ("three red circles") and the relations written between them."""
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


def _detailed(summary: Constraints | None, sentences: list[str]) -> Constraints | None:
    if summary is None:
        return None
    objects, rels = [], []
    for x in sentences:
        if m := next((m for pattern in _OBJECT if (m := pattern.match(x))), None):
            if m["noun"] in _NOUNS:
                objects.append({"colour": m["colour"], "shape": _NOUNS[m["noun"]], "size": m["size"],
                                "cell": _CELLS[m["where"]]})
        elif (m := _BETWEEN.match(x)) and m["an"] in _NOUNS and m["bn"] in _NOUNS:
            rels.append({"a": [m["ac"], _NOUNS[m["an"]]], "rel": _REL[m["rel"]], "b": [m["bc"], _NOUNS[m["bn"]]]})
    groups = summary.groups
    # the objects' sentences agree with the summary's numbers: split its groups by the sizes they give
    if Counter((o["colour"], o["shape"]) for o in objects) == Counter({(g["colour"], g["shape"]): g["count"] for g in groups}):
        sizes = Counter((o["colour"], o["shape"], o["size"]) for o in objects)
        groups = [{"colour": c, "shape": sh, "count": n, "size": z} for (c, sh, z), n in sizes.items()]
    else:
        objects = []
    return Constraints(groups, rels, True, "detailed", objects)
