"""Several independent captioners for a Shapes World scene, as the Imagen 3 report recaptions its data with
several models chosen for linguistic diversity: each writer has its own vocabulary (synonyms of every size,
colour, shape, place and relation word; British and American spelling), sentence shapes, object order, level
of detail and number style (words, digits, articles). Training mixes them with the alt-text by weights in the
config, so what the model learns is the scene, not one template's way of saying it.

Every writer here names every object of the scene (with its count), so a caption determines the objects a
layout planner must propose; writers differ in what else they state (sizes, places, relations, background).
Evaluation wordings are written separately (`world/unseen_wordings.py`) and never trained on.
"""
from __future__ import annotations

import bisect
import functools
import random
import re

from . import captions as C
from .scene import Obj, Scene

# Synonyms: the first rows are hand-written, the second mostly names from the xkcd colour survey (as matplotlib ships
# them) whose hue sits firmly in one Shapes World colour. Kept out on purpose: the words of benchmarks/plan_following.py's
# dev wordings (ruby, jade, navy, azure, mustard, lavender, mauve, apricot, orb, ball, wedge, quadrate, ...), so that
# set still measures words no captioner writes.
COLOUR_WORDS = {
    "red": ["red", "crimson", "scarlet", "cherry red",
            "carmine", "tomato red", "blood red", "brick red", "strawberry red", "vermilion", "bright red", "deep red",
            "poppy red"],
    "green": ["green", "emerald", "grass green", "leaf green",
              "emerald green", "kelly green", "shamrock green", "apple green", "fresh green", "vivid green",
              "bright green", "neon green", "kiwi green", "spring green", "clover green"],
    "blue": ["blue", "cobalt", "royal blue", "deep blue",
             "sapphire", "cerulean", "cornflower blue", "electric blue", "dodger blue", "french blue", "prussian blue",
             "true blue", "bright blue", "ultramarine", "cobalt blue", "ocean blue"],
    "yellow": ["yellow", "golden", "lemon yellow", "sunny yellow",
               "gold", "sunflower yellow", "banana yellow", "dandelion yellow", "bright yellow", "sunshine yellow",
               "butter yellow", "daffodil yellow", "lemon"],
    "purple": ["purple", "violet", "plum", "grape purple",
               "amethyst", "heliotrope", "bright purple", "electric purple", "royal purple", "deep purple", "grape",
               "eggplant purple"],
    "orange": ["orange", "tangerine", "amber", "pumpkin orange",
               "mango", "copper", "rust orange", "burnt orange", "bright orange", "deep orange", "pumpkin", "marigold",
               "clementine", "traffic-cone orange"],
}
SIZE_WORDS = {"small": ["small", "little", "tiny", "mini", "smaller", "petite",
                        "teeny", "compact", "wee", "miniature", "minute", "undersized", "modest"],
              "large": ["large", "big", "huge", "giant", "bigger", "oversized",
                        "enormous", "massive", "jumbo", "hefty", "sizeable", "larger", "hulking"]}
SHAPE_WORDS = {  # (singular, plural)
    "circle": [("circle", "circles"), ("disc", "discs"), ("disk", "disks"), ("dot", "dots"), ("round shape", "round shapes"),
               ("circular shape", "circular shapes"), ("spot", "spots"), ("roundel", "roundels"), ("coin shape", "coin shapes")],
    "square": [("square", "squares"), ("box", "boxes"), ("block", "blocks"), ("tile", "tiles"),
               ("square shape", "square shapes"), ("four-sided shape", "four-sided shapes"), ("cube", "cubes"),
               ("checker", "checkers")],
    "triangle": [("triangle", "triangles"), ("three-sided shape", "three-sided shapes"), ("triangular shape", "triangular shapes"),
                 ("three-cornered shape", "three-cornered shapes"), ("delta", "deltas"), ("arrowhead", "arrowheads"),
                 ("pointed shape", "pointed shapes"), ("cone shape", "cone shapes")],
}
BACKGROUND_WORDS = {"ivory": ["ivory", "cream", "off-white"], "light grey": ["light grey", "light gray", "pale grey", "pale gray"],
                    "pale blue": ["pale blue", "light blue", "baby blue", "sky blue"]}
RELATION_WORDS = {
    "left of": ["to the left of", "left of", "on the left of", "on the left side of", "further left than", "west of",
                "to the left-hand side of", "leftward of", "more to the left than", "farther left than", "just left of"],
    "right of": ["to the right of", "right of", "on the right of", "on the right side of", "further right than", "east of",
                 "to the right-hand side of", "rightward of", "more to the right than", "farther right than", "just right of"],
    "above": ["above", "over", "higher than", "higher up than", "on top of", "north of",
              "up above", "further up than", "raised above", "at a higher level than", "higher on the page than"],
    "below": ["below", "under", "underneath", "beneath", "lower than", "south of",
              "down below", "further down than", "lower down than", "at a lower level than", "lower on the page than"],
}
PLACE_WORDS = [
    [["in the upper left", "in the top left", "in the top-left corner", "at the upper left corner", "up in the top left",
      "in the upper-left area", "near the top left", "in the upper-left quadrant", "top-left", "in the northwest corner",
      "high up on the left"],
     ["at the top", "at the top centre", "at the top center", "along the top edge", "in the upper middle",
      "near the top", "up top", "up at the top", "top and centre", "high up in the middle", "in the top-middle area"],
     ["in the upper right", "in the top right", "in the top-right corner", "at the upper right corner", "up in the top right",
      "in the upper-right area", "near the top right", "in the upper-right quadrant", "top-right", "in the northeast corner",
      "high up on the right"]],
    [["on the left", "at the left side", "along the left edge", "in the middle left", "at the left",
      "on the left-hand side", "near the left edge", "over on the left", "at mid-height on the left", "in the centre-left",
      "midway along the left edge"],
     ["in the centre", "in the center", "in the middle", "at the very centre", "right in the middle",
      "in the very middle", "smack in the middle", "in the central area", "at the midpoint", "in the exact centre",
      "centre stage"],
     ["on the right", "at the right side", "along the right edge", "in the middle right", "at the right",
      "on the right-hand side", "near the right edge", "over on the right", "at mid-height on the right",
      "in the centre-right", "midway along the right edge"]],
    [["in the lower left", "in the bottom left", "in the bottom-left corner", "at the lower left corner", "down in the bottom left",
      "in the lower-left area", "near the bottom left", "in the lower-left quadrant", "bottom-left", "in the southwest corner",
      "low on the left"],
     ["at the bottom", "at the bottom centre", "at the bottom center", "along the bottom edge", "in the lower middle",
      "near the bottom", "down at the bottom", "down along the bottom", "bottom and centre", "low in the middle",
      "in the bottom-middle area"],
     ["in the lower right", "in the bottom right", "in the bottom-right corner", "at the lower right corner", "down in the bottom right",
      "in the lower-right area", "near the bottom right", "in the lower-right quadrant", "bottom-right", "in the southeast corner",
      "low on the right"]],
]
def bare_place(phrase: str) -> str:
    """A place without its preposition, as inventory lists write it: "upper left", "middle"."""
    return phrase.replace("in the ", "").replace("at the ", "").replace("on the ", "")


BE_PLACED = ["sits", "is", "is placed", "rests", "appears", "is located", "can be seen", "stands"]


def number(n: int, rng: random.Random, style: str) -> str:
    """`style`: "words", "digits" or "mixed"; one object sometimes takes an article or "a single"."""
    if n == 1 and rng.random() < 0.5:
        return rng.choice(["a", "one", "a single", "just one", "one single", "a solitary", "a lone"])
    if n == 2 and rng.random() < 0.15:
        return rng.choice(["a pair of", "a couple of", "twin"])
    digits = style == "digits" or (style == "mixed" and rng.random() < 0.4)
    word = str(n) if digits else C.NUMBER_WORDS[n]
    if n > 1 and rng.random() < 0.15:
        return rng.choice(["a set of {}", "a total of {}", "{} separate", "{} individual", "{} matching"]).format(word)
    return word


def article(word: str, following: str) -> str:
    return ("an" if following[:1] in "aeiou" else "a") if word == "a" else word


def noun_phrase(n: int, colour: str, shape: str, rng: random.Random, size: str | None = None,
                style: str = "mixed", synonyms: float = 0.5) -> str:
    """'three crimson discs', '2 big blue boxes', 'a small lemon yellow triangle'."""
    c = rng.choice(COLOUR_WORDS[colour]) if rng.random() < synonyms else colour
    sing, plural = rng.choice(SHAPE_WORDS[shape]) if rng.random() < synonyms else SHAPE_WORDS[shape][0]
    s = (rng.choice(SIZE_WORDS[size]) + " ") if size else ""
    num = number(n, rng, style)
    rest = f"{s}{c} {sing if n == 1 else plural}"
    return f"{article(num, rest)} {rest}"


def group_size(objs: list[Obj]) -> str | None:
    sizes = {o.size for o in objs}
    return sizes.pop() if len(sizes) == 1 else None


def listing(parts: list[str], rng: random.Random, style: str = "prose") -> str:
    if len(parts) == 1:
        return parts[0]
    if style == "terse":
        return rng.choice([", ", "; ", " + "]).join(parts)
    return ", ".join(parts[:-1]) + rng.choice([" and ", ", and ", " as well as ", " plus "]) + parts[-1]


NUMBER_MARKS = ["{}. ", "{}) ", "({}) ", "Step {}: ", "#{} ", "{} - "]   # how `numbered` marks an item


def numbered(items: list[str], rng: random.Random) -> str:
    """Items as a numbered list, as people and language models write steps ("1. A red circle on the left. 2. ...",
    "1) ...", "Step 1: ..."): numbers that are positions, not counts. Never shown one, the planner read each as a
    count and planned 6-8 objects for a 4-object list (dev wordings, 25 of 30)."""
    style = rng.choice(NUMBER_MARKS)
    return " ".join(style.format(i + 1) + item for i, item in enumerate(items))


def groups_in_order(scene: Scene, rng: random.Random) -> list[tuple[tuple[str, str], list[Obj]]]:
    items = list(scene.groups().items())
    rng.shuffle(items)
    return items


def background(scene: Scene, rng: random.Random) -> str:
    return rng.choice(BACKGROUND_WORDS[scene.background])


# ----------------------------------------------------------------------------------------- the writers


def terse(scene: Scene, rng: random.Random) -> str:
    """A tag-like list with digits: '3 red circles, 1 small blue square' or 'red circle x3, blue box x1'."""
    parts = []
    form = rng.random()
    for (colour, shape), objs in groups_in_order(scene, rng):
        size = group_size(objs) if rng.random() < 0.4 else None
        if form < 0.7:
            parts.append(noun_phrase(len(objs), colour, shape, rng, size, "digits", 0.3))
        else:
            sing = rng.choice(SHAPE_WORDS[shape])[0] if rng.random() < 0.3 else shape
            parts.append(f"{(size + ' ') if size else ''}{colour} {sing} x{len(objs)}")
    text = listing(parts, rng, "terse")
    if rng.random() < 0.3:
        text += f", {background(scene, rng)} background"
    return text


def prose_count(scene: Scene, rng: random.Random) -> str:
    """A plain sentence that counts every group: 'There are three crimson discs and a single big navy box.'"""
    parts = [noun_phrase(len(objs), c, s, rng, group_size(objs) if rng.random() < 0.5 else None, "mixed")
             for (c, s), objs in groups_in_order(scene, rng)]
    body = listing(parts, rng)
    n = len(scene.objects)
    opener = rng.choice([
        f"There {'is' if parts[0].split()[0] in ('a', 'an', 'one', 'just', '1') else 'are'} {body}",
        f"The picture contains {body}",
        f"You can see {body}",
        f"This image has {body}",
        f"A drawing of {body}",
        f"{body[0].upper() + body[1:]}",
        f"Exactly {C.NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}: {body}",
    ])
    tail = rng.choice(["", "", f" on a {background(scene, rng)} background", f", set against {background(scene, rng)}"])
    return opener + tail + rng.choice([".", "", "."])


def relational(scene: Scene, rng: random.Random) -> str:
    """Relations between groups in many words, then every group no relation names:
    'a yellow triangle is further left than two green dots; also three blue squares'."""
    g = scene.groups()
    rels = C.relations(scene)
    if not rels:
        return prose_count(scene, rng)
    picked = rng.sample(rels, min(len(rels), rng.choice([1, 1, 2, 3])))
    clauses = []
    for a, r, b in picked:
        verb = rng.choice(["", "", "is ", "sits ", "lies "]) if len(g[a]) == 1 else rng.choice(["", "", "are "])
        clauses.append(f"{noun_phrase(len(g[a]), *a, rng, group_size(g[a]) if rng.random() < 0.3 else None)} "
                       f"{verb}{rng.choice(RELATION_WORDS[r])} "
                       f"{noun_phrase(len(g[b]), *b, rng, group_size(g[b]) if rng.random() < 0.3 else None)}")
    text = listing(clauses, rng) if len(clauses) < 3 else "; ".join(clauses)
    named = {k for a, _, b in picked for k in (a, b)}
    rest = [k for k in g if k not in named]
    if rest:
        text += rng.choice([", and also ", "; also ", ". There is also ", ", plus "]) + listing(
            [noun_phrase(len(g[k]), *k, rng) for k in rest], rng)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def scene_walk(scene: Scene, rng: random.Random) -> str:
    """Every object with its size and place, in many sentence shapes: 'Top left: a big red circle. A little
    blue square sits right in the middle.' Objects in reading order or shuffled."""
    objs = list(scene.objects)
    if rng.random() < 0.5:
        objs.sort(key=lambda o: (C.cell(o.x, o.y), o.x))
    else:
        rng.shuffle(objs)
    sents = []
    if rng.random() < 0.6:
        n = len(objs)
        sents.append(rng.choice([f"{C.NUMBER_WORDS[n].capitalize()} shape{'s' if n > 1 else ''} on a {background(scene, rng)} background.",
                                 f"A {background(scene, rng)} canvas with {number(n, rng, 'mixed')} shape{'s' if n > 1 else ''}.",
                                 f"The image shows {number(n, rng, 'words')} flat shape{'s' if n > 1 else ''}."]))
    for o in objs:
        row, col = C.cell(o.x, o.y)
        place = rng.choice(PLACE_WORDS[row][col])
        thing = noun_phrase(1, o.colour, o.shape, rng, o.size, "words")
        form = rng.randrange(5)
        if form == 0:
            sents.append(f"{thing[0].upper() + thing[1:]} {rng.choice(BE_PLACED)} {place}.")
        elif form == 1:
            sents.append(f"{place[0].upper() + place[1:]} there is {thing}.")
        elif form == 2:
            sents.append(f"{place[0].upper() + place[1:]}, {thing}.")
        elif form == 3:
            sents.append(f"There is {thing} {place}.")
        else:
            sents.append(f"{place.split(' ', 1)[1].capitalize() if ' ' in place else place.capitalize()}: {thing}.")
    if rng.random() < 0.3:   # the objects' sentences as a numbered list
        head = sents[: len(sents) - len(objs)]
        return " ".join([*head, numbered(sents[len(head):], rng)])
    return " ".join(sents)


def inventory(scene: Scene, rng: random.Random) -> str:
    """A structured list by group, sizes per object, places sometimes:
    'Objects: red circle x2 (one large, one small); blue square (small, upper left).'"""
    parts = []
    with_place = rng.random() < 0.5
    for (colour, shape), objs in groups_in_order(scene, rng):
        details = []
        for o in objs:
            bits = [rng.choice(SIZE_WORDS[o.size])]
            if with_place:
                row, col = C.cell(o.x, o.y)
                bits.append(bare_place(rng.choice(PLACE_WORDS[row][col])))
            details.append(", ".join(bits) if len(objs) == 1 else " ".join(bits))
        head = f"{rng.choice(COLOUR_WORDS[colour])} {SHAPE_WORDS[shape][0][0]}"
        count = f" x{len(objs)}" if len(objs) > 1 and rng.random() < 0.5 else (f" ({C.NUMBER_WORDS[len(objs)]})" if len(objs) > 1 else "")
        parts.append(f"{head}{count} ({'; '.join(details)})")
    lead = rng.choice(["Objects: ", "Shapes: ", "Contents: ", ""])
    return lead + "; ".join(parts) + rng.choice(["", "."])


def british_detailed(scene: Scene, rng: random.Random) -> str:
    """A long description in British spelling, group by group, with every object's size and place and a
    relation or two: colour, grey, centre."""
    g = scene.groups()
    n = len(scene.objects)
    bg = scene.background.replace("gray", "grey")
    sents = [rng.choice([f"The picture is a {bg} rectangle holding {C.NUMBER_WORDS[n]} coloured shape{'s' if n > 1 else ''}.",
                         f"Against a plain {bg} backdrop we see {C.NUMBER_WORDS[n]} flat, single-colour shape{'s' if n > 1 else ''}."])]
    for (colour, shape), objs in groups_in_order(scene, rng):
        plural = len(objs) > 1
        sents.append(f"{noun_phrase(len(objs), colour, shape, rng, None, 'words', 0.4).capitalize()} "
                     f"{'are' if plural else 'is'} drawn" + (":" if plural else "") + ("" if plural else ","))
        places = []
        for o in objs:
            row, col = C.cell(o.x, o.y)
            place = rng.choice(PLACE_WORDS[row][col]).replace("center", "centre")
            size = rng.choice(SIZE_WORDS[o.size])
            places.append(f"one {size} {place}" if plural else f"{size}, {place}")
        sents[-1] += " " + listing(places, rng) + "."
    for a, r, b in rng.sample(C.relations(scene), min(2, len(C.relations(scene)))):
        sents.append(f"The {a[0]} {C.PLURALS[a[1]] if len(g[a]) > 1 else a[1]} {'are' if len(g[a]) > 1 else 'is'} "
                     f"{rng.choice(RELATION_WORDS[r])} the {b[0]} {C.PLURALS[b[1]] if len(g[b]) > 1 else b[1]}.")
    sents.append(rng.choice(["No shapes overlap, and the colours are flat with no shading.",
                             "The colours are uniform and nothing else is in the frame."]))
    return " ".join(sents)


REQUESTS = ["Generate an image of {}.", "Create {}.", "Make me a picture with {}.", "Render {}.", "I want {}.",
            "Give me {}.", "Paint {}.", "Sketch {}", "Produce an image showing {}.", "Need {}.", "Picture {}.",
            "Generate: {}", "Create a canvas with {}, please."]


def request(scene: Scene, rng: random.Random) -> str:
    """What people type into an image generator: a request, not a description, naming groups with their counts,
    a relation, or every object one at a time ("a red circle at the top, another red circle bottom left and a
    big blue box") with no total stated, so how many objects to plan is read from the objects named."""
    g = scene.groups()
    form = rng.random()
    rels = C.relations(scene)
    if form < 0.35:                         # groups with counts
        body = listing([noun_phrase(len(objs), c, s, rng, group_size(objs) if rng.random() < 0.3 else None)
                        for (c, s), objs in groups_in_order(scene, rng)], rng)
    elif form < 0.6 and rels:               # one relation, then the groups it leaves out
        a, r, b = rng.choice(rels)
        body = (f"{noun_phrase(len(g[a]), *a, rng)} {rng.choice(RELATION_WORDS[r])} {noun_phrase(len(g[b]), *b, rng)}")
        rest = [noun_phrase(len(g[k]), *k, rng) for k in g if k not in (a, b)]
        if rest:
            body += rng.choice([" and ", ", plus ", ", with ", "; add "]) + listing(rest, rng)
    else:                                   # object by object, a place for most, "another" for a repeat
        objs = list(scene.objects)
        rng.shuffle(objs)
        seen, parts = set(), []
        for o in objs:
            size = rng.choice(SIZE_WORDS[o.size]) + " " if rng.random() < 0.5 else ""
            colour = rng.choice(COLOUR_WORDS[o.colour]) if rng.random() < 0.5 else o.colour
            rest = f"{size}{colour} {rng.choice(SHAPE_WORDS[o.shape])[0] if rng.random() < 0.5 else o.shape}"
            repeat = (o.colour, o.shape) in seen and rng.random() < 0.6
            thing = f"{'another' if repeat else article(rng.choice(['a', 'a', 'one']), rest)} {rest}"
            seen.add((o.colour, o.shape))
            if rng.random() < 0.75:
                row, col = C.cell(o.x, o.y)
                place = rng.choice(PLACE_WORDS[row][col])
                thing = f"{thing} {place}" if rng.random() < 0.7 else f"{thing} ({bare_place(place)})"
            parts.append(thing)
        if rng.random() < 0.25:
            return (rng.choice(["Generate an image with these shapes:", "Make this picture:", "Create the following",
                                "Paint, in order:", "Render these"]) + " "
                    + numbered([p[0].upper() + p[1:] + "." for p in parts], rng))
        body = listing(parts, rng) if rng.random() < 0.65 else "; ".join(parts)
    return rng.choice(REQUESTS).format(body)


def noun_first(scene: Scene, rng: random.Random) -> str:
    """Attributes after the noun, as people write when the thing comes to mind before its looks: 'a circle, red
    and small, in the upper-left quadrant; three triangles (all cobalt): one top-left, one at the midpoint and one
    low on the right; a square painted green'. One clause per group, most objects placed, clauses joined loosely,
    sometimes as instructions ("Position a box that is blue at the top.")."""
    instruct = rng.random() < 0.3
    clauses = []
    for (colour, shape), objs in groups_in_order(scene, rng):
        n = len(objs)
        c = rng.choice(COLOUR_WORDS[colour]) if rng.random() < 0.5 else colour
        sing, plural = rng.choice(SHAPE_WORDS[shape]) if rng.random() < 0.4 else SHAPE_WORDS[shape][0]
        size = group_size(objs)
        z = rng.choice(SIZE_WORDS[size]) if size and rng.random() < 0.7 else None
        num, noun = (rng.choice(["a", "a", "one", "a single", "a lone"]), sing) if n == 1 else (number(n, rng, "mixed"), plural)
        every = rng.choice(["both ", ""] if n == 2 else ["all ", ""]) if n > 1 else ""
        form = rng.randrange(8) if n > 1 else rng.choice([0, 1, 2, 3, 4, 5, 7])
        if form == 0:                       # a circle, red and small
            text = f"{noun}, {every}{c}" + (f" and {z}" if z else "")
        elif form == 1:                     # a circle (red, small)
            text = f"{noun} ({every}{c}" + (f", {z}" if z else "") + ")"
        elif form == 2:                     # a circle that is red and small
            text = (f"{noun} {rng.choice(['that', 'which'])} {'is' if n == 1 else 'are'} {every}{c}"
                    + (f" and {z}" if z else ""))
        elif form == 3:                     # a small circle, red
            text = (f"{z} " if z else "") + f"{noun}, {every}{c}"
        elif form == 4:                     # a circle painted red
            text = (f"{z} " if z else "") + f"{noun} {rng.choice(['painted', 'shaded', 'filled with'])} {c}"
        elif form == 5:                     # a circle: red, small
            text = f"{noun} {rng.choice(['—', '-', ':'])} {every}{c}" + (f", {z}" if z else "")
        elif form == 6:                     # circles, three of them, red (the count after the noun too)
            count = C.NUMBER_WORDS[n] if rng.random() < 0.7 else str(n)
            text = (f"{z} " if z else "") + f"{noun}, {count} {rng.choice(['of them', 'in all', 'in total'])}, {c}"
        else:                               # a circle in red, small
            text = (f"{z} " if z and rng.random() < 0.5 else "") + f"{noun} in {c}"
            text += f", {z}" if z and not text.startswith(z) else ""
        if form != 6:
            text = f"{article(num, text)} {text}"
        if rng.random() < 0.85:             # every object placed
            places = []
            for o in objs:
                row, col = C.cell(o.x, o.y)
                place = rng.choice(PLACE_WORDS[row][col])
                places.append(place if n == 1 else f"one {'' if size else rng.choice(SIZE_WORDS[o.size]) + ' '}{place}")
            if n == 1:
                how = rng.random()
                text += (f" {places[0]}" if how < 0.5 else f", {rng.choice(['located', 'placed', 'sitting', 'found'])} {places[0]}"
                         if how < 0.8 else f", which {rng.choice(BE_PLACED)} {places[0]}")
            else:
                text += rng.choice([": ", " — ", ", "]) + listing(places, rng)
        clauses.append(text)
    if instruct:
        verbs = ["Set {}.", "Position {}.", "Include {}.", "There should be {}.", "Have {}.", "Insert {}."]
        body = " ".join(rng.choice(verbs).format(t) for t in clauses)
    else:
        body = clauses[0]
        for i, t in enumerate(clauses[1:]):
            join = ". Finally, " if i == len(clauses) - 2 and rng.random() < 0.3 else rng.choice(
                [". ", "; ", ", then ", ". Also, ", ". In addition, ", ", with ", " — and "])
            body += join + (t[0].upper() + t[1:] if join == ". " else t)
        body = body[0].upper() + body[1:] + "."
    opener = rng.choice(["", "", "", "Scene description: ", "Composition: ", "In this image: ", "Item by item: ",
                         "Description: "])
    text = opener + body
    if rng.random() < 0.25:
        total = len(scene.objects)
        text += f" {C.NUMBER_WORDS[total].capitalize()} shape{'s' if total > 1 else ''} in all."
    if rng.random() < 0.3:
        text += f" The background is {background(scene, rng)}."
    return text


# the original templates (captions.py), spatial naming every group, as one more voice
def templates(scene: Scene, rng: random.Random) -> str:
    kind = rng.choice(["count", "spatial", "detailed"])
    return C.spatial(scene, rng, complete=True) if kind == "spatial" else C.WRITERS[kind](scene, rng)


CAPTIONERS = {"terse": terse, "prose_count": prose_count, "relational": relational, "scene_walk": scene_walk,
              "inventory": inventory, "british_detailed": british_detailed, "templates": templates, "request": request,
              "noun_first": noun_first}


def caption(scene: Scene, rng: random.Random, names=tuple(CAPTIONERS)) -> dict[str, str]:
    """One caption from each named captioner."""
    unknown = [n for n in names if n not in CAPTIONERS]
    if unknown:
        raise ValueError(f"unknown captioners {unknown}; known: {', '.join(CAPTIONERS)}")
    return {n: CAPTIONERS[n](scene, rng) for n in names}


@functools.cache
def _group_pattern(colour: str, shape: str) -> re.Pattern:
    """A group named colour first ("two crimson discs"), or noun first with its colour after, as noun_first writes
    it ("discs, both crimson", "a disc (crimson, small)", "a disc in crimson", "discs, two of them, crimson")."""
    alt = lambda words: "|".join(map(re.escape, sorted(words, key=len, reverse=True)))
    colours = alt({colour, *COLOUR_WORDS[colour]})
    shapes = alt({w for pair in SHAPE_WORDS[shape] for w in pair} | {shape, C.PLURALS[shape]})
    between = r"(?:\w+\s+(?:of\s+them|in\s+all|in\s+total)|all|both|%s)(?:\s*,\s*|\s+and\s+|\s+)" % alt(
        {w for ws in SIZE_WORDS.values() for w in ws})
    after = r"(?:\s*[,(:—-]\s*|\s+(?:that|which)\s+(?:is|are)\s+|\s+(?:painted|shaded|filled\s+with|in)\s+)"
    return re.compile(r"\b(?:%s)\s+(?:%s)\b|\b(?:%s)%s(?:%s){0,2}(?:%s)\b" % (colours, shapes, shapes, after, between, colours),
                      re.IGNORECASE)


def mention_order(text: str, scene: Scene) -> dict[tuple[str, str], int]:
    """Where each (colour, shape) group of `scene` is first named in a caption written by these captioners (a
    character offset; groups not found are left out). Training only: a layout planner learns to list objects in
    the order the prompt names them, as LLM layout planners do, which makes "A left of B" a question about the
    first object listed rather than about which of two objects the sentence is about (the order by label left
    relations at chance)."""
    out = {}
    for key in scene.groups():
        m = _group_pattern(*key).search(text)
        if m:
            out[key] = m.start()
    return out


@functools.cache
def _place_pattern() -> tuple[re.Pattern, dict[str, tuple[int, int]]]:
    """Every place phrase these captioners and the templates use (with inventory's bare forms: "upper left"),
    longest first so "in the upper left" is not read as "left"; not when a relation follows ("left of"), but when
    the canvas does ("at the bottom of the image": the templates' form, which was missed, so those objects fell
    back to x order)."""
    cells = {}
    for row in range(3):
        for col in range(3):
            for phrase in [*PLACE_WORDS[row][col], C.PLACES[row][col]]:
                for p in (phrase, bare_place(phrase), phrase.replace("center", "centre")):
                    cells.setdefault(p.lower(), (row, col))
    alts = "|".join(map(re.escape, sorted(cells, key=len, reverse=True)))
    canvas = r"\s+the\s+(?:image|picture|canvas|frame|scene)\b"
    return re.compile(r"\b(%s)\b(?!\s+(?:side\s+of\b|than\b|of\b(?!%s))|-hand\s+side\s+of\b)" % (alts, canvas),
                      re.IGNORECASE), cells


def object_order(text: str, scene: Scene, by_place: bool = False) -> list[tuple[float, float]]:
    """A sort key per object of `scene` for a caption written by these captioners: where its group is first
    named, then where the caption places it (inf where not found). Groups in the order the caption names them
    (`mention_order`), and within a group of several, objects in the order the caption places them, so "three
    blue triangles: one in the upper right, one in the centre, one in the upper left" is listed in that order
    rather than by x (which the planner had to work out from the words).

    Each place phrase belongs to the group named nearest to it in its sentence (else the group named last before
    it), and a group's places are matched to its objects in the order they come. Keyed instead by where each
    cell is first named anywhere, a group's order followed other groups' sentences ("... a green circle in the
    centre. Two orange squares: one in the lower right, one in the centre" listed the centre square first), so
    the k-th object of a group was not the k-th one the caption places, and long prompts' places were learned
    at 0.4-0.6 per object.

    `by_place`: each placed object keyed by where its place is named, an unplaced one by where its group is
    first named, so objects come in the order the caption walks through them. Listed group by group, a caption
    that places one object per sentence in any order ("A red circle on the left. A blue square in the centre. A
    red circle at the top.") has the planner jump back through the text to find a group's next object; whole
    such scenes were planned right 0.28 of the time, against 0.58-0.60 where each group is described in one go."""
    keys = list(scene.groups())
    ends = [m.start() for m in re.finditer(r"[.!?;](?:\s|$)", text)]
    sentence = lambda at: bisect.bisect_left(ends, at)
    # every mention of every group, in text order, with its sentence; a group's first one is `mention_order`'s
    named = sorted((m.start(), key) for key in keys for m in _group_pattern(*key).finditer(text))
    named = [(pos, sentence(pos), key) for pos, key in named]
    first: dict[tuple[str, str], int] = {}
    for pos, _, key in named:
        first.setdefault(key, pos)
    pattern, cells = _place_pattern()
    placed: dict = {key: [] for key in keys}
    for m in pattern.finditer(text):
        at, here = m.start(), sentence(m.start())
        before = [key for pos, _, key in named if pos < at]
        after = [key for pos, s, key in named if s == here and pos > at]
        # the group named last before it in its sentence ("a red cube (top left), a blue box"), else the first after
        # it there ("In the centre there is a blue box"), else the last before it anywhere (read by nearest either
        # way, requests' places went to the object named after them)
        in_sentence = [key for pos, s, key in named if s == here and pos < at]
        owner = (in_sentence[-1] if in_sentence else after[0] if after
                 else before[-1] if before else None)   # None: no group named in a known form
        placed.setdefault(owner, []).append((at, cells[m.group(1).lower()]))
    inf = float("inf")
    out = [(first.get((o.colour, o.shape), inf), inf) for o in scene.objects]
    left = list(range(len(scene.objects)))
    for key, places in placed.items():   # the unowned places last, each to any object still unplaced in its cell
        for at, where in places:
            match = next((i for i in left if C.cell(scene.objects[i].x, scene.objects[i].y) == where
                          and key in (None, (scene.objects[i].colour, scene.objects[i].shape))), None)
            if match is not None:
                left.remove(match)
                out[match] = (out[match][0], at)
    if by_place:
        return [(group if at == inf else at, 0.0) for group, at in out]
    return out
