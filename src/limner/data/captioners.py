"""Recaptioning for `limner data`: synthetic captions from vision-language models, next to the alt-text.

Imagen 3 trains on several captions per image, the original alt-text and synthetic ones from several
captioners, and samples among them: web alt-text is short, noisy and often unrelated to the pixels, and
the captions of a single model share its style and its blind spots. A `Captioner` turns a batch of
images, with their alt-texts and metadata, into one {kind: caption} dict per image:

- `OpenAICaptioner`: any OpenAI-compatible chat-completions server with vision (vLLM, Ollama,
  llama.cpp's server, hosted APIs), through `ChatEndpoint`, which data/paraphrase.py's text-to-text
  paraphrasers share;
- `TransformersCaptioner`: a vision-language model in a local folder (BLIP, LLaVA, Florence-2, Qwen2-VL, ...);
- `OracleCaptioner`: exact captions of Shapes World images, from their scene or read back from the pixels.

The default prompt is the one PixArt-alpha gave LLaVA, plus the alt-text: the alt-text knows names and facts
that pixels cannot show, the captioner sees what the pixels do show. A captioner that fails on one image
returns {} for it and says why in `errors`, so one bad image never ends a run of millions; only failures
that would repeat on every image (a wrong URL, key or model, a server that cannot be reached) raise.
"""
from __future__ import annotations

import base64
import http.client
import inspect
import io
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..models.local import local_model
from ..world import captions as C
from ..world.scene import BACKGROUNDS, Obj, Scene, render
from ..world.scorer import detect

log = logging.getLogger(__name__)


class Captioner(Protocol):
    kind: str  # the caption's source, recorded in the manifest: "vlm", "llava-1.6", "oracle", ...
    errors: list[str | None]  # why each image of the last call got no caption (None where it got one)

    def caption(self, images: list[Image.Image], alts: list[str | None], metas: list[dict]) -> list[dict[str, str]]:
        """One dict {kind: caption} per image, in order: a captioner may write several kinds, or none for
        an image it failed on."""
        ...


# ----------------------------------------------------------------------------------------------- prompts

PIXART_PROMPT = (
    "Describe this image and its style in a very detailed manner.\n"
    'The image was published with the alt-text "{alt}". Use it for names, places and other facts that the '
    "picture alone cannot tell, where the picture agrees with it, and do not mention the alt-text itself."
)
MAX_ALT = 1000  # characters: web alt-text can be kilobytes of SEO keywords


def fill(template: str, alt: str | None) -> str:
    """The prompt for one image: {alt} replaced by its alt-text or, without one, the lines that use it dropped
    (so PIXART_PROMPT becomes PixArt-alpha's own prompt)."""
    alt = " ".join((alt or "").split())[:MAX_ALT]
    if alt:
        return template.replace("{alt}", alt)  # not str.format: braces in alt-text or prompt stay as they are
    return "\n".join(line for line in template.splitlines() if "{alt}" not in line)


# -------------------------------------------------------------------------------------------- OpenAI API


class CaptionFailed(Exception):
    """One image (or one text, for a paraphraser) got no caption; the run goes on."""


class ChatEndpoint:
    """A client of one OpenAI-compatible POST {base_url}/chat/completions, shared by the captioners here and the
    paraphrasers of data/paraphrase.py.

    408, 429, 5xx, timeouts and dropped connections are retried `retries` times with exponential backoff (or
    after the server's Retry-After), then fail their request with CaptionFailed. 401, 403 and 404 raise at once,
    and a server that cannot be reached raises once the retries are spent, since these would fail every request;
    other 4xx answers fail only their request.
    """

    backoff = 1.0  # seconds before the first retry, doubling for each next one

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 60,
                 retries: int = 3):
        self.endpoint = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout, self.retries = model, api_key_env, timeout, retries
        self.api_key = os.environ.get(api_key_env) if api_key_env else None

    def post(self, body: dict) -> dict:
        """The server's JSON answer to `body`, retried as the class says."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            wait, unreachable = None, False
            try:
                request = urllib.request.Request(self.endpoint, data, headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    raw = r.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    raise CaptionFailed(f"{self.endpoint} answered with something other than JSON: "
                                        f"{raw[:200]!r}") from None
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code}: {server_message(e.read())}"
                key = f"${self.api_key_env} set to a valid key" if self.api_key_env else "an api_key_env given"
                hint = {401: f" (is {key}?)",
                        403: " (the key may lack access to this model)",
                        404: f" (is the base URL right? it usually ends in /v1. Does it serve {self.model!r}?)"}
                if e.code in hint:
                    raise RuntimeError(f"{self.endpoint} answered {problem}{hint[e.code]}") from None
                if e.code not in (408, 429) and e.code < 500:
                    raise CaptionFailed(f"{self.endpoint} answered {problem}") from None
                wait = retry_after(e.headers.get("Retry-After"))
            except urllib.error.URLError as e:  # raised while connecting: timed out, refused, unknown host
                unreachable = not isinstance(e.reason, TimeoutError)
                problem = f"could not connect: {e.reason}" if unreachable else f"no answer within {self.timeout}s"
            except (TimeoutError, ConnectionError, http.client.HTTPException) as e:  # while reading the answer
                problem = f"no answer within {self.timeout}s" if isinstance(e, TimeoutError) else repr(e)
            if attempt < self.retries:
                time.sleep(wait if wait is not None else self.backoff * 2**attempt)
        if unreachable:
            raise ConnectionError(f"could not reach {self.endpoint} ({problem}). Is the server running, and is "
                                  "the URL right?")
        raise CaptionFailed(f"{self.endpoint}: gave up after {self.retries + 1} tries: {problem}")


class OpenAICaptioner(ChatEndpoint):
    """A POST {base_url}/chat/completions per image (ChatEndpoint: retries, errors), `concurrency` at a time,
    with the image inline as JPEG. A failed image gets {} and the server's message in `errors`.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 prompt: str = PIXART_PROMPT, kind: str = "vlm", max_tokens: int = 300, temperature: float = 0.2,
                 timeout: float = 60, retries: int = 3, concurrency: int = 4, image_size: int = 512):
        super().__init__(base_url, model, api_key_env, timeout, retries)
        self.prompt, self.kind = prompt, kind
        self.max_tokens, self.temperature = max_tokens, temperature
        self.concurrency, self.image_size = concurrency, image_size
        self.errors: list[str | None] = []

    def caption(self, images, alts, metas):
        with ThreadPoolExecutor(self.concurrency) as pool:
            results = list(pool.map(self._one, images, alts))  # map keeps the order of the images
        self.errors = [error for _, error in results]
        return [caps for caps, _ in results]

    def _one(self, image: Image.Image, alt: str | None) -> tuple[dict[str, str], str | None]:
        try:
            return {self.kind: self.ask(image, alt)}, None
        except CaptionFailed as e:
            log.warning("no %s caption: %s", self.kind, e)
            return {}, str(e)

    def ask(self, image: Image.Image, alt: str | None) -> str:
        content = [{"type": "text", "text": fill(self.prompt, alt)},
                   {"type": "image_url", "image_url": {"url": data_url(image, self.image_size)}}]
        reply = self.post({"model": self.model, "messages": [{"role": "user", "content": content}],
                            "max_tokens": self.max_tokens, "temperature": self.temperature})
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        if not isinstance(text, str) or not text.strip():
            raise CaptionFailed(f"{self.endpoint} answered without a caption in choices[0].message.content: "
                                f"{json.dumps(reply)[:300]}")
        return text.strip()


def data_url(image: Image.Image, size: int) -> str:
    """The image as an inline JPEG no larger than size x size: big enough for a captioner, small to send."""
    img = image.convert("RGB")  # a copy, so the caller's image is never resized
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def server_message(raw: bytes) -> str:
    """The message of an error answer: OpenAI's {"error": {"message"}}, vLLM's {"message"}, Ollama's {"error"}."""
    try:
        body = json.loads(raw)
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or raw.decode("utf-8", "replace")[:500] or "no message")


def retry_after(value: str | None) -> float | None:
    """The seconds a Retry-After header asks for (it holds either seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ transformers


class TransformersCaptioner:
    """A vision-language model that transformers loads with AutoProcessor and AutoModelForImageTextToText.

    `prompt` (a template like PIXART_PROMPT) is given as a chat message to models whose processor has a chat
    template (LLaVA, Qwen2-VL, ...) and as plain text to the others (a prefix for BLIP, a task token such as
    "<MORE_DETAILED_CAPTION>" for Florence-2). None means PIXART_PROMPT for chat models and no text, the
    model's own captioning mode, for the others. Decoding is greedy, so captions are reproducible.
    """

    def __init__(self, path: str, prompt: str | None = None, kind: str = "vlm", max_new_tokens: int = 120,
                 batch_size: int = 8, device: str = "cpu"):
        self.path = local_model(path, "vision-language model")  # fails now, before any image is read
        self.prompt, self.kind, self.max_new_tokens = prompt, kind, max_new_tokens
        self.batch_size, self.device = batch_size, device
        self.errors: list[str | None] = []
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            import transformers
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            # AutoModelForImageTextToText took over from AutoModelForVision2Seq, which transformers 5 dropped
            auto = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
            offline = Path(self.path).is_dir()  # local_model returns a folder unless downloads are allowed
            try:
                processor = transformers.AutoProcessor.from_pretrained(self.path, local_files_only=offline)
                model = auto.from_pretrained(self.path, local_files_only=offline)
            except (OSError, ValueError) as e:
                raise ValueError(f"{self.path} holds no vision-language model that transformers can caption "
                                 f"with: {e}") from None
            if getattr(processor, "tokenizer", None) is not None:
                processor.tokenizer.padding_side = "left"  # generation continues where each prompt ends
            self._loaded = processor, model.eval().to(self.device)
        return self._loaded

    def caption(self, images, alts, metas):
        texts = []
        for i in range(0, len(images), self.batch_size):
            texts += self._batch(images[i:i + self.batch_size], alts[i:i + self.batch_size])
        self.errors = [None if t else "the model wrote an empty caption" for t in texts]
        return [{self.kind: t} if t else {} for t in texts]

    def _batch(self, images: list[Image.Image], alts: list[str | None]) -> list[str]:
        import torch

        processor, model = self._load()
        images = [im.convert("RGB") for im in images]
        chat = getattr(processor, "chat_template", None) is not None
        prompt = self.prompt or (PIXART_PROMPT if chat else None)
        if prompt is None:
            inputs = processor(images=images, return_tensors="pt")
        else:
            texts = [fill(prompt, alt) for alt in alts]
            if chat:
                texts = [processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
                    add_generation_prompt=True) for t in texts]
            inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device, dtype=model.dtype)  # casts only the floating tensors (the pixels)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        ids = inputs.get("input_ids")
        if ids is not None and out.shape[1] > ids.shape[1] and torch.equal(out[:, :ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]  # decoder-only models answer after repeating the prompt
        return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]


# ------------------------------------------------------------------------------------------- Shapes World

BACKGROUND_TOLERANCE = 20.0  # RGB distance of the border from a background: ~7 at most on generated images
RENDER_TOLERANCE = 10.0  # mean |image - re-rendered reading| of 255: ~0.1 on rendered scenes, 2-7 on generated


def read_scene(image: Image.Image) -> Scene | None:
    """The scene a Shapes World image shows, or None for any other image: one that is not square, has a border
    of no Shapes World background, holds no objects, or does not look like its reading re-rendered."""
    px = np.asarray(image.convert("RGB"), np.float32)
    if px.shape[0] != px.shape[1]:
        return None
    border = np.median(np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]]), axis=0)
    distance = {name: float(np.linalg.norm(border - rgb)) for name, rgb in BACKGROUNDS.items()}
    background = min(distance, key=distance.get)
    if distance[background] > BACKGROUND_TOLERANCE:
        return None
    scene = Scene(background, [Obj(f.shape, f.colour, f.size, f.x, f.y) for f in detect(px)])
    # a photo on a plain backdrop can pass the border test; its "objects" do not redraw the photo
    if not scene.objects or np.abs(np.asarray(render(scene, len(px)), np.float32) - px).mean() > RENDER_TOLERANCE:
        return None
    return scene


class OracleCaptioner:
    """Exact captions of Shapes World images, written by `limner.world.captions` from the scene: the one in
    meta["scene"] (a dict or its JSON) when there is one, else the one read back from the pixels."""

    kind = "oracle"

    def __init__(self, kinds=("count", "spatial", "detailed"), seed: int = 0):
        unknown = [k for k in kinds if k not in C.KINDS]
        if unknown:
            raise ValueError(f"unknown caption kinds {unknown}: Shapes World writes {', '.join(C.KINDS)}")
        self.kinds, self.seed = tuple(kinds), seed
        self.errors: list[str | None] = []

    def caption(self, images, alts, metas):
        scenes = [self.scene(image, meta) for image, meta in zip(images, metas)]
        self.errors = [None if s else "not a Shapes World image" for s in scenes]
        # phrasing is seeded by the scene itself, so an image's captions do not depend on its batch
        return [C.captions(s, random.Random(f"{self.seed}:{s.to_json()}"), self.kinds) if s else {} for s in scenes]

    @staticmethod
    def scene(image: Image.Image, meta: dict) -> Scene | None:
        given = meta.get("scene")
        if given:
            return Scene.from_dict(json.loads(given) if isinstance(given, str) else given)
        return read_scene(image)


# ----------------------------------------------------------------------------------------------- dispatch

CAPTIONERS = {"openai": OpenAICaptioner, "transformers": TransformersCaptioner, "oracle": OracleCaptioner}


def build_captioner(spec: dict) -> Captioner:
    """A captioner from a config entry: {"type": "openai" | "transformers" | "oracle", **its settings}."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in CAPTIONERS:
        got = f"type {kind!r}" if isinstance(spec, dict) else repr(spec)
        raise ValueError(f"unknown captioner ({got}): a captioner is a mapping with type one of "
                         f"{', '.join(CAPTIONERS)}, and that captioner's settings")
    cls, settings = CAPTIONERS[kind], {k: v for k, v in spec.items() if k != "type"}
    signature = inspect.signature(cls)
    try:
        signature.bind(**settings)
    except TypeError as e:
        raise ValueError(f"bad settings for the {kind} captioner ({e}); it takes "
                         f"{', '.join(signature.parameters)}") from None
    return cls(**settings)
