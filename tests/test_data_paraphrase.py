"""The paraphrasing captioner: a real local chat-completions server (retries, 429s, errors, servers that ignore
n), tiny transformers models built here (a causal LM with a chat template and a T5, nothing downloaded), the
disk cache (a second run asks nothing, a killed run resumes), the check, and the training hooks (planner and
denoiser data get a "paraphrase" caption kind; a tiny planner run trains on it)."""
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from limner.data.captioners import ChatEndpoint
from limner.data.paraphrase import (PROMPT, OpenAIParaphraser, ParaphraserConfig, TransformersParaphraser, check,
                                    clean, fill, paraphrase)

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------ a local text-only chat server


def rewrite(caption: str, i: int) -> str:
    """The server's "paraphrase": the caption's words backwards, numbered so that n choices differ."""
    return f"{' '.join(reversed(caption.split()))} (take {i})"


class TextChat:
    """POST /v1/chat/completions for text. It reads the caption after the prompt's last "Description:" and
    answers n rewrites; captions ask for trouble: "@busy" a 429 (Retry-After: 1) then success, "@flaky" a 503
    then success, "@bad" a 400, "@down" only 503s, "@single" one choice whatever n is, "@refuse" / "@echo" /
    "@ramble" / "@blank" a refusal, the caption itself, a long answer, nothing; "@wait" answers after 0.3 s."""

    requests: list = []
    seen: Counter = Counter()
    lock = threading.Lock()

    @classmethod
    def answer(cls, path, headers, body):
        caption = body["messages"][0]["content"].rsplit("Description:", 1)[-1].split("\nRewrite:")[0].strip()
        with cls.lock:
            cls.requests.append((path, headers, body, caption))
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": "not found"}}
        if headers.get("Authorization") != "Bearer sk-test":
            return 401, {"error": {"message": "Incorrect API key provided"}}
        with cls.lock:   # tries of the caption that reached the model
            cls.seen[caption] += 1
            tries = cls.seen[caption]
        if "@bad" in caption:
            return 400, {"object": "error", "message": "prompt too long", "code": 400}
        if "@down" in caption or ("@flaky" in caption and tries == 1):
            return 503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"}
        if "@busy" in caption and tries == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}
        if "@wait" in caption:
            time.sleep(0.3)
        n = 1 if "@single" in caption else body.get("n", 1)
        special = {"@refuse": "I'm sorry, but I can't help with that.", "@echo": caption.upper() + ".",
                   "@ramble": "a " * 200, "@blank": "  "}
        texts = [next((v for k, v in special.items() if k in caption), None) or rewrite(caption, tries * 10 + i)
                 for i in range(n)]
        return 200, {"choices": [{"index": i, "message": {"role": "assistant", "content": t}}
                                 for i, t in enumerate(texts)]}


@pytest.fixture
def server(monkeypatch, json_server):
    TextChat.requests, TextChat.seen = [], Counter()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(ChatEndpoint, "backoff", 0.01)
    return json_server(TextChat.answer) + "/v1"


def test_openai_paraphraser_sends_the_prompt_and_asks_n(server):
    para = OpenAIParaphraser(server, "qwen-test", temperature=0.7, max_tokens=55, concurrency=3)
    captions = [f"{k} red circles left of {k} blue squares" for k in ("two", "three", "four", "five")]
    out = para.paraphrase(captions, 2)
    assert out == [[rewrite(c, 10), rewrite(c, 11)] for c in captions] and para.errors == [None] * 4
    path, headers, body, _ = TextChat.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert {k: body[k] for k in ("model", "n", "temperature", "max_tokens")} == {
        "model": "qwen-test", "n": 2, "temperature": 0.7, "max_tokens": 55}
    asked = {caption: body["messages"] for *_, body, caption in TextChat.requests}
    assert asked[captions[1]] == [{"role": "user", "content": fill(PROMPT, captions[1])}]
    assert "Keep every object, number, colour, size" in PROMPT and fill("<{caption}>", " a  {b} ") == "<a {b}>"


def test_openai_paraphraser_retries_fails_per_caption_and_tops_up_n(server):
    para = OpenAIParaphraser(server, "m", retries=2, concurrency=1)
    start = time.monotonic()
    out = para.paraphrase(["@flaky one", "@bad one", "@busy one", "@down one", "@single one"], 3)
    assert time.monotonic() - start >= 1.0  # the 429's Retry-After, not the 0.01 s backoff
    assert out[0] == [rewrite("@flaky one", 20 + i) for i in range(3)] and out[2][0] == rewrite("@busy one", 20)
    assert out[1] == out[3] == [] and len(out[4]) == 3   # a server that ignores n is asked again for the rest
    assert TextChat.seen == {"@flaky one": 2, "@bad one": 1, "@busy one": 2, "@down one": 3, "@single one": 3}
    assert para.errors[0] is None and "HTTP 400: prompt too long" in para.errors[1]
    assert "gave up after 3 tries: HTTP 503: overloaded" in para.errors[3]
    with pytest.raises(RuntimeError, match=r"HTTP 404: not found .*ends in /v1"):
        OpenAIParaphraser(server.removesuffix("/v1"), "m").paraphrase(["x"], 1)
    with pytest.raises(RuntimeError, match=r"HTTP 401: Incorrect API key .*\$NO_SUCH_KEY"):
        OpenAIParaphraser(server, "m", api_key_env="NO_SUCH_KEY").paraphrase(["x"], 1)
    with pytest.raises(ConnectionError, match="could not reach"):
        OpenAIParaphraser("http://127.0.0.1:9/v1", "m", retries=1).paraphrase(["x"], 1)


def test_check_keeps_rewrites_and_counts_what_it_drops():
    source = "two red circles above a blue square"
    kept, dropped = check(source, ["Rewrite: \"A blue square lies below 2 red circles.\"\nDescription: next one",
                                   "", "Two red circles, above a blue square!", "I'm sorry, I can't do that.",
                                   "As an AI language model I think two circles", "x " * 60,
                                   "a blue square lies below 2 red circles", "Beneath two red circles: a blue square"])
    assert kept == ["A blue square lies below 2 red circles.", "Beneath two red circles: a blue square"]
    assert dropped == Counter({"empty": 1, "unchanged": 1, "refusal": 2, "too long": 1, "repeated": 1})
    assert clean("\n  'three green dots'  \nRewrite: more") == "three green dots"


# ------------------------------------------------------------------------------------------------- cache


def test_the_cache_asks_each_caption_once_and_drops_bad_rewrites(server, tmp_path):
    captions = ["two red circles", "a @refuse square", "one @echo star", "@ramble", "@blank", "@bad one",
                "two red circles", "three blue dots"]
    para = OpenAIParaphraser(server, "m", retries=0)
    out, report = paraphrase(para, captions, n=2, cache_dir=tmp_path, batch_size=3)
    assert out["two red circles"] == [rewrite("two red circles", 10), rewrite("two red circles", 11)]
    assert out["a @refuse square"] == out["one @echo star"] == out["@bad one"] == []
    assert (report.captions, report.cached, report.asked, report.failed, report.kept) == (7, 0, 7, 1, 4)
    assert report.dropped == Counter({"refusal": 2, "unchanged": 2, "too long": 2, "empty": 2})
    assert "1 failed" in report.line() and "refusal 2" in report.line()
    asked = len(TextChat.requests)
    again, report = paraphrase(OpenAIParaphraser(server, "m", retries=0), captions, n=2, cache_dir=tmp_path, batch_size=5)
    assert again == out and (report.cached, report.asked) == (6, 1)   # only the failed caption is asked again
    assert [r[3] for r in TextChat.requests[asked:]] == ["@bad one"]
    # another n, prompt or model is another question
    for changed, n in [(OpenAIParaphraser(server, "m"), 1), (OpenAIParaphraser(server, "m", prompt="{caption}?"), 2),
                       (OpenAIParaphraser(server, "other"), 2)]:
        before = len(TextChat.requests)
        paraphrase(changed, ["two red circles"], n=n, cache_dir=tmp_path)
        assert len(TextChat.requests) == before + 1
    assert all(p.name == "about.json" or p.suffix == ".jsonl" for p in tmp_path.rglob("*") if p.is_file())


def test_a_run_without_a_bar_logs_how_far_it_got(server, tmp_path, monkeypatch, caplog):
    import limner.data.paraphrase as P

    monkeypatch.setattr(P, "LOG_EVERY", 0.0)
    with caplog.at_level("INFO", logger="limner.data.paraphrase"):
        paraphrase(OpenAIParaphraser(server, "m"), [f"{k} red dots" for k in range(5)], n=1, cache_dir=tmp_path,
                   batch_size=2)
    assert [r.getMessage() for r in caplog.records] == [f"paraphrases: {k} of 5 captions asked (0 failed)"
                                                         for k in (0, 2, 4)]


def test_an_interrupted_run_keeps_its_finished_batches(server, tmp_path, monkeypatch):
    captions = [f"{k} green triangles" for k in range(10)]
    para = OpenAIParaphraser(server, "m", concurrency=1)
    real_post, calls = ChatEndpoint.post, []

    def dies_on_the_seventh(self, body):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt   # the run is stopped mid-batch
        return real_post(self, body)

    monkeypatch.setattr(ChatEndpoint, "post", dies_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        paraphrase(para, captions, n=1, cache_dir=tmp_path, batch_size=3)
    monkeypatch.setattr(ChatEndpoint, "post", real_post)
    asked = len(TextChat.requests)
    out, report = paraphrase(para, captions, n=1, cache_dir=tmp_path, batch_size=3)
    assert (report.cached, report.asked) == (6, 4) and len(TextChat.requests) == asked + 4
    assert all(out[c] == [rewrite(c, 10 * TextChat.seen[c])] for c in captions)


@pytest.mark.slow
def test_a_killed_cli_run_resumes_where_it_stopped(server, tmp_path):
    captions = [f"@wait {k} purple squares" for k in range(12)]
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n\n")
    args = ["data", "paraphrase", str(tmp_path / "captions.txt"), "--base-url", server, "--model", "m", "-n", "2",
            "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out.jsonl"),
            "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "limner.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "cache").rglob("part-*.jsonl"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    finished = len(list((tmp_path / "cache").rglob("part-*.jsonl")))
    assert 2 <= finished < 6 and not (tmp_path / "out.jsonl").exists()
    asked = len(TextChat.requests)
    from limner.cli import main

    assert main(args) == 0
    assert len(TextChat.requests) - asked == 12 - 2 * finished   # only the captions of unfinished batches
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == captions and all(len(r["paraphrases"]) == 2 for r in rows)


RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from limner.data.paraphrase import add_paraphrases

dist.init_process_group("gloo")
captions = [{"count": f"{k} red circles", "spatial": f"{k} blue squares left of a star"} for k in range(12)]
add_paraphrases(captions, {"base_url": sys.argv[1], "model": "m"}, seed=0, cache_dir=sys.argv[2])
with open(os.path.join(sys.argv[3], f"rank-{dist.get_rank()}.json"), "w") as f:
    json.dump(captions, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_under_torchrun_one_process_asks_and_all_train_on_the_same(server, tmp_path):
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)

    def torchrun(out):
        out.mkdir()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(tmp_path / "rank.py"), server, str(tmp_path / "cache"), str(out)], check=True,
                       capture_output=True, timeout=300)
        return [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]

    first, second = torchrun(tmp_path / "one")
    assert first == second and all("paraphrase" in caps for caps in first)
    assert len(TextChat.requests) == 12   # one of each scene's two captions, asked by one process
    # an earlier run's shared result is never read: this run's local rank 0 writes its own before the others read
    (shared,) = (tmp_path / "cache").rglob("result-*.json")
    stale = json.loads(shared.read_text())
    shared.write_text(json.dumps({**stale, "rewrites": {c: ["STALE"] for c in stale["rewrites"]}}))
    assert torchrun(tmp_path / "two") == [first, first] and len(TextChat.requests) == 12   # from the cache


def test_the_cli_says_what_is_wrong(server, tmp_path, capsys):
    from limner.cli import main

    (tmp_path / "c.txt").write_text("two red circles\n")
    base = ["data", "paraphrase", str(tmp_path / "c.txt"), "-o", str(tmp_path / "o.jsonl"), "--quiet",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(base) == 2 and "either base_url (and model)" in capsys.readouterr().err
    assert main([*base, "--base-url", server]) == 2 and "needs model" in capsys.readouterr().err
    assert main([*base, "--base-url", server, "--model", "m", "--api-key-env", "NO_SUCH_KEY"]) == 2
    assert "HTTP 401" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()
    assert main([*base, "--base-url", server, "--model", "m"]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text())["paraphrases"] == [rewrite("two red circles", 10 + i)
                                                                             for i in range(3)]


# ------------------------------------------------------------------------------ tiny transformers models

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"""a an the of on and in with to left right above below
    red blue green yellow circle circles square squares triangle two three small large big user assistant :
    rewrite description words different keep every""".split()]
QUIET = list(range(5))  # an untrained model may stop at once; kept from special tokens, it always writes words


def _tokenizer(root, chat_template=None):
    from transformers import BertTokenizer

    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizer(str(root / "vocab.txt"))
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    """A tiny random Llama with a chat template, saved to a folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny-causal")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                                         initializer_range=0.2))
    model.generation_config.suppress_tokens = QUIET
    model.save_pretrained(root / "model")
    template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %} assistant :{% endif %}")
    _tokenizer(root, template).save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A tiny random T5 (encoder-decoder), saved to a folder."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    root = tmp_path_factory.mktemp("tiny-t5")
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(WORDS), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                                num_heads=4, pad_token_id=0, eos_token_id=3,
                                                decoder_start_token_id=0, initializer_factor=5.0))
    model.generation_config.suppress_tokens = QUIET
    model.save_pretrained(root / "model")
    _tokenizer(root).save_pretrained(root / "model")
    return root / "model"


SHORT = "rewrite in different words : {caption}"   # the few-shot PROMPT is ten times longer: slow on a CPU
CAPTIONS = ["two red circles", "a big blue square above three small green triangles", "one yellow triangle",
            "three red squares to the left of a blue circle", "two large green circles"]


@pytest.mark.parametrize("model", ["tiny_causal", "tiny_t5"])
def test_transformers_paraphraser_loads_a_folder_and_batches(model, request):
    import torch

    folder = request.getfixturevalue(model)
    beams = TransformersParaphraser(str(folder), SHORT, temperature=0, max_tokens=6, batch_size=2)
    out = beams.paraphrase(CAPTIONS, 2)
    assert [len(o) for o in out] == [2] * 5 and beams.errors == [None] * 5
    assert all(set(t.split()) <= set(WORDS) and len(t.split()) <= 6 for o in out for t in o)
    assert not any(t.startswith("user") for o in out for t in o)   # the answer only, not the prompt before it
    assert len({t for o in out for t in o}) >= 5   # the caption is in the prompt: rewrites differ between captions
    # beam search is deterministic: the same rewrites whatever the batch and the order a caption comes in
    assert TransformersParaphraser(str(folder), SHORT, temperature=0, max_tokens=6, batch_size=5).paraphrase(
        CAPTIONS[::-1], 2) == out[::-1]
    sampled = TransformersParaphraser(str(folder), SHORT, temperature=1.5, max_tokens=6, batch_size=5)
    first = sampled.paraphrase(CAPTIONS, 3)
    torch.manual_seed(1)   # whatever the caller's random state: sampling is seeded by the batch
    assert [len(o) for o in first] == [3] * 5 and sampled.paraphrase(CAPTIONS, 3) == first
    assert len(set(first[1])) >= 2
    # a model that never stops (this one cannot) is cut where check() would drop it anyway: 4 x 3 tokens + 8
    (unending,) = TransformersParaphraser(str(folder), SHORT, temperature=0, max_tokens=300).paraphrase(
        ["two red circles"], 1)
    assert 12 <= len(unending[0].split()) <= 20


def test_transformers_paraphraser_uses_the_chat_template(tiny_causal, monkeypatch):
    para = TransformersParaphraser(str(tiny_causal), temperature=0, max_tokens=4)
    tokenizer, model, seq2seq = para._load()
    assert not seq2seq
    prompts = []
    real = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, texts, **kw: prompts.append(texts) or
                        real(self, texts, **kw))
    para.paraphrase(["two red circles"], 1)
    assert ["user : " + fill(PROMPT, "two red circles") + " assistant :"] in prompts


def test_a_local_model_is_cached_by_what_it_holds(tiny_t5, tmp_path):
    import shutil

    def asked(folder):
        para = TransformersParaphraser(str(folder), SHORT, temperature=0, max_tokens=3)
        return paraphrase(para, CAPTIONS[:2], n=1, cache_dir=tmp_path / "cache")[1].asked

    assert asked(tiny_t5) == 2 and asked(tiny_t5) == 0
    moved = shutil.copytree(tiny_t5, tmp_path / "moved")
    assert asked(moved) == 0   # the same model elsewhere: its answers are in the cache
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "dropout_rate": 0.2}))   # changed in place: asked again
    assert asked(moved) == 2


def test_transformers_paraphraser_needs_a_local_text_model(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match="pass the folder of a language model"):
        TransformersParaphraser(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no text-generation model"):
        TransformersParaphraser(str(tmp_path / "empty")).paraphrase(["two red circles"], 1)


# ------------------------------------------------------------------------------------------ configuration


def test_the_config_says_what_is_wrong():
    from limner.train.data import DataConfig
    from limner.train.planner import PlannerData

    for spec, message in [({}, "either base_url"), ({"base_url": "http://x/v1", "path": "p"}, "either base_url"),
                          ({"base_url": "http://x/v1"}, "needs model"), ({"path": "p", "n": 0}, "at least 1|1 or more"),
                          ({"path": "p", "prompt": "rewrite it"}, r"no \{caption\}"),
                          ({"path": "p", "temprature": 1}, r"unknown keys \['temprature'\]"),
                          ("http://x/v1", "give a mapping")]:
        with pytest.raises(ValueError, match=message):
            PlannerData(paraphraser=spec)
    with pytest.raises(ValueError, match="weighs 'paraphrase' but no paraphraser"):
        PlannerData(captioners={"terse": 1.0, "paraphrase": 1.0}, easy_steps=0)
    with pytest.raises(ValueError, match="weighs 'paraphrase' but no paraphraser"):
        DataConfig(caption_weights={"alt": 1.0, "paraphrase": 1.0})
    with pytest.raises(ValueError, match="differ: give one"):
        PlannerData(captioners={"terse": 1.0, "paraphrase": 2.0}, paraphraser={"path": "p", "weight": 0.5})
    assert PlannerData(paraphraser={"path": "p", "weight": 0.5}).captioners["paraphrase"] == 0.5
    assert PlannerData(paraphraser={"path": "p"}).captioners["paraphrase"] == 1.0
    assert DataConfig(paraphraser={"path": "p"}, caption_weights={"alt": 1.0, "paraphrase": 3.0}).caption_weights == {
        "alt": 1.0, "paraphrase": 3.0}
    assert "paraphrase" not in PlannerData().captioners and "paraphrase" not in DataConfig().caption_weights


# ----------------------------------------------------------------------------------------- training hooks


def test_planner_data_gets_a_paraphrase_kind_and_batches_draw_it(server, tmp_path):
    import torch

    from limner.train import load_config
    from limner.train.planner import PlannerTask, scenes_and_captions

    plain = load_config(ROOT / "configs/planner-tiny.yaml", overrides=["data.scenes=60", f"data.cache_dir={tmp_path}"])
    cfg = load_config(ROOT / "configs/planner-tiny.yaml", overrides=[
        "data.scenes=60", f"data.cache_dir={tmp_path}", "data.easy_steps=0",
        f"data.paraphraser={{base_url: '{server}', model: m, weight: 3.0, sources: [terse]}}"])
    scenes, captions = scenes_and_captions(cfg.data)
    old_scenes, old_captions = scenes_and_captions(plain.data)
    assert scenes == old_scenes and all("paraphrase" not in c for c in old_captions)
    assert [{k: v for k, v in c.items() if k != "paraphrase"} for c in captions] == old_captions
    with_para = [c for c in captions if "paraphrase" in c]
    assert len(with_para) >= 55 and all(c["paraphrase"] in {rewrite(c["terse"], 10), rewrite(c["terse"], 11)}
                                        for c in with_para)
    assert len({c["paraphrase"].split("take ")[1] for c in with_para}) == 2   # one of the n, picked per scene
    terse = {c["terse"] for c in captions if "terse" in c}   # held-out prompts are left out: a few scenes lack one
    assert len(TextChat.requests) == len(terse)
    again = scenes_and_captions(cfg.data)[1]
    assert again == captions and len(TextChat.requests) == len(terse)   # from the cache

    # the planner's batches draw the paraphrase by its weight: 3 of 6 (terse, prose_count, templates at 1)
    task = PlannerTask.__new__(PlannerTask)   # the batches alone: no text encoder, no model
    task.cfg, task.scenes, task.captions = cfg, scenes, captions
    texts = sorted({t for caps in captions for t in caps.values()})
    task.text = (torch.arange(len(texts), dtype=torch.float32)[:, None].expand(-1, 384).half(),
                 np.arange(len(texts) + 1), {t: j for j, t in enumerate(texts)})
    task.tokens = [{kind: torch.tensor([i]) for kind in caps} for i, caps in enumerate(captions)]
    drawn = Counter()
    for step in range(20):
        ids, states, _ = task.batch(step, 0, 1)
        drawn += Counter(next(k for k, v in captions[i].items() if v == texts[int(row[0, 0])])
                         for i, row in zip(ids[:, 0].tolist(), states))
    share = drawn["paraphrase"] / sum(drawn.values())
    assert 0.4 < share < 0.6, drawn


def test_denoiser_data_gets_a_paraphrase_kind(server, tmp_path):
    from limner.train.data import DataConfig, load_records, pick_captions

    plain = load_records(DataConfig(scenes=40, cache_dir=str(tmp_path)))
    cfg = DataConfig(scenes=40, cache_dir=str(tmp_path), caption_weights={"count": 1.0, "spatial": 1.0},
                     paraphraser={"base_url": server, "model": "m", "n": 1, "weight": 4.0})
    records = load_records(cfg)
    assert [{k: v for k, v in r.captions.items() if k != "paraphrase"} for r in records] == [r.captions for r in plain]
    assert all(r.captions["paraphrase"] in {rewrite(c, 10) for c in r.captions.values()} for r in records)
    picked = pick_captions(records, np.arange(40).repeat(25), cfg.caption_weights, np.random.default_rng(0))
    share = np.mean([p.endswith("(take 10)") for p in picked])
    # weight 4 beside count and spatial at 1 (alt and detailed are not weighed, so never drawn): 4/6, or 4/5
    # where a held-out prompt took the spatial caption out
    expected = np.mean([4 / (4 + ("count" in r.captions) + ("spatial" in r.captions)) for r in records])
    assert abs(share - expected) < 0.05 and expected > 0.6, (share, expected)


def test_own_images_get_their_alt_text_or_captions_paraphrased(server, tmp_path):
    import io

    from PIL import Image

    from limner.data.shards import write_shard
    from limner.train.data import DataConfig, load_records

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    write_shard(tmp_path / "shard-000.tar", [
        ("a", {"png": buf.getvalue(), "txt": b"a red tile on a table"}),
        ("b", {"png": buf.getvalue(), "json": json.dumps({"captions": {"vlm": "a small red square"}}).encode()}),
        ("c", {"png": buf.getvalue(), "txt": b"two red circles"})])
    cfg = DataConfig(source="webdataset", shards=str(tmp_path / "shard-*.tar"), cache_dir=str(tmp_path / "cache"),
                     caption_weights={"alt": 1.0, "vlm": 1.0}, paraphraser={"base_url": server, "model": "m", "n": 1})
    records = load_records(cfg)
    assert [r.captions["paraphrase"] for r in records] == [rewrite(t, 10) for t in
                                                           ("a red tile on a table", "a small red square",
                                                            "two red circles")]
    assert cfg.caption_weights == {"alt": 1.0, "vlm": 1.0, "paraphrase": 1.0}


@pytest.mark.slow
def test_a_tiny_planner_run_trains_on_paraphrases(server, tmp_path, monkeypatch):
    import limner.train.planner as P
    from limner.train import load_config, run

    encoded = []
    real = P.cached_text_blocks
    monkeypatch.setattr(P, "cached_text_blocks", lambda encoder, blocks, *a, **kw: encoded.extend(
        t for b in blocks for t in b) or real(encoder, blocks, *a, **kw))
    cfg = load_config(ROOT / "configs/planner-tiny.yaml", overrides=[
        f"out_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", "data.scenes=40", "steps=4",
        "data.easy_steps=2", "ckpt_every=4", "log_every=2", f"data.paraphraser={{base_url: '{server}', model: m}}"])
    from limner.models import folder

    assert "planner" in folder.read_meta(run(cfg, quiet=True))
    paraphrases = [t for t in encoded if re.search(r"\(take 1[01]\)$", t)]
    assert len(paraphrases) >= 35   # the run encoded (and so trains on) a paraphrase for almost every scene
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "paraphraser" in saved and "paraphrase: 1.0" in saved
