"""`limner serve`: the model over HTTP (OpenAI images API, jobs with progress, a web page at /)."""
from __future__ import annotations

import re

FLAGS = {"queue_size": "queue", "max_batch": "max_batch", "batch_window_s": "batch_window", "job_timeout_s": "job_timeout", "result_ttl_s": "result_ttl",
         "max_n": "max_n", "max_steps": "max_steps", "max_prompt_chars": "max_prompt_chars", "max_side": "max_side",
         "max_result_mb": "max_result_mb",
         "api_key_file": "api_key_file", "rate_limit_per_minute": "rate_limit"}   # ServeConfig field -> flag
RAY_FLAGS = {name: name for name in ("replicas", "max_replicas", "replica_cpus", "replica_gpus")}   # RayOptions


def named_as_flags(message: str, flags: dict) -> str:
    """A settings error as the user typed it: each field name becomes its flag, in one pass (so replicas
    inside max_replicas is not renamed twice)."""
    fields = "|".join(sorted(flags, key=len, reverse=True))
    return re.sub(rf"\b({fields})\b", lambda m: "--" + flags[m.group(1)].replace("_", "-"), message)


def config_of(a):
    from ..serve.config import ServeConfig

    try:
        return ServeConfig(model=a.model, **{field: getattr(a, flag) for field, flag in FLAGS.items()})
    except ValueError as e:   # name the flag the user typed, not the config field
        raise ValueError(named_as_flags(str(e), FLAGS)) from None


def cmd_serve(a) -> int:
    if a.new_key:
        from ..serve.auth import new_key

        print(new_key(a.new_key, a.key_label))
        return 0
    config = config_of(a)   # refuses bad numbers before anything loads
    from ..models.folder import resolve

    resolve(a.model)   # a missing model is refused now, not after the server has started
    import uvicorn

    from ..serve.app import create_app

    if a.ray:
        return serve_on_ray(a, config)
    app = create_app(config)   # reads the key file now: a bad one stops here, not at the first request
    print(f"limner serve: {a.model} on http://{a.host}:{a.port}/ (OpenAI API at /v1, docs at /openapi.json, "
          f"ready when /readyz answers 200)", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)
    return 0


def serve_on_ray(a, config) -> int:
    try:
        from ..serve.ray_app import RayOptions, run
    except ImportError as e:   # one line saying what to install, not a traceback
        raise ValueError(str(e)) from None
    try:
        options = RayOptions(**{field: getattr(a, flag) for field, flag in RAY_FLAGS.items()})
    except ValueError as e:
        raise ValueError(named_as_flags(str(e), RAY_FLAGS)) from None
    run(config, options, a.host, a.port, a.log_level, on_ready=lambda: print(
        f"limner serve: {a.model} on Ray Serve, {a.replicas} replica(s), at http://{a.host}:{a.port}/", flush=True))
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve a model over HTTP: the OpenAI images API, jobs with progress, a web page")
    s.add_argument("--model", default="shapes-default", help="a shipped name or a limner model folder [shapes-default]")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface) [127.0.0.1]")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--queue", type=int, default=16, help="jobs that may wait; one more gets 429 at once [16]")
    s.add_argument("--max-batch", type=int, default=8, help="images drawn together from same-shape jobs (1: off) [8]")
    s.add_argument("--batch-window", type=float, default=0.02,
                   help="seconds the worker waits for same-shape jobs to fill a batch [0.02]")
    s.add_argument("--job-timeout", type=float, default=300, help="seconds from submission before a job fails [300]")
    s.add_argument("--result-ttl", type=float, default=3600, help="seconds results stay at their URLs [3600]")
    s.add_argument("--max-n", type=int, default=10, help="images per request [10]")
    s.add_argument("--max-steps", type=int, default=100, help="sampling steps per request [100]")
    s.add_argument("--max-prompt-chars", type=int, default=4000)
    s.add_argument("--max-side", type=int, default=2048, help="largest image side a request may ask for (size x upscale) [2048]")
    s.add_argument("--max-result-mb", type=float, default=512, help="megabytes of finished results kept, oldest dropped first [512]")
    s.add_argument("--api-key-file", default=None,
                   help="require `Authorization: Bearer KEY` for /v1; the file holds only key digests [no keys]")
    s.add_argument("--rate-limit", type=float, default=60, help="requests per minute per API key [60]")
    s.add_argument("--new-key", metavar="FILE", default=None,
                   help="make an API key, append its digest to FILE, print the key and exit")
    s.add_argument("--key-label", default="", help="with --new-key: a label written beside the digest")
    s.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: --replicas copies of the server behind one address (pip install "
                        "'limner[ray]')")
    s.add_argument("--replicas", type=int, default=2, help="with --ray: replicas to start [2]")
    s.add_argument("--max-replicas", type=int, default=None,
                   help="with --ray: let Ray autoscale up to this many replicas on queue length [off]")
    s.add_argument("--replica-cpus", type=float, default=1.0, help="with --ray: CPUs each replica reserves [1]")
    s.add_argument("--replica-gpus", type=float, default=0.0, help="with --ray: GPUs each replica reserves (refused above 0 until replicas draw on a GPU) [0]")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.set_defaults(fn=cmd_serve)
