import random

import numpy as np
import pytest

from limner.world import captions as C
from limner.world.parse import parse_prompt
from limner.world.scene import BACKGROUNDS, COLOURS, SIZES, Obj, Scene, box_gap, render, sample_scene
from limner.world.scorer import Constraints, detect, score
from limner.world.suites import SUITES, build


def scenes(n, seed=0):
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_scenes_follow_the_spec():
    for s in scenes(300):
        assert s.background in BACKGROUNDS
        assert 1 <= len(s.objects) <= 8
        boxes = [o.box() for o in s.objects]
        for b in boxes:
            assert 0 <= b[0] and b[2] <= 1 and 0 <= b[1] and b[3] <= 1
        for i in range(len(boxes)):
            for j in range(i):
                assert box_gap(boxes[i], boxes[j]) >= 0.02
        assert all(o.colour in COLOURS and o.size in SIZES for o in s.objects)


def test_counts_up_to_eight_occur_in_one_group():
    big = [max(len(v) for v in s.groups().values()) for s in scenes(500)]
    assert set(range(1, 9)) <= set(big)


@pytest.mark.parametrize("res", [32, 64, 257, 2048])
def test_render_exact_palette_at_any_resolution(res):
    scene = Scene("pale blue", [Obj("square", "red", "large", 0.3, 0.3), Obj("circle", "blue", "small", 0.7, 0.7),
                                Obj("triangle", "yellow", "large", 0.3, 0.75)])
    px = np.asarray(render(scene, res))
    assert px.shape == (res, res, 3)
    assert tuple(px[0, 0]) == BACKGROUNDS["pale blue"]
    assert tuple(px[int(0.3 * res), int(0.3 * res)]) == COLOURS["red"]
    assert tuple(px[int(0.7 * res), int(0.7 * res)]) == COLOURS["blue"]
    # the triangle points up: its bottom half holds three times the pixels of its top half
    tri = np.all(px == COLOURS["yellow"], axis=-1)
    top, bottom = int((0.75 - 0.0866) * res), int((0.75 + 0.0866) * res)
    mid = (top + bottom) // 2
    assert tri[mid:bottom + 1].sum() > 2 * tri[top:mid].sum()


def test_area_matches_geometry():
    res = 400
    for shape, area in [("square", 0.2**2), ("circle", np.pi * 0.1**2), ("triangle", 0.2 * 0.2 * np.sqrt(3) / 4)]:
        px = np.asarray(render(Scene("ivory", [Obj(shape, "green", "large", 0.5, 0.5)]), res))
        bg, fg = np.array(BACKGROUNDS["ivory"], float), np.array(COLOURS["green"], float)
        cover = ((px - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))  # anti-aliased pixels count in part
        assert abs(cover.sum() / res**2 - area) / area < 0.005, shape


@pytest.mark.parametrize("res", [64, 128])
def test_scorer_reads_rendered_scenes_exactly(res):
    all_scenes = scenes(400, seed=res)
    ok = [score(detect(render(s, res)), Constraints.from_scene(s))["correct"] for s in all_scenes]
    assert np.mean(ok) >= 0.995


def test_scorer_catches_wrong_images():
    rng = random.Random(5)
    wrong = 0
    for _ in range(100):
        s = sample_scene(rng)
        cons = Constraints.from_scene(s)
        s.objects = s.objects[:-1] if len(s.objects) > 1 else [Obj("square" if s.objects[0].shape != "square" else "circle",
                                                                   s.objects[0].colour, s.objects[0].size, 0.5, 0.5)]
        wrong += not score(detect(render(s, 64)), cons)["correct"]
    assert wrong == 100


def test_caption_kinds():
    rng = random.Random(1)
    for s in scenes(100):
        caps = C.captions(s, rng)
        assert set(caps) == set(C.KINDS)
        assert 60 <= len(caps["detailed"].split()) <= 170
        for (colour, _shape), _ in s.groups().items():
            assert colour in caps["count"] and colour in caps["detailed"]


def test_count_caption_parses_back_to_the_scene():
    rng = random.Random(2)
    for s in scenes(200, seed=3):
        cons = parse_prompt(C.count(s, rng))
        counts = {(g["colour"], g["shape"]): 0 for g in cons.groups}
        for g in cons.groups:
            counts[(g["colour"], g["shape"])] += g["count"]
        assert counts == {k: len(v) for k, v in s.groups().items()}


def test_complete_spatial_caption_names_every_group_and_true_relations():
    rng, partial = random.Random(4), 0
    for s in scenes(200, seed=5):
        truth = {k: len(v) for k, v in s.groups().items()}
        cons = parse_prompt(C.spatial(s, rng, complete=True))
        named = {}
        for g in cons.groups:  # a group in two relations is named twice, with its number each time
            assert named.setdefault((g["colour"], g["shape"]), g["count"]) == g["count"]
        assert named == truth
        held = {(tuple(a), r, tuple(b)) for a, r, b in C.relations(s)}
        assert all((tuple(r["a"]), r["rel"], tuple(r["b"])) in held for r in cons.relations)
        partial += len({(g["colour"], g["shape"]) for g in parse_prompt(C.spatial(s, rng)).groups}) < len(truth)
    assert partial > 0  # the plain spatial caption does leave groups out, which is what `complete` fixes


def test_parse_spatial_prompt():
    c = parse_prompt("a yellow triangle to the left of two green circles")
    assert c.groups == [{"colour": "yellow", "shape": "triangle", "count": 1},
                        {"colour": "green", "shape": "circle", "count": 2}]
    assert c.relations == [{"a": ["yellow", "triangle"], "rel": "left of", "b": ["green", "circle"]}]
    assert parse_prompt("a photo of a cat") is None


def test_suites_are_deterministic_and_satisfiable():
    for name in SUITES:
        a, b = build(name, 3), build(name, 3)
        assert a == b and len({it["id"] for it in a}) == len(a)
    counts = {it["tags"]["count"] for it in build("counting", 2)}
    assert counts == set(range(1, 9))
    for it in build("detailed", 3):
        assert 60 <= it["tags"]["words"] <= 170
        scene = Scene.from_dict(it["tags"]["scene"])
        assert score(detect(render(scene, 64)), Constraints.from_dict(it["constraints"]))["correct"]
    with pytest.raises(ValueError, match="unknown suite"):
        build("nope")


def test_parse_reads_the_summary_of_a_detailed_caption():
    from limner.world.parse import parse_prompt

    text = ("On a plain pale blue canvas there are six shapes with crisp edges. There are 5 yellow circles. "
            "A small yellow circle sits on the right. One small yellow circle is placed on the left of the image. "
            "There is a orange square. One small orange square is placed in the centre. Nothing else appears.")
    c = parse_prompt(text)
    assert sorted((g["colour"], g["shape"], g["count"]) for g in c.groups) == [("orange", "square", 1),
                                                                              ("yellow", "circle", 5)]
    # short prompts are read whole
    assert len(parse_prompt("there are two red circles. a blue square").groups) == 2


def test_detailed_caption_parses_back_to_the_scene():
    """Sizes and places from the object sentences, the stated relations: the constraints the suite grades."""
    rng, relations = random.Random(6), 0
    for s in scenes(300, seed=7):
        cons = parse_prompt(C.detailed(s, rng))
        truth = Constraints.from_scene(s, "detailed")
        key = lambda groups: sorted((g["colour"], g["shape"], g["size"], g["count"]) for g in groups)
        assert key(cons.groups) == key(truth.groups)
        assert sorted((o.colour, o.shape, o.size, C.cell(o.x, o.y)) for o in s.objects) == sorted(
            (o["colour"], o["shape"], o["size"], tuple(o["cell"])) for o in cons.objects)
        held = {(tuple(a), r, tuple(b)) for a, r, b in C.relations(s)}
        assert all((tuple(r["a"]), r["rel"], tuple(r["b"])) in held for r in cons.relations)
        relations += len(cons.relations)
    assert relations > 100


def test_positions_score_where_described_objects_stand():
    scene = Scene("ivory", [Obj("circle", "red", "large", 0.2, 0.2), Obj("square", "blue", "large", 0.8, 0.8)])
    img = render(scene, 64)
    upper_left = {"colour": "red", "shape": "circle", "size": "large", "cell": [0, 0]}
    lower_right = {"colour": "blue", "shape": "square", "size": "large", "cell": [2, 2]}
    groups = [{"colour": "red", "shape": "circle", "count": 1}, {"colour": "blue", "shape": "square", "count": 1}]
    assert score(detect(img), Constraints(groups, objects=[upper_left, lower_right]))["positions"] == 1.0
    swapped = [dict(upper_left, cell=[2, 2]), dict(lower_right, cell=[0, 0])]
    assert score(detect(img), Constraints(groups, objects=swapped))["positions"] == 0.0
    assert score(detect(img), Constraints(groups))["positions"] == 1.0  # nothing described, nothing to miss


def test_the_whole_scene_of_a_detailed_prompt_includes_where_it_puts_each_object():
    scene = Scene("ivory", [Obj("circle", "red", "large", 0.2, 0.2), Obj("square", "blue", "large", 0.8, 0.8)])
    groups = [{"colour": "red", "shape": "circle", "count": 1, "size": "large"},
              {"colour": "blue", "shape": "square", "count": 1, "size": "large"}]
    placed = [{"colour": "red", "shape": "circle", "size": "large", "cell": [0, 0]},
              {"colour": "blue", "shape": "square", "size": "large", "cell": [2, 2]}]
    right = score(detect(render(scene, 64)), Constraints(groups, objects=placed))
    assert right["correct"] and right["content_ok"]
    scene.objects[0].x = 0.5   # the red circle drawn at the top instead of the upper left
    moved = score(detect(render(scene, 64)), Constraints(groups, objects=placed))
    assert moved["content_ok"] and moved["positions"] == 0.5 and not moved["correct"]


def test_an_object_of_an_asked_kind_but_an_unasked_size_is_an_extra():
    scene = Scene("ivory", [Obj("square", "purple", "large", 0.2, 0.2), Obj("square", "purple", "small", 0.8, 0.8)])
    one_large = [{"colour": "purple", "shape": "square", "count": 1, "size": "large"}]
    r = score(detect(render(scene, 64)), Constraints(one_large))
    assert r["count_ok"] and r["extras"] == 1 and not r["correct"]


def test_the_detailed_suite_grades_what_each_prompt_states():
    """The relations a detailed prompt names (read back by the parser, which the verifier uses) and the place
    of every object of its scene; the scene's other relations are not checked."""
    unstated = stated = 0
    for it in build("detailed", 5):
        cons, said = Constraints.from_dict(it["constraints"]), parse_prompt(it["prompt"])
        key = lambda rels: sorted((tuple(r["a"]), r["rel"], tuple(r["b"])) for r in rels)
        assert key(cons.relations) == key(said.relations)
        stated += len(cons.relations)
        cells = lambda objs: sorted((o["colour"], o["shape"], o["size"], tuple(o["cell"])) for o in objs)
        scene = Scene.from_dict(it["tags"]["scene"])
        assert cells(cons.objects) == cells(said.objects) and len(cons.objects) == len(scene.objects)
        unstated += len(C.relations(scene)) > len(cons.relations)
    assert unstated > 0 and stated > 10


def test_layout_plan_puts_every_object_in_its_stated_cell():
    from limner.world import layout

    for it in build("detailed", 6):
        objects = parse_prompt(it["prompt"]).objects
        plan = layout.plan(objects, random.Random(7))
        assert plan is not None and len(plan) == len(objects)
        assert plan == layout.plan(objects, random.Random(7))  # a seed fixes the plan
        assert plan != layout.plan(objects, random.Random(8))
        wanted = sorted((f"{o['size']} {o['colour']} {o['shape']}", tuple(o["cell"])) for o in objects)
        assert sorted((p, C.cell((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)) for p, b in plan) == wanted
        assert all(0 < b[0] < b[2] < 1 and 0 < b[1] < b[3] < 1 for _, b in plan)
        assert all(box_gap(a, b) >= 0.05 for i, (_, a) in enumerate(plan) for _, b in plan[i + 1:])
        # drawn as a scene, the plan is what the scorer reads back: every object in its cell
        size = {p: p.split()[0] for p, _ in plan}
        objs = [Obj(p.split()[2], p.split()[1], size[p], (b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for p, b in plan]
        assert score(detect(render(Scene("ivory", objs), 128)), parse_prompt(it["prompt"]))["positions"] == 1.0
    crowded = [{"colour": "red", "shape": "square", "size": "large", "cell": [0, 0]}] * 4
    assert layout.plan(crowded, random.Random(0)) is None  # four large squares do not fit in one cell
