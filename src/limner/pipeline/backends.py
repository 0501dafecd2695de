"""Model backends: one small interface in front of every kind of text-to-image model limner can drive.

- `LimnerBackend`: a limner checkpoint (a shipped name such as "shapes-default", or a folder with limner.json);
- `DiffusersBackend`: any diffusers text-to-image pipeline saved in a local folder (model_index.json);
- `OpenAIBackend`: any HTTP server speaking the OpenAI images API (another `limner serve`, a hosted API).

`load_backend(spec)` picks one from a string, so `limner eval generate --model` (and `limner generate
--model`, and the server) accept all three. Local backends send every prompt and image through limner's
`Guard` (prompt filter, image filter, watermark, parameters); a remote server applies its own policy.

Models load lazily, on the first `generate`: `identity()` (the cache key of a generation) only reads the
folder, so a fully cached evaluation rerun never loads a model.
"""
from __future__ import annotations

import base64
import hashlib
import inspect
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from .. import __version__
from ..models import folder
from ..safety.guard import Guard, SafetyConfig
from ..safety.prompt_filter import PromptBlocked, Verdict


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], seeds: list[int], negative_prompt: str | None = None,
                 steps: int | None = None, guidance: float | None = None,
                 size: tuple[int, int] | None = None) -> list[Image.Image]:
        """One image per (prompt, seed) pair, in order; `None` settings mean the model's own defaults."""
        ...

    def identity(self) -> dict:
        """Everything besides the request that decides the pixels: weights, code version, safety settings."""
        ...


def _pairs(prompts: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    if len(prompts) != len(seeds):
        raise ValueError(f"generate wants one seed per prompt: got {len(prompts)} prompts, {len(seeds)} seeds")
    return list(zip(prompts, (int(s) for s in seeds)))


def fingerprint(folder: str | Path) -> dict:
    """What identifies a model folder without reading gigabytes: config files by content hash, weight
    files by size and modification time (re-saving weights therefore invalidates cached generations)."""
    folder = Path(folder)
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        if f.suffix in {".json", ".txt", ".yaml", ".model"} and f.stat().st_size < 10_000_000:
            files[rel] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        else:
            st = f.stat()
            files[rel] = f"{st.st_size}:{st.st_mtime_ns}"
    return {"path": str(folder.resolve()), "files": files}


# ----------------------------------------------------------------------------------------------- limner


class LimnerBackend:
    """A limner checkpoint behind `limner.pipeline.Pipeline` (whose own guard applies)."""

    def __init__(self, name_or_path: str = "shapes-default", safety: SafetyConfig | None = None, layout: str = "auto"):
        self.spec, self.safety, self.layout = name_or_path, safety or SafetyConfig(), layout
        self.path = folder.resolve(name_or_path)   # fails now, with limner's message, if it is not a model
        meta = folder.read_meta(self.path)
        self.name = folder.model_name(name_or_path, self.path, meta)
        self.resolution = meta["resolution"]
        self._pipe = None

    @property
    def pipe(self):
        if self._pipe is None:
            from .core import Pipeline

            self._pipe = Pipeline.from_pretrained(self.spec, safety=self.safety, layout=self.layout)
        return self._pipe

    def generate(self, prompts, seeds, negative_prompt=None, steps=None, guidance=None, size=None):
        """`size` (width, height): square, one of the pipeline's sides; None: the base resolution, what the
        denoiser draws (evaluations score that, not the upsampler's enlargement; ask for (1024, 1024) for it)."""
        side = self.resolution
        if size is not None:
            if size[0] != size[1]:
                raise ValueError(f"{self.name} makes square images only, not {size[0]}x{size[1]}")
            side = self.pipe.check_size(int(size[0]))
        pairs = _pairs(prompts, seeds)
        return self.pipe([p for p, _ in pairs], negative_prompt=negative_prompt, seed=[s for _, s in pairs],
                         steps=steps, guidance=guidance, size=side)

    def identity(self) -> dict:
        return {"backend": "limner", "version": __version__, "model": fingerprint(self.path),
                "safety": asdict(self.safety)}


# --------------------------------------------------------------------------------------------- diffusers


class DiffusersBackend:
    """Any diffusers text-to-image pipeline saved with `save_pretrained` (SD, SDXL, PixArt, FLUX, ...).

    Settings are passed only where the pipeline's __call__ takes them (FLUX-schnell has no negative
    prompt, some pipelines no guidance), and outputs go through limner's guard like limner's own.
    """

    def __init__(self, folder: str | Path, safety: SafetyConfig | None = None, device: str = "cpu"):
        self.folder = Path(folder)
        index = self.folder / "model_index.json"
        if not index.exists():
            raise FileNotFoundError(f"no diffusers pipeline at {str(folder)!r}: expected a folder with "
                                    "model_index.json (as `DiffusionPipeline.save_pretrained` writes)")
        self.class_name = json.loads(index.read_text()).get("_class_name", "DiffusionPipeline")
        self.name = self.folder.resolve().name
        self.safety, self.device = safety or SafetyConfig(), device
        self.guard = Guard(self.safety)
        self._pipe = None

    @property
    def pipe(self):
        if self._pipe is None:
            from diffusers import DiffusionPipeline

            # a local folder only: never reach for the Hub
            pipe = DiffusionPipeline.from_pretrained(self.folder, local_files_only=True).to(self.device)
            pipe.set_progress_bar_config(disable=True)   # the caller shows progress over whole runs
            self._pipe = pipe
            self._accepts = set(inspect.signature(pipe.__call__).parameters)
        return self._pipe

    def _kwargs(self, n: int, negative_prompt, steps, guidance, size) -> dict:
        wanted = {"num_inference_steps": steps, "guidance_scale": guidance,
                  "negative_prompt": None if negative_prompt is None else [negative_prompt] * n}
        if size is not None:
            wanted.update(width=int(size[0]), height=int(size[1]))
        return {k: v for k, v in wanted.items() if v is not None and k in self._accepts}

    def generate(self, prompts, seeds, negative_prompt=None, steps=None, guidance=None, size=None):
        import torch

        pairs = _pairs(prompts, seeds)
        for p in dict.fromkeys(prompts):
            self.guard.check_prompt(p)
        pipe = self.pipe
        # one generator per image: an image depends on its own seed, not on what it was batched with
        generators = [torch.Generator(self.device).manual_seed(s) for _, s in pairs]
        result = pipe(prompt=[p for p, _ in pairs], generator=generators, output_type="pil",
                      **self._kwargs(len(pairs), negative_prompt, steps, guidance, size))
        images = [img.convert("RGB") for img in result.images]
        params = [{"prompt": p, "negative_prompt": negative_prompt or "", "seed": s, "steps": steps,
                   "guidance": guidance, "model": self.name, "pipeline": self.class_name,
                   "limner_version": __version__} for p, s in pairs]
        return self.guard.finish(images, params, f"{self.name}@{self.class_name}")

    def identity(self) -> dict:
        import diffusers

        return {"backend": "diffusers", "class": self.class_name, "diffusers": diffusers.__version__,
                "version": __version__, "model": fingerprint(self.folder), "safety": asdict(self.safety)}


# ------------------------------------------------------------------------------------------ OpenAI API


class RemotePromptBlocked(PromptBlocked):
    """A prompt a remote server refused under its content policy (OpenAI code content_policy_violation):
    a PromptBlocked, so callers handle it exactly like limner's own refusals."""

    def __init__(self, server: str, message: str):
        self.verdict = Verdict(allowed=False, category="remote", score=1.0, layer="remote", matched=message)
        self.category, self.score, self.reason, self.server = "remote", 1.0, message, server
        ValueError.__init__(self, f"prompt blocked by the content policy of {server}: {message or 'no reason given'}. "
                                  "No image was made. Rephrase the prompt without that content.")

    def __reduce__(self):
        return type(self), (self.server, self.reason)


class OpenAIBackend:
    """A server that speaks POST /v1/images/generations (OpenAI's images API), one request per image.

    `seed` (and `negative_prompt`, `steps`, `guidance` where given) go as extra fields, which limner's
    server and many others honour; a server that rejects unknown fields gets them dropped and is retried.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 300):
        base = base_url.rstrip("/")
        self.endpoint = (base if base.endswith("/v1") else base + "/v1") + "/images/generations"
        self.model, self.timeout = model, timeout
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        host = urllib.parse.urlparse(base).netloc or base
        self.name = f"{host}-{model}" if model else host
        self._extras = True   # until the server says it does not know them

    def generate(self, prompts, seeds, negative_prompt=None, steps=None, guidance=None, size=None):
        out = []
        for prompt, seed in _pairs(prompts, seeds):
            body = {"prompt": prompt, "n": 1, "response_format": "b64_json"}
            if self.model:
                body["model"] = self.model
            if size is not None:
                body["size"] = f"{int(size[0])}x{int(size[1])}"
            extras = {"seed": seed, "negative_prompt": negative_prompt, "steps": steps, "guidance": guidance}
            out.append(self._image(body, {k: v for k, v in extras.items() if v is not None}))
        return out

    def _image(self, body: dict, extras: dict) -> Image.Image:
        try:
            reply = self._post({**body, **extras} if self._extras else body)
        except _UnknownField:
            self._extras = False   # e.g. OpenAI's "Unrecognized request argument supplied: seed"
            reply = self._post(body)
        try:
            item = reply["data"][0]
            img = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
            img.load()
        except (KeyError, IndexError, TypeError, ValueError, OSError) as e:
            raise ValueError(f"{self.endpoint} did not answer with a base64 image in data[0].b64_json "
                             f"({type(e).__name__}: {e})") from None
        img = img.convert("RGB")
        if item.get("revised_prompt"):
            img.info["revised_prompt"] = item["revised_prompt"]
        return img

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise self._error(e.code, e.read()) from None
        except urllib.error.URLError as e:
            raise ConnectionError(f"could not reach {self.endpoint}: {e.reason}. Is the server running, "
                                  "and is the URL right?") from None

    def _error(self, status: int, raw: bytes) -> Exception:
        """An HTTP error as the exception a caller can act on, with the server's own message."""
        try:
            err = json.loads(raw).get("error") or {}
            err = err if isinstance(err, dict) else {"message": str(err)}
        except (ValueError, AttributeError):
            err = {"message": raw.decode("utf-8", "replace")[:500]}
        message, code = err.get("message") or "", err.get("code")
        if code == "content_policy_violation":
            return RemotePromptBlocked(self.endpoint, message)
        if status == 400 and self._extras and any(s in message.lower() for s in UNKNOWN_FIELD):
            return _UnknownField(message)
        hint = {401: " (set OPENAI_API_KEY or pass api_key)", 403: " (the key may lack access to this model)",
                404: " (is this an OpenAI images API server? the model name may be wrong)",
                429: " (rate limited: retry later or lower the request rate)"}.get(status, "")
        return RuntimeError(f"{self.endpoint} answered HTTP {status}{hint}: {message or 'no message'}")

    def identity(self) -> dict:
        # a remote model can change under the same name; this is the best a client can name it by
        return {"backend": "openai", "endpoint": self.endpoint, "model": self.model}


UNKNOWN_FIELD = ("unrecognized request argument", "unknown parameter", "extra inputs are not permitted")


class _UnknownField(Exception):
    pass


# ----------------------------------------------------------------------------------------------- dispatch


def load_backend(spec: str, safety: SafetyConfig | None = None, layout: str = "auto") -> Backend:
    """A backend from a model string: a shipped limner name or a folder with limner.json (limner), a folder
    with model_index.json (diffusers), or an http(s) URL, optionally URL#model (OpenAI images API)."""
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        return OpenAIBackend(url, model or None)
    path = Path(spec)
    if spec in folder.SHIPPED or (path / "limner.json").exists():
        return LimnerBackend(spec, safety, layout)
    if (path / "model_index.json").exists():
        return DiffusersBackend(path, safety)
    what = "a folder with neither limner.json nor model_index.json" if path.is_dir() else "not a folder"
    raise ValueError(
        f"unknown model {spec!r} ({what}): expected a shipped limner model ({', '.join(folder.SHIPPED)}), a folder "
        "with limner.json (`limner train` exports these), a folder with model_index.json (a diffusers "
        "pipeline saved with save_pretrained), or an http(s):// URL of an OpenAI images API server "
        "(URL#model names the model)")
