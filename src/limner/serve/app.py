"""The FastAPI app: the OpenAI Images API, limner's job API, results by URL, health, metrics, the web page.

Every request becomes a job on the one bounded queue (`jobs.JobQueue`), so the OpenAI endpoint, the job
API and the page share one worker, one batching policy and one set of limits. The model loads in a thread
at start-up: /healthz answers at once, /readyz once the model is in.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import ApiKeys
from .config import ServeConfig
from .jobs import FINAL, Job, JobQueue, JobStatus, QueueFull
from .metrics import Metrics
from .schema import (ApiError, ErrorResponse, ImageGenerationRequest, ImagesResponse, JobRequest, JobView,
                     job_spec, usage)

log = logging.getLogger(__name__)
MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 429, 500, 503, 504)}
KEEPALIVE_S = 15
FINAL_EVENTS = tuple(s.value for s in FINAL)


class State:
    """What the routes share: the engine and queue once loaded, the keys, the metrics."""

    def __init__(self, config: ServeConfig, engine_factory):
        self.config, self.engine_factory = config, engine_factory
        self.keys = ApiKeys(config.api_key_file, config.rate_limit_per_minute) if config.api_key_file else None
        self.metrics = Metrics()
        self.engine = self.queue = None
        self.load_error: str | None = None

    def load(self) -> None:
        try:
            self.engine = self.engine_factory(self.config.model)
            self.queue = JobQueue(self.engine, self.config, self.metrics).start()
            log.info("limner serve: %s is ready", self.engine.name)
        except Exception as e:   # shown by /readyz and every generation request
            log.exception("loading %s failed", self.config.model)
            self.load_error = f"the model {self.config.model!r} failed to load: {type(e).__name__}: {e}"

    def ready_queue(self) -> JobQueue:
        if self.load_error:
            raise ApiError(503, self.load_error, "server_error", code="model_load_failed", reason="not_ready")
        if self.queue is None:
            raise ApiError(503, f"the model {self.config.model!r} is still loading: retry shortly", "server_error",
                           code="model_not_ready", headers={"Retry-After": "2"}, reason="not_ready")
        return self.queue


def create_app(config: ServeConfig | None = None, engine_factory=None) -> FastAPI:
    """`engine_factory(model) -> Engine` (default: load the limner model with the guard fully on)."""
    config = config or ServeConfig()
    if engine_factory is None:
        from .engine import Engine as engine_factory
    state = State(config, engine_factory)

    @asynccontextmanager
    async def lifespan(_app):
        threading.Thread(target=state.load, name="limner-serve-load", daemon=True).start()
        yield
        if state.queue is not None:
            state.queue.stop()

    app = FastAPI(title="limner", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,  # no CDN pages
                  description="Text-to-image: the OpenAI Images API, a job API with progress, and a web page.")
    app.state.limner = state

    # ------------------------------------------------------------------------------------------ errors

    def refuse(e: ApiError) -> JSONResponse:
        if e.reason:
            state.metrics.refuse(e.reason)
        return JSONResponse({"error": e.body}, status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return refuse(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, e: RequestValidationError):
        first = e.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "extra_forbidden":
            message, code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
        elif first.get("type") in ("json_invalid", "model_attributes_type", "dict_type"):
            message, code = "the request body must be a JSON object with at least a prompt", "invalid_json"
        else:
            got = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else ""
            message, code = f"{param or 'request'}: {first.get('msg', 'invalid value')}{got}", "invalid_value"
        return refuse(ApiError(400, message, param=param, code=code, reason="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e: StarletteHTTPException):
        message = {404: "no such route: see /openapi.json", 405: "method not allowed on this route"}.get(
            e.status_code, str(e.detail))
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": None}}, status_code=e.status_code)

    app.add_middleware(CountRequests, metrics=state.metrics)

    # ------------------------------------------------------------------------------------------ helpers

    def authorized(request: Request) -> None:
        if state.keys is None:
            return
        key = state.keys.identify(request.headers.get("authorization"))
        if key is None:
            raise ApiError(401, "missing or unknown API key: send `Authorization: Bearer KEY` (the operator makes "
                                "keys with `limner serve --new-key FILE`)", code="invalid_api_key",
                           reason="unauthorized")
        wait = state.keys.take(key)
        if wait:
            raise ApiError(429, f"rate limit of {state.config.rate_limit_per_minute:g} requests per minute for "
                                f"this key reached: retry after {wait:.1f} s", "rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait + 0.5)))},
                           reason="rate_limit")

    def queue_full(e: QueueFull) -> ApiError:
        return ApiError(429, str(e), "rate_limit_error", code="queue_full", headers={"Retry-After": str(e.retry_after)},
                        reason="queue_full")

    async def submit(body, previews: int) -> Job:
        queue = state.ready_queue()
        spec = job_spec(body, state.engine, state.config, previews)
        try:
            queue.check_room()   # a full queue refuses before the prompt filter runs: 429 stays instant
            await run_in_threadpool(state.engine.check_prompt, spec.prompt)
        except ValueError as e:
            if getattr(e, "code", None) == "content_policy_violation":
                raise ApiError(400, str(e), param="prompt", code="content_policy_violation",
                               reason="content_policy") from None
            raise ApiError(400, str(e), param="prompt", code="invalid_value") from None
        except QueueFull as e:
            raise queue_full(e) from None
        try:
            return queue.submit(spec)
        except QueueFull as e:
            raise queue_full(e) from None

    def job_of(job_id: str) -> Job:
        job = state.ready_queue().get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}: it never existed, or its results were dropped after "
                                f"{state.config.result_ttl_s:g} s", param="id", code="job_not_found")
        return job

    def failure(job: Job) -> ApiError:
        error = job.error or {"message": "the job was cancelled", "type": "invalid_request_error",
                              "code": "cancelled", "param": None}
        status = {"content_policy_violation": 400, "timeout": 504, "cancelled": 409}.get(error.get("code"), 500)
        e = ApiError(status, error["message"], error["type"], error.get("param"), error.get("code"))
        e.reason = None   # the queue counted this job's refusal already
        return e

    async def finished(job: Job, request: Request) -> None:
        """Wait for the job; a client that goes away cancels it."""
        events = job.subscribe()
        try:
            while not job.done:
                try:
                    await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    pass
                if await request.is_disconnected():   # looked at twice a second, events or not
                    state.queue.cancel(job.id)
                    return
        finally:
            job.unsubscribe(events)

    def result_url(request: Request, job: Job, i: int) -> str:
        return f"{str(request.base_url).rstrip('/')}/v1/results/{job.id}/{i}.{job.spec.output_format}"

    def expires_at(job: Job) -> int:
        return int((job.finished or time.time()) + state.config.result_ttl_s)

    def encoded(job: Job, i: int) -> bytes:
        if i not in job.encoded:
            job.encoded[i] = encode(job.images[i], job.spec.output_format, job.spec.output_compression)
        return job.encoded[i]

    def view(job: Job, request: Request) -> dict:
        spec = job.spec
        result = None
        if job.status == JobStatus.SUCCEEDED:
            result = {"data": [{"url": result_url(request, job, i), "seed": img.info["parameters"]["seed"],
                                "parameters": img.info["parameters"]} for i, img in enumerate(job.images)],
                      "expires_at": expires_at(job)}
        return {"id": job.id, "object": "image.job", "status": job.status.value, "created": int(job.created),
                "started_at": job.started and int(job.started), "finished_at": job.finished and int(job.finished),
                "queue_position": state.queue.position(job), "progress": {"step": job.step, "total": spec.shape.steps},
                "prompt": spec.prompt, "negative_prompt": spec.shape.negative_prompt, "n": spec.shape.n,
                "seed": spec.seed, "steps": spec.shape.steps, "guidance": spec.shape.guidance,
                "output_format": spec.output_format, "result": result, "error": job.error}

    # ------------------------------------------------------------------------------ the OpenAI Images API

    @app.post("/v1/images/generations", response_model=ImagesResponse, responses={
        **ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "JSON, or with stream: Server-Sent "
                        "Events image_generation.partial_image / image_generation.completed / error"}},
              dependencies=[Depends(authorized)])
    async def generations(body: ImageGenerationRequest, request: Request):
        """Draw images, as OpenAI's `images.generate` does (plus limner's seed, steps, guidance, negative_prompt)."""
        job = await submit(body, previews=(body.partial_images or 0) if body.stream else 0)
        if body.stream:
            return StreamingResponse(openai_events(job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        await finished(job, request)
        if job.status != JobStatus.SUCCEEDED:
            raise failure(job)
        url = body.response_format == "url"
        data = [{"seed": img.info["parameters"]["seed"],
                 **({"url": result_url(request, job, i), "expires_at": expires_at(job)} if url else
                    {"b64_json": base64.b64encode(encoded(job, i)).decode()})} for i, img in enumerate(job.images)]
        return {"created": int(job.created), "data": data, **job.spec.options, "output_format": job.spec.output_format,
                "usage": usage(state.engine, job.spec.prompt, job.spec.shape.n)}

    async def relay(job: Job, render, cancel_on_leave: bool):
        """Server-Sent Events: what `render(event)` writes for each of the job's events, keep-alives between,
        until its final event."""
        events = job.subscribe()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                for text in render(event):
                    yield text
                if event["event"] in FINAL_EVENTS:
                    return
        finally:
            job.unsubscribe(events)
            if cancel_on_leave and not job.done:   # the client went away
                state.queue.cancel(job.id)

    def openai_events(job: Job):
        """OpenAI's streaming events: partial images while drawing, then one completed event per image."""
        spec = job.spec
        common = {**spec.options, "output_format": spec.output_format}

        def render(event):
            name = event["event"]
            if name == "preview":
                yield sse("image_generation.partial_image", {
                    "type": "image_generation.partial_image", "created_at": int(time.time()), **common,
                    "b64_json": b64(event["image"], spec.output_format, spec.output_compression),
                    "partial_image_index": event["partial_image_index"], "image_index": event["image_index"]})
            elif name == JobStatus.SUCCEEDED.value:
                each = usage(state.engine, spec.prompt, 1)
                for i, img in enumerate(job.images):
                    yield sse("image_generation.completed", {
                        "type": "image_generation.completed", "created_at": int(time.time()), **common,
                        "b64_json": base64.b64encode(encoded(job, i)).decode(), "usage": each,
                        "seed": img.info["parameters"]["seed"], "image_index": i})
            elif name in FINAL_EVENTS:
                yield sse("error", {"error": failure(job).body})

        return relay(job, render, cancel_on_leave=True)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    def models():
        state.ready_queue()
        engine = state.engine
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "owned_by": "limner",
                                            "sizes": [f"{engine.resolution}x{engine.resolution}", "auto"],
                                            "default_steps": engine.default_steps,
                                            "default_guidance": engine.default_guidance}]}

    # -------------------------------------------------------------------------------------- the job API

    @app.post("/v1/jobs", status_code=202, response_model=JobView, responses=ERRORS,
              dependencies=[Depends(authorized)])
    async def create_job(body: JobRequest, request: Request):
        """Queue a job and answer at once with its id; follow it at /v1/jobs/{id} or /v1/jobs/{id}/events."""
        job = await submit(body, previews=body.previews)
        return JSONResponse(view(job, request), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}", response_model=JobView, responses=ERRORS, dependencies=[Depends(authorized)])
    def get_job(job_id: str, request: Request):
        return view(job_of(job_id), request)

    @app.delete("/v1/jobs/{job_id}", response_model=JobView, responses=ERRORS, dependencies=[Depends(authorized)])
    def cancel_job(job_id: str, request: Request):
        """Cancel this job (and no other): a queued job at once, a running one at its next step."""
        job = job_of(job_id)
        if job.done:
            raise ApiError(409, f"job {job_id} has already {job.status.value}; nothing to cancel", param="id",
                           code="job_finished")
        state.queue.cancel(job_id)
        return view(job, request)

    @app.get("/v1/jobs/{job_id}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
             dependencies=[Depends(authorized)])
    async def job_events(job_id: str, request: Request):
        """Server-Sent Events: queued (position), started, progress (step, total), preview (b64 PNG), then
        succeeded / failed / cancelled with the job as GET /v1/jobs/{id} shows it."""
        job = job_of(job_id)

        def render(event):
            name = event["event"]
            if name == "preview":
                data = {k: v for k, v in event.items() if k not in ("event", "image")}
                yield sse(name, {**data, "b64_json": b64(event["image"], "png")})
            elif name in FINAL_EVENTS:
                yield sse(name, view(job, request))
            else:
                yield sse(name, {k: v for k, v in event.items() if k != "event"})

        # leaving does not cancel: a page reload follows the same job again
        return StreamingResponse(relay(job, render, cancel_on_leave=False), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/results/{job_id}/{name}", responses={**ERRORS, 200: {"content": {m: {} for m in MEDIA.values()}}})
    def result(job_id: str, name: str):
        """An image of a finished job, for result_ttl_s after it finished. The unguessable job id is the key."""
        job = job_of(job_id)
        index, _, ext = name.partition(".")
        if job.status != JobStatus.SUCCEEDED or not index.isdigit() or int(index) >= len(job.images) \
                or ext != job.spec.output_format:
            raise ApiError(404, f"no image {name!r} in job {job_id} ({job.status.value}, {len(job.images)} images "
                                f"as .{job.spec.output_format})", param="name", code="image_not_found")
        i = int(index)
        seed = job.images[i].info["parameters"]["seed"]
        left = max(0, expires_at(job) - int(time.time()))
        return Response(encoded(job, i), media_type=MEDIA[ext], headers={
            "Cache-Control": f"private, max-age={left}",
            "Content-Disposition": f'inline; filename="limner-{seed}.{ext}"'})

    # ------------------------------------------------------------------------------- health and the page

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    def readyz():
        queue = state.ready_queue()
        if not queue.alive:
            raise ApiError(503, "the worker thread has stopped", "server_error", code="worker_stopped")
        return {"status": "ready", "model": state.engine.name, "queue_depth": queue.depth,
                "queue_size": state.config.queue_size}

    @app.get("/metrics")
    def metrics():
        return Response(state.metrics.render(state.queue), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    def page():
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    return app


class CountRequests:
    """Counts and times requests by route and status: plain ASGI, as Starlette's BaseHTTPMiddleware costs
    each request a task group and memory streams, which a burst of 200 clients feels."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), []

        async def sending(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            labels = (getattr(scope.get("route"), "path", "unmatched"), str(status[0] if status else 500))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.http_seconds.labels(*labels).observe(time.perf_counter() - began)


# ----------------------------------------------------------------------------------------------- output


def encode(img: Image.Image, fmt: str, compression: int | None = None) -> bytes:
    """The image's bytes with its generation parameters: a PNG `parameters` chunk, or EXIF ImageDescription
    (JSON) for jpeg and webp; `compression` is their quality (0-100, default 100 as OpenAI's)."""
    buf = io.BytesIO()
    params = img.info.get("parameters")
    if fmt == "png":
        img.save(buf, format="PNG")   # a pipeline image writes its parameters chunk itself
    else:
        exif = Image.Exif()
        if params:
            exif[0x010E] = json.dumps(params)
        img.convert("RGB").save(buf, format=fmt.upper(), quality=100 if compression is None else compression,
                                exif=exif)
    return buf.getvalue()


def b64(img: Image.Image, fmt: str, compression: int | None = None) -> str:
    return base64.b64encode(encode(img, fmt, compression)).decode()


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
