"""Requests and responses: the OpenAI Images API (`POST /v1/images/generations`) as its reference defines it,
with limner's extras (seed, steps, guidance, negative_prompt), limner's job API, and errors in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`. What a model cannot honour (a transparent background,
a size it does not draw) is a 400 that says so, never silently ignored."""
from __future__ import annotations

import re
import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from .config import ServeConfig
from .engine import Shape
from .jobs import JobSpec, error_body

MAX_SEED = 2**32 - 1
QUALITY_STEPS = {"low": 0.5, "medium": 1.0, "standard": 1.0, "auto": 1.0, "high": 2.0, "hd": 2.0}  # x model default
QUALITY_NAME = {"low": "low", "medium": "medium", "standard": "medium", "auto": "medium", "high": "high", "hd": "high"}


class ApiError(Exception):
    """An error the app answers in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None, reason: str | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}
        self.body = error_body(message, type, param, code)
        self.reason = reason or code or type   # the metrics' refusal label


# ---------------------------------------------------------------------------------------------- requests


def _json_number(value):
    """A JSON number or null: pydantic's lax mode would also take `true` or "5" for a number, which the OpenAPI
    document (and OpenAI) call invalid."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise PydanticCustomError("number_type", "must be a number, not {got}", {"got": type(value).__name__})


class GenerationParams(BaseModel):
    """What an image request says, shared by the OpenAI endpoint and limner's jobs."""
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what to draw")
    model: str | None = Field(None, description="the served model's name (GET /v1/models); omitted: that model")
    n: int | None = Field(1, ge=1, description="images to draw; image i has seed + i")
    size: str | None = Field(None, description="WIDTHxHEIGHT, one the model draws (GET /v1/models lists them); "
                             "auto: the model's default output (its upsampler cascade's, if it has one); omitted: "
                             "the model's base size, the fastest")
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = Field(
        "auto", description="sampling steps: low = half the model's default, medium/standard/auto = the default, "
                            "high/hd = twice it (an explicit `steps` wins)")
    output_format: Literal["png", "jpeg", "webp"] | None = "png"
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp quality, 0-100 [100]")
    background: Literal["auto", "opaque", "transparent"] | None = Field(
        "auto", description="limner models draw opaque images: transparent is refused")
    moderation: Literal["auto", "low"] | None = Field(
        "auto", description="the server's content policy always applies: low is refused")
    user: str | None = Field(None, description="an end-user id, kept out of logs (accepted for compatibility)")
    safety_identifier: str | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="limner: the first image's seed [random]")
    steps: int | None = Field(None, ge=1, description="limner: sampling steps [the model's default]")
    guidance: float | None = Field(None, ge=0, le=50, description="limner: classifier-free guidance scale")
    negative_prompt: str | None = Field(None, description="limner: what to steer away from")
    upscale: int | None = Field(None, ge=1, description="limner: 2, 4 or 8 enlarges the images that many times "
                                                        "more with the model's upsampler [1]")

    # a validator, not an Annotated type: that would hide the fields' minimum/maximum from the JSON schema
    _numbers = field_validator("n", "output_compression", "seed", "steps", "guidance", "upscale", "partial_images", "previews",
                               mode="before", check_fields=False)(_json_number)


class ImageGenerationRequest(GenerationParams):
    response_format: Literal["b64_json", "url"] | None = Field("b64_json", description="url: served for result_ttl_s")
    stream: bool | None = Field(False, strict=True, description="Server-Sent Events: image_generation.partial_image, "
                                                    "image_generation.completed")
    partial_images: int | None = Field(0, ge=0, le=3, description="partial images per image while streaming")
    style: Literal["vivid", "natural"] | None = Field(None, description="dall-e-3 only: refused")


class JobRequest(GenerationParams):
    previews: int = Field(4, ge=0, le=50, description="preview images sent over /v1/jobs/{id}/events while drawing")


UPSCALES = (1, 2, 4, 8)


def offered_sides(engine, config: ServeConfig) -> list[int]:
    """The sides a request's `size` may name: the model's base resolution, and each stage of its upsampler
    cascade up to the server's max_side."""
    return [side for side in engine.sizes if side <= config.max_side] or [engine.resolution]


def offered_sizes(engine, config: ServeConfig) -> list[str]:
    """The `size` values a request may name: WIDTHxHEIGHT of each side offered, and auto."""
    return [f"{side}x{side}" for side in offered_sides(engine, config)] + ["auto"]


def offered_upscales(engine, config: ServeConfig) -> list[int]:
    """The `upscale` values a request may name (with the base size; a larger size leaves fewer under max_side)."""
    return [u for u in UPSCALES if u == 1 or (engine.can_upscale and engine.resolution * u <= config.max_side)]


def either(words: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def output_side(body: GenerationParams, engine, config: ServeConfig) -> tuple[int, int]:
    """(side drawn, upscale) for the request's `size` and `upscale`, or the 400 naming what is offered."""
    sides = offered_sides(engine, config)
    if body.size in (None, ""):
        side = engine.resolution   # the server's default: the base model alone, the fastest
    elif body.size == "auto":
        side = engine.auto_size    # the model's own default output
    else:
        m = re.fullmatch(r"([0-9]{1,5})x([0-9]{1,5})", body.size)
        side = int(m[1]) if m and m[1] == m[2] and int(m[1]) in sides else None
        if side is None:
            raise ApiError(400, f"size {body.size!r} is not offered: {engine.name} draws "
                                f"{either([f'{s}x{s}' for s in sides])} images; use size "
                                f"{either([repr(f'{s}x{s}') for s in sides])} or 'auto'", param="size", code="invalid_value")
    upscale = 1 if body.upscale is None else body.upscale
    if upscale not in UPSCALES:
        raise ApiError(400, f"upscale is {upscale}; use 1, 2, 4 or 8", param="upscale", code="invalid_value")
    if upscale > 1 and not engine.can_upscale:
        raise ApiError(400, f"upscale {upscale} is not offered: {engine.name} has no upsampler; leave upscale out "
                            "or at 1", param="upscale", code="invalid_value")
    if side * upscale > config.max_side:
        raise ApiError(400, f"size {side}x{side} with upscale {upscale} makes {side * upscale} px images; this server "
                            f"makes at most {config.max_side} px: ask for a smaller size or upscale",
                       param="upscale" if upscale > 1 else "size", code="integer_above_max_value")
    return side, upscale


def job_spec(body: GenerationParams, engine, config: ServeConfig, previews: int = 0) -> JobSpec:
    """The job a request asks for, or an ApiError naming the parameter that cannot be honoured."""
    if body.model not in (None, "", engine.name):
        raise ApiError(404, f"the model {body.model!r} is not served here; this server serves {engine.name!r} "
                            "(GET /v1/models)", param="model", code="model_not_found")
    prompt = body.prompt.strip()
    if not prompt:
        raise ApiError(400, "prompt is empty: describe the image you want, e.g. 'three red circles'",
                       param="prompt", code="invalid_value")
    for name, text in (("prompt", body.prompt), ("negative_prompt", body.negative_prompt or "")):
        if len(text) > config.max_prompt_chars:
            raise ApiError(400, f"{name} is {len(text)} characters; this server takes at most "
                                f"{config.max_prompt_chars}", param=name, code="string_above_max_length")
    n = 1 if body.n is None else body.n
    if n > config.max_n:
        raise ApiError(400, f"n is {n}; this server draws at most {config.max_n} images per request",
                       param="n", code="integer_above_max_value")
    side, upscale = output_side(body, engine, config)
    if body.background == "transparent":
        raise ApiError(400, f"background 'transparent' is not offered: {engine.name} draws opaque images; use "
                            "'opaque' or 'auto'", param="background", code="invalid_value")
    if body.moderation == "low":
        raise ApiError(400, "moderation 'low' is not offered: this server always applies its content policy; "
                            "use 'auto'", param="moderation", code="invalid_value")
    if getattr(body, "style", None) is not None:
        raise ApiError(400, "style is a dall-e-3 option that limner models do not have; leave it out",
                       param="style", code="invalid_value")
    fmt = body.output_format or "png"
    if body.output_compression is not None and fmt == "png":
        raise ApiError(400, "output_compression applies to jpeg and webp; png is lossless: leave it out or "
                            "choose output_format jpeg or webp", param="output_compression", code="invalid_value")
    quality = body.quality or "auto"
    # a step count derived from `quality` stays within the server's limit; only an explicit `steps` is refused
    steps = body.steps if body.steps is not None else \
        min(config.max_steps, max(1, round(engine.default_steps * QUALITY_STEPS[quality])))
    if steps > config.max_steps:
        raise ApiError(400, f"steps is {steps}; this server takes at most {config.max_steps}", param="steps",
                       code="integer_above_max_value")
    guidance = engine.default_guidance if body.guidance is None else float(body.guidance)
    seed = secrets.randbelow(MAX_SEED + 1) if body.seed is None else body.seed
    shape = Shape(negative_prompt=(body.negative_prompt or "").strip(), steps=steps, guidance=guidance, n=n,
                  side=side, upscale=upscale)
    out = side * upscale
    return JobSpec(prompt=prompt, seed=seed, shape=shape, previews=previews, output_format=fmt,
                   output_compression=body.output_compression,
                   options={"size": f"{out}x{out}", "quality": QUALITY_NAME[quality], "background": "opaque"})


# --------------------------------------------------------------------------------------------- responses


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    seed: int = Field(description="limner: this image's seed (give it back to draw the same image)")
    expires_at: int | None = Field(None, description="limner: when a url stops being served (Unix time)")


class InputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class Usage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    total_tokens: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    size: str
    output_format: Literal["png", "jpeg", "webp"]
    quality: Literal["low", "medium", "high"]
    background: Literal["opaque"]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class JobImage(BaseModel):
    url: str
    seed: int
    parameters: dict


class JobResult(BaseModel):
    data: list[JobImage]
    expires_at: int


class JobProgress(BaseModel):
    step: int
    total: int


class JobView(BaseModel):
    id: str
    object: Literal["image.job"] = "image.job"
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created: int
    started_at: int | None = None
    finished_at: int | None = None
    queue_position: int | None = Field(None, description="0: next to run; null when not waiting")
    progress: JobProgress
    prompt: str
    negative_prompt: str
    n: int
    seed: int
    steps: int
    guidance: float
    output_format: str
    result: JobResult | None = None
    error: ErrorDetail | None = None


def usage(engine, prompt: str, n: int) -> dict:
    text, out = engine.text_tokens(prompt), n * engine.image_tokens()
    return {"input_tokens": text, "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
            "output_tokens": out, "total_tokens": text + out}


# ------------------------------------------------------------------------------------- the OpenAPI document


def _value(prop: dict) -> dict:
    """The non-null branch of an Optional field's schema (pydantic writes `anyOf: [{...}, {type: null}]`)."""
    return next((b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"), prop)


def document_limits(doc: dict, config: ServeConfig, engine=None) -> dict:
    """The OpenAPI document with this server's own limits and refusals written in, so that what the document
    calls valid is what the server takes, and what it refuses with a 400 the document calls invalid
    (Schemathesis checks both ways). The request models stay OpenAI's (their Literals list every value
    OpenAI's clients send), so a value limner cannot honour gets limner's clear 400 rather than pydantic's."""
    for name in ("ImageGenerationRequest", "JobRequest"):
        schema = doc["components"]["schemas"][name]
        props = schema["properties"]
        props["prompt"].update(minLength=1, maxLength=config.max_prompt_chars, pattern=r"\S")   # not blank
        _value(props["negative_prompt"])["maxLength"] = config.max_prompt_chars
        _value(props["n"])["maximum"] = config.max_n
        _value(props["steps"])["maximum"] = config.max_steps
        _value(props["background"])["enum"] = ["auto", "opaque"]
        _value(props["moderation"])["enum"] = ["auto"]
        if "style" in props:
            props["style"] = {"type": "null", "description": props["style"].get("description", "")}
        if engine is not None:   # loaded: what this model offers
            _value(props["model"])["enum"] = [engine.name, ""]
            _value(props["size"])["enum"] = offered_sizes(engine, config)
            _value(props["upscale"])["enum"] = offered_upscales(engine, config)
        # output_compression only with jpeg or webp named (png is lossless)
        schema["if"] = {"required": ["output_compression"], "properties": {"output_compression": {"type": "integer"}}}
        schema["then"] = {"required": ["output_format"], "properties": {"output_format": {"enum": ["jpeg", "webp"]}}}
    # limner answers invalid input with OpenAI's 400, never FastAPI's 422
    for operations in doc["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        doc["components"]["schemas"].pop(unused, None)
    return doc
