"""The learned layout planner: decoding keeps boxes in the canvas and apart, a tiny one trains through
`limner train` and its plans read back into the objects its captions ask for, and a model folder carrying
one generates through it with no parser."""
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from limner.models import folder
from limner.models.grounding import tensors
from limner.models.planner import Planner, PlannerConfig, layout_loss
from limner.train import load_config, run
from limner.train.planner import scenes_and_captions, with_captions, world_labels
from limner.world.layout import of_scene
from limner.world.scene import box_gap, sample_scene

ROOT = Path(__file__).resolve().parents[1]


def untrained(max_objects=8):
    torch.manual_seed(0)
    return Planner(PlannerConfig(labels=world_labels(), width=32, depth=1, heads=2, max_objects=max_objects)).eval()


def test_tokens_round_trip_and_the_loss_reads_every_real_token():
    p = untrained()
    scene = sample_scene(random.Random(4))
    layout = of_scene(scene.objects)
    tokens = p.tokens_of(layout)
    assert len(tokens) == p.length and tokens[len(layout) * 5] == p.eos and tokens[-1] == -1
    names = [p.cfg.labels[t] for t in tokens[: len(layout) * 5 : 5]]
    assert Counter(names) == Counter(name for name, _ in layout)
    t = torch.tensor([tokens])
    states, mask = torch.randn(1, 6, 384), torch.ones(1, 6, dtype=torch.bool)
    loss = layout_loss(p(t[:, :-1], states, mask), t)
    assert torch.isfinite(loss) and loss > 0
    worse = t.clone()
    worse[0, len(layout) * 5 + 1:] = 0   # padding read as tokens would change the loss
    assert layout_loss(p(worse[:, :-1], states, mask), worse) != loss


def test_decoding_keeps_boxes_inside_the_canvas_and_apart():
    p = untrained()
    with torch.no_grad():   # sizes as a trained planner gives them (10% of the side); places left untrained
        bins = p.cfg.bins
        p.coord_head.weight[: 2 * bins] = 0
        p.coord_head.bias[: 2 * bins] = -10
        p.coord_head.bias[[6, bins + 6]] = 10
    states, mask = torch.randn(6, 5, 384), torch.ones(6, 5, dtype=torch.bool)
    layouts = p.plan(states, mask, seeds=list(range(6)))
    assert all(1 <= len(lay) <= 8 for lay in layouts)
    for lay in layouts:
        boxes = [b for _, b in lay]
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert all(box_gap(boxes[i], other) >= 0.02 - 1e-6 for other in boxes[i + 1:])
    # the same seed plans the same layout; tensors for the denoiser have one token per object
    assert p.plan(states[:1], mask[:1], [0]) == layouts[:1]
    class Phrases:   # a stand-in phrase embedder
        dim = 4

        def __call__(self, text):
            return torch.ones(4)

    phrases, boxes, gmask = tensors(layouts, Phrases())
    assert gmask.sum(1).tolist() == [len(lay) for lay in layouts]


def test_decoding_keeps_boxes_wider_apart_where_the_planner_does_not_mind():
    """`apart`: a box 0.05 from the others where the bins that allows hold at least `apart_mass` of the probability,
    else only `gap` (0.02): a planner sure of a close place keeps it, an unsure one is kept away."""
    p = untrained()
    centres = (torch.arange(p.cfg.bins) + 0.5) / p.cfg.bins
    placed = [(0.41, 0.40, 0.51, 0.50)]
    so_far = torch.tensor([0, 6, 6, 29])          # label, w, h (0.10), x (0.46: over the placed box)
    close, far = 37, 38                           # y centres 0.586 (0.035 below the box) and 0.602 (0.051)
    assert 0.02 <= centres[close] - 0.0508 - 0.50 < 0.05 <= centres[far] - 0.0508 - 0.50

    def draws(logits):
        return {int(p._place(logits, 4, so_far, placed, centres, torch.Generator().manual_seed(s), 1.0)) for s in range(60)}

    sure = torch.full((p.cfg.bins,), -20.0)
    sure[close] = 0.0
    assert draws(sure) == {close}                 # the close place keeps nearly all the probability: kept
    spread = torch.full((p.cfg.bins,), -20.0)
    spread[close : close + 9] = 0.0
    assert close not in draws(spread)             # 8 of 9 equal bins lie 0.05 away: only those are drawn
    p.cfg.apart = 0.0
    assert close in draws(spread)                 # without `apart`: the close bin too


def test_coarse_terms_score_the_span_a_place_falls_in():
    """Two place distributions with the same fine-bin likelihood of the truth: the coarse terms prefer the one
    whose mass sits in the truth's half (what a place word fixes), and without them the loss cannot tell."""
    bins, target = 64, 40                               # the right half
    near = torch.full((1, bins), -5.0)
    far = near.clone()
    near[0, 32:] = 0.0                                  # mass spread over the right half
    far[0, :31] = 0.0                                   # ... over the left half (as many bins: same partition sum)
    near[0, target] = far[0, target] = 2.0
    tokens = torch.tensor([[0, 0, 0, target, 0]])       # a label, then w, h, x (the scored one), y
    def logits(x_row):
        coord = torch.full((1, 5, 4, bins), -5.0)
        coord[0, :, :, 0] = 5.0                         # every other coordinate sure of bin 0 (right)
        coord[0, 3, 2] = x_row[0]                       # the x slot's prediction
        label = torch.full((1, 5, 3), -5.0)
        label[0, :, 0] = 5.0
        return label, coord
    fine_near, fine_far = layout_loss(logits(near), tokens), layout_loss(logits(far), tokens)
    assert abs(fine_near - fine_far) < 1e-4
    assert layout_loss(logits(near), tokens, (2, 4)) < layout_loss(logits(far), tokens, (2, 4)) - 0.25
    with pytest.raises(ValueError, match="does not divide"):
        layout_loss(logits(near), tokens, (3,))


def test_text_cache_blocks_reencode_only_new_blocks(tmp_path):
    from limner.train.data import cached_text_blocks

    class Counting:   # a stand-in encoder that counts what it encodes
        name, max_length, seen = "counting", 16, 0

        def encode(self, texts):
            Counting.seen += len(texts)
            return [torch.full((len(t) % 3 + 1, 2), float(len(t))) for t in texts]

    first = [["a red circle", "two blue squares"], ["a red circle", "one green dot"]]
    flat, offsets, index = cached_text_blocks(Counting(), first, str(tmp_path))
    assert Counting.seen == 4 and set(index) == {"a red circle", "two blue squares", "one green dot"}
    j = index["one green dot"]
    assert torch.equal(flat[offsets[j] : offsets[j + 1]], torch.full((len("one green dot") % 3 + 1, 2), 13.0).half())
    Counting.seen = 0
    cached_text_blocks(Counting(), first + [["three yellow triangles"]], str(tmp_path))
    assert Counting.seen == 1   # the first two blocks came from the cache


def test_the_curriculum_draws_simple_scenes_with_placing_captions_first():
    import numpy as np
    from limner.train.planner import PlannerTask

    cfg = load_config(ROOT / "configs/planner-default.yaml", overrides=["data.scenes=200", "data.easy_steps=5"])
    task = PlannerTask.__new__(PlannerTask)   # the batches alone: no text encoder, no model
    task.cfg = cfg
    task.scenes, task.captions = with_captions(*scenes_and_captions(cfg.data))   # as PlannerTask keeps them
    texts = sorted({c for caps in task.captions for c in caps.values()})
    # each text's "states" are one row holding its index (exact in fp16 below 2048), so a batch tells which
    # captions it drew
    task.text = (torch.arange(len(texts), dtype=torch.float32)[:, None].expand(-1, 384).half(),
                 np.arange(len(texts) + 1), {t: j for j, t in enumerate(texts)})
    task.tokens = [{kind: torch.tensor([i]) for kind in caps} for i, caps in enumerate(task.captions)]
    def drawn(step):
        scene_ids, states, _ = task.batch(step, 0, 1)
        writers = [next(k for k, v in task.captions[i].items() if texts[int(row[0, 0])] == v)
                   for i, row in zip(scene_ids[:, 0].tolist(), states)]
        return [len(task.scenes[i].objects) for i in scene_ids[:, 0].tolist()], writers
    for step in range(5):
        sizes, writers = drawn(step)
        assert max(sizes) <= cfg.data.easy_max_objects and set(writers) <= set(cfg.data.easy_captioners)
    sizes, writers = zip(*(drawn(step) for step in range(5, 10)))
    assert max(max(s) for s in sizes) > 2 and {"terse", "prose_count"} & {w for ws in writers for w in ws}
    with pytest.raises(ValueError, match="easy_captioners"):
        load_config(ROOT / "configs/planner-default.yaml", overrides=["data.captioners={terse: 1.0}"])


def test_layouts_list_objects_in_the_order_the_caption_names_them():
    from limner.train.planner import PlannerTask
    from limner.world import captioners as CAP
    from limner.world.scene import Obj, Scene

    scene = Scene("ivory", [Obj("circle", "red", "small", 0.8, 0.5), Obj("square", "blue", "large", 0.2, 0.5),
                            Obj("square", "blue", "small", 0.5, 0.2)])
    text = "Two cobalt boxes sit left of a single crimson disc"
    assert CAP.mention_order(text, scene) == {("blue", "square"): 4, ("red", "circle"): 38}
    cfg = load_config(ROOT / "configs/planner-tiny.yaml")
    task = PlannerTask.__new__(PlannerTask)
    task.cfg, task.model = cfg, untrained()
    names = [task.model.cfg.labels[t] for t in task.layout_tokens(scene, text)[:15:5].tolist()]
    assert names == ["small blue square", "large blue square", "small red circle"]   # named first, listed first
    cfg.data.order = "label"   # the vocabulary's order: red circles come before blue squares in world_labels
    assert [task.model.cfg.labels[t] for t in task.layout_tokens(scene, text)[:15:5].tolist()][0] == "small red circle"
    # every training captioner names every group in a form mention_order finds
    rng = random.Random(2)
    for _ in range(200):
        sc = sample_scene(rng)
        for kind, caption in CAP.caption(sc, rng).items():
            assert set(CAP.mention_order(caption, sc)) == set(sc.groups()), (kind, caption)


def test_a_groups_objects_are_listed_in_the_order_the_caption_places_them():
    from limner.train.planner import PlannerTask
    from limner.world import captioners as CAP
    from limner.world.scene import Obj, Scene

    # three blue triangles, left to right: upper left, centre, upper right
    scene = Scene("ivory", [Obj("triangle", "blue", "large", 0.15, 0.15), Obj("triangle", "blue", "large", 0.5, 0.5),
                            Obj("triangle", "blue", "large", 0.85, 0.15)])
    text = "Three azure triangles: one in the top-right corner, one right in the middle, one up in the top left."
    cfg = load_config(ROOT / "configs/planner-tiny.yaml")
    task = PlannerTask.__new__(PlannerTask)
    task.cfg, task.model = cfg, untrained()
    xs = lambda: [round((t + 0.5) / task.model.cfg.bins, 2) for t in task.layout_tokens(scene, text)[3:15:5].tolist()]
    assert xs() == [0.85, 0.51, 0.15]   # as placed: upper right, centre, upper left
    cfg.data.order = "group"            # stage 1's order: a group's objects by size, then x
    assert xs() == [0.15, 0.51, 0.85]
    # a relation is not a place: "left of" does not place the circle on the left
    pair = Scene("ivory", [Obj("circle", "red", "small", 0.2, 0.5), Obj("circle", "red", "small", 0.8, 0.5)])
    assert [k[1] for k in CAP.object_order("two red circles, one left of a square", pair)] == [float("inf")] * 2
    assert [k[1] for k in CAP.object_order("two red circles: on the right, and on the left", pair)] == [35, 17]
    # a group's places are its own sentences' ("in the centre" names the green circle first), and a place "of the
    # image" is a place: the squares are listed lower right, then centre, as their sentences place them
    three = Scene("ivory", [Obj("circle", "green", "large", 0.5, 0.4), Obj("square", "orange", "large", 0.45, 0.6),
                            Obj("square", "orange", "large", 0.85, 0.85)])
    text = ("One large green circle is placed in the centre. There are two orange squares. A large orange square "
            "sits in the lower right. One large orange square is placed in the centre of the image.")
    keys = CAP.object_order(text, three)
    assert keys[2] < keys[1] and keys[0] < keys[2]
    assert text[int(keys[1][1]):].startswith("in the centre of the image")


def test_placed_order_walks_the_caption_object_by_object():
    """data.order: placed lists each object where its sentence places it, so one object per sentence in any order
    is read straight through; "mention" lists the red circles together, jumping back over the blue square."""
    from limner.train.planner import PlannerTask
    from limner.world import captioners as CAP
    from limner.world.scene import Obj, Scene

    scene = Scene("ivory", [Obj("circle", "red", "large", 0.15, 0.5), Obj("square", "blue", "large", 0.5, 0.5),
                            Obj("circle", "red", "small", 0.5, 0.15), Obj("triangle", "green", "small", 0.85, 0.85)])
    text = ("A big red circle sits on the left. In the centre there is a large blue square. Top centre: a small "
            "crimson disc. A tiny green triangle rests in the lower right.")
    cfg = load_config(ROOT / "configs/planner-tiny.yaml")
    task = PlannerTask.__new__(PlannerTask)
    task.cfg, task.model = cfg, untrained()
    names = lambda: [task.model.cfg.labels[t] for t in task.layout_tokens(scene, text)[:20:5].tolist()]
    cfg.data.order = "placed"
    assert names() == ["large red circle", "large blue square", "small red circle", "small green triangle"]
    cfg.data.order = "mention"
    assert names() == ["large red circle", "small red circle", "large blue square", "small green triangle"]
    # a caption that places nothing keeps its groups in the order they are named
    plain = CAP.object_order("a green triangle, two red circles and a blue square", scene, by_place=True)
    assert sorted(range(4), key=lambda i: plain[i])[0] == 3 and plain[0] == plain[2]


def test_text_positions_let_the_planner_read_word_order():
    torch.manual_seed(0)
    states, mask = torch.randn(1, 7, 384), torch.ones(1, 7, dtype=torch.bool)
    flipped = states.flip(1)   # the same token states in the opposite order
    for positions in (0, 16):
        p = Planner(PlannerConfig(labels=world_labels(), width=32, depth=1, heads=2, text_positions=positions)).eval()
        with torch.no_grad():
            same = torch.allclose(p.read(states, mask).flip(1), p.read(flipped, mask), atol=1e-5)
        assert same == (positions == 0)   # without positions the text is a set of states
    with pytest.raises(ValueError, match="at most 16"):
        p.read(torch.randn(1, 20, 384), torch.ones(1, 20, dtype=torch.bool))


def test_captions_per_scene_draws_that_many_captioners_by_weight():
    cfg = load_config(ROOT / "configs/planner-default.yaml", overrides=[
        "data.scenes=600", "data.captions_per_scene=1", "data.captioners={terse: 3.0, relational: 1.0, scene_walk: 0.0}"])
    _, captions = scenes_and_captions(cfg.data)
    kinds = Counter(k for caps in captions for k in caps)
    # one each (none where that one was a held-out prompt: such scenes are dropped by the task)
    assert all(len(caps) <= 1 for caps in captions) and sum(kinds.values()) > 0.95 * len(captions)
    assert "scene_walk" not in kinds and 0.65 < kinds["terse"] / sum(kinds.values()) < 0.85   # 3 : 1
    cfg.data.captions_per_scene = 2
    assert Counter(len(caps) for caps in scenes_and_captions(cfg.data)[1]).most_common(1)[0][0] == 2
    with pytest.raises(ValueError, match="captions_per_scene"):
        load_config(ROOT / "configs/planner-default.yaml", overrides=["data.captions_per_scene=0"])


@pytest.fixture(scope="module")
def tiny_planner(tmp_path_factory):
    """A tiny planner trained by `limner train`'s path, attached to a copy of the shipped model."""
    out = tmp_path_factory.mktemp("planner")
    cfg = load_config(ROOT / "configs/planner-tiny.yaml", overrides=[f"out_dir={out}", f"data.cache_dir={out}/cache"])
    return cfg, run(cfg, quiet=True)


@pytest.mark.slow
def test_tiny_planner_trains_and_reads_its_captions_back(tiny_planner):
    cfg, model_dir = tiny_planner
    meta = folder.read_meta(model_dir)
    assert meta["planner"]["labels"] == world_labels() and (model_dir / "denoiser.safetensors").exists()
    planner = folder.load_planner(model_dir, meta)
    from limner.models.planner import TextPlanner
    from limner.text.encoder import TextEncoder

    plan = TextPlanner(planner, TextEncoder("minilm"))
    scenes, captions = scenes_and_captions(cfg.data)   # what it trained on: a tiny model learns these
    texts = [next(iter(caps.values())) for caps in captions[:60]]
    layouts = plan(texts, list(range(len(texts))))
    want = [Counter((o.colour, o.shape) for o in s.objects) for s in scenes[:60]]
    got = [Counter(tuple(name.split()[1:]) for name, _ in lay) for lay in layouts]
    exact = sum(w == g for w, g in zip(want, got)) / len(want)
    assert exact >= 0.25, exact   # 0.35 measured (mention order; 0.55 in label order); an untrained planner reads back ~0


@pytest.mark.slow
def test_a_folder_with_a_planner_generates_without_the_parser(tiny_planner, monkeypatch):
    _, model_dir = tiny_planner
    import limner.world.hooks as hooks
    from limner.pipeline import Pipeline
    from limner.safety.guard import SafetyConfig

    def no_parser(*a, **k):
        raise AssertionError("the rule parser was called on the default path")

    monkeypatch.setattr(hooks, "rule_planner", no_parser)
    monkeypatch.setitem(hooks.HOOKS["shapes"], "planner", no_parser)
    pipe = Pipeline.from_pretrained(str(model_dir), safety=SafetyConfig.off())
    calls = []
    real = pipe.planner
    pipe.planner = lambda prompts, seeds: calls.append(prompts) or real(prompts, seeds)
    img = pipe("3 red circles, 1 blue square", seed=0, steps=2, best_of=1, size=64)[0]
    assert img.size == (64, 64) and calls == [["3 red circles, 1 blue square"]]
    bare = model_dir.parent / "without-planner"   # the same folder less its planner
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("planner"))
    meta = folder.read_meta(bare)
    del meta["planner"]
    (bare / "limner.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no learned layout planner"):
        Pipeline.from_pretrained(str(bare), layout="learned")


@pytest.mark.slow
def test_a_second_stage_starts_from_a_folders_planner(tiny_planner, tmp_path):
    from limner.train.planner import start_weights

    cfg, model_dir = tiny_planner
    planner = folder.load_planner(model_dir, folder.read_meta(model_dir))
    got = start_weights(str(model_dir), planner.cfg)
    assert all(torch.equal(got[k], v) for k, v in planner.state_dict().items())
    wider = PlannerConfig(**{**planner.cfg.__dict__, "width": planner.cfg.width * 2})
    with pytest.raises(ValueError, match="width"):
        start_weights(str(model_dir), wider)
    meta = {k: v for k, v in folder.read_meta(model_dir).items() if k != "planner"}
    (tmp_path / "limner.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no planner"):
        start_weights(str(tmp_path), planner.cfg)



def test_the_pipeline_samples_places_at_the_folders_plan_temperature(tmp_path):
    from limner.pipeline import Pipeline
    from limner.safety.guard import SafetyConfig

    shipped = folder.resolve("shapes-default")
    assert folder.read_meta(shipped)["defaults"]["plan_temperature"] == 0.25   # chosen on validation scenes
    spread = {}
    for temperature in (1e-4, 4.0):
        copy = shutil.copytree(shipped, tmp_path / str(temperature))
        meta = folder.read_meta(copy)
        meta["defaults"]["plan_temperature"] = temperature
        (copy / "limner.json").write_text(json.dumps(meta))
        pipe = Pipeline.from_pretrained(str(copy), safety=SafetyConfig.off())
        spread[temperature] = {str(plan) for plan in pipe.planner(["a red circle"] * 6, list(range(6)))}
    assert len(spread[1e-4]) == 1 and len(spread[4.0]) > 3   # near-greedy places repeat; hot ones spread
