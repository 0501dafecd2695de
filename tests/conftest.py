"""What several test modules share, in one place: no test module imports another.

Helpers are handed out as fixtures (pytest's "factory as fixture"): a test names the fixture in its arguments
and calls it as it would a local function, e.g. `tiny_clip_config()` or `count_calls(monkeypatch, S, "distil")`.
Heavy libraries are imported inside the fixtures, so collecting the tests stays quick.

Slow tests: a test that trains, starts a process that loads a model, drives a browser or starts a database
server, or takes more than ~15 s, is marked `@pytest.mark.slow`. `pytest -m "not slow"` is the quick loop;
plain `pytest` (what CI runs) runs everything.
"""
from __future__ import annotations

import base64
import io
import json
import random
import socket
import string
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "limner.cli"]


# ------------------------------------------------------------------------------ pictures


def shapes_image(seed=0, size=64):
    """A Shapes-World-like picture: flat circles on a light background."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (245, 242, 232))
    draw = ImageDraw.Draw(img)
    for colour in [(220, 40, 40), (40, 80, 220), (40, 170, 60)]:
        x, y = rng.integers(4, size - 20, 2)
        draw.ellipse((x, y, x + 14, y + 14), fill=colour)
    return img


def make_two_images():
    a = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8))  # not square
    return a, shapes_image(3)


@pytest.fixture(scope="session", name="shapes_image")
def shapes_image_fixture():
    """shapes_image(seed=0, size=64): a Shapes-World-like picture."""
    return shapes_image


@pytest.fixture(scope="session")
def two_images():
    """two_images(): a random 64x48 photo-like image and a Shapes-World-like one (the CLIP tests' pair)."""
    return make_two_images


# ------------------------------------------------------------------------------ a tiny CLIP


def make_tiny_clip_config():
    from transformers import CLIPConfig

    text = dict(vocab_size=2 + 2 * 26, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    config._attn_implementation = "eager"
    return config


@pytest.fixture(scope="session")
def tiny_clip_config():
    """tiny_clip_config(): a fresh config of the tiny two-tower CLIP (hidden 32, 2 layers, 32 px, 16-d projection)."""
    return make_tiny_clip_config


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random two-tower CLIP (hidden 32, 2 layers, 32 px) and a 54-token character tokenizer, saved to disk."""
    torch = pytest.importorskip("torch")
    from transformers import CLIPModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny-clip")
    # one id per token: a comprehension reading len(vocab) as it updates would give every letter the same id,
    # and the saved tokenizer would then read every text as <|endoftext|>
    tokens = ["<|startoftext|>", "<|endoftext|>", *string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase)]
    vocab = {t: i for i, t in enumerate(tokens)}
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    torch.manual_seed(0)
    CLIPModel(make_tiny_clip_config()).save_pretrained(path)
    return path


def byte_chars() -> list[str]:
    """The 256 characters CLIP's byte-level BPE maps bytes to: with no merges, every text tokenizes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return [chr(c) for c in bs] + [chr(256 + i) for i in range(len(extra))]


@pytest.fixture(scope="session", name="byte_chars")
def byte_chars_fixture():
    """byte_chars(): the 256 characters of CLIP's byte-level BPE (a vocabulary in which every text tokenizes)."""
    return byte_chars


# ------------------------------------------------------------------------------ a tiny diffusion transformer


@pytest.fixture(scope="session")
def tiny_dit():
    """tiny_dit(**options): a fresh tiny DiT (8x8x4 latents, patch 2, 32-d text) with DiTConfig `options`."""
    def build(**kw):
        from limner.models.dit import DiT, DiTConfig

        return DiT(DiTConfig(preset="tiny", latent_size=8, in_channels=4, patch=2, text_dim=32, **kw))

    return build


# ------------------------------------------------------------------------------ a tiny Stable Diffusion


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline folder (diffusers' layout), built here: nothing is downloaded."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-sd")
    chars = byte_chars()
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
    """The tiny Stable Diffusion folder behind limner's DiffusersBackend."""
    from limner.pipeline.backends import load_backend

    return load_backend(str(tiny_sd))


# ------------------------------------------------------------------------------ a local OpenAI images API


class JSONAPI(BaseHTTPRequestHandler):
    """Hands each POSTed JSON body to `answer(path, headers, body)` and sends back what it returns: (status,
    payload) or (status, payload, headers)."""

    answer = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, payload, *extra = type(self).answer(self.path, dict(self.headers), body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(extra[0] if extra else {})}.items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client gave up waiting (a timeout test) or was killed
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def json_server():
    """json_server(answer) -> the base URL of a local JSON API on a free port, until the test ends: `answer(path,
    headers, body)` returns (status, payload) or (status, payload, headers) for each POST."""
    servers = []

    def start(answer) -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("API", (JSONAPI,), {"answer": staticmethod(answer)}))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


class ImagesAPI:
    """POST /v1/images/generations: a solid PNG whose colour comes from the seed; refuses "forbidden"."""

    requests: list = []
    strict = False   # act like OpenAI: reject fields it does not know

    @classmethod
    def answer(cls, path, headers, body):
        cls.requests.append((path, headers, body))
        if path != "/v1/images/generations":
            return 404, {"error": {"message": "not found", "code": None}}
        if cls.strict and "seed" in body:
            return 400, {"error": {"message": "Unrecognized request argument supplied: seed"}}
        if "forbidden" in body["prompt"]:
            return 400, {"error": {"message": "Your request was rejected by our safety system.",
                                   "type": "invalid_request_error", "code": "content_policy_violation"}}
        w, h = map(int, body.get("size", "64x64").split("x"))
        seed = body.get("seed", 0)
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (seed * 40 % 256, 100, len(body["prompt"]) % 256)).save(buf, format="PNG")
        return 200, {"created": 0, "data": [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]}


@pytest.fixture
def images_api():
    """The local images API (ImagesAPI): `.requests` it received (path, headers, body), `.strict` to set."""
    ImagesAPI.requests, ImagesAPI.strict = [], False
    return ImagesAPI


@pytest.fixture
def openai_server(images_api, json_server):
    """The URL of a local OpenAI images API server (ImagesAPI) on a free port, for this test."""
    return json_server(images_api.answer)


# ------------------------------------------------------------------------------ the prompt filter's tiny encoder


class TinyEncoder:
    """tiny_encoder(seed=0, vocab=tiny_encoder.vocab): a randomly initialised one-layer BERT and its WordPiece
    tokenizer over a few words: distils in milliseconds."""

    words = "the of and a red blue green circle square cat dog woman man body blood knife sofa clothing photo".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", ",", ".", *words, "##s", "é"]

    def __call__(self, seed: int = 0, vocab=None):
        import torch
        from transformers import BertConfig, BertModel, BertTokenizerFast

        vocab = self.vocab if vocab is None else vocab
        tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=64)
        return tokenizer, BertModel(config).eval()


@pytest.fixture(scope="session")
def tiny_encoder():
    """tiny_encoder(seed=0, vocab=...): (tokenizer, model), a tiny random BERT; `.words` and `.vocab` its words."""
    return TinyEncoder()


@pytest.fixture(scope="session")
def saved_tiny_encoder(tiny_encoder):
    """saved_tiny_encoder(folder, seed=0): a tiny encoder saved to `folder` and loaded back as limner loads its
    real one, so that it has weight files."""
    def save(folder, seed=0):
        from limner.text import encoder as E

        tok, model = tiny_encoder(seed)
        tok.save_pretrained(folder)
        model.save_pretrained(folder)
        return E.load.__wrapped__(str(folder))[:2]

    return save


def count_calls_of(monkeypatch, owner, name: str) -> list:
    """`owner.name` wrapped to append 1 to the returned list at each call."""
    calls = []
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.fixture(scope="session")
def count_calls():
    """count_calls(monkeypatch, owner, name): a list that grows by one at each call of `owner.name`."""
    return count_calls_of


# ------------------------------------------------------------------------------ votes from known ratings


def simulate(n, strengths, models, tie_rate=0.15, seed=0, questions=None):
    """Votes between `models` whose true ratings are `strengths`. Ties take half their probability from each
    side, so a's expected score (ties half) is still the Bradley–Terry probability p and the ratings stay the
    truth; at most ``tie_rate`` of close battles are ties, fewer of lopsided ones."""
    from limner.eval import ratings as R

    rng = np.random.default_rng(seed)
    m = len(strengths)
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    p = 1 / (1 + 10 ** ((strengths[b] - strengths[a]) / 400))
    tie = 4 * tie_rate * p * (1 - p)
    u = rng.random(n)
    outcome = np.where(u < p - tie / 2, R.A_WINS, np.where(u < p + tie / 2, R.TIE, R.B_WINS))
    q = [questions[i % len(questions)] for i in range(n)] if questions else [None] * n
    return R.Votes([models[i] for i in a], [models[i] for i in b], outcome.astype(np.int8), q,
                   [str(i) for i in range(n)], [None] * n)


@pytest.fixture(scope="session")
def simulate_votes():
    """simulate_votes(n, strengths, models, tie_rate=0.15, seed=0, questions=None): ratings.Votes drawn from
    known Bradley–Terry strengths."""
    return simulate


# ------------------------------------------------------------------------------ the rating arena


class SceneBackend:
    """A toy "model" for arena tests: renders, for each prompt, the Constraints' groups (`wrong`: every count
    off by one, other colour). Real enough for the scorer (and a scripted rater) to tell models apart."""

    def __init__(self, name: str, constraints: dict[str, dict], wrong: bool = False):
        self.name, self.constraints, self.wrong = name, constraints, wrong

    def identity(self) -> dict:
        return {"toy": self.name, "wrong": self.wrong}

    def generate(self, prompts, seeds, negative_prompt=None, steps=None, guidance=None, size=None):
        from limner.world.scene import Obj, Scene, place, render

        out = []
        for prompt, seed in zip(prompts, seeds):
            rng = random.Random(f"{prompt}-{seed}-{self.name}")
            objs = []
            for g in self.constraints[prompt]["groups"]:
                n = g["count"] % 8 + 1 if self.wrong else g["count"]
                colour = ("blue" if g["colour"] != "blue" else "red") if self.wrong else g["colour"]
                objs += [Obj(g["shape"], colour, "small", 0, 0) for _ in range(n)]
            objs = objs[:8]
            while not place(objs, rng, 0.04):
                pass
            out.append(render(Scene("ivory", objs), (size or (128, 128))[0]))
        return out


def generations(out_dir, models=("good", "bad"), suites=("shapes-counting", "shapes-detailed"), per_cell=1):
    """A `limner eval generate` folder: every prompt of the suites by every model, seed 0 ("good" draws what
    the prompt asks for, any other model the wrong things)."""
    from limner.eval.generate import generate_suite
    from limner.eval.suites import shapes_suite

    prompts = [p for s in suites for p in shapes_suite(s, per_cell)]
    cons = {p.text: p.constraints for p in prompts}
    backends = [SceneBackend(m, cons, wrong=m != "good") for m in models]
    return generate_suite(prompts, backends, out_dir, seeds=(0,), progress=False)


def a_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arena_server(db) -> tuple[str, subprocess.Popen]:
    """`limner arena serve` in a subprocess on a free port, once it answers."""
    import httpx

    port = a_free_port()
    proc = subprocess.Popen(CLI + ["arena", "serve", "--db", str(db), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(url + "/", timeout=1)
            return url, proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("arena server did not start: " + proc.stdout.read())


def arena_invite(db, url: str, *extra) -> list[str]:
    """Invite tokens (not links) from `limner arena invite`."""
    out = subprocess.run(CLI + ["arena", "invite", "--db", str(db), "--url", url, *extra],
                         check=True, capture_output=True, text=True).stdout
    return [link.split("token=")[1] for link in out.split()]


@pytest.fixture(scope="session")
def make_generations():
    """make_generations(out_dir, models=("good", "bad"), suites=..., per_cell=1): a generation folder of toy models."""
    return generations


@pytest.fixture(scope="session")
def free_port():
    """free_port(): a TCP port on 127.0.0.1 that nothing listens on."""
    return a_free_port


@pytest.fixture(scope="session")
def start_server():
    """start_server(db) -> (url, process): `limner arena serve` in a subprocess; the caller stops it."""
    return arena_server


@pytest.fixture(scope="session")
def invite():
    """invite(db, url, *flags) -> tokens: `limner arena invite`."""
    return arena_invite


# ------------------------------------------------------------------------------ training


def tiny_train_config(kind: str, tmp: Path, **over):
    """configs/{kind}-tiny.yaml writing under `tmp`, on one thread, with `over` replacing config fields."""
    import dataclasses

    from limner.train import load_config

    cfg = load_config(ROOT / f"configs/{kind}-tiny.yaml")
    data = dataclasses.replace(cfg.data, cache_dir=str(tmp / "cache"))
    return dataclasses.replace(cfg, **{"out_dir": str(tmp / kind), "data": data, "threads": 1, **over})


@pytest.fixture(scope="session")
def tiny():
    """tiny(kind, tmp, **over): the tiny training config of `kind`, writing under `tmp`, on one thread."""
    return tiny_train_config
