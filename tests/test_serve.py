"""`limner serve` run for real: the shipped model in a subprocess, driven by the official `openai` client,
an SSE client (httpx-sse) for job progress, plain HTTP for health, metrics and errors, and headless
Chromium (Playwright) for the web page."""
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limner.serve.process import ServerProcess

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow   # every test here talks to a server process that loads a model

CLI = [sys.executable, "-m", "limner.cli"]
STEPS = {"steps": 2}   # small: the server's behaviour is under test, not the pictures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with ServerProcess("--queue", "2", "--max-batch", "4", "--result-ttl", "120", log=log) as running:
        yield running.url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def png_of(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def metric(url: str, name: str, **labels) -> float:
    """One sample of a Prometheus metric from /metrics (0 when it has none yet)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{want}}}" if want else name
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------------- the OpenAI client


def test_openai_client_gets_b64_images_with_their_seeds_and_parameters(client):
    r = client.images.generate(prompt="two red circles", n=2, extra_body={"seed": 5, **STEPS})
    assert [d.seed for d in r.data] == [5, 6] and r.size == "64x64" and r.output_format == "png"
    assert r.usage.output_tokens > 0 and r.usage.input_tokens == r.usage.input_tokens_details.text_tokens > 0
    images = [png_of(d.b64_json) for d in r.data]
    params = [json.loads(img.text["parameters"]) for img in images]
    assert [p["seed"] for p in params] == [5, 6] and params[0]["prompt"] == "two red circles"
    assert params[0]["steps"] == 2 and params[0]["watermark"].startswith("limner:")   # the guard ran
    again = client.images.generate(prompt="two red circles", extra_body={"seed": 6, **STEPS})
    # the same picture: drawn alone rather than second of two, the denoiser's batched matmuls differ in the
    # last float bits (~1e-5 in the latents), which can move a few pixels by one grey level, never more
    alone, second = (np.asarray(png_of(again.data[0].b64_json)).astype(int), np.asarray(images[1]).astype(int))
    assert np.abs(alone - second).max() <= 1 and (alone != second).mean() < 1e-3


def test_openai_client_gets_urls_that_serve_the_image(client):
    r = client.images.generate(prompt="a blue square", response_format="url", output_format="webp",
                               output_compression=90, extra_body={"seed": 3, **STEPS})
    item = r.data[0]
    assert item.url.endswith(".webp") and item.expires_at > time.time() + 60
    got = httpx.get(item.url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
    img = Image.open(io.BytesIO(got.content))
    assert img.size == (64, 64) and json.loads(img.getexif()[0x010E])["seed"] == 3
    assert httpx.get(item.url.replace(".webp", ".png")).json()["error"]["code"] == "image_not_found"


def test_openai_client_streams_partial_images_then_the_image(client):
    stream = client.images.generate(prompt="a green triangle", stream=True, partial_images=2,
                                    extra_body={"seed": 1, "steps": 4})
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert all(png_of(e.b64_json).size == (64, 64) for e in events)
    done = events[-1]
    assert done.usage.total_tokens > 0 and done.size == "64x64"
    assert json.loads(png_of(done.b64_json).text["parameters"])["seed"] == 1


def test_blocked_prompt_is_a_content_policy_violation(client, server):
    before = metric(server, "limner_refusals_total", reason="content_policy")
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="a naked woman", extra_body=STEPS)
    assert e.value.code == "content_policy_violation" and e.value.status_code == 400
    assert e.value.body["param"] == "prompt" and "content policy" in e.value.body["message"]
    assert metric(server, "limner_refusals_total", reason="content_policy") == before + 1


@pytest.mark.parametrize("extra, param, says", [
    ({"background": "transparent"}, "background", "draws opaque images"),
    ({"size": "512x512"}, "size", "draws 64x64, 256x256 or 1024x1024 images"),
    ({"n": 50}, "n", "at most 10 images"),
    ({"moderation": "low"}, "moderation", "always applies its content policy"),
    ({"output_compression": 50}, "output_compression", "applies to jpeg and webp"),
    ({"model": "dall-e-3"}, "model", "serves 'shapes-default'"),
    ({"extra_body": {"steps": 5000}}, "steps", "at most 100"),
])
def test_what_the_model_cannot_honour_is_a_clear_400(client, extra, param, says):
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
        client.images.generate(prompt="two red circles", **extra)
    assert e.value.body["param"] == param and says in e.value.body["message"], e.value.body


def test_raw_http_errors_keep_openai_shape(server):
    r = httpx.post(server + "/v1/images/generations", json={"prompt": "x", "seed": 1, "colour": "red"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Unrecognized request argument supplied: colour"
    r = httpx.post(server + "/v1/images/generations", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server + "/v1/images/generations", json={"prompt": "   "})
    assert r.status_code == 400 and "prompt is empty" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/images/generations", json={"prompt": "x" * 4001})
    assert r.json()["error"]["code"] == "string_above_max_length"


# --------------------------------------------------------------------------- the queue and the jobs


def job(server, **body):
    r = httpx.post(server + "/v1/jobs", json={"prompt": "two red circles", "seed": 0, **body})
    assert r.status_code == 202, r.text
    return r.json()


def wait_status(server, job_id, *statuses, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = httpx.get(f"{server}/v1/jobs/{job_id}").json()
        if got["status"] in statuses:
            return got
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {got['status']}, not {statuses}")


def test_full_queue_answers_429_at_once_and_the_client_retries(server, client):
    busy = job(server, steps=100)   # the worker's one batch
    wait_status(server, busy["id"], "running")
    waiting = [job(server, steps=3 + i) for i in range(2)]   # --queue 2: now full
    began = time.monotonic()
    with pytest.raises(openai.RateLimitError) as e:
        client.images.generate(prompt="two red circles", extra_body=STEPS)
    assert time.monotonic() - began < 1.0
    assert e.value.code == "queue_full" and int(e.value.response.headers["retry-after"]) >= 1
    # DELETE cancels that job and no other
    httpx.delete(f"{server}/v1/jobs/{waiting[0]['id']}")
    assert httpx.get(f"{server}/v1/jobs/{waiting[0]['id']}").json()["status"] == "cancelled"
    assert httpx.get(f"{server}/v1/jobs/{busy['id']}").json()["status"] == "running"
    assert httpx.get(f"{server}/v1/jobs/{waiting[1]['id']}").json()["queue_position"] == 0
    job(server, steps=2)   # the freed place is taken again: full
    # a client with retries waits as Retry-After says and gets its image once the queue moves
    patient = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=4, timeout=120)
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=patient.images.generate(
        prompt="a blue square", extra_body={"seed": 9, **STEPS})))
    thread.start()
    time.sleep(0.5)
    refused = metric(server, "limner_refusals_total", reason="queue_full")
    assert refused >= 2
    cancelled = httpx.delete(f"{server}/v1/jobs/{busy['id']}").json()
    assert cancelled["id"] == busy["id"]
    assert wait_status(server, busy["id"], "cancelled")["progress"]["step"] < 100
    thread.join(120)
    assert result["r"].data[0].seed == 9
    assert httpx.delete(f"{server}/v1/jobs/{busy['id']}").json()["error"]["code"] == "job_finished"


def test_a_client_that_hangs_up_cancels_its_request(server):
    before = metric(server, "limner_jobs_total", status="cancelled")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server + "/v1/images/generations", json={"prompt": "two red circles", "steps": 100}, timeout=1.0)
    end = time.monotonic() + 10
    while metric(server, "limner_jobs_total", status="cancelled") == before and time.monotonic() < end:
        time.sleep(0.1)
    assert metric(server, "limner_jobs_total", status="cancelled") == before + 1
    assert httpx.get(server + "/readyz").json()["queue_depth"] == 0


def test_job_progress_and_previews_over_sse(server):
    from httpx_sse import connect_sse

    created = job(server, steps=4, previews=2, n=2, negative_prompt="blurry")
    assert created["status"] in ("queued", "running") and created["seed"] == 0
    events = []
    with httpx.Client(timeout=120) as c, connect_sse(c, "GET", f"{server}/v1/jobs/{created['id']}/events") as es:
        for sse in es.iter_sse():
            events.append((sse.event, sse.json()))
    names = [name for name, _ in events]
    assert names[-1] == "succeeded" and "started" in names
    assert [d["step"] for n, d in events if n == "progress"] == [1, 2, 3, 4]
    previews = [d for n, d in events if n == "preview"]
    assert [(d["step"], d["image_index"]) for d in previews] == [(1, 0), (1, 1), (3, 0), (3, 1)]
    assert png_of(previews[0]["b64_json"]).size == (64, 64)
    final = events[-1][1]
    assert final == httpx.get(f"{server}/v1/jobs/{created['id']}").json()
    assert [d["seed"] for d in final["result"]["data"]] == [0, 1]
    assert final["result"]["data"][0]["parameters"]["negative_prompt"] == "blurry"
    got = httpx.get(final["result"]["data"][1]["url"])
    assert json.loads(Image.open(io.BytesIO(got.content)).text["parameters"])["seed"] == 1
    assert httpx.get(f"{server}/v1/jobs/nope").status_code == 404


def test_health_metrics_and_openapi(server):
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server + "/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "shapes-default" and ready["queue_size"] == 2
    text = httpx.get(server + "/metrics").text
    for name in ("limner_queue_depth", "limner_job_latency_seconds_bucket", "limner_refusals_total",
                 "limner_batch_seconds_count"):
        assert name in text
    paths = httpx.get(server + "/openapi.json").json()["paths"]
    assert {"/v1/images/generations", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events"} <= set(paths)
    models = httpx.get(server + "/v1/models").json()["data"]
    assert models[0]["id"] == "shapes-default" and "64x64" in models[0]["sizes"]


# ------------------------------------------------------------------------------------------ API keys


def test_api_keys_and_per_key_rate_limit(tmp_path):
    keys = tmp_path / "keys.txt"
    made = subprocess.run(CLI + ["serve", "--new-key", str(keys), "--key-label", "tests"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert made.startswith("lk-") and made not in keys.read_text()
    with ServerProcess("--api-key-file", str(keys), "--rate-limit", "2", log=tmp_path / "log") as running:
        url = running.url
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=url + "/v1", api_key="lk-wrong", max_retries=0).images.generate(prompt="a")
        assert e.value.code == "invalid_api_key"
        ok = openai.OpenAI(base_url=url + "/v1", api_key=made, max_retries=0, timeout=120)
        assert ok.images.generate(prompt="a red circle", extra_body=STEPS).data[0].b64_json
        assert ok.models.list().data[0].id == "shapes-default"
        with pytest.raises(openai.RateLimitError) as e:
            ok.models.list()
        assert e.value.code == "rate_limit_exceeded" and int(e.value.response.headers["retry-after"]) >= 20
        assert httpx.get(url + "/healthz").status_code == 200   # health stays open


# --------------------------------------------------------------------------------- the web page


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


# where system deps are required (CI) a missing browser fails the launch instead of skipping
@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("LIMNER_REQUIRE_SYSTEM_DEPS"),
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_generates_shows_progress_reuses_a_seed_and_cancels(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "data:")) else None)
        page.goto(server + "/")
        expect(page.locator("#model")).to_have_text("shapes-default")
        page.fill("#prompt", "three red circles")
        page.click("#more summary")
        page.fill("#steps", "24")   # long enough to be seen drawing: at 6 steps a loaded machine sent every
        page.fill("#seed", "42")    # progress event in one burst with the result, and "step" was never shown
        page.click("#go")
        expect(page.locator("#status")).to_contain_text("step", timeout=60_000)
        expect(page.locator("#previews img.preview").first).to_be_visible(timeout=60_000)
        card = page.locator("#gallery .card").first
        expect(card).to_be_visible(timeout=60_000)
        expect(card.locator("dd.seed")).to_have_text("42")
        expect(card.locator("dd.prompt")).to_have_text("three red circles")
        assert card.locator("img").evaluate("img => img.complete && img.naturalWidth") == 64
        assert card.locator("a.download").get_attribute("download") == "limner-42.png"
        # reuse the seed: the form is filled from the card
        page.fill("#seed", "")
        page.fill("#prompt", "something else")
        card.locator("button.reuse").click()
        assert page.input_value("#seed") == "42" and page.input_value("#prompt") == "three red circles"
        # cancel a long job
        page.fill("#steps", "100")
        page.click("#go")
        expect(page.locator("#status")).to_contain_text("step", timeout=60_000)
        page.click("#cancel")
        expect(page.locator("#current")).to_have_attribute("data-status", "cancelled", timeout=60_000)
        job_id = page.locator("#current").get_attribute("data-job")
        assert httpx.get(f"{server}/v1/jobs/{job_id}").json()["status"] == "cancelled"
        assert page.locator("#gallery .card").count() == 1
        assert outside == []   # nothing from a CDN or anywhere else
        browser.close()
