"""`limner serve --ray`: the same FastAPI app (`app.create_app`) as a Ray Serve deployment, N replicas behind
one address, with Ray's own routing, backpressure and autoscaling.

Each replica is a whole limner server (model, queue, worker, batching); Ray's proxy spreads requests over
them. Limner's queue settings become Ray's (`deployment_options`): a replica is sent at most what its queue
and one batch hold; past that, requests wait in Ray's router up to `queue_size`, then get 429 + Retry-After,
as a single server answers. Every response names its replica in `x-limner-replica`.

A job is drawn by the replica that queued it, but its later requests (`/v1/jobs/{id}`, its events, cancel,
`url` results, the web page) go wherever Ray's router sends them: Ray routes on load, not on the job id in the
path. So the replicas share a job board (`board.JobBoard`), a deployment of its own in the same application
(one replica, no CPU reserved): each replica posts its jobs' views, events and images there and answers for
the others' jobs from it; a cancel that reaches another replica waits there until the owner takes it. If the
board's replica dies Ray starts a new, empty one: jobs already on it are then known to their own replica only.

`serve run configs/serve/ray.yaml` runs `build` with the YAML's `args`; `limner serve --ray` calls `run`.
"""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path

try:
    from ray import serve
except ImportError as e:   # ray[data] alone lacks Serve's pieces (grpc, aiohttp...)
    raise ImportError(f"limner serve --ray needs Ray Serve: pip install 'limner[ray]' ({e})") from e

from .app import create_app
from .board import JobBoard
from .config import ServeConfig

REPLICA_HEADER = "x-limner-replica"
APP_NAME = "limner"


@dataclass
class RayOptions:
    """How many replicas and what each one reserves; every field has a working default (2 CPU replicas)."""
    replicas: int = 2                  # replicas at start (and always, unless max_replicas is above it)
    max_replicas: int | None = None    # above `replicas`: Ray autoscales between the two on queue length
    replica_cpus: float = 1.0          # CPUs Ray reserves per replica (fractions share a core)
    replica_gpus: float = 0.0          # GPUs per replica: refused above 0 until the engine takes a device
    retry_after_s: float = 1.0         # Retry-After on Ray's own 429, when every replica and its queue is full

    def __post_init__(self):
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {self.replicas}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be at least replicas ({self.replicas})")
        if self.replica_cpus <= 0 and self.replica_gpus <= 0:
            raise ValueError("a replica must reserve some replica_cpus or replica_gpus, or Ray may pile them all "
                             "onto one core")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ValueError(f"replica_cpus and replica_gpus cannot be negative "
                             f"(got {self.replica_cpus}, {self.replica_gpus})")
        if self.replica_gpus > 0:   # reserving a GPU the model would not use is worse than refusing
            raise ValueError("replica_gpus: limner serve still draws on the CPU (serve/engine.py loads the pipeline "
                             "without a device), so a replica cannot use a GPU yet; leave it at 0")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be 0 or more, not {self.retry_after_s}")


def deployment_options(config: ServeConfig, options: RayOptions) -> dict:
    """Ray Serve deployment options from limner's settings.

    - `max_ongoing_requests` = queue_size + max_batch: what one limner server holds (its queue and the batch
      it draws), so Ray never pushes a replica into its own queue-full 429 while another has room;
    - `max_queued_requests` = queue_size: requests that wait in Ray's router when every replica is full,
      then `backpressure_config` answers 429 with Retry-After (Ray's default would be a 503);
    - autoscaling (when max_replicas > replicas) aims at max_batch ongoing requests per replica: more than a
      batch waiting means images are queueing, so add a replica.
    """
    deployment = {
        "max_ongoing_requests": config.queue_size + config.max_batch,
        "max_queued_requests": config.queue_size,
        "backpressure_config": {"status_code": 429, "retry_after_s": options.retry_after_s},
        "ray_actor_options": {"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
        # a replica whose model is still loading is not yet started (see LimnerReplica), so loading time
        # counts against Ray's start-up patience, not its health checks
        "health_check_period_s": 5,
    }
    if options.max_replicas is not None and options.max_replicas > options.replicas:
        deployment["autoscaling_config"] = {"min_replicas": options.replicas, "initial_replicas": options.replicas,
                                            "max_replicas": options.max_replicas,
                                            "target_ongoing_requests": config.max_batch}
    else:
        deployment["num_replicas"] = options.replicas
    return deployment


@serve.deployment(name="LimnerJobBoard", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=10_000)   # long polls (cancels, followed events) hold a request each
class JobBoardDeployment(JobBoard):
    """The replicas' shared job board: a plain `JobBoard` whose coroutines the replicas call by handle."""


class BoardByHandle:
    """The board's coroutine methods, called through a Ray Serve DeploymentHandle."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name: str):
        method = getattr(self.handle, name)

        async def call(*args):
            return await method.remote(*args)

        return call


@serve.deployment(name="LimnerServer")
@serve.ingress()   # the app is built in each replica (`__serve_build_asgi_app__`), not pickled from the driver
class LimnerReplica:
    """One replica: limner's own app, answering only once its model is loaded, naming itself in each response,
    sharing its jobs with the other replicas through the board."""

    def __init__(self, config: ServeConfig, board=None):
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.config = config
        self.board = board and BoardByHandle(board)
        self.state = None

    def __serve_build_asgi_app__(self):
        app = create_app(self.config, board=self.board, replica=self.replica)
        self.state = state = app.state.limner
        app.add_middleware(NameReplica, replica=self.replica)
        loading = app.router.lifespan_context

        @asynccontextmanager
        async def until_loaded(a):
            # limner loads its model in a thread so a lone server answers /healthz at once; under Ray a replica
            # should start only when it can draw, so the router never sends it a request it must refuse
            async with loading(a) as value:
                while state.queue is None and state.load_error is None:
                    await asyncio.sleep(0.1)
                if state.load_error:
                    raise RuntimeError(state.load_error)
                yield value

        app.router.lifespan_context = until_loaded
        return app

    def check_health(self) -> None:
        """Ray replaces a replica whose worker thread has died (its queue would never drain)."""
        if self.state is not None and self.state.queue is not None and not self.state.queue.alive:
            raise RuntimeError(f"replica {self.replica}: limner's worker thread has stopped")


class NameReplica:
    """Adds `x-limner-replica: ID` to every response (plain ASGI, as app.CountRequests, for the same reason)."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


def split_settings(args: dict) -> tuple[ServeConfig, RayOptions]:
    """A flat mapping of settings (a `serve run` YAML's `args`) as limner's ServeConfig and RayOptions."""
    limner_keys = {f.name for f in fields(ServeConfig)}
    ray_keys = {f.name for f in fields(RayOptions)}
    unknown = sorted(set(args) - limner_keys - ray_keys)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}: limner's are {', '.join(sorted(limner_keys))}; "
                         f"Ray's are {', '.join(sorted(ray_keys))}")
    return (ServeConfig(**{k: v for k, v in args.items() if k in limner_keys}),
            RayOptions(**{k: v for k, v in args.items() if k in ray_keys}))


def application(config: ServeConfig, options: RayOptions):
    """The bound Ray Serve application; a missing model is refused here, before any replica starts."""
    from ..models.folder import SHIPPED, resolve

    path = resolve(config.model)
    # replicas are other processes with their own working folder: give them absolute paths
    config = replace(config, model=config.model if config.model in SHIPPED else str(path.resolve()),
                     api_key_file=config.api_key_file and str(Path(config.api_key_file).resolve()))
    board = JobBoardDeployment.bind(ttl_s=config.result_ttl_s, max_finished=config.max_finished_jobs,
                                    max_mb=config.max_result_mb)
    return LimnerReplica.options(**deployment_options(config, options)).bind(config, board)


def build(args: dict):
    """`serve run limner.serve.ray_app:build key=value ...` or a config file's `import_path` with `args`."""
    return application(*split_settings(dict(args)))


def run(config: ServeConfig, options: RayOptions, host: str = "127.0.0.1", port: int = 8000,
        log_level: str = "warning", on_ready=None) -> None:
    """Start a local Ray cluster, deploy, serve until SIGINT/SIGTERM, then tear the cluster down (a killed
    driver would leave Ray's processes behind)."""
    import logging

    import ray

    app = application(config, options)
    stop = threading.Event()
    level = getattr(logging, log_level.upper())
    ray.init(include_dashboard=False, logging_level=level, log_to_driver=level <= logging.INFO)
    for sig in (signal.SIGINT, signal.SIGTERM):   # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")   # returns once every replica has loaded its model
        if on_ready:
            on_ready()
        stop.wait()
    finally:
        started = descendants(os.getpid())
        serve.shutdown()
        ray.shutdown()
        sweep(started)


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` -> its command line (Linux /proc; elsewhere none are found)."""
    parent, cmd = {}, {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found.update({p: cmd[p] for p in frontier})
    return found


def sweep(started: dict[int, str], grace_s: float = 10) -> None:
    """Kill what this driver started and Ray's shutdown left running: its agents sometimes outlive the raylet,
    orphaned, on a busy machine. Each pid is checked to be the same program before it is killed."""
    end = time.monotonic() + grace_s
    while True:
        left = {p for p, c in started.items() if alive(p, c)}
        if not left or time.monotonic() > end:
            break
        time.sleep(0.5)
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def alive(pid: int, cmdline: str) -> bool:
    """Still running (not a zombie) and still the program it was."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        now = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (OSError, IndexError):
        return False
    return state != "Z" and now == cmdline

