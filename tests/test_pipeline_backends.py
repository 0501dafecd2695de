"""limner.pipeline.backends: every model `limner eval generate` and `limner generate --model` can run behind one
interface: limner folders, diffusers pipeline folders (a tiny Stable Diffusion built in conftest.py, nothing
downloaded) and OpenAI images API servers (a real local one)."""
import numpy as np
import pytest
from PIL import Image

from limner.pipeline.backends import DiffusersBackend, LimnerBackend, OpenAIBackend, load_backend
from limner.safety import watermark as W
from limner.safety.prompt_filter import PromptBlocked


def test_load_backend_dispatches_and_explains(tiny_sd, tmp_path):
    assert isinstance(load_backend("shapes-default"), LimnerBackend)
    assert isinstance(load_backend(str(tiny_sd)), DiffusersBackend)
    remote = load_backend("https://api.example.com/v1#gpt-image-1")
    assert isinstance(remote, OpenAIBackend) and remote.model == "gpt-image-1"
    assert remote.endpoint == "https://api.example.com/v1/images/generations"
    assert load_backend("http://localhost:8000").endpoint == "http://localhost:8000/v1/images/generations"
    for spec, what in [(str(tmp_path), "neither limner.json nor model_index.json"),
                       (str(tmp_path / "missing"), "not a folder"), ("sdxl", "not a folder")]:
        with pytest.raises(ValueError, match="unknown model") as e:
            load_backend(spec)
        assert what in str(e.value) and "model_index.json" in str(e.value) and "http" in str(e.value)


def test_diffusers_backend_is_reproducible_and_guarded(sd_backend):
    a = sd_backend.generate(["two red circles", "a blue square"], [0, 1], steps=2, guidance=3.0, size=(64, 64))
    # the same seed gives the same image whatever it is batched with: the same noise, so equal up to
    # float rounding (BLAS kernels may sum a batch of 2 in another order than a batch of 1 on some CPUs)
    b = sd_backend.generate(["a blue square"], [1], steps=2, guidance=3.0, size=(64, 64))
    assert a[0].size == (64, 64)
    diff = np.abs(np.asarray(a[1], dtype=int) - np.asarray(b[0], dtype=int))
    assert diff.max() <= 4 and diff.mean() < 0.5   # another seed differs by tens of levels
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))
    params = a[0].info["parameters"]
    assert params["prompt"] == "two red circles" and params["seed"] == 0 and params["steps"] == 2
    assert params["pipeline"] == "StableDiffusionPipeline" and params["watermark"].startswith("limner:")
    assert W.detect(a[0]).detected is True
    with pytest.raises(PromptBlocked):   # limner's prompt filter stands in front of diffusers models too
        sd_backend.generate(["a photo of a naked child"], [0], steps=2)
    ident = sd_backend.identity()
    assert ident["class"] == "StableDiffusionPipeline" and "unet/config.json" in ident["model"]["files"]


def test_openai_backend_against_a_local_server(openai_server, images_api, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    backend = load_backend(openai_server + "#tiny")
    imgs = backend.generate(["three red circles", "three red circles"], [1, 2], size=(48, 32))
    assert [im.size for im in imgs] == [(48, 32)] * 2 and imgs[0].getpixel((0, 0)) == (40, 100, 17)
    path, headers, body = images_api.requests[0]
    assert body == {"model": "tiny", "prompt": "three red circles", "n": 1, "size": "48x32",
                    "response_format": "b64_json", "seed": 1}
    assert headers["Authorization"] == "Bearer sk-test"
    with pytest.raises(PromptBlocked, match="content policy") as e:
        backend.generate(["a forbidden thing"], [0])
    assert e.value.code == "content_policy_violation" and "safety system" in str(e.value)
    # a server that rejects the extra fields (as OpenAI's does) gets them dropped, once and for all
    images_api.strict = True
    assert OpenAIBackend(openai_server).generate(["a circle"], [3])[0].size == (64, 64)
    assert "seed" not in images_api.requests[-1][2]
    with pytest.raises(RuntimeError, match="HTTP 404"):
        OpenAIBackend(openai_server + "/nope").generate(["a circle"], [0])
    with pytest.raises(ConnectionError, match="could not reach"):
        OpenAIBackend("http://127.0.0.1:9", timeout=5).generate(["a circle"], [0])


@pytest.mark.slow
def test_limner_generate_runs_a_diffusers_folder(tiny_sd, tmp_path):
    """`limner generate --model FOLDER` puts limner's gate (filter, watermark, parameters) around any diffusers model."""
    import subprocess
    import sys

    from limner.safety import watermark as W
    from limner.safety.provenance import read_parameters

    run = lambda *a: subprocess.run([sys.executable, "-m", "limner.cli", "generate", *a, "--model", str(tiny_sd)],
                                    capture_output=True, text=True)
    r = run("two red circles", "--steps", "2", "--output", str(tmp_path / "d.png"))
    assert r.returncode == 0, r.stderr
    assert W.detect(Image.open(tmp_path / "d.png")).detected is True
    assert read_parameters(tmp_path / "d.png")["prompt"] == "two red circles"
    r = run("two red circles", "--sampler", "heun", "--output", str(tmp_path / "e.png"))
    assert r.returncode == 2 and "apply to limner models only" in r.stderr
