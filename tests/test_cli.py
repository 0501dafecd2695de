"""The command line as a user runs it: real subprocesses on the shipped default model."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

CLI = [sys.executable, "-m", "limner.cli"]


def limner(*args, **kw):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.slow
def test_generate_writes_png_with_parameters(tmp_path):
    out = tmp_path / "img.png"
    res = limner("generate", "three red circles and a blue square", "--output", str(out), "--seed", "7", "--steps", "8")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    img = Image.open(out)
    assert img.size == (1024, 1024)   # the default: 64 px from the base model, then the upsampler's cascade
    params = json.loads(img.info["parameters"])
    assert params["prompt"] == "three red circles and a blue square" and params["seed"] == 7 and params["steps"] == 8
    assert params["model"] == "shapes-default"


@pytest.mark.slow
def test_generate_many_reproducible_with_negative_prompt(tmp_path):
    args = ["generate", "two green triangles", "-n", "2", "--steps", "6", "--guidance", "2",
            "--negative-prompt", "red", "--sampler", "heun", "--size", "64"]   # 1024 px: test_python_api_matches_cli
    first = limner(*args, "--output", str(tmp_path / "a.png"))
    second = limner(*args, "--output", str(tmp_path / "b.png"))
    assert first.returncode == 0, first.stderr
    paths_a, paths_b = first.stdout.split(), second.stdout.split()
    assert len(paths_a) == 2
    for pa, pb in zip(paths_a, paths_b):
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    assert not np.array_equal(np.asarray(Image.open(paths_a[0])), np.asarray(Image.open(paths_a[1])))


@pytest.mark.parametrize("args, message", [
    (["generate", ""], "prompt is empty"),
    (["generate", "   "], "prompt is empty"),
    (["generate", "a red circle", "--steps", "100000"], "steps must be between"),
    (["generate", "a red circle", "-n", "0"], "-n must be between"),
    (["generate", "a red circle", "--guidance", "-3"], "guidance must be between"),
    (["generate", "a red circle", "--sampler", "magic"], "unknown sampler"),
    (["generate", "a red circle", "--model", "/no/such/model"], "unknown model '/no/such/model' (not a folder)"),
])
def test_bad_input_gets_clear_errors(args, message, tmp_path):
    res = limner(*args, "--output", str(tmp_path / "x.png"))
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_prompt_outside_the_world_warns(tmp_path):
    res = limner("generate", "a photo of a cat on a sofa", "--steps", "2", "--size", "64", "--output", str(tmp_path / "c.png"))
    assert res.returncode == 0
    assert "only knows Shapes World" in res.stderr and "cat" in res.stderr


def test_world_sample_and_score_round_trip(tmp_path):
    res = limner("world", "sample", "-n", "12", "--out", str(tmp_path / "w"), "--resolution", "96")
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "w").glob("*.png"))) == 12
    rec = json.loads((tmp_path / "w" / "000000.json").read_text())
    assert set(rec["captions"]) == {"alt", "count", "spatial", "detailed"}
    res = limner("world", "score", str(tmp_path / "w"), "--json")
    summary = json.loads(res.stdout)["summary"]
    assert summary["scene"]["n"] == 12 and summary["scene"]["correct"] == 1.0


def png_with_prompt(scene, prompt: str, path, size: int = 96):
    """A rendered scene saved as `limner generate` saves images: the prompt in the `parameters` chunk."""
    from limner.safety.provenance import png_parameters
    from limner.world.scene import render

    render(scene, size).save(path, pnginfo=png_parameters({"prompt": prompt, "seed": 0}))


@pytest.mark.slow
def test_world_score_reads_generated_prompts(tmp_path):
    """`world score` reads each PNG's own prompt and scores what the image shows against it: a scene that
    draws its prompt is right, one that draws something else is wrong, and a generated image gets the
    scores the Python scorer gives it."""
    from limner.world.parse import parse_prompt
    from limner.world.scene import Obj, Scene
    from limner.world.scorer import detect, score

    folder = tmp_path / "g"
    assert limner("generate", "two blue squares", "--steps", "6", "--size", "64", "--output", str(folder / "a.png")).returncode == 0
    squares = Scene("ivory", [Obj("square", "blue", "large", 0.3, 0.5), Obj("square", "blue", "large", 0.7, 0.5)])
    circles = Scene("ivory", [Obj("circle", "red", "large", x, 0.5) for x in (0.2, 0.5, 0.8)])
    png_with_prompt(squares, "two blue squares", folder / "b.png")
    png_with_prompt(circles, "two blue squares", folder / "c.png")    # the prompt asks for what is not there
    png_with_prompt(circles, "three red circles", folder / "d.png")
    res = limner("world", "score", str(folder), "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["image"]: r for r in json.loads(res.stdout)["images"]}
    assert [rows[f"{k}.png"]["prompt"] for k in "abcd"] == ["two blue squares"] * 3 + ["three red circles"]
    verdicts = [(rows[f"{k}.png"]["count_ok"], rows[f"{k}.png"]["correct"]) for k in "bcd"]
    assert verdicts == [(True, True), (False, False), (True, True)]
    generated = score(detect(Image.open(folder / "a.png")), parse_prompt("two blue squares"))
    assert {k: rows["a.png"][k] for k in generated} == json.loads(json.dumps(generated))
    assert limner("world", "score", str(tmp_path / "nothing")).returncode == 2


@pytest.mark.slow
def test_python_api_matches_cli(tmp_path):
    import limner as L

    pipe = L.Pipeline.from_pretrained("shapes-default")
    img = pipe("a yellow triangle", seed=1, steps=6)[0]
    limner("generate", "a yellow triangle", "--seed", "1", "--steps", "6", "--output", str(tmp_path / "y.png"))
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(tmp_path / "y.png")))


# Run the CLI in a fresh process and report, after it returns, which heavy libraries it imported: a flag the
# pipeline would refuse must be refused before any model (weights, autoencoder, text encoder, prompt filter)
# loads, so none of their libraries may be imported by then.
MODEL_LIBRARIES = ("safetensors", "diffusers", "transformers", "onnxruntime")
REPORT_IMPORTS = f"""
import json, sys
from limner.cli import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "loaded": sorted(m for m in {MODEL_LIBRARIES!r} if m in sys.modules),
                  "torch": "torch" in sys.modules}}))
"""


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "steps must be between 1 and 1000, not 0"),   # was silently the model's default
    (["--steps", "100000"], "steps must be between 1 and 1000, not 100000"),   # was refused after loading
    (["--guidance", "-3"], "guidance must be between 0 and 50"),
    (["--guidance", "nan"], "guidance must be between 0 and 50"),
    (["--sampler", "magic"], "unknown sampler 'magic'"),
    (["-n", "0"], "-n must be between 1 and 256, not 0"),
    (["--best-of", "0"], "--best-of must be between 1 and 64, not 0"),
    (["--best-of", "65"], "--best-of must be between 1 and 64, not 65"),
])
def test_generate_refuses_bad_flags_before_loading_a_model(flags, message, tmp_path):
    out = tmp_path / "x.png"
    argv = ["generate", "a red circle", *flags, "--output", str(out)]
    res = subprocess.run([sys.executable, "-c", REPORT_IMPORTS, *argv], capture_output=True, text=True, timeout=120)
    assert f"limner: error: {message}" in res.stderr and "Traceback" not in res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    assert report["code"] == 2 and report["loaded"] == [] and report["torch"] is False
    assert not out.exists() and not list(tmp_path.iterdir())


def test_help_imports_no_model_code():
    """`limner --help` builds every verb's parser; none of them may pull in torch or a model library."""
    code = ("import sys; from limner.cli import parser; parser()\n"
            f"print(sorted(m for m in ('torch', *{MODEL_LIBRARIES!r}) if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
    res = limner("--help")
    assert res.returncode == 0 and "generate" in res.stdout and "watermark" in res.stdout
