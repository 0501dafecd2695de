"""`limner data`'s boxes stage: an open-vocabulary detector (tiny random OWLv2 and Grounding DINO built here)
queried with phrases from each sample's captions writes object boxes into the shards and the manifest."""
import io
import json
import random
import tarfile

import pytest
from PIL import Image

from limner.data.boxes import BoxConfig, Detector, detector_kind, phrases, suppress, to_layout
from limner.data.pipeline import PipelineConfig, run
from limner.data.report import load
from limner.world.scene import render, sample_scene

torch = pytest.importorskip("torch")
GRID = 4  # the tiny OWLv2's patches per side (64 px images, 16 px patches)


@pytest.fixture(scope="module")
def tiny_owl(tmp_path_factory, byte_chars):
    """A random OWLv2 (hidden 32, 1 layer, 64 px, 16 px patches) whose box head outputs zeros, so each patch
    predicts its box bias alone: a 1/4 x 1/4 box centred on the patch's lower right corner, in the frame of
    the image padded to a square. Every box it finds is known in advance."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    path = tmp_path_factory.mktemp("tiny-owlv2")
    chars = byte_chars()
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    bos, eos = len(vocab), len(vocab) + 1
    vocab |= {"<|startoftext|>": bos, "<|endoftext|>": eos}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)  # one token a character, as OWLv2 cuts at 16
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    vision = dict(image_size=64, patch_size=64 // GRID, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                  num_attention_heads=4)
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(path)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    """A random Grounding DINO (a 2-stage Swin of width 8, d_model 32, 12 queries) and a BERT word tokenizer."""
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    path = tmp_path_factory.mktemp("tiny-grounding-dino")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "red", "circle", "blue", "square", "cat", "dog"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=4,
                          out_features=["stage1", "stage2"])
    text = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                 decoder_attention_heads=2, num_queries=12, num_feature_levels=2, encoder_n_points=2,
                                 decoder_n_points=2, max_text_len=32, use_timm_backbone=False)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 64}), tokenizer=tokenizer)
    processor.save_pretrained(path)
    return path


def grid_boxes(width: int, height: int) -> set[tuple]:
    """The tiny OWLv2's boxes on a width x height image, as fractions of it: each patch's box in the padded
    square's frame (OWLv2 pads the bottom and right), scaled to the image and clipped; those in the padding go."""
    side = max(width, height)
    out = set()
    for row in range(GRID):
        for col in range(GRID):
            x0, y0, x1, y1 = ((col + 0.5) / GRID, (row + 0.5) / GRID, (col + 1.5) / GRID, (row + 1.5) / GRID)
            box = [min(max(v * side / size, 0.0), 1.0) for v, size in ((x0, width), (y0, height), (x1, width), (y1, height))]
            if box[2] - box[0] > 1e-3 and box[3] - box[1] > 1e-3:
                out.add(tuple(box))
    return out


def on_grid(boxes, width, height) -> list[tuple]:
    """Each box's grid box (the model's box bias is exact to ~1e-4); an error if it matches none."""
    grid = grid_boxes(width, height)
    out = []
    for b in boxes:
        near = [g for g in grid if max(abs(u - v) for u, v in zip(g, b["box"])) < 2e-3]
        assert near, f"{b['box']} is no box of the {width}x{height} image's grid {sorted(grid)}"
        out.append(near[0])
    return out


def photo(width, height, seed=0):
    return render(sample_scene(random.Random(seed)), max(width, height)).resize((width, height))


# --------------------------------------------------------------------------------------------- detector


def test_owlv2_boxes_are_fractions_of_each_image_labelled_by_its_queries(tiny_owl):
    images = [photo(80, 40, 1), photo(30, 60, 2), photo(64, 64, 3), photo(50, 50, 4)]
    queries = [["red circle", "blue square"], ["cat"], [], ["dog", "small green triangle", "tree"]]
    det = Detector(BoxConfig(detector=str(tiny_owl), threshold=0.0, max_boxes=100, batch_size=2))
    found = det.detect(images, queries)
    assert found[2] == []  # no queries, no detection
    for im, q, boxes in zip(images, queries, found):
        if not q:
            continue
        # every patch's box, in the image's own frame (wide and tall images padded differently by OWLv2)
        assert sorted(on_grid(boxes, *im.size)) == sorted(grid_boxes(*im.size)), im.size
        assert {b["label"] for b in boxes} <= set(q) and all(0 <= v <= 1 for b in boxes for v in b["box"])
        assert [b["score"] for b in boxes] == sorted((b["score"] for b in boxes), reverse=True)
    assert len(found[0]) == 8 and len(found[1]) == 8 and len(found[3]) == 16  # a square has no padding
    # an image's boxes do not depend on the other images in its batch (queries are padded with its own)
    alone = [Detector(BoxConfig(detector=str(tiny_owl), threshold=0.0, max_boxes=100, batch_size=1)).detect([im], [q])[0]
             for im, q in zip(images, queries)]
    for a, b in zip(alone, found):
        assert [x["label"] for x in a] == [x["label"] for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-3)
    # max_boxes keeps the best
    top = Detector(BoxConfig(detector=str(tiny_owl), threshold=0.0, max_boxes=3)).detect(images[:1], queries[:1])[0]
    assert top == found[0][:3]


def test_threshold_keeps_only_boxes_that_score_above_it(tiny_owl):
    images, queries = [photo(64, 48, 5), photo(48, 64, 6)], [["red circle", "square"], ["cat", "dog"]]
    every = Detector(BoxConfig(detector=str(tiny_owl), threshold=0.0, max_boxes=100)).detect(images, queries)
    scores = sorted({b["score"] for boxes in every for b in boxes})
    cut = (scores[len(scores) // 2] + scores[len(scores) // 2 - 1]) / 2  # between two distinct scores, half above
    some = Detector(BoxConfig(detector=str(tiny_owl), threshold=cut, max_boxes=100)).detect(images, queries)
    assert 0 < sum(map(len, some)) < sum(map(len, every))
    for boxes, all_boxes in zip(some, every):
        assert boxes == [b for b in all_boxes if b["score"] > cut]
    high = Detector(BoxConfig(detector=str(tiny_owl), threshold=0.95, max_boxes=100)).detect(images, queries)
    assert high == [[b for b in boxes if b["score"] > 0.95] for boxes in every]
    assert Detector(BoxConfig(detector=str(tiny_owl))).threshold == 0.1  # OWL's own default when none is set


def test_grounding_dino_boxes_carry_the_query_they_match(tiny_grounding_dino):
    images = [photo(80, 40, 7), photo(40, 64, 8)]
    queries = [["red circle", "blue square"], ["cat"]]
    det = Detector(BoxConfig(detector=str(tiny_grounding_dino), threshold=0.0, text_threshold=0.0, max_boxes=100))
    assert det.kind == "grounding-dino" and det.threshold == 0.0
    found = det.detect(images, queries)
    assert all(found) and all(len(boxes) <= 12 for boxes in found)
    for q, boxes in zip(queries, found):
        assert {b["label"] for b in boxes} <= set(q)
        for b in boxes:
            x0, y0, x1, y1 = b["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert Detector(BoxConfig(detector=str(tiny_grounding_dino))).threshold == 0.3  # the kind's own default


def test_an_object_found_twice_is_one_box_but_objects_of_other_labels_may_overlap():
    boxes = [{"label": "dog", "box": [0.1, 0.1, 0.5, 0.5], "score": 0.9},
             {"label": "dog", "box": [0.12, 0.1, 0.52, 0.5], "score": 0.8},   # the same dog again (IoU 0.9)
             {"label": "ball", "box": [0.1, 0.1, 0.5, 0.5], "score": 0.7},    # another label, same place
             {"label": "dog", "box": [0.3, 0.3, 0.7, 0.7], "score": 0.6},     # a second dog (IoU 0.14)
             {"label": "dog", "box": [0.6, 0.6, 0.9, 0.9], "score": 0.5}]
    assert [b["score"] for b in suppress(boxes, 0.5)] == [0.9, 0.7, 0.6, 0.5]
    assert [b["score"] for b in suppress(boxes, 0.1)] == [0.9, 0.7, 0.5]
    assert suppress(boxes, 1.0) == boxes
    with pytest.raises(ValueError, match="nms_iou must be in"):
        BoxConfig(nms_iou=0)


# ------------------------------------------------------------------------------------------ the queries


def test_queries_are_short_noun_phrases_from_the_captions():
    assert phrases(["A small red circle sits in the upper left. Two blue squares are below it."]) == \
        ["small red circle", "blue square"]
    assert phrases(["a yellow triangle to the left of two green circles"]) == ["yellow triangle", "green circle"]
    assert phrases(["A photo of a cat with 3 puppies and boxes, glasses on the table"]) == \
        ["cat", "puppy", "box", "glass", "table"]
    # repeats (in any number) are one query; the cap keeps the first
    assert phrases(["two dogs and a cat", "a dog next to the big house", "3 cats"]) == ["dog", "cat", "big house"]
    assert phrases(["an old rusty red farm tractor in a field"]) == ["rusty red farm tractor", "field"]
    assert phrases(["a cat, a dog, a bird, a fish"], limit=2) == ["cat", "dog"]
    assert phrases(["", None, "the picture", "in the background"]) == []
    cfg = BoxConfig(max_labels=3)
    assert cfg.queries({"alt": "a red apple", "vlm": "Two red apples on a wooden table by a window."}) == \
        ["red apple", "wooden table", "window"]
    assert BoxConfig(labels=[" person ", "car"]).queries({"alt": "a dog"}) == ["person", "car"]


def test_a_folder_that_is_not_a_detector_is_a_clear_error(tmp_path, tiny_clip, tiny_owl):
    with pytest.raises(FileNotFoundError, match="not a open-vocabulary detector .* folder .no config.json"):
        Detector(BoxConfig(detector=str(tmp_path)))
    with pytest.raises(ValueError, match="holds a 'clip' model, not an open-vocabulary detector.*owlv2 / owlvit"):
        Detector(BoxConfig(detector=str(tiny_clip)))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_owl / "config.json").read_text())  # a config, no weights or processor
    assert detector_kind(str(partial))[1] == "owlv2"
    with pytest.raises(ValueError, match="not a complete owlv2 detector folder"):
        Detector(BoxConfig(detector=str(partial)))
    with pytest.raises(ValueError, match="boxes.labels must be 'captions' or"):
        BoxConfig(labels="nouns")
    with pytest.raises(ValueError, match="boxes.labels must be 'captions' or a non-empty list"):
        BoxConfig(labels=[])
    with pytest.raises(ValueError, match="boxes: boxes.threshold must be in"):
        PipelineConfig.from_dict({"boxes": {"threshold": 1.5}})
    with pytest.raises(ValueError, match=r"boxes: unknown keys \['model'\]"):
        PipelineConfig.from_dict({"boxes": {"model": "x"}})
    # the pipeline checks the folder before it reads a single image
    cfg = PipelineConfig.from_dict({"source": {"path": str(tmp_path)}, "out_dir": str(tmp_path / "out"),
                                    "boxes": {"detector": str(tiny_clip)}})
    with pytest.raises(ValueError, match="not an open-vocabulary detector"):
        run(cfg, quiet=True)
    assert not (tmp_path / "out").exists()


def test_layout_moves_boxes_into_the_centre_crop_training_draws():
    boxes = [{"label": "dog", "box": [0.25, 0.5, 0.75, 1.0], "score": 0.9},   # the crop's lower half
             {"label": "cat", "box": [0.0, 0.0, 0.5, 1.0], "score": 0.8},     # half of it inside the crop
             {"label": "bird", "box": [0.0, 0.0, 0.2, 0.5], "score": 0.7},    # left of the crop
             {"label": "tree", "box": [0.3, 0.0, 0.4, 0.2], "score": 0.05}]   # low score
    layout = to_layout(boxes, 200, 100, min_score=0.1)  # the crop: x from 50 to 150 px
    assert [name for name, _ in layout] == ["dog", "cat"]
    assert layout[0][1] == pytest.approx((0.0, 0.5, 1.0, 1.0)) and layout[1][1] == pytest.approx((0.0, 0.0, 0.5, 1.0))
    assert [name for name, _ in to_layout(boxes, 200, 100, min_visible=0.6)] == ["dog", "tree"]
    assert to_layout(boxes, 100, 100) == [(b["label"], tuple(b["box"])) for b in boxes]  # square: unchanged


# -------------------------------------------------------------------------------------------- the pipeline


def curate(tmp_path, name, **boxes):
    raw = tmp_path / "raw"
    if not raw.exists():
        raw.mkdir()
        alts = ["two red circles and a blue square", "a green triangle above a yellow circle",
                "a photo of a small purple square"]
        for i, alt in enumerate(alts):
            buf = io.BytesIO()
            render(sample_scene(random.Random(60 + i)), 160).crop((0, 0, 160, 128 + 16 * i)).save(buf, "PNG")
            (raw / f"img{i}.png").write_bytes(buf.getvalue())
            (raw / f"img{i}.txt").write_text(alt)
    d = {"source": {"path": str(raw)}, "out_dir": str(tmp_path / name), "workers": 1,
         "safety": {"classifier": None}, "dedup": {"near": False}}
    if boxes:
        d["boxes"] = boxes
    manifest = run(PipelineConfig.from_dict(d), quiet=True)
    metas = {}
    for tar in sorted((tmp_path / name / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t:
                if m.name.endswith(".json"):
                    meta = json.loads(t.extractfile(m).read())
                    metas[meta["key"]] = meta
    return load(manifest), metas


def test_pipeline_writes_boxes_into_shard_json_and_manifest_only_when_set(tmp_path, tiny_owl):
    rows, metas = curate(tmp_path, "with", detector=str(tiny_owl), threshold=0.0, max_boxes=5)
    assert len(metas) == 3 and all(r["fate"] == "kept" for r in rows)
    expected = {"img0": {"red circle", "blue square"}, "img1": {"green triangle", "yellow circle"},
                "img2": {"small purple square"}}
    for r in rows:
        boxes = metas[r["key"]]["boxes"]
        assert json.loads(r["boxes"]) == boxes and len(boxes) == 5
        assert {b["label"] for b in boxes} <= expected[r["key"]]
        image = Image.open(tmp_path / "raw" / f"{r['key']}.png")
        assert len(set(on_grid(boxes, *image.size))) == 5  # fractions of this image, whatever its shape
    # off (the default): no boxes anywhere, and the manifest has no boxes column
    rows, metas = curate(tmp_path, "without")
    assert len(metas) == 3 and all("boxes" not in m for m in metas.values()) and "boxes" not in rows[0]
    assert PipelineConfig().boxes.detector is None
