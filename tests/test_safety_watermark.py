import io
import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from limner.safety import watermark as W
from limner.safety.attacks import ATTACKS
from limner.world.scene import render, sample_scene


def scene(seed, size):
    return render(sample_scene(random.Random(seed)), size)


def texture(seed, size):
    """A photo-like 1/f texture: content at every scale, unlike a flat Shapes World scene."""
    g = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    amp = 1 / np.maximum(np.hypot(*np.meshgrid(f, f)), 1 / size)
    t = np.real(np.fft.ifft2(amp[..., None] * np.fft.fft2(g.normal(size=(size, size, 3)), axes=(0, 1)), axes=(0, 1)))
    return Image.fromarray(((t - t.min()) / np.ptp(t) * 200 + 25).astype(np.uint8))


def found(image) -> bool:
    """The detector's verdict at its 0.1% false-positive level."""
    return W.detect(image).detected is True


@pytest.fixture(scope="module")
def marked():
    img = scene(3, 512)
    return img, W.embed(img, payload=0xC0FFEE42)


def test_payload_round_trip_and_tags():
    p = W.payload_for("shapes-default@0.1.0", "abc")
    assert p >> 20 == W.payload_for("shapes-default@0.1.0", "other") >> 20  # same model tag
    assert p != W.payload_for("shapes-default@0.1.0", "other")
    for img in (scene(1, 256), texture(2, 256)):
        d = W.detect(W.embed(img, payload=p))
        assert d.detected is True and d.payload == p and d.p_value < 1e-3
    with pytest.raises(ValueError, match="32-bit"):
        W.embed(scene(1, 64), payload=2**40)
    with pytest.raises(ValueError, match="too small"):
        W.embed(scene(1, 64).resize((16, 16)))


def test_payload_code_corrects_errors_that_repetition_would_not():
    p = 0x5EED1234
    coded = W.coded_bits(p)
    assert len(coded) == W.N_CODED and (~W.codes()[1]).sum() >= W.N_CODED  # every coded bit has a chip
    read = lambda soft: int("".join(map(str, W.viterbi(soft)[:W.DATA_BITS])), 2)
    clean = 1.0 - 2.0 * coded
    assert read(clean) == p
    flipped = clean.copy()
    flipped[[3, 20, 41, 62, 83]] *= -1  # five hard errors, spread out (free distance 10)
    assert read(flipped) == p
    # Gaussian noise at 1 sigma per coded bit: the code recovers most frames; repeating each of the 40 bits
    # 2.3 times on the same 92 values (bit error 6.4%) would lose ~93% of them
    rng = np.random.default_rng(0)
    ok = sum(read(clean + rng.normal(0, 1.0, clean.shape)) == p for _ in range(100))
    assert ok >= 50, ok


def unmarked_images(per_kind: int = 60, seed: int = 26):
    """(kind, image) for unmarked images of kinds the calibration (benchmarks/watermark.py --calibrate: scenes
    and textures drawn square at its sizes, and photo crops) never drew: 64 px scenes enlarged by whole pixels
    as `generate --scale` writes them, scenes resampled to another aspect, scenes saved as JPEG, and textures
    at other sizes and seeds."""
    rng = random.Random(seed)
    for _ in range(per_kind):
        yield "enlarged", render(sample_scene(rng), 64).resize((64 * rng.randint(2, 16),) * 2, Image.NEAREST)
    for _ in range(per_kind):
        side = rng.randint(96, 800)
        img = render(sample_scene(rng), side)
        yield "stretched", img.resize((side, int(side * rng.uniform(0.55, 0.95))), Image.BICUBIC)
    for _ in range(per_kind):
        buf = io.BytesIO()
        render(sample_scene(rng), rng.choice([128, 200, 320, 512])).save(buf, "JPEG", quality=rng.randint(40, 95))
        yield "jpeg", Image.open(buf).convert("RGB")
    for i in range(per_kind):
        yield "texture", texture(1000 + i, rng.choice([96, 160, 256, 400]))


def test_unmarked_images_are_not_detected():
    """240 unmarked images the calibration never saw: the detector must flag them no more often than its
    p-values say. Each bound fails a calibrated detector with probability < 0.5% (binomial tails), and a null
    that is 0.2 z too low (what a calibration on easier images gives) exceeds the p < 0.1 bound twice over."""
    detections = [W.detect(img) for _, img in unmarked_images()]
    p = np.array([d.p_value for d in detections])
    assert all(d.payload is None for d in detections)
    assert sum(d.detected is True for d in detections) <= 2          # 0.1% threshold: 0.24 expected
    assert (p < 0.01).sum() <= 7 and sum(d.detected is not False for d in detections) <= 7   # 2.4 expected
    assert (p < 0.1).sum() <= 38, np.sort(p)[:40]                     # 24 expected


def test_quality_on_1024px_output():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = scene(11, 1024)
    b = W.embed(a, payload=7)
    x, y = np.asarray(a), np.asarray(b)
    assert peak_signal_noise_ratio(x, y) >= 42
    assert structural_similarity(x, y, channel_axis=2, data_range=255) >= 0.99
    assert np.abs(x.astype(int) - y).max() <= 12  # no visible spikes anywhere


def test_flat_areas_stay_grey_and_busy_ones_carry_chroma():
    # a flat grey image is marked in the luma alone (JPEG would round a chroma chip away there); a busy grey
    # texture also gets the chroma half, and the detector finds the mark on either
    flat = Image.new("RGB", (512, 512), (128, 128, 128))
    a = np.asarray(W.embed(flat, payload=3)).astype(int)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all() and a.std() > 0.3
    busy = Image.fromarray(np.asarray(texture(4, 512).convert("L"))).convert("RGB")
    b = np.asarray(W.embed(busy, payload=3)).astype(int)
    assert np.abs(b[..., 0] - b[..., 1]).mean() > 0.5
    for marked in (a, b):
        assert W.detect(Image.fromarray(marked.astype(np.uint8))).payload == 3


def photo(name, size=1024):
    """One of scikit-image's sample photographs, scaled to `size` on its short side."""
    import skimage.data
    from skimage.util import img_as_ubyte

    a = img_as_ubyte(getattr(skimage.data, name)())
    im = Image.fromarray(np.stack([a] * 3, -1) if a.ndim == 2 else np.ascontiguousarray(a[..., :3]))
    s = size / min(im.size)
    return im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)


@pytest.mark.parametrize("name", ["horse", "astronaut"])  # black areas (SSIM 0.979 / 0.988 before the cap)
def test_quality_on_photos_with_black_areas(name):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x = np.asarray(photo(name))
    y = np.asarray(W.embed(Image.fromarray(x), payload=7))
    assert peak_signal_noise_ratio(x, y) >= 42
    assert structural_similarity(x, y, channel_axis=2, data_range=255) >= 0.99
    assert (y[x == 0] <= 1).all()  # black stays black


# busy photos where the autocorrelation alone missed the geometry (z 4.1, 3.9, 4.1, 5.5 before the search grid),
# and grey textures where a luma-only mark stayed under the threshold (z 4.1-5.4: gravel and grass at the PSNR
# cap; the chroma half of the mark sees almost none of their texture)
@pytest.mark.parametrize("name,attack", [("astronaut", "rot-5"), ("astronaut", "crop50"),
                                         ("hubble_deep_field", "crop25"), ("brick", "crop50"),
                                         ("gravel", "crop25"), ("grass", "rot+5"), ("gravel", "screenshot"),
                                         ("grass", "crop50+jpeg75")])
def test_busy_photos_survive_rotation_and_crops(name, attack):
    original = photo(name)
    assert found(ATTACKS[attack](W.embed(original, payload=0x1234ABCD)))
    assert not found(ATTACKS[attack](original))


# bright+30+crop50 failed here until the search grid: after brightening only the objects keep the mark, and
# the autocorrelation of so little area did not find the crop's scale (z 8.1 now, with the scale sweep)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_survives_every_listed_attack(marked, attack):
    original, img = marked
    assert found(ATTACKS[attack](img))
    assert not found(ATTACKS[attack](original))


def test_brightening_that_clips_the_background_keeps_the_mark_on_the_objects():
    # +30% turns every Shapes World background to pure white: only the objects (2.9-4% of the image here)
    # keep the mark, and the detector must not let the steps at their edges against the white swamp it
    bright = ATTACKS["bright+30"]
    for seed in (1, 3, 6):
        img = scene(seed, 1024)
        d = W.detect(bright(W.embed(img, payload=0xB0A710AD)))
        assert d.z >= W.z_at_p(W.DETECTED_FPR / 2) and d.detected is True and d.payload == 0xB0A710AD, seed  # the search alone
        assert not found(bright(img)), seed


def test_an_edit_that_keeps_the_geometry_is_read_where_the_code_was_put():
    # one small purple triangle on pale blue, brightened +30%: the background clips to white and the object
    # (0.4% of the image) is all that carries the mark. The search over scales, angles and translations needs
    # the best of thousands of alignments to stand out and misses it; reading the code where `embed` put it
    # (one alignment) finds it. Unmarked, neither test fires.
    from limner.world.scene import Obj, Scene

    img = render(Scene("pale blue", [Obj("triangle", "purple", "small", 0.5, 0.5)]), 1024)
    bright = ATTACKS["bright+30"]
    d = W.detect(bright(W.embed(img, payload=0x0B7EC7ED)))
    assert d.z < W.z_at_p(W.DETECTED_FPR / 2)                      # the search alone would miss it
    assert d.detected is True and d.z_unmoved > W.z_at_p(W.DETECTED_FPR / 2, "unmoved")
    assert not found(bright(img))
    # the payload (a quarter of the chips, spread over the whole 32 x 32-cell tile) needs an object that covers
    # most of a tile: a large one gives it, read where it was put
    img = render(Scene("light grey", [Obj("square", "blue", "large", 0.3, 0.6)]), 1024)
    edited = bright(W.embed(img, payload=0x0B7EC7ED))
    assert W.detect(edited).payload == 0x0B7EC7ED
    assert all(W.read_payload(W.unmoved(d)[1], (0, 0), W.KEY) == 0x0B7EC7ED for d in W.whiten(edited))
    # moved by a crop, the code is no longer where it was put: the unmoved test stays quiet, the search finds it
    cropped = W.detect(ATTACKS["crop25"](W.embed(scene(3, 1024), payload=5)))
    assert cropped.detected is True and cropped.payload == 5 and cropped.z_unmoved < 3


def lone_textured_object(shape: str, colour: str, grey_levels: float):
    """One small object on light grey at 1024 px, with smooth noise of `grey_levels` inside it (as a decoder
    leaves): the image and the object's pixels."""
    import cv2

    from limner.world.scene import Obj, Scene

    a = np.asarray(render(Scene("light grey", [Obj(shape, colour, "small", 0.3, 0.6)]), 1024)).astype(np.float32)
    obj = a.min(2) < 150
    noise = cv2.GaussianBlur(np.random.default_rng(0).normal(0, 1, a.shape).astype(np.float32), (0, 0), 2.0)
    return Image.fromarray(np.clip(a + noise * (grey_levels / noise.std()) * obj[..., None], 0, 255).astype(np.uint8)), obj


def test_a_lone_textured_object_on_a_pale_image_carries_more_of_the_mark(monkeypatch):
    # a default output with one small object: the object has texture of its own (here noise of 10 grey levels)
    # and brightening by 30% clips everything else. The object's pixels (1% of the image) carry up to 4x the
    # amplitude, which lifts the mark over that texture; without the boost it is lost. Photos are untouched.
    img, obj = lone_textured_object("square", "blue", 10)
    marked = W.embed(img, payload=9)
    change = np.asarray(marked).astype(float) - np.asarray(img)
    assert found(ATTACKS["bright+30"](marked)) and not found(ATTACKS["bright+30"](img))
    assert W.survivor_boost(np.asarray(photo("astronaut"))) == 1.0
    monkeypatch.setattr(W, "MAX_BOOST", 1.0)
    plain = W.embed(img, payload=9)
    rms = lambda d: float(np.sqrt((d**2).mean()))
    plain_change = np.asarray(plain).astype(float) - np.asarray(img)
    assert rms(change[obj]) > 1.5 * rms(plain_change[obj]) and rms(change[~obj]) < 1.05 * rms(plain_change[~obj])
    assert not found(ATTACKS["bright+30"](plain))


def test_a_lone_yellow_object_carries_the_mark_on_the_channel_a_brightening_keeps(monkeypatch):
    # a textured yellow circle on light grey, brightened by 30%: R and G of the circle clip with the background and
    # blue alone keeps the mark, 0.114 of the luma the detector reads (a default output missed so, 2026-12-07).
    # The grey part of the mark goes onto blue there (onto_survivors); pixels that clip whole are marked as before.
    img, obj = lone_textured_object("circle", "yellow", 18)
    marked = W.embed(img, payload=7)
    now = W.detect(ATTACKS["bright+30"](marked))
    monkeypatch.setattr(W, "onto_survivors", lambda rgb, lum, cap: ((lum,) * 3, cap))
    before = W.embed(img, payload=7)
    then = W.detect(ATTACKS["bright+30"](before))
    assert now.detected is True and then.detected is not True, (now, then)
    assert now.z_unmoved > then.z_unmoved + 1.0
    pale = np.asarray(img).min(2) >= W.BRIGHT_CLIP   # no channel survives: marked exactly as before
    assert np.array_equal(np.asarray(marked)[pale], np.asarray(before)[pale])
    blue = lambda m: np.abs(np.asarray(m)[..., 2].astype(float) - np.asarray(img)[..., 2])[obj].mean()  # noqa: E731
    assert blue(marked) > 1.5 * blue(before)


def test_brightening_an_enlarged_scene_keeps_the_mark_inside_its_objects():
    # `limner generate --scale 16`: a 64 px scene enlarged to 1024 px before marking. Brightened, its
    # objects' 16 px anti-aliasing bands stay live next to the white and their steps outweighed the mark
    # (z 4.0-4.5 with the steps kept; the detector now also tries the map without the cells beside them)
    for seed, attack in ((0, "bright+30"), (9, "bright+30"), (2, "bright+30+crop50")):
        img = scene(seed, 64).resize((1024, 1024), Image.NEAREST)
        marked = ATTACKS[attack](W.embed(img, payload=seed))
        assert found(marked), (seed, attack)
        assert not found(ATTACKS[attack](img)), (seed, attack)


def test_mild_attacks_keep_the_payload(marked):
    _, img = marked
    for attack in ("jpeg75", "resize0.5", "crop50", "rot+5", "noise0.05", "screenshot"):
        assert W.detect(ATTACKS[attack](img)).payload == 0xC0FFEE42, attack


def test_calibration_is_from_10k_unmarked_images_and_p_values_are_monotone():
    cal = W.calibration()
    assert cal["n"] >= 9_900   # images (a few too small to check)
    # the tail kept is the heaviest kind's, so each kind keeps the rate
    for test, c in (("search", cal), ("unmoved", cal["unmoved"])):
        kinds = cal["by_kind"]
        assert set(kinds) == {"photo", "scene", "noise"} and c["kind"] in kinds
        assert c["z_at_fpr"]["0.001"] == max(v[test]["z_at_fpr"]["0.001"] for v in kinds.values() if v[test]["n"] >= 2000)
    assert cal["z_at_fpr"]["0.01"] < cal["z_at_fpr"]["0.001"]
    for test, c in (("search", cal), ("unmoved", cal["unmoved"])):
        assert c["n"] >= 4_000 and c["z_at_fpr"]["0.01"] < c["z_at_fpr"]["0.001"]
        ps = [W.p_value(z, test) for z in (1, 2, c["z_at_fpr"]["0.01"], c["z_at_fpr"]["0.001"], 8, 12)]
        assert all(a >= b for a, b in zip(ps, ps[1:]))
        assert abs(W.p_value(c["z_at_fpr"]["0.001"], test) - 1e-3) < 3e-4
        assert W.z_at_p(W.p_value(5.5, test), test) == pytest.approx(5.5)
    # either test may fire: Bonferroni keeps both together at the level (twice the smaller p-value)
    z, zu = cal["z_at_fpr"]["0.001"], cal["unmoved"]["z_at_fpr"]["0.001"]
    assert W.joint_p_value(z, 0.0) == pytest.approx(2 * W.p_value(z)) and W.joint_p_value(0.0, 0.0) == 1.0
    assert W.joint_p_value(0.0, zu) == pytest.approx(2 * W.p_value(zu, "unmoved"))
    # the fit itself, on a sample with a known tail: maxima of 1024 standard normals
    rng = np.random.default_rng(0)
    fit = W.fit_null(rng.normal(size=(20_000, 1024)).max(axis=1))
    assert 4.5 < fit["z_at_fpr"]["0.001"] < 5.0 and 4.0 < fit["z_at_fpr"]["0.01"] < 4.5


def bench(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calibration_disagreements(first: int = 24, tolerance: float = 1e-3) -> list[tuple[int, float, float]]:
    """(index, stored z, z now) for each of the calibration's first images whose z the current detector
    no longer gives."""
    sample = W.calibration()["sample"]
    out = []
    for i, _, im in bench("watermark").calibration_images(first, sample["seed"]):
        now, stored = W.scores(im), (sample["z"][i], sample["z_unmoved"][i])
        if max(abs(a - b) for a, b in zip(now, stored)) > tolerance:
            out.append((i, stored, now))
    return out


def test_calibration_was_made_by_the_current_detector(monkeypatch):
    """The thresholds hold only for the detector that measured them: recompute the calibration's first images
    with the current one and require the z the calibration stored for each. A detector changed since (here a
    whitening clipped at 2.5 instead of 3) must fail it; rerun benchmarks/watermark.py --calibrate 10000."""
    sample = W.calibration()["sample"]
    assert len(sample["z"]) == len(sample["z_unmoved"]) == 200 and sum(z is not None for z in sample["z"]) >= 190
    bad = calibration_disagreements()
    assert not bad, f"(index, calibrated z, z now): {bad}; recalibrate: python benchmarks/watermark.py --calibrate 10000"
    spectral = W._spectral
    monkeypatch.setattr(W, "_spectral", lambda y: np.clip(spectral(y), -2.5, 2.5))
    assert len(calibration_disagreements(first=6)) >= 3


def test_false_positive_benchmark_uses_photos_the_calibration_never_saw():
    # benchmarks/watermark_fpr.py measures on photos disjoint from the calibration's, by name and by content
    fpr, cal = bench("watermark_fpr"), bench("watermark")
    sources = fpr.photo_sources()
    assert len(sources) >= 5 and not set(sources) & set(cal.PHOTOS)
    import skimage.data
    from skimage.util import img_as_ubyte

    first_rows = lambda a: (a if a.ndim == 2 else a[..., 0])[:8].tobytes()  # grey sources are stacked to RGB
    seen = {first_rows(img_as_ubyte(getattr(skimage.data, n)())) for n in cal.PHOTOS}
    assert not any(first_rows(a) in seen for a in sources.values())
    # its interval is exact: at 0 of 3,000 the upper end is 1 - 0.025^(1/3000), and it contains the rate
    assert fpr.clopper_pearson(0, 3000) == (0.0, pytest.approx(1 - 0.025 ** (1 / 3000), rel=1e-6))
    lo, hi = fpr.clopper_pearson(5, 100)
    assert lo == pytest.approx(0.01643, abs=2e-5) and hi == pytest.approx(0.11284, abs=2e-5)
    # photos alone (--model-images 0) summarise without an empty model group
    row = lambda z, detected: {"group": "photos", "what": "crop", "size": [64, 64], "z": z, "p_value": 0.5,
                               "detected": detected}
    s = fpr.summary([row(1.0, False), row(6.0, True)])
    assert list(s) == ["photos", "all"] and s["photos"]["false_positives"] == 1 and s["all"]["max_z"] == 6.0


def test_other_key_does_not_read_it(marked):
    _, img = marked
    assert W.detect(img, key=12345).detected is False


def test_cli_embed_and_detect(tmp_path):
    scene(4, 256).save(tmp_path / "in.png")
    run = lambda *a: subprocess.run([sys.executable, "-m", "limner.cli", "watermark", *a], capture_output=True,
                                    text=True)
    r = run("embed", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--payload", "00c0ffee")
    assert r.returncode == 0, r.stderr
    r = run("detect", str(tmp_path / "out.png"), str(tmp_path / "in.png"), "--json")
    assert r.returncode == 0, r.stderr
    marked_row, clean_row = map(json.loads, r.stdout.splitlines())
    assert marked_row["detected"] is True and marked_row["payload"] == "00c0ffee"
    assert clean_row["detected"] is False and clean_row["payload"] is None
    # what a reader needs without knowing the detector: the verdict and the p-value against its threshold
    assert marked_row["verdict"] == "detected" and clean_row["verdict"] == "not detected"
    assert clean_row["p_threshold"] == 0.0005 and clean_row["p_unsure_below"] == 0.005
    assert marked_row["p_value"] <= 0.0005 < clean_row["p_value"]
    assert run("detect", str(tmp_path / "in.png")).returncode == 1
    r = run("detect", str(tmp_path / "missing.png"))
    assert r.returncode == 2 and "no image at" in r.stderr


def test_cli_detect_reads_as_a_verdict_not_a_z_score(tmp_path):
    # an unmarked image scores z 4-5 (the best of thousands of alignments tried), which reads as significant:
    # the human output says no watermark, gives the p-value against the threshold, and shows no z
    clean, marked = tmp_path / "clean.png", tmp_path / "marked.png"
    img = scene(4, 256)
    img.save(clean)
    W.embed(img, payload=0x00C0FFEE).save(marked)
    r = subprocess.run([sys.executable, "-m", "limner.cli", "watermark", "detect", str(clean), str(marked)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    clean_line, marked_line, meaning = r.stdout.splitlines()
    assert W.scores(img)[0] > 3.5  # the point of the test: a z that would read as significant
    assert clean_line.startswith(f"{clean}: no watermark (p = ") and "detection needs p <= 0.0005" in clean_line
    assert marked_line.startswith(f"{marked}: watermark detected (p < 1e-6; threshold p <= 0.0005)")
    assert "payload 00c0ffee (model tag 00c, request tag 0ffee)" in marked_line
    assert not re.search(r"\bz\s*=", r.stdout)   # no z-score anywhere
    assert "unmarked images" in meaning and "0.0005" in meaning and "0.005" in meaning and "0.1%" in meaning


def test_unsure_and_detected_lines():
    unsure = W.Detection(None, 0.004, 5.4, None, 1.0, 0.0)
    assert unsure.describe().startswith("unsure (p = 0.004: under 0.005, not under the detection threshold p <= 0.0005")
    assert unsure.to_dict()["verdict"] == "unsure"
    assert W.Detection(False, 0.31, 4.4, None, 1.0, 0.0).describe() == "no watermark (p = 0.31; detection needs p <= 0.0005)"
