"""Image filter: the policy on a fake classifier, open_nsfw for real, the CLIP checker on tiny built models."""
import json

import numpy as np
import pytest
from PIL import Image

from limner.models.clip import clip_pixels
from limner.safety.image_filter import ClipSafetyChecker, ImageBlocked, ImageFilter, OpenNSFW, default_filter


class Fake:
    """Scores an image by its mean red value; only for testing the policy."""

    labels = ("red", "green")

    def scores(self, images):
        return [{"red": np.asarray(im)[..., 0].mean() / 255, "green": np.asarray(im)[..., 1].mean() / 255}
                for im in images]


RED, GREY = Image.new("RGB", (16, 16), (250, 0, 0)), Image.new("RGB", (16, 16), (100, 100, 100))


# ------------------------------------------------------------------------------------------------ policy


def test_policy_thresholds_and_verdicts():
    f = ImageFilter(Fake(), thresholds={"red": 0.8}, action="block")
    red, grey = f.check([RED, GREY])
    assert not red.allowed and red.label == "red" and red.score == pytest.approx(250 / 255)
    assert grey.allowed and grey.label == "red" and grey.score == pytest.approx(100 / 255)
    # the label furthest past its threshold is the one reported
    red, = ImageFilter(Fake(), thresholds={"red": 0.95, "green": 0.0}).check([RED])
    assert not red.allowed and red.label == "red"
    assert ImageFilter(Fake(), thresholds={"red": 0.99}).check([RED])[0].allowed


def test_policy_actions(caplog):
    with pytest.raises(ImageBlocked) as e:
        ImageFilter(Fake(), {"red": 0.8}, "block").apply([GREY, RED])
    assert e.value.code == "content_policy_violation" and e.value.category == "red" and e.value.index == 1
    assert isinstance(e.value, ValueError) and "image 2 of 2" in str(e.value) and "try a different" in str(e.value)

    spotted = RED.copy()
    spotted.paste((0, 0, 0), (6, 6, 10, 10))  # still red enough to flag, and something for the blur to hide
    spotted.info["parameters"] = {"seed": 1}
    out = ImageFilter(Fake(), {"red": 0.8}, "blur").apply([GREY, spotted])
    assert out[0] is GREY and out[1].info["parameters"] == {"seed": 1}
    assert np.asarray(out[1])[..., 0].std() < np.asarray(spotted)[..., 0].std() / 2

    out = ImageFilter(Fake(), {"red": 0.8}, "warn").apply([RED])
    assert out[0] is RED and "flagged" in caplog.text


def test_policy_errors():
    with pytest.raises(ValueError, match="unknown image filter action"):
        ImageFilter(Fake(), {"red": 0.5}, action="delete")
    with pytest.raises(ValueError, match="unknown labels"):
        ImageFilter(Fake(), {"blue": 0.5}).check([RED])
    with pytest.raises(ValueError, match="no default thresholds"):
        ImageFilter(Fake()).check([RED])


def test_from_spec():
    assert ImageFilter.from_spec("none") is None and ImageFilter.from_spec({"classifier": "none"}) is None
    f = ImageFilter.from_spec(None)
    assert isinstance(f.classifier, OpenNSFW) and f.thresholds == {"nsfw": 0.8} and f.action == "block"
    f = ImageFilter.from_spec({"classifier": "opennsfw", "thresholds": {"nsfw": 0.5}, "action": "blur"})
    assert f.thresholds == {"nsfw": 0.5} and f.action == "blur"
    assert default_filter() is default_filter()
    with pytest.raises(ValueError, match="needs a path"):
        ImageFilter.from_spec("clip")
    with pytest.raises(FileNotFoundError, match="no CLIP model"):
        ImageFilter.from_spec("clip:/nonexistent")
    with pytest.raises(ValueError, match="unknown image filter 'nudenet'"):
        ImageFilter.from_spec("nudenet")
    with pytest.raises(ValueError, match="settings for opennsfw: threshold"):
        ImageFilter.from_spec({"classifier": "opennsfw", "threshold": 0.5})
    assert ImageFilter(Fake(), {"red": 0.5}).check([]) == []


# -------------------------------------------------------------------------------------------- open_nsfw


def test_opennsfw_scores_our_kind_of_image_low(shapes_image):
    images = [shapes_image(s) for s in range(4)] + [shapes_image(9, size=256)]
    scores = OpenNSFW().scores(images)
    assert len(scores) == 5 and all(0 <= s["nsfw"] <= 1 for s in scores)
    assert max(s["nsfw"] for s in scores) < 0.05
    # not a constant: a flat skin-toned square already scores ~100x higher (0.21 vs ~0.002)
    skin, = OpenNSFW().scores([Image.new("RGB", (64, 64), (224, 172, 140))])
    assert skin["nsfw"] > 20 * max(s["nsfw"] for s in scores)
    assert all(v.allowed for v in default_filter().check(images))


# -------------------------------------------------------------------------------------- CLIP safety checker


# The tiny CLIP, its config and the two test images are conftest.py's (test_models_clip.py uses them too).


def test_clip_checker_flags_the_concept_image_only(tiny_clip, tmp_path, two_images):
    a, b = two_images()
    probe = ClipSafetyChecker(tiny_clip, concepts={"x": {"text": "anything", "threshold": 1.0}})
    emb = probe.embed([a, b])
    cos_ab = float(emb[0] @ emb[1])
    assert cos_ab < 0.999, "the tiny model must tell the two images apart for this test to mean anything"
    threshold = (1 + cos_ab) / 2
    np.savez(tmp_path / "concepts.npz", embeddings=emb[:1].numpy() * 3.0,  # any scale: cosine
             thresholds=np.float32([threshold]), names=np.array(["bad"]))

    checker = ClipSafetyChecker(tiny_clip, embeddings=tmp_path / "concepts.npz")
    assert checker.labels == ("bad",) and checker.thresholds == pytest.approx({"bad": threshold})
    sa, sb = checker.scores([a, b])
    assert sa["bad"] == pytest.approx(1.0, abs=1e-5) and sb["bad"] == pytest.approx(cos_ab, abs=1e-5)
    va, vb = ImageFilter(checker).check([a, b])
    assert not va.allowed and va.label == "bad" and vb.allowed


def test_tiny_clip_tokenizer_reads_the_text(tiny_clip):
    """The tiny CLIP's tokenizer must give each letter its own id: one that reads every text as <|endoftext|>
    (as it once did) gives every concept phrase the same embedding, and the text tests below test nothing."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_clip)
    ids = tok(["a red cat", "two blue squares"])["input_ids"]
    assert ids[0] != ids[1] and tok.unk_token_id not in ids[0][1:-1] + ids[1][1:-1], ids
    assert tok.decode(ids[0], skip_special_tokens=True) == "a red cat"


def test_clip_checker_text_concepts_and_spec(tiny_clip, tmp_path, two_images):
    from safetensors.torch import save_file

    a, b = two_images()
    checker = ClipSafetyChecker(tiny_clip, concepts={"cat": {"text": "a red cat", "threshold": 0.5}})
    text = checker.embed_text(["a red cat"])
    # concepts are told apart by their words (a tokenizer that reads every text alike would make them equal)
    assert float(text[0] @ checker.embed_text(["two blue squares"])[0]) < 0.99
    scores = checker.scores([a, b])
    expected = (checker.embed([a, b]) @ text.T).squeeze(1)
    assert [s["cat"] for s in scores] == pytest.approx(expected.tolist(), abs=1e-5)
    assert checker.thresholds == {"cat": 0.5}

    # a concepts file beside the weights is picked up by "clip:PATH"; thresholds from the file
    emb = checker.embed([b])
    save_file({"embeddings": emb, "thresholds": emb.new_tensor([0.99])}, str(tiny_clip / "concepts.safetensors"),
              metadata={"names": json.dumps(["shapes"])})
    try:
        f = ImageFilter.from_spec(f"clip:{tiny_clip}")
        va, vb = f.check([a, b])
        assert va.allowed and not vb.allowed and vb.label == "shapes"
        f = ImageFilter.from_spec({"classifier": "clip", "path": str(tiny_clip), "action": "warn",
                                   "concepts": {"cat": {"text": "a red cat", "threshold": 0.5}}})
        assert set(f.classifier.labels) == {"shapes", "cat"} and f.action == "warn"
    finally:
        (tiny_clip / "concepts.safetensors").unlink()
    with pytest.raises(ValueError, match="no concepts"):
        ClipSafetyChecker(tiny_clip).scores([a])


def test_clip_checker_on_a_vision_only_model(tmp_path, two_images, tiny_clip_config):
    torch = pytest.importorskip("torch")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = tiny_clip_config().vision_config.to_dict() | {"projection_dim": 16}
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).save_pretrained(tmp_path)
    a, b = two_images()
    with pytest.raises(ValueError, match="no CLIP text tower"):
        ClipSafetyChecker(tmp_path, concepts={"cat": {"text": "a cat", "threshold": 0.5}}).scores([a])
    emb = ClipSafetyChecker(tmp_path, embeddings=_npz(tmp_path / "x.npz", np.ones((1, 16)), [2.0])).embed([a, b])
    _npz(tmp_path / "concepts.npz", emb[1:].numpy(), [0.999])  # picked up from beside the weights
    assert [v.allowed for v in ImageFilter.from_spec(f"clip:{tmp_path}").check([a, b])] == [True, False]
    with pytest.raises(ValueError, match="do not match the 16-d projection"):
        ClipSafetyChecker(tmp_path, embeddings=_npz(tmp_path / "y.npz", np.ones((1, 8)), [0.5])).scores([a])


def _npz(path, embeddings, thresholds):
    np.savez(path, embeddings=np.float32(embeddings), thresholds=np.float32(thresholds))
    return path


@pytest.mark.parametrize("special_care", [False, True])
def test_clip_checker_loads_a_diffusers_safety_checker(tmp_path, special_care, two_images, tiny_clip_config):
    """Same decisions as diffusers' own forward, including its special-care adjustment of 0.01."""
    torch = pytest.importorskip("torch")
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    torch.manual_seed(0)
    sd = StableDiffusionSafetyChecker(tiny_clip_config()).eval()
    a, b = two_images()
    pixels = clip_pixels([a, b], 32)
    with torch.no_grad():  # concept embeddings from the diffusers model's own image embeddings
        ea, eb = torch.nn.functional.normalize(sd.visual_projection(sd.vision_model(pixels).pooler_output), dim=-1)
        cos_ab = float(ea @ eb)
        sd.special_care_embeds_weights.fill_(2.0)  # never hit
        sd.concept_embeds_weights.fill_(2.0)
        if special_care:  # b misses concept 5 by 0.005 and is flagged only through the special-care hit
            sd.concept_embeds[5], sd.concept_embeds_weights[5] = eb, 1.005
            sd.special_care_embeds[0], sd.special_care_embeds_weights[0] = eb, (1 + cos_ab) / 2
        else:
            sd.concept_embeds[5], sd.concept_embeds_weights[5] = ea, (1 + cos_ab) / 2
    sd.save_pretrained(tmp_path / "pipe" / "safety_checker")  # the layout of a Stable Diffusion pipeline

    _, flagged = sd(pixels, [np.zeros(1), np.zeros(1)])
    assert flagged == ([False, True] if special_care else [True, False])
    checker = ClipSafetyChecker(tmp_path / "pipe")
    assert len(checker.labels) == 20 and "special_care_0" not in checker.thresholds
    verdicts = ImageFilter(checker).check([a, b])
    assert [not v.allowed for v in verdicts] == flagged
    assert verdicts[flagged.index(True)].label == "concept_5"
