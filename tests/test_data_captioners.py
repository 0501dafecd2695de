"""Recaptioning: an OpenAI-compatible chat server (a real local one), local transformers models (tiny BLIP and
LLaVA built here, nothing downloaded) and the Shapes World oracle."""
import base64
import io
import json
import random
import re
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from limner.data.captioners import (PIXART_PROMPT, OpenAICaptioner, OracleCaptioner, TransformersCaptioner,
                                    build_captioner, fill, read_scene)
from limner.world.captions import relations
from limner.world.parse import parse_prompt
from limner.world.scene import Scene, render, sample_scene

# --------------------------------------------------------------------------- a local chat-completions server


class ChatAPI:
    """POST /v1/chat/completions. The caption names the alt-text and the image's size and colour; alt-texts
    ask for trouble: "bad" a 400, "flaky" a 503 then success, "busy" a 429 (Retry-After: 1) then success,
    "slow" one answer too late, "down" only 503s; "wait-N" answers after N/20 s."""

    requests: list = []
    seen: dict = {}
    in_flight = peak = 0
    lock = threading.Lock()

    @classmethod
    def answer(cls, path, headers, body):
        with cls.lock:
            cls.requests.append((path, headers, body))
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
        try:
            return cls._answer(path, headers, body)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    @classmethod
    def _answer(cls, path, headers, body):
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": "not found"}}
        if headers.get("Authorization") != "Bearer sk-test":
            return 401, {"error": {"message": "Incorrect API key provided"}}
        text, image = body["messages"][0]["content"]
        alt = m[1] if (m := re.search(r'alt-text "(.*?)"', text["text"])) else "none"
        tries = cls.seen[alt] = cls.seen.get(alt, 0) + 1
        if "bad" in alt:
            return 400, {"object": "error", "message": "Image could not be decoded", "code": 400}
        if "down" in alt or ("flaky" in alt and tries == 1):
            return 503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"}
        if "busy" in alt and tries == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}
        if "slow" in alt and tries == 1:
            time.sleep(1.5)
        if m := re.search(r"wait-(\d+)", alt):
            time.sleep(int(m[1]) / 20)
        img = Image.open(io.BytesIO(base64.b64decode(image["image_url"]["url"].split(",", 1)[1])))
        r, g, b = img.convert("RGB").getpixel((img.width // 2, img.height // 2))
        caption = f" {alt} {img.width}x{img.height} {'red' if r > b else 'blue'} "
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": caption}}]}


@pytest.fixture
def server(monkeypatch, json_server):
    ChatAPI.requests, ChatAPI.seen, ChatAPI.in_flight, ChatAPI.peak = [], {}, 0, 0
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(OpenAICaptioner, "backoff", 0.01)
    return json_server(ChatAPI.answer) + "/v1"


RED, BLUE = Image.new("RGB", (800, 400), (220, 30, 30)), Image.new("RGB", (300, 600), (30, 30, 220))


def test_prompt_carries_the_alt_text_or_is_pixarts_own():
    pixart = "Describe this image and its style in a very detailed manner."  # PixArt-alpha's LLaVA prompt
    assert fill(PIXART_PROMPT, None) == fill(PIXART_PROMPT, "  ") == pixart
    prompt = fill(PIXART_PROMPT, "  Eiffel {tower}\n at night ")
    assert prompt.startswith("Describe this image") and '"Eiffel {tower} at night"' in prompt
    assert fill("Alt: {alt}\nCaption it.", None) == "Caption it." and len(fill("{alt}", "x" * 5000)) == 1000


def test_openai_captioner_sends_the_image_and_alt_text(server):
    cap = OpenAICaptioner(server, "llava-test", kind="llava", image_size=256, max_tokens=77, temperature=0.0)
    out = cap.caption([RED, BLUE], ["red banner", None], [{}, {}])
    assert out == [{"llava": "red banner 256x128 red"}, {"llava": "none 128x256 blue"}] and cap.errors == [None, None]
    assert RED.size == (800, 400)  # the caller's image is not resized
    ((path, headers, body),) = [r for r in ChatAPI.requests if "red banner" in json.dumps(r[2])]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert {k: body[k] for k in ("model", "max_tokens", "temperature")} == {"model": "llava-test", "max_tokens": 77,
                                                                            "temperature": 0.0}
    (msg,) = body["messages"]
    text, image = msg["content"]
    assert msg["role"] == "user" and text == {"type": "text", "text": fill(PIXART_PROMPT, "red banner")}
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(image["image_url"]["url"].split(",", 1)[1])))
    assert sent.format == "JPEG" and sent.size == (256, 128)


def test_openai_captioner_retries_then_records_failures(server):
    cap = OpenAICaptioner(server, "m", retries=2, timeout=0.5, concurrency=1)
    start = time.monotonic()
    out = cap.caption([RED] * 5, ["flaky", "bad", "busy", "slow", "down"], [{}] * 5)
    assert time.monotonic() - start >= 1.0  # the 429's Retry-After, not the 0.01 s backoff
    assert [o.get("vlm") for o in out] == ["flaky 512x256 red", None, "busy 512x256 red", "slow 512x256 red", None]
    assert ChatAPI.seen == {"flaky": 2, "bad": 1, "busy": 2, "slow": 2, "down": 3}  # 400s are not retried
    assert cap.errors[0] is None and "HTTP 400: Image could not be decoded" in cap.errors[1]
    assert "gave up after 3 tries: HTTP 503: overloaded" in cap.errors[4]


def test_openai_captioner_keeps_order_under_concurrency(server):
    cap = OpenAICaptioner(server, "m", concurrency=4)
    alts = [f"wait-{8 - i} n{i}" for i in range(8)]  # the first asked are answered last
    out = cap.caption([RED, BLUE] * 4, alts, [{}] * 8)
    assert [o["vlm"].split()[1] for o in out] == [f"n{i}" for i in range(8)]
    assert [o["vlm"].split()[-1] for o in out] == ["red", "blue"] * 4
    assert ChatAPI.peak == 4


def test_openai_captioner_stops_on_errors_every_image_would_hit(server, monkeypatch):
    with pytest.raises(RuntimeError, match=r"HTTP 404: not found .*ends in /v1"):
        OpenAICaptioner(server.removesuffix("/v1"), "m").caption([RED], [None], [{}])
    monkeypatch.delenv("LIMNER_TEST_KEY", raising=False)
    with pytest.raises(RuntimeError, match=r"HTTP 401: Incorrect API key provided .*\$LIMNER_TEST_KEY"):
        OpenAICaptioner(server, "m", api_key_env="LIMNER_TEST_KEY").caption([RED], [None], [{}])
    with pytest.raises(ConnectionError, match="could not reach"):
        OpenAICaptioner("http://127.0.0.1:9/v1", "m", retries=1).caption([RED], [None], [{}])


# --------------------------------------------------------------------------- tiny transformers models

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<image>", *"""a an the of on and in with image photo picture
    red blue green yellow circle square triangle two three small large shapes user assistant :""".split()]
# an untrained model may stop at once; kept from special tokens, it always writes words
QUIET = list(range(6))
SPREAD = 0.2  # initial weights ten times wider than usual, so that different images get different babble


def _tokenizer(root):
    from transformers import BertTokenizer

    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return BertTokenizer(str(root / "vocab.txt"), additional_special_tokens=["<image>"])


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    root = tmp_path_factory.mktemp("tiny-blip")
    torch.manual_seed(0)
    text = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64, bos_token_id=2, eos_token_id=3, sep_token_id=3, pad_token_id=0,
                initializer_range=SPREAD)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, initializer_range=SPREAD)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text, projection_dim=32,
                                                    initializer_range=SPREAD))
    model.generation_config.suppress_tokens = QUIET
    model.save_pretrained(root / "blip")
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), _tokenizer(root)).save_pretrained(root / "blip")
    return root / "blip"


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    root = tmp_path_factory.mktemp("tiny-llava")
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                       image_size=32, patch_size=8, projection_dim=32, initializer_range=SPREAD),
        text_config=LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                bos_token_id=2, eos_token_id=3, pad_token_id=0, initializer_range=SPREAD),
        image_token_index=WORDS.index("<image>"), vision_feature_layer=-1, initializer_range=SPREAD)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.suppress_tokens = QUIET
    model.save_pretrained(root / "llava")
    template = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %} assistant :{% endif %}")
    LlavaProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   _tokenizer(root), patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=template).save_pretrained(root / "llava")
    return root / "llava"


def _photos(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 30, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("model", ["tiny_blip", "tiny_llava"])
def test_transformers_captioner_loads_a_folder_and_batches(model, request):
    folder = request.getfixturevalue(model)
    images, alts = _photos(5), ["two red circles", None, "a blue {square}", "", "three shapes"]
    cap = TransformersCaptioner(str(folder), kind="tiny", max_new_tokens=6, batch_size=2)
    out = cap.caption(images, alts, [{}] * 5)
    assert len(out) == 5 and all(list(o) == ["tiny"] and o["tiny"].strip() for o in out) and cap.errors == [None] * 5
    assert all(set(o["tiny"].split()) <= set(WORDS) for o in out) and len({o["tiny"] for o in out}) >= 4
    # greedy decoding: the same captions again, whatever the batch and the order an image comes in
    again = TransformersCaptioner(str(folder), kind="tiny", max_new_tokens=6, batch_size=5)
    assert again.caption(images[::-1], alts[::-1], [{}] * 5) == out[::-1]
    single = TransformersCaptioner(str(folder), kind="tiny", max_new_tokens=6, batch_size=1)
    assert single.caption(images, alts, [{}] * 5) == out


def test_transformers_captioner_uses_chat_templates_and_strips_the_prompt(tiny_llava):
    cap = TransformersCaptioner(str(tiny_llava), max_new_tokens=6)
    out = cap.caption(_photos(2), ["red circle", None], [{}, {}])
    # the six new words only, not the prompt ("user : <image> describe ... assistant :") before them
    assert all(len(o["vlm"].split()) == 6 and not o["vlm"].startswith("user") for o in out)
    assert cap.caption(_photos(1), ["two green triangles"], [{}]) != out[:1]  # the alt-text is in the prompt


def test_transformers_captioner_needs_a_local_model(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ["limner-tests/no-such-captioner", str(tmp_path / "missing")]:
        with pytest.raises(FileNotFoundError, match="pass the folder of a vision-language model.*HF_HUB_OFFLINE=0"):
            TransformersCaptioner(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # downloads allowed: the name is kept for transformers, loaded lazily
    assert TransformersCaptioner("limner-tests/no-such-captioner").path == "limner-tests/no-such-captioner"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no vision-language model"):
        TransformersCaptioner(str(tmp_path / "empty")).caption(_photos(1), [None], [{}])


# --------------------------------------------------------------------------- the Shapes World oracle


def _counts(text):
    out = {}
    for g in parse_prompt(text).groups:
        out[g["colour"], g["shape"]] = out.get((g["colour"], g["shape"]), 0) + g["count"]
    return out


def test_oracle_captions_rendered_scenes_exactly():
    rng = random.Random(1)
    scenes = [sample_scene(rng) for _ in range(12)]
    images = [render(s, 96 if i % 2 else 64) for i, s in enumerate(scenes)]
    oracle = OracleCaptioner(seed=3)
    read = oracle.caption(images, [None] * 12, [{}] * 12)
    given = oracle.caption(images, [None] * 12, [{"scene": s.to_dict()} for s in scenes])
    for scene, a, b in zip(scenes, read, given):
        truth = {k: len(v) for k, v in scene.groups().items()}
        assert set(a) == set(b) == {"count", "spatial", "detailed"}
        assert _counts(a["count"]) == _counts(b["count"]) == truth
        asked = parse_prompt(a["spatial"])
        assert all((tuple(r["a"]), r["rel"], tuple(r["b"])) in relations(scene) for r in asked.relations)
        assert all(f"{c} {s}" in a["detailed"] for c, s in truth) and scene.background in a["detailed"]
    assert oracle.errors == [None] * 12
    # reproducible, and an image's captions do not depend on its batch
    assert OracleCaptioner(seed=3).caption(images[::-1], [None] * 12, [{}] * 12) == read[::-1]
    assert OracleCaptioner(seed=4).caption(images, [None] * 12, [{}] * 12) != read


def test_oracle_prefers_the_scene_in_the_metadata():
    scene = Scene.from_dict({"background": "ivory", "objects": [
        {"shape": "circle", "colour": "red", "size": "small", "x": 0.2, "y": 0.3},
        {"shape": "circle", "colour": "red", "size": "small", "x": 0.7, "y": 0.3},
        {"shape": "square", "colour": "blue", "size": "large", "x": 0.5, "y": 0.75}]})
    blank = Image.new("RGB", (64, 64), (245, 242, 232))
    oracle = OracleCaptioner(kinds=["count"])
    metas = [{"scene": scene.to_json()}, {"scene": scene.to_dict()}, {}]
    out = oracle.caption([blank] * 3, [None] * 3, metas)
    assert _counts(out[0]["count"]) == _counts(out[1]["count"]) == {("red", "circle"): 2, ("blue", "square"): 1}
    assert out[2] == {} and oracle.errors == [None, None, "not a Shapes World image"]


def test_oracle_refuses_other_images():
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    on_ivory = Image.new("RGB", (512, 512), (245, 242, 232))  # a photo on a Shapes World backdrop
    on_ivory.paste(astronaut.resize((256, 256)), (128, 128))
    scene = render(sample_scene(random.Random(0)), 64)
    oracle = OracleCaptioner()
    out = oracle.caption([astronaut, on_ivory, scene.resize((64, 48)), scene], [None] * 4, [{}] * 4)
    assert out[:3] == [{}, {}, {}] and out[3] and oracle.errors[:3] == ["not a Shapes World image"] * 3
    assert read_scene(on_ivory) is None and read_scene(scene) is not None
    with pytest.raises(ValueError, match="unknown caption kinds.*count"):
        OracleCaptioner(kinds=("count", "haiku"))


# --------------------------------------------------------------------------- build_captioner


def test_build_captioner():
    assert build_captioner({"type": "oracle", "kinds": ["count"]}).kinds == ("count",)
    remote = build_captioner({"type": "openai", "base_url": "http://localhost:8000/v1/", "model": "qwen2-vl"})
    assert isinstance(remote, OpenAICaptioner) and remote.endpoint == "http://localhost:8000/v1/chat/completions"
    for bad in [{"type": "gpt"}, {"model": "x"}, "oracle", None]:
        with pytest.raises(ValueError, match="unknown captioner.*openai, transformers, oracle"):
            build_captioner(bad)
    with pytest.raises(ValueError, match="bad settings for the openai captioner.*model.*it takes base_url, model"):
        build_captioner({"type": "openai", "base_url": "http://x"})
    with pytest.raises(ValueError, match="bad settings for the oracle captioner.*colour"):
        build_captioner({"type": "oracle", "colour": "red"})
