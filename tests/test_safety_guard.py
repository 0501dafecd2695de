"""The responsibility layer inside generation: the CLI and the Python API refuse through one check,
and every image they make carries the watermark, its parameters and (on request) a C2PA manifest."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import limner
from limner.safety import watermark as W
from limner.safety.guard import Guard, SafetyConfig
from limner.safety.prompt_filter import PromptBlocked, check_prompt
from limner.safety.provenance import make_test_certificate, read_c2pa, read_parameters

BLOCKED = "a photo of a naked child"


@pytest.fixture(scope="module")
def pipe():
    return limner.Pipeline.from_pretrained("shapes-default")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "limner.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_api_and_cli_refuse_the_same_way(pipe, tmp_path):
    verdict = check_prompt(BLOCKED)
    assert not verdict.allowed
    with pytest.raises(PromptBlocked) as e:
        pipe(BLOCKED, steps=2)
    assert e.value.category == verdict.category and e.value.code == "content_policy_violation"
    # negative prompts steer away from what they name: a common one must not be refused
    assert len(pipe("two red circles", negative_prompt="nsfw, nude, gore, blurry", steps=2)) == 1
    r = cli("generate", BLOCKED, "--output", str(tmp_path / "x.png"))
    assert r.returncode == 2 and str(e.value) in r.stderr
    assert not (tmp_path / "x.png").exists()  # refused, not a black image


@pytest.mark.slow
def test_outputs_carry_watermark_and_parameters(pipe, tmp_path):
    r = cli("generate", "three red circles and a blue square", "--steps", "6", "--output", str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    params = read_parameters(tmp_path / "a.png")
    assert params["prompt"] == "three red circles and a blue square" and params["steps"] == 6
    d = W.detect(Image.open(tmp_path / "a.png"))
    assert d.detected is True
    assert d.payload == W.payload_for(f"{params['model']}@{params['limner_version']}", params["request_id"])
    assert params["watermark"] == f"limner:{d.payload:08x}"
    # same request, same image: the request id comes from the parameters
    img = pipe("three red circles and a blue square", steps=6)[0]
    assert img.info["parameters"] == params  # same candidate, same request id, same mark
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(tmp_path / "a.png")))
    r = cli("generate", "two blue squares", "--steps", "6", "--no-watermark", "--no-metadata",
            "--output", str(tmp_path / "b.png"))
    assert r.returncode == 0 and W.detect(Image.open(tmp_path / "b.png")).detected is False
    assert read_parameters(tmp_path / "b.png") is None


def test_safety_off_is_only_explicit(pipe):
    raw = limner.Pipeline(pipe.denoiser, pipe.vae, pipe.encoder, pipe.meta, guard=Guard(SafetyConfig.off()))
    img = raw(BLOCKED, steps=2)[0]  # a research run that turned everything off, on purpose
    assert W.detect(img).detected is False


def test_enlarged_outputs_are_marked_at_the_size_they_are_saved(pipe):
    from limner.safety.attacks import ATTACKS

    big = limner.Pipeline(pipe.denoiser, pipe.vae, pipe.encoder, pipe.meta, guard=Guard(SafetyConfig(enlarge=8)))
    img = big("three red circles and a blue square", steps=4)[0]
    small = pipe("three red circles and a blue square", steps=4, size=64)[0]   # the base size, as `big` draws
    assert img.size == (8 * small.width, 8 * small.height)
    d = W.detect(ATTACKS["jpeg75"](img))
    assert d.detected is True and d.payload is not None
    # marked at 64 px a chip is one pixel, and JPEG 75 leaves at most a weak trace (no payload, p at least 100x
    # larger): why the CLI's --scale enlarges first
    weak = W.detect(ATTACKS["jpeg75"](small))
    assert weak.payload is None and weak.p_value > 100 * d.p_value


@pytest.mark.slow
def test_cli_signs_c2pa(tmp_path):
    chain, key = make_test_certificate(tmp_path / "keys")
    out = tmp_path / "signed.png"
    r = cli("generate", "one large orange circle", "--steps", "4", "--output", str(out), "--size", "64", "--scale", "4",
            "--c2pa-cert", str(chain), "--c2pa-key", str(key))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (256, 256)  # enlarged, then marked (and signed) at that size
    manifest = read_c2pa(out)
    assert manifest["ai_generated"] is True and manifest["parameters"]["prompt"] == "one large orange circle"
    assert W.detect(Image.open(out)).detected is True
    r = cli("generate", "one circle", "--c2pa-cert", str(chain), "--output", str(tmp_path / "c.png"))
    assert r.returncode == 2 and "--c2pa-key" in r.stderr
