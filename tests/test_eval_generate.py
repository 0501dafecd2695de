"""`limner eval generate` and the model backends behind it: limner checkpoints, diffusers pipeline folders
(a tiny Stable Diffusion built here, nothing downloaded) and OpenAI images API servers (a real local one)."""
import argparse
import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limner.pipeline.backends import DiffusersBackend, LimnerBackend, OpenAIBackend, load_backend
from limner.cli.eval import add_eval_generate_parser
from limner.eval.generate import folder_names, generate_suite, read_manifest, safe_name
from limner.eval.suites import Prompt, load_suite
from limner.safety import watermark as W
from limner.safety.prompt_filter import PromptBlocked

# --------------------------------------------------------------------------- a tiny diffusers pipeline


def _byte_chars() -> list[str]:
    """The 256 characters CLIP's byte-level BPE maps bytes to: with no merges, every text tokenizes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return [chr(c) for c in bs] + [chr(256 + i) for i in range(len(extra))]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-sd")
    chars = _byte_chars()
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)])}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=32)
    # four VAE blocks: 8x down-sampling, so the 8 px latents decode to 64 px images (the watermark needs 32)
    vae = AutoencoderKL(block_out_channels=(32,) * 4, latent_channels=4, norm_num_groups=32, sample_size=64,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "tiny-sd")
    return root / "tiny-sd"


@pytest.fixture(scope="module")
def sd_backend(tiny_sd):
    return load_backend(str(tiny_sd))


# --------------------------------------------------------------------------- a local OpenAI images server


class ImagesAPI(BaseHTTPRequestHandler):
    """POST /v1/images/generations: a solid PNG whose colour comes from the seed; refuses "forbidden"."""

    requests: list = []
    strict = False   # act like OpenAI: reject fields it does not know

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, dict(self.headers), body))
        if self.path != "/v1/images/generations":
            return self._send(404, {"error": {"message": "not found", "code": None}})
        if self.strict and "seed" in body:
            return self._send(400, {"error": {"message": "Unrecognized request argument supplied: seed"}})
        if "forbidden" in body["prompt"]:
            return self._send(400, {"error": {"message": "Your request was rejected by our safety system.",
                                              "type": "invalid_request_error", "code": "content_policy_violation"}})
        w, h = map(int, body.get("size", "64x64").split("x"))
        seed = body.get("seed", 0)
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (seed * 40 % 256, 100, len(body["prompt"]) % 256)).save(buf, format="PNG")
        self._send(200, {"created": 0, "data": [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    ImagesAPI.requests, ImagesAPI.strict = [], False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ImagesAPI)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------- backends


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


def test_openai_backend_against_a_local_server(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    backend = load_backend(server + "#tiny")
    imgs = backend.generate(["three red circles", "three red circles"], [1, 2], size=(48, 32))
    assert [im.size for im in imgs] == [(48, 32)] * 2 and imgs[0].getpixel((0, 0)) == (40, 100, 17)
    path, headers, body = ImagesAPI.requests[0]
    assert body == {"model": "tiny", "prompt": "three red circles", "n": 1, "size": "48x32",
                    "response_format": "b64_json", "seed": 1}
    assert headers["Authorization"] == "Bearer sk-test"
    with pytest.raises(PromptBlocked, match="content policy") as e:
        backend.generate(["a forbidden thing"], [0])
    assert e.value.code == "content_policy_violation" and "safety system" in str(e.value)
    # a server that rejects the extra fields (as OpenAI's does) gets them dropped, once and for all
    ImagesAPI.strict = True
    assert OpenAIBackend(server).generate(["a circle"], [3])[0].size == (64, 64)
    assert "seed" not in ImagesAPI.requests[-1][2]
    with pytest.raises(RuntimeError, match="HTTP 404"):
        OpenAIBackend(server + "/nope").generate(["a circle"], [0])
    with pytest.raises(ConnectionError, match="could not reach"):
        OpenAIBackend("http://127.0.0.1:9", timeout=5).generate(["a circle"], [0])


# --------------------------------------------------------------------------- generate_suite and the CLI


def test_generate_suite_is_resumable(sd_backend, tmp_path):
    prompts = load_suite("shapes-counting")[:3]
    backends = [load_backend("shapes-default"), sd_backend]
    first = generate_suite(prompts, backends, tmp_path, seeds=(0, 1), steps=2, progress=False)
    assert (first.generated, first.skipped) == (12, 0)
    pngs = sorted(tmp_path.rglob("*.png"))
    assert len(pngs) == 12 and {p.parent.name for p in pngs} == {"shapes-default", "tiny-sd"}
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({r["cache_key"] for r in rows}) == 12
    row = rows[0]
    assert row["path"] == f"shapes-default/{safe_name(prompts[0].id)}-s0.png" and row["constraints"]
    assert set(row) >= {"model", "prompt_id", "prompt", "seed", "path", "tags", "constraints", "cache_key"}
    assert W.detect(Image.open(tmp_path / rows[-1]["path"])).detected is True

    again = generate_suite(prompts, backends, tmp_path, seeds=(0, 1), steps=2, progress=False)
    assert (again.generated, again.skipped) == (0, 12)
    # a run killed mid-way: one image lost, the manifest's last line cut short
    (tmp_path / rows[7]["path"]).unlink()
    with (tmp_path / "manifest.jsonl").open("a") as f:
        f.write('{"cache_key": "ab')
    resumed = generate_suite(prompts, backends, tmp_path, seeds=(0, 1), steps=2, progress=False)
    assert (resumed.generated, resumed.skipped) == (1, 11)
    assert (tmp_path / rows[7]["path"]).exists() and len(read_manifest(tmp_path / "manifest.jsonl")) == 12
    # other settings are other images
    assert generate_suite(prompts[:1], backends[:1], tmp_path, seeds=(0,), steps=3, progress=False).generated == 1


def test_refusals_are_recorded_not_fatal(server, tmp_path, capsys):
    prompts = [Prompt("p0", "a red circle", "t", {}), Prompt("p1", "a forbidden thing", "t", {})]
    m = generate_suite(prompts, [load_backend(server)], tmp_path, seeds=(0,))
    assert "2/2" in capsys.readouterr().err   # the progress bar
    assert (m.generated, m.blocked) == (2, 1)
    assert m.rows[1]["path"] is None and "content policy" in m.rows[1]["blocked"]
    assert generate_suite(prompts, [load_backend(server)], tmp_path, progress=False).generated == 0


def test_model_folders_are_safe_and_distinct():
    class Fake:
        def __init__(self, name):
            self.name = name

    names = folder_names([Fake("a/b:c"), Fake("x"), Fake("x")], [{"n": 1}, {"n": 2}, {"n": 3}])
    assert names[0] == "a-b-c" and len(set(names)) == 3 and all(n.startswith("x-") for n in names[1:])
    # the suffix comes from the identity, so the order of --model does not move images between folders
    assert folder_names([Fake("x"), Fake("x")], [{"n": 3}, {"n": 2}]) == names[:0:-1]


def test_cli(server, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_eval_generate_parser(parser.add_subparsers(dest="eval_verb"))
    argv = ["generate", "--suite", "shapes-counting", "--limit", "2", "--model", server + "#a",
            "--model", server + "#b", "--seeds", "0", "1", "--size", "40x40", "--out", str(tmp_path), "--no-progress"]
    args = parser.parse_args(argv)
    assert args.fn(args) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'manifest.jsonl'}: 8 generated, 0 already there"
    assert Image.open(next(tmp_path.rglob("*.png"))).size == (40, 40)
    assert len({p.parent for p in tmp_path.rglob("*.png")}) == 2
    assert args.fn(parser.parse_args(argv)) == 0
    assert "0 generated, 8 already there" in capsys.readouterr().out
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        args.fn(parser.parse_args([*argv, "--size", "big"]))


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
    assert r.returncode == 2 and "--sampler and --best-of apply to limner models only" in r.stderr
