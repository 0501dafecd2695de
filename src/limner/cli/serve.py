"""`limner serve`: the model over HTTP (OpenAI images API, jobs with progress, a web page at /)."""
from __future__ import annotations


FLAGS = {"queue_size": "queue", "max_batch": "max_batch", "batch_window_s": "batch_window", "job_timeout_s": "job_timeout", "result_ttl_s": "result_ttl",
         "max_n": "max_n", "max_steps": "max_steps", "max_prompt_chars": "max_prompt_chars",
         "api_key_file": "api_key_file", "rate_limit_per_minute": "rate_limit"}   # ServeConfig field -> flag


def config_of(a):
    from ..serve.config import ServeConfig

    try:
        return ServeConfig(model=a.model, **{field: getattr(a, flag) for field, flag in FLAGS.items()})
    except ValueError as e:   # name the flag the user typed, not the config field
        message = str(e)
        for field, flag in FLAGS.items():
            message = message.replace(field, "--" + flag.replace("_", "-"))
        raise ValueError(message) from None


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

    app = create_app(config)   # reads the key file now: a bad one stops here, not at the first request
    print(f"limner serve: {a.model} on http://{a.host}:{a.port}/ (OpenAI API at /v1, docs at /openapi.json, "
          f"ready when /readyz answers 200)", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)
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
    s.add_argument("--api-key-file", default=None,
                   help="require `Authorization: Bearer KEY` for /v1; the file holds only key digests [no keys]")
    s.add_argument("--rate-limit", type=float, default=60, help="requests per minute per API key [60]")
    s.add_argument("--new-key", metavar="FILE", default=None,
                   help="make an API key, append its digest to FILE, print the key and exit")
    s.add_argument("--key-label", default="", help="with --new-key: a label written beside the digest")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.set_defaults(fn=cmd_serve)
