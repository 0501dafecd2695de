"""The server's settings: every field has a working default, `limner serve` flags override them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    model: str = "shapes-default"      # a shipped name or a limner model folder
    queue_size: int = 16               # jobs waiting to run; one more gets 429 + Retry-After at once
    max_batch: int = 8                 # images drawn in one pipeline call from same-shape jobs (1: no batching)
    batch_window_s: float = 0.02       # how long the worker waits for a batch to fill (2% of a 1 s request)
    job_timeout_s: float = 300.0       # from submission: a job not finished by then fails with code "timeout"
    result_ttl_s: float = 3600.0       # finished jobs and their image URLs are kept this long
    max_finished_jobs: int = 1000      # ... and at most this many (oldest go first), so memory stays bounded
    max_result_mb: float = 512         # ... holding at most this much (pixels and encoded bytes; 1024 px: ~5 MB each)
    max_prompt_chars: int = 4000       # OpenAI's dall-e-3 limit
    max_n: int = 10                    # images per request (OpenAI's limit)
    max_steps: int = 100
    max_side: int = 2048               # largest image side a request may ask for (size x upscale)
    api_key_file: str | None = None    # one sha256 hex digest per line; None: no keys asked for
    rate_limit_per_minute: float = 60  # requests per API key (a burst of this many, refilled evenly)

    def __post_init__(self):
        for name in ("queue_size", "max_batch", "max_finished_jobs", "max_prompt_chars", "max_n", "max_steps", "max_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.batch_window_s < 0:
            raise ValueError(f"batch_window_s must be 0 or more, not {self.batch_window_s}")
        for name in ("job_timeout_s", "result_ttl_s", "rate_limit_per_minute", "max_result_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0, not {getattr(self, name)}")
