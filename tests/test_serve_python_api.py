"""The Python door the server stands on: images that record their own parameters and seed when saved the
plain PIL way, reproducible by seed, and a progress callback with previews that can stop a call."""
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import limner
from limner.safety.provenance import read_parameters


@pytest.fixture(scope="module")
def pipe():
    return limner.Pipeline.from_pretrained("shapes-default")


def test_plain_save_records_each_images_parameters_and_seed(pipe, tmp_path):
    images = pipe("two red circles", seed=7, steps=2, num_images=3, negative_prompt="blurry")
    for i, img in enumerate(images):
        img.save(tmp_path / f"out-{i}.png")   # the diffusers way: no limner helper
        params = read_parameters(tmp_path / f"out-{i}.png")
        assert params is not None, "a plain save wrote no parameters chunk"
        assert params["seed"] == 7 + i and params["prompt"] == "two red circles" and params["steps"] == 2
        assert params["negative_prompt"] == "blurry" and params["watermark"].startswith("limner:")
        assert params == img.info["parameters"]
    # an explicit pnginfo is the caller's choice; other formats save as usual
    empty = PngImagePlugin.PngInfo()
    images[0].save(tmp_path / "bare.png", pnginfo=empty)
    assert read_parameters(tmp_path / "bare.png") is None
    images[0].save(tmp_path / "out.jpg", quality=90)
    assert Image.open(tmp_path / "out.jpg").size == images[0].size == (pipe.default_size,) * 2


def test_same_seed_same_image_whatever_the_batch(pipe):
    alone = pipe("a blue square", seed=11, steps=2)[0]
    batched = pipe(["three red circles", "a blue square"], seed=[3, 11], steps=2)[1]
    assert np.array_equal(np.asarray(alone), np.asarray(batched))
    assert batched.info["parameters"]["seed"] == 11


def test_progress_reports_every_step_with_previews_and_can_stop_the_call(pipe):
    seen = []

    def progress(t, preview):
        seen.append(t)
        if len(seen) == 2:
            shots = preview()
            assert len(shots) == 2 and all(s.size == (64, 64) for s in shots)

    pipe("two red circles", seed=1, steps=3, num_images=2, progress=progress)
    assert seen == sorted(seen, reverse=True) and len(seen) == 3 and seen[0] == pytest.approx(1.0)

    class Stop(Exception):
        pass

    def stop(t, preview):
        raise Stop

    with pytest.raises(Stop):
        pipe("two red circles", seed=1, steps=3, progress=stop)


def test_parameters_chunk_is_plain_json(pipe, tmp_path):
    img = pipe("a green triangle", seed=2, steps=1)[0]
    img.save(tmp_path / "x.png")
    text = Image.open(tmp_path / "x.png").text["parameters"]
    assert json.loads(text)["seed"] == 2
