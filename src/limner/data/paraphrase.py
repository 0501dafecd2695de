"""A paraphrasing captioner: text -> text, one more voice among the training captions for users who have a
language model.

The procedural captioners (world/captioners.py) write Shapes World scenes in many vocabularies and sentence
shapes, but every wording they know was written by hand. A language model rewrites their captions in wordings
nobody wrote a template for, which is what Imagen 3's several captioning models are for. A `Paraphraser` turns a
batch of captions into up to n rewrites each:

- `OpenAIParaphraser`: any OpenAI-compatible chat-completions text endpoint (vLLM, Ollama, llama.cpp's server,
  hosted APIs), through data/captioners.py's `ChatEndpoint` (the same retries and errors as the VLM captioner);
- `TransformersParaphraser`: a local transformers model by path, a causal LM (with its chat template if it has
  one) or a seq2seq model such as T5 / Flan-T5.

`paraphrase()` puts a disk cache in front of either, keyed by (model, prompt, sampling settings, n, caption), so
a training run asks each caption once, ever; results are written one batch per file, atomically, so a run
killed half-way keeps every finished batch and the next run asks only the rest. The cache keeps the model's raw
answers and `check()` is applied on reading them, so it drops (and counts) empty, too long, unchanged,
repeated and refusal-looking rewrites. It cannot tell a rewrite that lost an object or a count: the prompt asks
to keep them, and the weight in the training config says how much to trust the model.

Training takes paraphrases as one more caption kind, "paraphrase", per scene or image (`add_paraphrases`); no
paraphraser configured (the default) changes nothing. Under torchrun one process per machine asks and the others
read its answers (`once_per_machine`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from ..common.cache import cache_root, file_digest
from ..common.config import build
from ..common.files import digest, write_atomic
from ..common.progress import progress
from ..models.local import local_model
from .captioners import CaptionFailed, ChatEndpoint

log = logging.getLogger(__name__)
KIND = "paraphrase"  # the caption kind paraphrases train under
LOG_EVERY = 60.0  # seconds between progress lines in the log when no progress bar is shown

# Few-shot: the examples show what must survive a rewrite (numbers in either style, sizes, colours, places,
# relations) and that only the wording changes.
PROMPT = """Rewrite the image description below in different words. Keep every object, number, colour, size, \
position and relation exactly as stated, add nothing and leave nothing out; change only the wording and the \
sentence structure. Answer with the rewritten description alone, on one line.

Description: two small red circles to the left of a large blue square
Rewrite: A big blue square sits to the right of a pair of little red circles.

Description: On a white background: 3 green triangles at the top, one yellow square in the bottom right corner.
Rewrite: Three green triangles near the top and a single yellow square in the lower right, all on white.

Description: {caption}
Rewrite:"""


class Paraphraser(Protocol):
    name: str  # the model (endpoint and model name, or folder): part of every cache key
    errors: list[str | None]  # why each caption of the last call got no rewrite (None where it got some)

    def settings(self) -> dict:
        """Everything besides the model that changes what it writes (prompt, sampling): part of the cache key."""
        ...

    def paraphrase(self, captions: list[str], n: int) -> list[list[str]]:
        """Up to n raw rewrites of each caption, in order; [] for a caption that failed (see `errors`)."""
        ...


def fill(prompt: str, caption: str) -> str:
    """The prompt for one caption (not str.format: braces in a caption or prompt stay as they are)."""
    return prompt.replace("{caption}", " ".join(caption.split()))


LABEL = re.compile(r"^\s*(rewrite|paraphrase|rewritten description|description)\s*:\s*", re.I)


def clean(text: str) -> str:
    """A model's answer as a caption: its first non-empty line, without a "Rewrite:" label or wrapping quotes
    (a model continuing the few-shot pattern writes the next "Description:" on the following line)."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = LABEL.sub("", line).strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip()
    return line


# ------------------------------------------------------------------------------------------- the check

REFUSAL = re.compile(r"^(i'm sorry|i am sorry|sorry|i cannot|i can't|i can not|i'm unable|i am unable|"
                     r"i won't|unfortunately|as an ai)\b|\bas an ai (language )?model\b", re.I)
MAX_RATIO = 3.0  # a rewrite longer than this many times its caption is rambling, not rewording


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def check(caption: str, rewrites: list[str]) -> tuple[list[str], Counter]:
    """The rewrites worth training on, and a count of the others by why they were dropped: "empty", "too long"
    (over MAX_RATIO times the caption's length), "unchanged" (the caption again, up to case and punctuation),
    "refusal" ("I'm sorry, ...", "As an AI ..."), "repeated" (the same as an earlier rewrite)."""
    kept, dropped, seen = [], Counter(), {words(caption)}
    for text in map(clean, rewrites):
        key = words(text)
        if not key:
            dropped["empty"] += 1
        elif len(text) > MAX_RATIO * max(len(caption), 1):
            dropped["too long"] += 1
        elif REFUSAL.search(text):
            dropped["refusal"] += 1
        elif key == words(caption):
            dropped["unchanged"] += 1
        elif key in seen:
            dropped["repeated"] += 1
        else:
            kept.append(text)
        seen.add(key)
    return kept, dropped


# --------------------------------------------------------------------------------------------- backends


class OpenAIParaphraser(ChatEndpoint):
    """One chat-completions request per caption, `concurrency` at a time, asking for n choices; a server that
    ignores `n` (Ollama, llama.cpp) is asked again for the rest, at most n requests per caption."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", prompt: str = PROMPT,
                 temperature: float = 0.8, max_tokens: int = 200, timeout: float = 60, retries: int = 3,
                 concurrency: int = 4):
        super().__init__(base_url, model, api_key_env, timeout, retries)
        self.prompt, self.temperature, self.max_tokens, self.concurrency = prompt, temperature, max_tokens, concurrency
        self.name = f"{self.endpoint} {model}"
        self.errors: list[str | None] = []

    def settings(self) -> dict:
        return {"prompt": self.prompt, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def paraphrase(self, captions, n):
        with ThreadPoolExecutor(self.concurrency) as pool:
            results = list(pool.map(lambda c: self._one(c, n), captions))  # map keeps the captions' order
        self.errors = [error for _, error in results]
        return [texts for texts, _ in results]

    def _one(self, caption: str, n: int) -> tuple[list[str], str | None]:
        texts: list[str] = []
        try:
            for _ in range(n):
                texts += self.ask(caption, n - len(texts))
                if len(texts) >= n:
                    break
        except CaptionFailed as e:
            if not texts:
                log.warning("no paraphrase: %s", e)
                return [], str(e)
        return texts[:n], None

    def ask(self, caption: str, n: int) -> list[str]:
        body = {"model": self.model, "messages": [{"role": "user", "content": fill(self.prompt, caption)}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}
        if n > 1:
            body["n"] = n
        reply = self.post(body)
        try:
            texts = [c["message"]["content"] for c in reply["choices"]]
        except (KeyError, TypeError):
            texts = []
        texts = [t for t in texts if isinstance(t, str)]
        if not texts:
            raise CaptionFailed(f"{self.endpoint} answered without text in choices[].message.content: "
                                f"{json.dumps(reply)[:300]}")
        return texts


def folder_identity(folder: Path) -> str:
    """A local model named by what it holds, not where: its files' digests (each hashed once, then remembered by
    its stat), so cached answers follow the model when it moves and are not reused when it is retrained in place."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.parts))
    return f"local model {digest(*(f'{p.relative_to(folder)}:{file_digest(p)}' for p in files), size=24)}"


class TransformersParaphraser:
    """A local transformers model: seq2seq (T5, Flan-T5, BART: AutoModelForSeq2SeqLM) or causal (GPT-2, Llama,
    Qwen, ...: AutoModelForCausalLM). The prompt goes through the tokenizer's chat template when it has one, as
    plain text otherwise. temperature > 0 samples n rewrites, seeded by the batch's captions (the same batch
    gets the same rewrites); temperature 0 keeps the n best beams. A rewrite stops at `max_tokens`, or sooner at
    the length past which `check` would drop it."""

    def __init__(self, path: str, prompt: str = PROMPT, temperature: float = 0.8, max_tokens: int = 200,
                 batch_size: int = 16, device: str = "cpu"):
        self.path = local_model(path, "language model")  # fails now, before any caption is read
        self.prompt, self.temperature, self.max_tokens = prompt, temperature, max_tokens
        self.batch_size, self.device = batch_size, device
        self.name = folder_identity(Path(self.path)) if Path(self.path).is_dir() else self.path
        self.errors: list[str | None] = []
        self._loaded = None

    def settings(self) -> dict:
        return {"prompt": self.prompt, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _load(self):
        if self._loaded is None:
            import transformers
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            offline = Path(self.path).is_dir()  # local_model returns a folder unless downloads are allowed
            try:
                config = transformers.AutoConfig.from_pretrained(self.path, local_files_only=offline)
                seq2seq = bool(getattr(config, "is_encoder_decoder", False))
                auto = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
                tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=offline)
                model = auto.from_pretrained(self.path, local_files_only=offline)
            except (OSError, ValueError) as e:
                raise ValueError(f"{self.path} holds no text-generation model (causal or seq2seq) that "
                                 f"transformers can load: {e}") from None
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right" if seq2seq else "left"  # a causal model continues where each prompt ends
            self._loaded = tokenizer, model.eval().to(self.device), seq2seq
        return self._loaded

    def paraphrase(self, captions, n):
        out = []
        for i in range(0, len(captions), self.batch_size):
            out += self._batch(captions[i:i + self.batch_size], n)
        self.errors = [None if texts else "the model wrote nothing" for texts in out]
        return out

    def _batch(self, captions: list[str], n: int) -> list[list[str]]:
        import torch

        tokenizer, model, seq2seq = self._load()
        texts = [fill(self.prompt, c) for c in captions]
        if getattr(tokenizer, "chat_template", None):
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                                   tokenize=False) for t in texts]
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        # only what every generator takes: a BERT-style tokenizer adds token_type_ids, which causal LMs refuse
        inputs = {k: encoded[k].to(self.device) for k in ("input_ids", "attention_mask")}
        # check() drops a rewrite over MAX_RATIO times its caption's length: writing past ~4x its tokens is wasted
        longest = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in captions)
        limit = min(self.max_tokens, int((MAX_RATIO + 1) * longest) + 8)
        sample = self.temperature > 0
        decoding = ({"do_sample": True, "temperature": self.temperature} if sample
                    else {"do_sample": False, "num_beams": max(n, 1)})  # greedy search returns one sequence only
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(digest(*captions), 16) % 2**31)  # reproducible without touching the caller's seed
            out = model.generate(**inputs, max_new_tokens=limit, num_return_sequences=n,
                                 pad_token_id=tokenizer.pad_token_id, **decoding)
        if not seq2seq:
            out = out[:, inputs["input_ids"].shape[1]:]  # left-padded: every prompt ends at the same column
        decoded = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        return [[t for t in decoded[i * n:(i + 1) * n] if t] for i in range(len(captions))]


# ------------------------------------------------------------------------------------------------ cache


@dataclass
class Report:
    """What a `paraphrase()` call did: captions asked and from the cache, failed, rewrites kept and dropped."""
    captions: int = 0
    cached: int = 0
    asked: int = 0
    failed: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def line(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"paraphrases: {self.captions} captions ({self.cached} from the cache, {self.asked} asked, "
                f"{self.failed} failed), {self.kept} rewrites kept, dropped: {why}")


def answers_folder(paraphraser: Paraphraser, n: int, cache_dir: str | Path | None) -> Path:
    """The folder of one (model, settings, n): one JSONL file per finished batch, {"caption", "rewrites"} a line."""
    identity = {"model": paraphraser.name, **paraphraser.settings(), "n": n}
    folder = Path(cache_dir or cache_root() / "paraphrase") / digest(json.dumps(identity, sort_keys=True))
    if not (folder / "about.json").exists():  # for a person looking at the cache: what this folder holds
        write_atomic(folder / "about.json", json.dumps(identity, indent=1))
    return folder


def read_cache(folder: Path) -> dict[str, list[str]]:
    answers = {}
    for part in sorted(folder.glob("part-*.jsonl")):
        for line in part.read_text().splitlines():
            row = json.loads(line)
            answers[row["caption"]] = row["rewrites"]
    return answers


def paraphrase(paraphraser: Paraphraser, captions: list[str], n: int = 2, cache_dir: str | Path | None = None,
               batch_size: int = 32, show: bool = False) -> tuple[dict[str, list[str]], Report]:
    """{caption: its checked rewrites} for every distinct caption, asking the paraphraser only for those the cache
    lacks, `batch_size` at a time, each finished batch written to the cache before the next is asked. A caption
    that failed is left out of the cache (the next run asks it again) and maps to []."""
    if n < 1:
        raise ValueError(f"n is {n}: ask for at least one paraphrase per caption")
    unique = list(dict.fromkeys(captions))
    folder = answers_folder(paraphraser, n, cache_dir)
    answers = read_cache(folder)
    todo = [c for c in unique if c not in answers]
    report = Report(captions=len(unique), cached=len(unique) - len(todo), asked=len(todo))
    bar = progress(len(todo), "paraphrases", unit="caption", enabled=show)
    said = time.monotonic()
    for i in range(0, len(todo), batch_size):
        # without a bar (training), a long run still says how far it got: a large model asked 100,000 captions
        # takes hours, and the log is all a training run shows before its first step
        if not show and time.monotonic() - said >= LOG_EVERY:
            log.info("paraphrases: %d of %d captions asked (%d failed)", i, len(todo), report.failed)
            said = time.monotonic()
        part = todo[i:i + batch_size]
        got = paraphraser.paraphrase(part, n)
        done = {c: texts for c, texts, error in zip(part, got, paraphraser.errors) if texts and error is None}
        report.failed += len(part) - len(done)
        if done:
            rows = "".join(json.dumps({"caption": c, "rewrites": t}) + "\n" for c, t in done.items())
            write_atomic(folder / f"part-{digest(*done)}.jsonl", rows)  # a batch is whole in the cache or absent
        answers |= done
        bar.update(len(part))
    bar.close()
    out = {}
    for c in unique:
        out[c], dropped = check(c, answers.get(c, []))
        report.kept += len(out[c])
        report.dropped += dropped
    return out, report


# ---------------------------------------------------------------------------------------- configuration


@dataclass
class ParaphraserConfig:
    """`data.paraphraser` of a training config: an endpoint (base_url + model) or a local model (path), how many
    rewrites to ask per caption, and the weight of the "paraphrase" caption kind."""
    base_url: str | None = None  # an OpenAI-compatible server, e.g. http://localhost:8000/v1
    model: str | None = None     # the model the server serves
    api_key_env: str | None = "OPENAI_API_KEY"  # the environment variable holding its key (None: no key)
    path: str | None = None      # or: a local transformers model folder (causal LM or seq2seq)
    prompt: str = PROMPT         # with {caption} where the caption goes
    n: int = 2                   # rewrites asked per caption; each scene trains on one of those kept
    temperature: float = 0.8
    max_tokens: int = 200
    weight: float | None = None  # how often the paraphrase is picked beside the other kinds; None: 1.0
    sources: list = field(default_factory=list)  # caption kinds to paraphrase (one per scene); empty: any
    batch_size: int = 32         # captions per cache file (and per forward pass of a local model)
    concurrency: int = 4         # requests in flight to an endpoint
    timeout: float = 60
    retries: int = 3
    device: str = "cpu"          # a local model's device

    def __post_init__(self):
        if (self.base_url is None) == (self.path is None):
            raise ValueError("give either base_url (and model) for an OpenAI-compatible endpoint, or path for a "
                             "local transformers model")
        if self.base_url is not None and not self.model:
            raise ValueError(f"base_url {self.base_url} needs model: the name the server serves the model under")
        if "{caption}" not in self.prompt:
            raise ValueError("prompt has no {caption}: say where the caption to rewrite goes")
        if self.n < 1 or self.batch_size < 1 or self.concurrency < 1:
            raise ValueError("n, batch_size and concurrency must be 1 or more")
        if self.weight is not None and self.weight < 0:
            raise ValueError(f"weight must be 0 or more, not {self.weight}")

    def build(self) -> Paraphraser:
        common = {"prompt": self.prompt, "temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.path is not None:
            return TransformersParaphraser(self.path, batch_size=self.batch_size, device=self.device, **common)
        return OpenAIParaphraser(self.base_url, self.model, self.api_key_env, timeout=self.timeout,
                                 retries=self.retries, concurrency=self.concurrency, **common)


def paraphraser_config(spec: dict | ParaphraserConfig, where: str = "data.paraphraser") -> ParaphraserConfig:
    if isinstance(spec, ParaphraserConfig):
        return spec
    if not isinstance(spec, dict):
        raise ValueError(f"{where} is {spec!r}: give a mapping, {{base_url, model}} or {{path}}, or leave it out")
    return build(ParaphraserConfig, spec, where)


def kind_weight(spec: dict | None, weights: dict, where: str) -> dict:
    """The kind-weight mapping of a training config (planner `captioners`, denoiser `caption_weights`) with the
    paraphrase kind's weight in it: the spec's `weight`, or one the mapping already gives, else 1.0. Without a
    paraphraser the mapping may not name the kind."""
    if spec is None:
        if KIND in weights:
            raise ValueError(f"{where} weighs {KIND!r} but no paraphraser is configured (data.paraphraser)")
        return weights
    cfg = paraphraser_config(spec)
    if cfg.weight is not None and KIND in weights and weights[KIND] != cfg.weight:
        raise ValueError(f"data.paraphraser.weight {cfg.weight} and {where}.{KIND} {weights[KIND]} differ: give one")
    weight = cfg.weight if cfg.weight is not None else weights.get(KIND, 1.0)
    return {**weights, KIND: weight}


def add_paraphrases(caption_dicts: list[dict[str, str]], spec: dict | ParaphraserConfig, seed: int,
                    cache_dir: str | Path | None = None, allowed: Callable[[str], bool] = lambda text: True,
                    show: bool = False) -> Report:
    """Add a "paraphrase" caption to each {kind: caption} dict, in place: a rewrite of one of its captions (of a
    `sources` kind), both picked by a generator seeded by (seed, position), so a dict's choice does not depend on
    the others. Dicts whose rewrites were all dropped, or not `allowed` (held-out prompts), get none."""
    cfg = paraphraser_config(spec)
    sources = []
    for i, caps in enumerate(caption_dicts):
        kinds = [k for k in caps if k != KIND and (not cfg.sources or k in cfg.sources)]
        sources.append(caps[random.Random(f"paraphrase-source-{seed}-{i}").choice(kinds)] if kinds else None)
    para, asked = cfg.build(), [s for s in sources if s]

    def ask() -> dict:
        rewrites, report = paraphrase(para, asked, cfg.n, cache_dir, cfg.batch_size, show)
        log.info("%s", report.line())
        return {"rewrites": rewrites, "report": {**vars(report), "dropped": dict(report.dropped)}}

    shared = answers_folder(para, cfg.n, cache_dir) / f"result-{digest(*asked)}.json"
    result = once_per_machine(shared, ask)
    for i, (caps, source) in enumerate(zip(caption_dicts, sources)):
        usable = [t for t in result["rewrites"].get(source, []) if allowed(t)] if source else []
        if usable:
            caps[KIND] = random.Random(f"paraphrase-pick-{seed}-{i}").choice(usable)
    return Report(**{**result["report"], "dropped": Counter(result["report"]["dropped"])})


def once_per_machine(path: Path, compute: Callable[[], dict]) -> dict:
    """compute() in one process per machine under torchrun (LOCAL_WORLD_SIZE > 1): local rank 0 computes it and
    writes it to `path`, the machine's other processes wait for that file and read it, so n processes ask a paid
    endpoint once and all train on the same captions. Waiting is a file poll, not a collective: asking a model
    can outlast a process group's timeout. A barrier first keeps a file left by an earlier run from being read."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= 1:
        return compute()
    import torch.distributed as dist

    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if first:
        path.unlink(missing_ok=True)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if first:
        result = compute()
        write_atomic(path, json.dumps(result))
        return result
    said = time.monotonic()
    while not path.exists():
        if time.monotonic() - said >= LOG_EVERY:
            log.info("waiting for local rank 0's paraphrases (%s)", path)
            said = time.monotonic()
        time.sleep(0.5)
    return json.loads(path.read_text())
