"""`limner serve`: the pipeline over HTTP, with the safety guard always on.

- `config`  ServeConfig: queue size, timeouts, limits, API keys (typed, with working defaults)
- `engine`  the loaded pipeline as the server uses it: request defaults, prompt check, drawing with previews
- `jobs`    the bounded job queue and the one worker thread that batches same-shape jobs
- `schema`  the OpenAI Images API request/response models, limner's job models, errors in OpenAI's shape
- `auth`    optional API keys (only their hashes are stored) and a per-key rate limit
- `metrics` Prometheus metrics
- `board`   the job board several replicas share (Ray Serve), so any replica serves any job
- `standin` a stand-in engine (no model) for tests of the server and of code built on it
- `app`     the FastAPI app: /v1/images/generations, /v1/jobs, results, health, metrics, the web page (page.html)
"""
