"""The bounded job queue and the one worker thread that runs the pipeline.

A job is queued at once or refused at once (`QueueFull`, which the app answers with 429 + Retry-After), so
no client ever hangs on a full server. The worker takes the oldest job together with the queued jobs of the
same `Shape` (up to `max_batch` images) and draws them in one pipeline call: one batched denoiser pass is
cheaper per image than several small ones. Each job has a deadline (from submission) and can be cancelled;
a running batch stops only once every job in it is cancelled or past its deadline, and the others' images
are kept. Events (queued, started, progress, preview, succeeded / failed / cancelled) go to asyncio
subscribers through their own event loop, so the HTTP side never blocks on the worker.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from PIL import Image

from .config import ServeConfig
from .engine import Shape

log = logging.getLogger(__name__)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
REPLACED = ("queued", "progress")   # a late subscriber needs only the latest of these


@dataclass
class JobSpec:
    prompt: str
    seed: int
    shape: Shape
    previews: int = 0                 # preview images sent while drawing, evenly spaced over the steps
    output_format: str = "png"
    output_compression: int | None = None
    options: dict = field(default_factory=dict)   # what else the request said (size, quality...), echoed back


class QueueFull(Exception):
    def __init__(self, retry_after: int, size: int):
        self.retry_after = retry_after
        super().__init__(f"the server's queue is full ({size} jobs waiting): retry after {retry_after} s")


class Place:
    """A place held in a JobQueue (`JobQueue.hold`): filled by one job, or given back; either only once."""

    def __init__(self, queue: "JobQueue"):
        self.queue, self.open = queue, True

    def take(self) -> bool:
        """Close the place (the caller holds the queue's lock): True if it was still open."""
        was, self.open = self.open, False
        if was:
            self.queue._held -= 1
        return was

    def release(self) -> None:
        with self.queue._cv:
            self.take()


class _Stopped(Exception):
    """Raised inside the pipeline's progress callback: every job of the batch is cancelled or timed out."""


class Job:
    def __init__(self, spec: JobSpec, timeout_s: float):
        self.id = secrets.token_hex(16)   # unguessable: a result URL is the capability to read it
        self.spec = spec
        self.status = JobStatus.QUEUED
        self.created, self.started, self.finished = time.time(), None, None
        self.deadline = time.monotonic() + timeout_s
        self.step = 0
        self.images: list[Image.Image] = []
        self.error: dict | None = None
        self.cancel_requested = False
        self.encoded: dict[int, bytes] = {}   # image index -> bytes in the job's output format (filled on demand)
        self._lock = threading.Lock()
        self._history: list[dict] = []
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self.previews_sent = 0

    @property
    def done(self) -> bool:
        return self.status in FINAL

    def stopping(self) -> bool:
        return self.cancel_requested or time.monotonic() > self.deadline

    def publish(self, event: dict) -> None:
        """Send an event to every subscriber; status events are also kept for the ones who come later."""
        with self._lock:
            if event["event"] != "preview":
                same = [i for i, e in enumerate(self._history) if e["event"] == event["event"]]
                if same and event["event"] in REPLACED:
                    self._history[same[0]] = event
                else:
                    self._history.append(event)
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:   # that client's loop is gone
                pass

    def subscribe(self) -> asyncio.Queue:
        """A queue of this job's events, starting with its story so far; call from the event loop."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            for event in self._history:
                queue.put_nowait(event)
            self._subscribers.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers = [(lo, q) for lo, q in self._subscribers if q is not queue]

    def finish(self, status: JobStatus, images=None, error: dict | None = None) -> None:
        self.status, self.images, self.error = status, list(images or []), error
        self.finished = time.time()
        self.publish({"event": status.value, **({"error": error} if error else {})})

    def nbytes(self) -> int:
        """What the job's results hold in memory: its images' pixels and their encoded bytes."""
        pixels = sum(img.width * img.height * len(img.getbands()) for img in self.images)
        return pixels + sum(len(b) for b in list(self.encoded.values()))

    def preview_steps(self, total: int) -> set[int]:
        """The steps after which this job gets a preview: `previews` of them, evenly spaced."""
        k = self.spec.previews
        return {max(1, min(total, round(total * (m + 1) / (k + 1)))) for m in range(k)}


def past_keeping(done: list[tuple[float, int, str]], max_count: int, max_bytes: float, ttl_s: float) -> list[str]:
    """The finished jobs, (finished at, bytes held, id), that a server stops keeping: those older than `ttl_s`,
    and beyond `max_count` jobs or `max_bytes` counted from the newest (the queue's and the job board's rule)."""
    now, kept, out = time.time(), 0, []
    for k, (finished, nbytes, job_id) in enumerate(sorted(done, key=lambda d: d[0], reverse=True)):
        kept += nbytes
        if k >= max_count or kept > max_bytes or now - finished > ttl_s:
            out.append(job_id)
    return out


class JobQueue:
    def __init__(self, engine, config: ServeConfig, metrics=None):
        self.engine, self.config, self.metrics = engine, config, metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}
        self._running: list[Job] = []
        self._held = 0   # places held by requests being checked (see `place`)
        self._cv = threading.Condition()
        self._stopped = False
        self._batch_seconds = 5.0   # running estimate of one batch's time, for Retry-After
        self._thread = threading.Thread(target=self._work, name="limner-serve-worker", daemon=True)

    # ------------------------------------------------------------------------------------ the HTTP side

    def start(self) -> "JobQueue":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        with self._cv:
            self._stopped = True
            for job in self._running:
                job.cancel_requested = True
            self._cv.notify_all()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def check_room(self) -> None:
        """Raise QueueFull if a job submitted now would be refused: places held count as taken."""
        if len(self._queue) + self._held >= self.config.queue_size:
            raise QueueFull(max(1, math.ceil(self._batch_seconds)), self.config.queue_size)

    def hold(self) -> "Place":
        """Take a place in the queue for a request about to be checked, or raise QueueFull. The server takes it
        when the request arrives, before its body is read: a burst's requests all arrive before any body is
        parsed, so a place taken later (in the route) let every one of 200 through to be parsed, validated and
        only then refused. `submit(spec, place)` fills it; `Place.release` gives it back unfilled."""
        with self._cv:
            self.check_room()
            self._held += 1
        return Place(self)

    def submit(self, spec: JobSpec, place: "Place | None" = None) -> Job:
        """Queue a job now, into `place` if the caller holds one (`hold`), else into a free place or QueueFull."""
        with self._cv:
            if place is None:
                self.check_room()
            elif not place.take():
                raise RuntimeError("this queue place was already filled or given back")
            job = Job(spec, self.config.job_timeout_s)
            self._jobs[job.id] = job
            self._queue.append(job)
            job.publish({"event": "queued", "position": len(self._queue) - 1})
            self._cv.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def kept(self) -> list[Job]:
        """Every job this queue still answers for: waiting, running, or finished and not yet dropped."""
        with self._cv:
            return list(self._jobs.values())

    def position(self, job: Job) -> int | None:
        """0: next to run; None: not waiting."""
        with self._cv:
            return self._queue.index(job) if job in self._queue else None

    def cancel(self, job_id: str) -> Job | None:
        """Cancel that job only: a queued one leaves the queue now, a running one at the next step."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job.done:
                return job
            job.cancel_requested = True
            if job in self._queue:
                self._queue.remove(job)
                job.finish(JobStatus.CANCELLED)
                self._announce_positions()
        if job.done:
            self._count(job)
        return job

    # ----------------------------------------------------------------------------------- the worker

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._draw(batch)
            except Exception:   # a bug here must not kill the only worker: fail the batch, go on
                log.exception("batch failed")
                for job in batch:
                    if not job.done:
                        job.finish(JobStatus.FAILED, error=server_error("the server failed to draw this job"))
                        self._count(job)
            with self._cv:
                self._running = []

    def _next_batch(self) -> list[Job] | None:
        with self._cv:
            while True:
                if self._stopped:
                    return None
                self._expire()
                if not self._queue:
                    self._cv.wait(timeout=1.0)   # wake now and then to let old results go
                    continue
                # requests sent together arrive a few ms apart: wait that long for the head's batch to fill
                end = time.monotonic() + self.config.batch_window_s
                while not self._stopped and self._queue and time.monotonic() < end \
                        and sum(j.spec.shape.n for j in self._batch_of(self._queue[0])) < self.config.max_batch:
                    self._cv.wait(max(0.0, end - time.monotonic()))
                if self._queue and not self._stopped:
                    break   # (else stopped, or everything was cancelled meanwhile: look again)
            batch = self._batch_of(self._queue[0])
            for job in batch:
                self._queue.remove(job)
            for job in batch:
                job.status, job.started = JobStatus.RUNNING, time.time()
            self._running = batch
            self._announce_positions()
        for job in batch:
            job.publish({"event": "started", "batch": len(batch)})
        return batch

    def _batch_of(self, head: Job) -> list[Job]:
        """The head and the queued jobs of its shape after it, up to max_batch images (the head always)."""
        batch, images = [head], head.spec.shape.n
        for job in self._queue:
            if job is not head and job.spec.shape == head.spec.shape and images + job.spec.shape.n <= self.config.max_batch:
                batch.append(job)
                images += job.spec.shape.n
        return batch

    def _draw(self, batch: list[Job]) -> None:
        shape = batch[0].spec.shape
        total = shape.steps
        previews_at = [job.preview_steps(total) for job in batch]

        def progress(t: float, preview) -> None:
            if all(job.stopping() for job in batch):
                raise _Stopped
            step = min(total, int(round((1 - t) * total)) + 1)
            due = []
            for k, job in enumerate(batch):
                if step > job.step:
                    job.step = step
                    job.publish({"event": "progress", "step": step, "total": total})
                    if step in previews_at[k]:
                        due.append(k)
            if due:
                shots = self.engine.safe_previews(preview())
                for k in due:
                    job = batch[k]
                    for i in range(shape.n):
                        job.publish({"event": "preview", "step": step, "total": total, "image_index": i,
                                     "partial_image_index": job.previews_sent, "image": shots[k * shape.n + i]})
                    job.previews_sent += 1

        began = time.monotonic()
        images, error = None, None
        try:
            images = self.engine.generate(shape, [j.spec.prompt for j in batch], [j.spec.seed for j in batch], progress)
        except _Stopped:
            pass
        except Exception as e:   # PromptBlocked, ImageBlocked, or the model failing: the jobs fail, the worker goes on
            error = error_of(e)
            if error["type"] == "server_error":
                log.exception("generation failed")
        seconds = time.monotonic() - began
        if images is not None:
            self._batch_seconds = 0.7 * self._batch_seconds + 0.3 * seconds
        if self.metrics:
            self.metrics.batch(len(batch), seconds)
        for k, job in enumerate(batch):
            if job.cancel_requested:
                job.finish(JobStatus.CANCELLED)
            elif error is not None:
                job.finish(JobStatus.FAILED, error=error)
            elif job.stopping() or images is None:
                job.finish(JobStatus.FAILED, error=timeout_error(self.config.job_timeout_s))
            else:
                job.finish(JobStatus.SUCCEEDED, images[k * shape.n:(k + 1) * shape.n])
            self._count(job)

    def _expire(self) -> None:
        """Queued jobs past their deadline fail; finished jobs older than the result TTL, or beyond the count
        or memory limit (oldest first), are forgotten, their images with them. Called with the lock held."""
        for job in [j for j in self._queue if j.stopping()]:
            self._queue.remove(job)
            job.finish(JobStatus.FAILED, error=timeout_error(self.config.job_timeout_s))
            self._count(job)
        done = [(j.finished, j.nbytes(), j.id) for j in self._jobs.values() if j.done]
        for job_id in past_keeping(done, self.config.max_finished_jobs, self.config.max_result_mb * 2**20,
                                   self.config.result_ttl_s):
            del self._jobs[job_id]

    def _announce_positions(self) -> None:
        for i, job in enumerate(self._queue):
            job.publish({"event": "queued", "position": i})

    def _count(self, job: Job) -> None:
        if self.metrics:
            self.metrics.job_finished(job)


# ------------------------------------------------------------------------------------------ errors


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"message": message, "type": type, "param": param, "code": code}


def server_error(message: str) -> dict:
    return error_body(message, "server_error", code="server_error")


def timeout_error(seconds: float) -> dict:
    return error_body(f"the job did not finish within the server's {seconds:g} s job timeout; try fewer steps "
                      "or images, or a less busy moment", "server_error", code="timeout")


def error_of(e: Exception) -> dict:
    """The OpenAI-shaped error for an exception raised while drawing."""
    if getattr(e, "code", None) == "content_policy_violation":   # PromptBlocked, ImageBlocked
        return error_body(str(e), "invalid_request_error", "prompt", "content_policy_violation")
    if isinstance(e, ValueError):
        return error_body(str(e), "invalid_request_error")
    return server_error(f"the model failed: {type(e).__name__}: {e}")
