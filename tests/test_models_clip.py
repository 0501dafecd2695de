"""limner.models.clip, the one CLIP loader: preprocessing as transformers does it, embeddings as transformers
computes them, and every folder kind it reads (two towers, vision only, a diffusers safety checker)."""
import json

import pytest
from PIL import Image

from limner.models.clip import ClipEmbedder, clip_folder, clip_pixels

torch = pytest.importorskip("torch")


def test_clip_pixels_match_transformers(two_images):
    from transformers import CLIPImageProcessor

    a, _ = two_images()
    for size in (32, 224):
        ref = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        assert (clip_pixels([a], size) - ref(images=[a], return_tensors="pt")["pixel_values"]).abs().max() < 1e-5


def test_embeddings_are_transformers_own_normalised(tiny_clip, two_images):
    from transformers import CLIPModel, CLIPTokenizer

    a, b = two_images()
    clip = ClipEmbedder(tiny_clip, batch_size=1)   # batches of one: batching must not change anything
    assert clip.has_text and "towers" not in clip.__dict__, "nothing loads before the first embedding"
    images, texts = clip.images([a, b]), clip.texts(["a red cat", "two blue squares"])
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        ref_i = model.get_image_features(pixel_values=clip_pixels([a, b], 32))
        tok = CLIPTokenizer.from_pretrained(tiny_clip)(["a red cat", "two blue squares"], padding=True, return_tensors="pt")
        ref_t = model.get_text_features(**tok)
    ref_i, ref_t = (getattr(r, "pooler_output", r) for r in (ref_i, ref_t))   # transformers 5 returns outputs
    assert images.shape == (2, 16) and images.dtype == torch.float32
    assert torch.allclose(images, torch.nn.functional.normalize(ref_i, dim=-1), atol=1e-5)
    assert torch.allclose(texts, torch.nn.functional.normalize(ref_t, dim=-1), atol=1e-5)
    assert torch.allclose(images.norm(dim=-1), torch.ones(2)) and clip.towers.dim == 16


def test_vision_only_and_safety_checker_folders(tmp_path, tiny_clip, two_images, tiny_clip_config):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    a, b = two_images()
    config = tiny_clip_config().vision_config.to_dict() | {"projection_dim": 16}
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).save_pretrained(tmp_path / "vision")
    vision = ClipEmbedder(tmp_path / "vision")
    assert not vision.has_text and vision.images([a, b]).shape == (2, 16)
    with pytest.raises(ValueError, match="no CLIP text tower"):
        vision.texts(["a cat"])

    torch.manual_seed(0)
    StableDiffusionSafetyChecker(tiny_clip_config()).save_pretrained(tmp_path / "pipe" / "safety_checker")
    (tmp_path / "pipe" / "feature_extractor").mkdir()
    (tmp_path / "pipe" / "feature_extractor" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    checker = ClipEmbedder(tmp_path / "pipe")   # a pipeline folder: its safety_checker/ is taken
    assert checker.path == clip_folder(tmp_path / "pipe") == tmp_path / "pipe" / "safety_checker"
    assert not checker.has_text and checker.towers.safety_checker is not None
    sd = checker.towers.safety_checker
    with torch.no_grad():   # the pipeline's own normalisation, not CLIP's default
        ref = sd.visual_projection(sd.vision_model(clip_pixels([a], 32, [0.5] * 3, [0.5] * 3)).pooler_output)
    assert torch.allclose(checker.images([a]), torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CLIP model at .*expected a folder with config.json"):
        ClipEmbedder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    clip = ClipEmbedder(tmp_path)   # the kind is checked when the weights load
    with pytest.raises(ValueError, match="is a 'vit' model, not CLIP"):
        clip.images([Image.new("RGB", (8, 8))])
