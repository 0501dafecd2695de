"""The FastAPI app: the OpenAI Images API, limner's job API, results by URL, health, metrics, the web page.

Every request becomes a job on the one bounded queue (`jobs.JobQueue`), so the OpenAI endpoint, the job
API and the page share one worker, one batching policy and one set of limits. The model loads in a thread
at start-up: /healthz answers at once, /readyz once the model is in. A full queue refuses a new request
before reading it (`RefuseWhenFull`). Behind Ray Serve each replica is one such app, and they share their jobs
through a job board (`board.JobBoard`). The OpenAPI document states this server's own limits
(`schema.document_limits`), so that Schemathesis and clients can trust it both ways.
"""
from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import gc
import io
import json
import logging
import re
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .auth import ApiKeys
from .config import ServeConfig
from .jobs import FINAL, Job, JobQueue, JobStatus, QueueFull, error_body
from .metrics import Metrics
from .schema import (ApiError, ErrorResponse, ImageGenerationRequest, ImagesResponse, JobRequest, JobView,
                     document_limits, job_spec, offered_sizes, offered_upscales, usage)

log = logging.getLogger(__name__)
MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 429, 500, 503, 504)}
# where a created job's id leads (OpenAPI links: Schemathesis and other tools follow them)
JOB_LINKS = {link: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
             for link, operation in (("GetJob", "getJob"), ("CancelJob", "cancelJob"), ("JobEvents", "jobEvents"))}
KEEPALIVE_S = 15
CANCEL_POLL_S = 10.0   # the long poll for cancels, which also tells a replica that the board restarted
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
            # the model's and libraries' objects out of the collector's reach: a full collection over them held the
            # event loop ~0.3 s, one burst in three of 200 clients got its 429s that late (frozen: none of 6)
            gc.collect()
            gc.freeze()
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


def create_app(config: ServeConfig | None = None, engine_factory=None, board=None, replica: str = "") -> FastAPI:
    """`engine_factory(model) -> Engine` (default: load the limner model with the guard fully on).

    `board`: one of several replicas behind one address (Ray Serve). An object whose coroutine methods are
    `board.JobBoard`'s, shared by the replicas: this one (named `replica`) posts its jobs there and answers
    requests for the others' jobs from it, so any replica serves any job."""
    config = config or ServeConfig()
    if engine_factory is None:
        from .engine import Engine as engine_factory
    state = State(config, engine_factory)
    posting: dict[str, tuple[asyncio.Task, asyncio.Event]] = {}   # job id -> its poster, set once first posted
    board_life = {"epoch": None, "repost": None}   # the board's epoch as last seen, and a re-post under way

    @asynccontextmanager
    async def lifespan(_app):
        threading.Thread(target=state.load, name="limner-serve-load", daemon=True).start()
        listener = asyncio.create_task(take_cancels()) if board is not None else None
        yield
        if listener is not None:
            listener.cancel()
        if state.queue is not None:
            state.queue.stop()

    app = FastAPI(title="limner", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,  # no CDN pages
                  description="Text-to-image: the OpenAI Images API, a job API with progress, and a web page.")
    app.state.limner = state
    plain_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's document with this server's limits written in (its sizes once the model is loaded)."""
        return document_limits(copy.deepcopy(plain_openapi()), config, state.engine)

    app.openapi = openapi

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
    async def _http_error(request: Request, e: StarletteHTTPException):
        headers = dict(getattr(e, "headers", None) or {})
        message = {404: "no such route: see /openapi.json"}.get(e.status_code, str(e.detail))
        if e.status_code == 405:
            # Starlette's Allow names the first route of the path only; GET and DELETE /v1/jobs/{id} are two
            allowed = sorted({m for route in app.router.routes if route.matches(request.scope)[0] != Match.NONE
                              for m in getattr(route, "methods", None) or ()})
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed on this route; it takes {', '.join(allowed)}"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": None}}, status_code=e.status_code, headers=headers)

    app.add_middleware(RefuseWhenFull, state=state)   # inside CountRequests, which counts its refusals too
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
        place = HELD_PLACE.get()   # taken on arrival by RefuseWhenFull; None when it took none (a bad key)
        try:
            if place is None:
                place = queue.hold()   # a full queue refuses before the prompt filter runs: 429 stays instant
            await run_in_threadpool(state.engine.check_prompt, spec.prompt)
            job = queue.submit(spec, place)
        except ValueError as e:
            if getattr(e, "code", None) == "content_policy_violation":
                raise ApiError(400, str(e), param="prompt", code="content_policy_violation",
                               reason="content_policy") from None
            raise ApiError(400, str(e), param="prompt", code="invalid_value") from None
        except QueueFull as e:
            raise queue_full(e) from None
        finally:
            if place is not None:
                place.release()   # not filled (a refused prompt): free for the next request
        if board is not None:
            first = asyncio.Event()
            task = asyncio.create_task(post_to_board(job, first))
            posting[job.id] = task, first
            task.add_done_callback(lambda _: posting.pop(job.id, None))
        return job

    def not_found(job_id: str) -> ApiError:
        return ApiError(404, f"no job {job_id!r}: it never existed, or its results were dropped after "
                             f"{state.config.result_ttl_s:g} s", param="id", code="job_not_found")

    # ------------------------------------------------------------------- the board (several replicas)

    async def post_to_board(job: Job, first: asyncio.Event) -> None:
        """Post the job's view and events as they come (all that queued up in one call), its images at the
        end. The board is how other replicas see this job: a failed post is logged and the next one tries
        again; the job itself goes on regardless."""
        events = job.subscribe()
        try:
            while True:
                batch = [await events.get()]
                while not events.empty():
                    batch.append(events.get_nowait())
                final = any(e["event"] in FINAL_EVENTS for e in batch)
                images = await board_images(job) if final else None
                try:
                    seen(await board.post(job.id, replica, view(job, ""), [job_event(job, e, "") for e in batch],
                                          config.job_timeout_s, images))
                except Exception:
                    log.exception("posting job %s to the job board failed", job.id)
                first.set()
                if final:
                    return
        finally:
            first.set()
            job.unsubscribe(events)

    async def board_images(job: Job) -> list[tuple[bytes, int]] | None:
        """A finished job's images as the board keeps them (encoded, with their seeds); None unless it succeeded."""
        if job.status != JobStatus.SUCCEEDED:
            return None
        return [(await run_in_threadpool(encoded, job, i), img.info["parameters"]["seed"])
                for i, img in enumerate(job.images)]

    def seen(epoch: str) -> None:
        """A board with another epoch than the last one seen restarted, empty: post again what this replica keeps."""
        last, board_life["epoch"] = board_life["epoch"], epoch
        if last is not None and epoch != last and board_life["repost"] is None:
            log.warning("the job board restarted: posting this replica's jobs again")
            board_life["repost"] = asyncio.create_task(repost(epoch))

    async def repost(epoch: str) -> None:
        """Every job this replica keeps, as the board would have it: its view, its final event once done, its
        images once succeeded (a running job's poster then carries on with its next events). Again if the board
        restarted once more meanwhile."""
        try:
            for job in state.queue.kept() if state.queue is not None else []:
                final = [(job.status.value, view(job, ""))] if job.done else []
                try:
                    await board.post(job.id, replica, view(job, ""), final, config.job_timeout_s,
                                     await board_images(job))
                except Exception:
                    log.exception("posting job %s to the restarted job board failed", job.id)
        finally:
            board_life["repost"] = None
            if board_life["epoch"] != epoch:
                board_life["repost"] = asyncio.create_task(repost(board_life["epoch"]))

    async def on_board(job: Job, final: bool = False) -> None:
        """Wait (briefly) until the board knows the job, or its end, before telling the client about it:
        the client's next request may reach another replica."""
        if board is None or job.id not in posting:   # (not there: its poster is done)
            return
        task, first = posting[job.id]
        try:
            await asyncio.wait_for(asyncio.shield(task) if final else first.wait(), 10)
        except asyncio.TimeoutError:
            log.warning("the job board has not confirmed job %s within 10 s", job.id)

    async def take_cancels() -> None:
        """Cancel the jobs of this replica that a request to another replica cancelled."""
        while True:
            try:
                epoch, ids = await board.take_cancels(replica, CANCEL_POLL_S)
                seen(epoch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading cancels from the job board failed")
                await asyncio.sleep(1)
                continue
            for job_id in ids:
                if state.queue is not None:
                    state.queue.cancel(job_id)

    async def board_view(job_id: str, request: Request) -> dict:
        """Another replica's job as the board has it, or 404."""
        got = await board.view(job_id) if board is not None else None
        if got is None:
            raise not_found(job_id)
        return absolute(got, base_of(request))

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

    def result_url(base: str, job: Job, i: int) -> str:
        return f"{base}/v1/results/{job.id}/{i}.{job.spec.output_format}"

    def expires_at(job: Job) -> int:
        return int((job.finished or time.time()) + state.config.result_ttl_s)

    def encoded(job: Job, i: int) -> bytes:
        if i not in job.encoded:
            job.encoded[i] = encode(job.images[i], job.spec.output_format, job.spec.output_compression)
        return job.encoded[i]

    def view(job: Job, base: str) -> dict:
        """The job as GET /v1/jobs/{id} shows it; result URLs start with `base` ("" on the board)."""
        spec = job.spec
        result = None
        if job.status == JobStatus.SUCCEEDED:
            result = {"data": [{"url": result_url(base, job, i), "seed": img.info["parameters"]["seed"],
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
              dependencies=[Depends(authorized)], operation_id="createImage")
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
        if url:
            await on_board(job, final=True)   # its URLs must work from every replica
        else:   # off the event loop: a 1024 px PNG takes long enough to hold up every other request
            b64s = await run_in_threadpool(lambda: [base64.b64encode(encoded(job, i)).decode()
                                                    for i in range(len(job.images))])
        data = [{"seed": img.info["parameters"]["seed"],
                 **({"url": result_url(base_of(request), job, i), "expires_at": expires_at(job)} if url else
                    {"b64_json": b64s[i]})} for i, img in enumerate(job.images)]
        return {"created": int(job.created), "data": data, **job.spec.options, "output_format": job.spec.output_format,
                "usage": usage(state.engine, job.spec.prompt, job.spec.shape.n)}

    async def relay(job: Job, render, cancel_on_leave: bool, encode_first: bool = False):
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
                if encode_first and event["event"] == JobStatus.SUCCEEDED.value:
                    # encoded off the event loop once (render reads the cache): 1024 px takes a while
                    await run_in_threadpool(lambda: [encoded(job, i) for i in range(len(job.images))])
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

        return relay(job, render, cancel_on_leave=True, encode_first=True)

    @app.get("/v1/models", dependencies=[Depends(authorized)], operation_id="listModels")
    def models():
        state.ready_queue()
        engine = state.engine
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "owned_by": "limner",
                                            "sizes": offered_sizes(engine, config),
                                            "upscale": offered_upscales(engine, config),
                                            "default_steps": engine.default_steps,
                                            "default_guidance": engine.default_guidance}]}

    # -------------------------------------------------------------------------------------- the job API

    @app.post("/v1/jobs", status_code=202, response_model=JobView, responses={**ERRORS, 202: {"links": JOB_LINKS}},
              dependencies=[Depends(authorized)], operation_id="createJob")
    async def create_job(body: JobRequest, request: Request):
        """Queue a job and answer at once with its id; follow it at /v1/jobs/{id} or /v1/jobs/{id}/events."""
        job = await submit(body, previews=body.previews)
        await on_board(job)   # the next request, for this job, may reach another replica
        return JSONResponse(view(job, base_of(request)), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}", response_model=JobView, responses=ERRORS, dependencies=[Depends(authorized)],
             operation_id="getJob")
    async def get_job(job_id: str, request: Request):
        job = state.ready_queue().get(job_id)
        return view(job, base_of(request)) if job is not None else await board_view(job_id, request)

    @app.delete("/v1/jobs/{job_id}", response_model=JobView, responses=ERRORS, dependencies=[Depends(authorized)],
                operation_id="cancelJob")
    async def cancel_job(job_id: str, request: Request):
        """Cancel this job (and no other): a queued job at once, a running one at its next step."""
        job = state.ready_queue().get(job_id)
        if job is None:
            return await cancel_elsewhere(job_id, request)
        if job.done:
            raise finished_already(job_id, job.status.value)
        state.queue.cancel(job_id)
        return view(job, base_of(request))

    def finished_already(job_id: str, status: str) -> ApiError:
        return ApiError(409, f"job {job_id} has already {status}; nothing to cancel", param="id", code="job_finished")

    async def cancel_elsewhere(job_id: str, request: Request) -> dict:
        """Another replica's job: the board passes the cancel on; answer once its owner has taken it (a queued
        job ends at once there), or after 2 s with the job as it is then."""
        got = await board.cancel(job_id) if board is not None else None
        if got is None:
            raise not_found(job_id)
        if got["status"] in FINAL_EVENTS:
            raise finished_already(job_id, got["status"])
        end = time.monotonic() + 2
        while got["status"] in ("queued",) and time.monotonic() < end:
            await board.events_after(job_id, 1 << 62, max(0.0, end - time.monotonic()))   # wakes on any news
            got = await board.view(job_id) or got
        return absolute(got, base_of(request))

    @app.get("/v1/jobs/{job_id}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
             dependencies=[Depends(authorized)], operation_id="jobEvents")
    async def job_events(job_id: str, request: Request):
        """Server-Sent Events: queued (position), started, progress (step, total), preview (b64 PNG), then
        succeeded / failed / cancelled with the job as GET /v1/jobs/{id} shows it."""
        job = state.ready_queue().get(job_id)
        base = base_of(request)
        if job is None:
            if board is None or await board.view(job_id) is None:
                raise not_found(job_id)
            stream = board_events(job_id, base)
        else:
            # leaving does not cancel: a page reload follows the same job again
            stream = relay(job, lambda event: [sse(*job_event(job, event, base))], cancel_on_leave=False)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def job_event(job: Job, event: dict, base: str) -> tuple[str, dict]:
        """An event of /v1/jobs/{id}/events: (name, data)."""
        name = event["event"]
        if name == "preview":
            data = {k: v for k, v in event.items() if k not in ("event", "image")}
            return name, {**data, "b64_json": b64(event["image"], "png")}
        if name in FINAL_EVENTS:
            return name, view(job, base)
        return name, {k: v for k, v in event.items() if k != "event"}

    async def board_events(job_id: str, base: str):
        """Another replica's job's events, from the board, as the owner would send them."""
        seq = 0
        while True:
            events = await board.events_after(job_id, seq, KEEPALIVE_S)
            if events is None:   # dropped meanwhile
                return
            if not events:
                yield ": keep-alive\n\n"
            for seq, name, data in events:
                yield sse(name, absolute(data, base) if name in FINAL_EVENTS else data)
                if name in FINAL_EVENTS:
                    return

    @app.get("/v1/results/{job_id}/{name}", responses={**ERRORS, 200: {"content": {m: {} for m in MEDIA.values()}}},
             operation_id="getResult")
    async def result(job_id: str, name: str):
        """An image of a finished job, for result_ttl_s after it finished. The unguessable job id is the key."""
        wanted = re.fullmatch(r"([0-9]{1,6})\.([a-z]+)", name)   # ASCII digits: '²'.isdigit() is True too
        job = state.ready_queue().get(job_id)
        if job is None:
            return await result_elsewhere(job_id, name, wanted)
        if job.status != JobStatus.SUCCEEDED or not wanted or int(wanted[1]) >= len(job.images) \
                or wanted[2] != job.spec.output_format:
            raise ApiError(404, f"no image {name!r} in job {job_id} ({job.status.value}, {len(job.images)} images "
                                f"as .{job.spec.output_format})", param="name", code="image_not_found")
        i = int(wanted[1])
        return image_response(await run_in_threadpool(encoded, job, i), wanted[2],
                              job.images[i].info["parameters"]["seed"], expires_at(job))

    async def result_elsewhere(job_id: str, name: str, wanted) -> Response:
        """An image of another replica's job, from the board."""
        got = await board.view(job_id) if board is not None else None
        if got is None:
            raise not_found(job_id)
        image = await board.image(job_id, int(wanted[1])) if wanted and wanted[2] == got["output_format"] else None
        if got["status"] != "succeeded" or image is None:
            raise ApiError(404, f"no image {name!r} in job {job_id} ({got['status']}, as .{got['output_format']})",
                           param="name", code="image_not_found")
        data, seed = image
        return image_response(data, wanted[2], seed, got["result"]["expires_at"])

    def image_response(data: bytes, ext: str, seed: int, expires: int) -> Response:
        return Response(data, media_type=MEDIA[ext], headers={
            "Cache-Control": f"private, max-age={max(0, expires - int(time.time()))}",
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

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        return Response(state.metrics.render(state.queue), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    def page():
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    return app


# The queue place RefuseWhenFull took for the request being handled (None: it took none).
HELD_PLACE: contextvars.ContextVar = contextvars.ContextVar("limner_held_place", default=None)


class RefuseWhenFull:
    """A new image request takes its place in the queue here, on arrival, or gets its 429 here, before its body
    is read, parsed and validated and its prompt filtered. Under a burst every request holds the one event loop
    for what it costs; a refusal should cost next to nothing, or 200 clients queue behind each other's refusals.
    The place is taken now, not in the route: a burst's requests all arrive before the first body is read, so
    with places taken in the route every one of 200 went through parsing and validation before its 429 (at the
    server, 30-90 ms for 184 refusals; with places taken here, each refusal is answered as it arrives)."""
    PATHS = ("/v1/images/generations", "/v1/jobs")

    def __init__(self, app, state: State):
        self.app, self.state, self.routes = app, state, None

    async def __call__(self, scope, receive, send):
        place = None
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.PATHS:
            queue = self.state.queue
            try:
                if queue is not None and self.known_key(scope):
                    place = queue.hold()
            except QueueFull as e:
                self.state.metrics.refuse("queue_full")
                if self.routes is None:
                    self.routes = {getattr(r, "path", None): r for r in scope["app"].routes}
                scope["route"] = self.routes.get(scope["path"])   # CountRequests' label, as if routed
                body = json.dumps({"error": error_body(str(e), "rate_limit_error", None, "queue_full")}).encode()
                await send({"type": "http.response.start", "status": 429, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(e.retry_after).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        if place is None:
            return await self.app(scope, receive, send)
        token = HELD_PLACE.set(place)
        try:
            await self.app(scope, receive, send)
        finally:
            HELD_PLACE.reset(token)
            place.release()   # a request refused before its job was queued (a bad body, a blocked prompt)

    def known_key(self, scope) -> bool:
        """No keys asked for, or a known one: an unknown caller goes the full way to its 401."""
        keys = self.state.keys
        if keys is None:
            return True
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        return keys.identify(header) is not None


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


def base_of(request: Request) -> str:
    """Where this server is, as the client reached it: what result URLs start with."""
    return str(request.base_url).rstrip("/")


def absolute(job_view: dict, base: str) -> dict:
    """A job view from the board (result URLs without the server's address) as this request's client needs it."""
    if not job_view.get("result"):
        return job_view
    data = [{**d, "url": base + d["url"]} for d in job_view["result"]["data"]]
    return {**job_view, "result": {**job_view["result"], "data": data}}


def b64(img: Image.Image, fmt: str, compression: int | None = None) -> str:
    return base64.b64encode(encode(img, fmt, compression)).decode()


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
