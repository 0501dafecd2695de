"""The super-resolution stage (issue 24): the model's training step and noise augmentation, tiled inference
(seams, colour, odd and non-square sizes, RGBA, grey), the model folder's upsampler/, the pipeline's cascade,
and `limner upscale` / `limner generate --upscale` with their bad inputs."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from limner.cli import main
from limner.models import folder
from limner.models import upsampler as UP
from limner.models.upsampler import Upsampler, UpsamplerConfig
from limner.pipeline import tiles
from limner.pipeline.upscale import Upscaler, UpscaleSettings
from limner.world.scene import render, sample_scene

CLI = [sys.executable, "-m", "limner.cli"]


def random_model(width=16, depth=2, seed=0) -> Upsampler:
    """An upsampler whose every weight is random (a fresh one's zero-initialised output is 0 everywhere, which
    no tiling could get wrong)."""
    torch.manual_seed(seed)
    model = Upsampler(UpsamplerConfig(width=width, depth=depth))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def scene_image(seed=0, size=48, mode="RGB") -> Image.Image:
    return render(sample_scene(random.Random(seed)), size).convert(mode)


@pytest.fixture(scope="module")
def folder_with_upsampler(tmp_path_factory):
    """The shipped model folder with a random upsampler attached, its cascade to 128 px (2 steps)."""
    to = tmp_path_factory.mktemp("sr") / "model"
    settings = UpscaleSettings(steps=2, output=128)
    return folder.save_upsampler(folder.resolve("shapes-default"), random_model(), settings.to_dict(), to)


# ------------------------------------------------------------------------------ the model and its training step


def test_the_model_is_fully_convolutional_and_reads_its_three_conditions():
    model = random_model()
    x, low_up = torch.randn(1, 3, 36, 52), torch.randn(1, 3, 36, 52)  # odd multiples of the block, not square
    one = lambda t, level, factor: model(x, torch.tensor([t]), low_up, torch.tensor([level]), torch.tensor([factor]))
    base = one(0.5, 0.1, 4.0)
    assert base.shape == x.shape
    for changed in (one(0.9, 0.1, 4.0), one(0.5, 0.3, 4.0), one(0.5, 0.1, 2.0)):
        assert not torch.allclose(base, changed)  # flow time, augmentation level and factor all reach it


def test_noise_augmentation_level_is_drawn_per_sample_and_reaches_the_model():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, t, low_up, level, factor):
            seen.update(level=level.clone(), low_up=low_up.clone(), factor=factor.clone())
            return torch.zeros_like(x)

    low, high = torch.rand(6, 3, 8, 8) * 2 - 1, torch.rand(6, 3, 32, 32) * 2 - 1
    UP.loss(Spy(), low, high, 4, max_level=0.4, generator=torch.Generator().manual_seed(0))
    levels = seen["level"]
    assert levels.shape == (6,) and levels.min() >= 0 and levels.max() <= 0.4 and levels.std() > 0.02
    assert torch.equal(seen["factor"], torch.full((6,), 4.0))
    clean = UP.enlarge(low, 4)
    moved = (seen["low_up"] - clean).abs().flatten(1).mean(1)
    # the conditioning image is noised in proportion to its own level
    assert torch.corrcoef(torch.stack([moved, levels]))[0, 1] > 0.9
    UP.loss(Spy(), low, high, 4, max_level=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.all(seen["level"] == 0) and torch.allclose(seen["low_up"], clean, atol=1e-6)


def test_sampling_gives_the_model_the_fixed_level():
    levels = []
    model = random_model()
    forward = model.forward

    def spy(x, t, low_up, level, factor):
        levels.append(level.clone())
        return forward(x, t, low_up, level, factor)

    model.forward = spy
    Upscaler(model, UpscaleSettings(steps=3, noise_level=0.25))(scene_image(), 2)
    assert len(levels) == 3 and all(torch.equal(lv, torch.tensor([0.25])) for lv in levels)


# ------------------------------------------------------------------------------ tiles


def seam_metric(img: np.ndarray, borders: list[int]) -> tuple[float, float]:
    """Mean absolute step between neighbouring columns at the given borders, and everywhere else."""
    steps = np.abs(np.diff(img.astype(np.float64), axis=1)).mean(axis=(0, 2))
    at = np.array([b - 1 for b in borders])
    inside = np.delete(steps, at)
    return float(steps[at].mean()), float(inside.mean())


@pytest.mark.parametrize("size", [(61, 37), (40, 40), (33, 70)])  # odd, square, tall
def test_tiled_equals_untiled_at_odd_and_non_square_sizes(size):
    model = random_model()
    img = scene_image(size=80).crop((0, 0, *size))
    whole = np.asarray(Upscaler(model, UpscaleSettings(steps=2, tile=4096))(img, 4), np.int16)
    small = Upscaler(model, UpscaleSettings(steps=2, tile=96))
    tiled = np.asarray(small(img, 4), np.int16)
    assert tiled.shape == whole.shape == (size[1] * 4, size[0] * 4, 3)
    n_tiles = len(tiles.spans(size[0] * 4, 2 * 60, 60, 4)) * len(tiles.spans(size[1] * 4, 2 * 60, 60, 4))
    assert n_tiles > 1  # the small tiles really tile it
    assert np.abs(tiled - whole).max() <= 1  # float rounding at most


def test_no_seams_and_no_colour_shift_across_tile_borders():
    model = random_model(seed=3)
    img = scene_image(seed=5, size=64)
    up = Upscaler(model, UpscaleSettings(steps=2, tile=128))
    out = np.asarray(up(img, 4))
    dead = model.receptive_field
    overlap = -(-(2 * dead + 16) // 4) * 4
    xs = tiles.spans(out.shape[1], max(128, 2 * overlap), overlap, 4)
    borders = sorted({b for x0, x1 in xs for b in (x0, x1) if 0 < b < out.shape[1]})
    assert borders
    across, inside = seam_metric(out, borders)
    assert across <= inside * 1.05
    whole = np.asarray(Upscaler(model, UpscaleSettings(steps=2, tile=4096))(img, 4), np.float64)
    for x0, x1 in xs:  # each tile's mean colour is the untiled image's there
        assert np.abs(out[:, x0:x1].mean((0, 1)) - whole[:, x0:x1].mean((0, 1))).max() < 0.05


def test_every_pixel_has_weight_and_the_dead_bands_none():
    layout = tiles.tiles(200, 90, 100, 44, 4, dead=12)
    total = torch.zeros(200, 90)
    for y0, y1, x0, x1, w in layout:
        total[y0:y1, x0:x1] += w
        if y0 > 0:
            assert torch.all(w[:12] == 0)
        if y1 < 200:
            assert torch.all(w[-12:] == 0)
    assert total.min() > 0.1  # the division by the summed weights is safe everywhere


def test_noise_field_windows_are_the_same_numbers():
    whole = tiles.noise_field(7, 0, 3, 0, 0, 150, 130)
    assert torch.equal(tiles.noise_field(7, 0, 3, 37, 70, 60, 41), whole[:, 37:97, 70:111])
    assert not torch.equal(tiles.noise_field(8, 0, 3, 0, 0, 150, 130), whole)


# ------------------------------------------------------------------------------ image modes


def test_rgba_grey_and_odd_sizes_keep_their_mode_and_alpha_is_lanczos():
    up = Upscaler(random_model(), UpscaleSettings(steps=1))
    rgba = scene_image(size=40, mode="RGBA").crop((0, 0, 39, 27))
    alpha = Image.fromarray(np.random.default_rng(0).integers(0, 256, (27, 39), dtype=np.uint8))
    rgba.putalpha(alpha)
    out = up(rgba, 2)
    assert out.mode == "RGBA" and out.size == (78, 54)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha.resize((78, 54), Image.LANCZOS)))
    grey = up(scene_image(size=30, mode="L"), 4)
    assert grey.mode == "L" and grey.size == (120, 120)
    assert up(scene_image(size=30, mode="LA"), 2).mode == "LA"


def test_a_factor_the_trained_factors_cannot_make_is_refused():
    up = Upscaler(random_model(), UpscaleSettings(steps=1))
    assert up.plan(16) == [4, 4] and up.plan(8) == [4, 2] and up.plan(2) == [2]
    only4 = Upscaler(Upsampler(UpsamplerConfig(width=8, depth=1, factors=[4])))
    with pytest.raises(ValueError, match="cannot make 2x"):
        only4.plan(2)


# ------------------------------------------------------------------------------ the model folder and the pipeline


def test_the_folder_keeps_its_upsampler_and_older_folders_load_without(folder_with_upsampler, tmp_path):
    up = Upscaler.from_folder(folder_with_upsampler)
    assert up.settings.output == 128 and up.settings.steps == 2
    ref = random_model()
    assert all(torch.equal(a, b) for a, b in zip(up.model.state_dict().values(), ref.state_dict().values()))
    older = tmp_path / "older"
    shutil.copytree(folder_with_upsampler, older)
    shutil.rmtree(older / "upsampler")
    assert Upscaler.from_folder(older) is None


def test_pipeline_runs_the_cascade_and_marks_the_final_image(folder_with_upsampler):
    from limner.pipeline.core import Pipeline
    from limner.safety.guard import SafetyConfig

    safety = SafetyConfig(prompt_filter=False, image_filter="none")
    pipe = Pipeline.from_pretrained(str(folder_with_upsampler), safety=safety)
    img, = pipe("two red circles", steps=2)
    assert img.size == (128, 128)
    params = img.info["parameters"]
    assert params["upscale"] == 2 and params["watermark"].startswith("limner:")
    native = Pipeline.from_pretrained(str(folder_with_upsampler), safety=safety, cascade=False)
    assert native("two red circles", steps=2)[0].size == (64, 64)
    pipe.set_upscale(2)
    assert pipe("two red circles", steps=2)[0].size == (256, 256)
    with pytest.raises(ValueError, match="2, 4 or 8"):
        pipe.set_upscale(3)


def test_each_call_picks_its_size_and_upscale(folder_with_upsampler):
    from limner.pipeline.core import Pipeline
    from limner.safety.guard import SafetyConfig

    pipe = Pipeline.from_pretrained(str(folder_with_upsampler), safety=SafetyConfig.off())
    assert pipe.sizes == [64, 128] and pipe.default_size == 128
    calls = []   # the factor of each upsampler stage run
    real = pipe.upscaler.stage
    pipe.upscaler.stage = lambda low, factor, *a, **kw: calls.append(factor) or real(low, factor, *a, **kw)
    base, = pipe("two red circles", steps=2, size=64)
    assert base.size == (64, 64) and calls == [] and "upscale" not in base.info["parameters"]  # no upsampler ran
    cascade, = pipe("two red circles", steps=2)
    assert cascade.size == (128, 128) and calls == [2]
    assert pipe("two red circles", steps=2, size=64, upscale=2)[0].size == (128, 128)
    assert pipe("two red circles", steps=2, size=128, upscale=2)[0].size == (256, 256) and calls[-1] == 4
    # the pipeline's defaults stay the defaults: a call's own values do not stick
    assert pipe.upscale == 1 and pipe("two red circles", steps=2)[0].size == (128, 128)
    off = Pipeline.from_pretrained(str(folder_with_upsampler), safety=SafetyConfig.off(), cascade=False)
    assert off.default_size == 64 and off("two red circles", steps=2, size=128)[0].size == (128, 128)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 512}, r"makes 64 or 128 px images \(size=64: the base model alone, without the upsampler\), not 512"),
    ({"size": 64.0}, "not 64.0"),
    ({"size": "64"}, "not '64'"),
    ({"size": True}, "not True"),
    ({"upscale": 3}, "must be 2, 4 or 8"),
])
def test_a_bad_size_or_upscale_is_refused_before_any_work(folder_with_upsampler, kwargs, message):
    from limner.pipeline.core import Pipeline
    from limner.safety.guard import SafetyConfig

    pipe = Pipeline.from_pretrained(str(folder_with_upsampler), safety=SafetyConfig.off())
    pipe.denoiser = None  # any drawing would fail on this, not with the message
    with pytest.raises(ValueError, match=message):
        pipe("two red circles", steps=2, **kwargs)


def test_a_model_without_an_upsampler_makes_its_base_size_only(folder_with_upsampler, tmp_path):
    from limner.pipeline.core import Pipeline
    from limner.safety.guard import SafetyConfig

    older = tmp_path / "older"
    shutil.copytree(folder_with_upsampler, older, ignore=shutil.ignore_patterns("upsampler"))
    pipe = Pipeline.from_pretrained(str(older), safety=SafetyConfig.off())
    assert pipe.sizes == [64] and pipe.default_size == 64
    with pytest.raises(ValueError, match=r"makes 64 px images only \(it has no upsampler\), not 1024"):
        pipe("two red circles", size=1024)
    with pytest.raises(ValueError, match="has no upsampler to enlarge with"):
        pipe("two red circles", upscale=2)


def test_evaluation_callers_draw_the_base_size(folder_with_upsampler):
    """Scoring Shapes World and `limner eval generate` grade what the denoiser drew, at its base size, unless a
    size is asked for."""
    from limner.pipeline.backends import LimnerBackend
    from limner.safety.guard import SafetyConfig
    from limner.world.evaluate import run_suites

    backend = LimnerBackend(str(folder_with_upsampler), SafetyConfig.off())
    assert backend.generate(["two red circles"], [0], steps=2)[0].size == (64, 64)
    assert backend.generate(["two red circles"], [0], steps=2, size=(128, 128))[0].size == (128, 128)
    for bad, message in [((96, 96), "makes 64 or 128 px images"), ((128, 64), "square images only")]:
        with pytest.raises(ValueError, match=message):
            backend.generate(["two red circles"], [0], size=bad)
    seen = []
    pipe = backend.pipe
    real = pipe.__call__
    spy = type("Spy", (), {"resolution": pipe.resolution,
                           "__call__": lambda self, *a, **kw: seen.append(kw.get("size")) or real(*a, **kw)})()
    run_suites(spy, per_cell=1, suites=["counting"], steps=1)
    assert seen and set(seen) == {64}


def test_the_shipped_default_makes_1024_px_with_its_cascade():
    """`limner generate` and `Pipeline.from_pretrained("shapes-default")` make 1024 px by default: 64 px from the
    base model, then the learned upsampler 64 -> 256 -> 1024; 64 asks for the base model alone."""
    from limner.pipeline.core import Pipeline

    pipe = Pipeline.from_pretrained("shapes-default")
    assert pipe.upscaler is not None and pipe.upscaler.plan(16) == [4, 4]
    assert pipe.sizes == [64, 256, 1024] and pipe.default_size == 1024
    assert Pipeline.from_pretrained("shapes-default", cascade=False).default_size == 64


@pytest.mark.slow
def test_the_shipped_default_draws_1024_px_marked_and_the_base_size_on_request(tmp_path):
    from limner.pipeline import save_png
    from limner.pipeline.core import Pipeline
    from limner.safety import watermark as W

    pipe = Pipeline.from_pretrained("shapes-default")
    big, = pipe("three red circles and a blue square", seed=0, steps=4)
    assert big.size == (1024, 1024) and big.info["parameters"]["upscale"] == 16
    assert W.detect(big).detected is True
    base, = pipe("three red circles and a blue square", seed=0, steps=4, size=64)
    assert base.size == (64, 64)
    from limner.world.scorer import detect

    key = lambda img: sorted((o.colour, o.shape) for o in detect(img))
    assert key(big.resize((64, 64), Image.BOX)) == key(base)   # the same objects at 1024 px as at the base
    save_png(big, tmp_path / "big.png")
    assert Image.open(tmp_path / "big.png").size == (1024, 1024)


# ------------------------------------------------------------------------------ the command line


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "in.png"
    scene_image(size=40).save(path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--factor", "3"], "--factor must be 2, 4 or 8, not 3"),
    (["--factor", "8"], "the limit is 67.1 megapixels"),
])
def test_upscale_refuses_bad_factors_and_writes_nothing(tmp_path, capsys, args, message):
    src = tmp_path / "big.png"
    Image.new("RGB", (1100, 1100)).save(src)  # 8x: 8800 px a side
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), *args, "-o", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_upscale_refuses_an_unreadable_file_and_writes_nothing(tmp_path, capsys, content):
    src = tmp_path / "broken.png"
    src.write_bytes(content)
    assert main(["upscale", str(src)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "broken.png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]
    assert main(["upscale", str(tmp_path / "missing.png")]) == 2
    assert "no image at" in capsys.readouterr().err


def test_upscale_refuses_a_folder_without_an_upsampler(tmp_path, capsys, image_file):
    if (folder.resolve("shapes-default") / "upsampler").exists():
        pytest.skip("the shipped model has an upsampler")
    assert main(["upscale", str(image_file), "--model", "shapes-default"]) == 2
    assert "has no upsampler" in capsys.readouterr().err
    assert not (image_file.parent / "in-4x.png").exists()


def test_generate_refuses_upscale_3_before_loading(capsys):
    assert main(["generate", "a red circle", "--upscale", "3"]) == 2
    assert "--upscale must be 2, 4 or 8" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--size", "512"], "makes 64, 256 or 1024 px images (size=64: the base model alone"),
    (["--size", "0"], "--size must be a side in pixels"),
    (["--scale", "4"], "--scale (whole-pixel enlargement) is for its base size only (--size 64)"),
])
def test_generate_refuses_a_size_the_model_cannot_make_and_writes_nothing(capsys, tmp_path, flags, message):
    out = tmp_path / "x.png"
    assert main(["generate", "a red circle", *flags, "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_upscale_cli_writes_the_enlarged_image_with_its_parameters(tmp_path, folder_with_upsampler, image_file):
    rgba = tmp_path / "rgba.png"
    scene_image(size=37, mode="RGBA").save(rgba)
    for src, factor, size in [(image_file, 4, (160, 160)), (rgba, 2, (74, 74))]:
        r = subprocess.run(CLI + ["upscale", str(src), "--factor", str(factor), "--model", str(folder_with_upsampler)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out = src.with_name(f"{src.stem}-{factor}x.png")
        assert r.stdout.strip() == str(out)
        img = Image.open(out)
        assert img.size == size and img.mode == Image.open(src).mode
        params = json.loads(img.info["parameters"])
        assert params["upscale"] == factor and params["source"] == src.name


@pytest.mark.slow
def test_training_step_learns_and_exports(tmp_path):
    from limner.train import load_config, run
    from limner.train.data import to_tensor

    cfg = load_config("configs/upsampler-tiny.yaml", [f"out_dir={tmp_path / 'run'}"])
    model_dir = run(cfg, quiet=True)
    up = Upscaler.from_folder(model_dir)
    assert up.settings.output == 256 and up.model.cfg.width == 24
    assert (model_dir / "planner").exists()  # attached to a copy of the base folder, its other parts kept
    # the exported model's loss on held-out pairs, against the untrained model's (which answers bicubic)
    pairs = [(render(s, 16), render(s, 64)) for s in (sample_scene(random.Random(100 + i)) for i in range(8))]
    low, high = (torch.stack([to_tensor(p[k]) for p in pairs]) for k in (0, 1))
    held_out = lambda model: UP.loss(model, low, high, 4, 0.0, torch.Generator().manual_seed(0)).item()
    with torch.no_grad():
        assert held_out(up.model) < 0.9 * held_out(Upsampler(cfg.model))
    assert up(scene_image(size=32), 4).size == (128, 128)


@pytest.mark.slow
def test_training_on_a_folder_of_own_images(tmp_path):
    from limner.train import load_config, run

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        scene_image(seed=i, size=96).save(photos / f"{i}.jpg", quality=95)
    (photos / "notes.txt").write_text("not an image")
    cfg = load_config("configs/upsampler-tiny.yaml", [f"out_dir={tmp_path / 'run'}", "data.source=folder",
                                                      f"data.path={photos}", "steps=6"])
    assert Upscaler.from_folder(run(cfg, quiet=True)) is not None
    with pytest.raises(ValueError, match="data.path"):
        load_config("configs/upsampler-tiny.yaml", ["data.source=folder"])
