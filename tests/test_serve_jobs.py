"""The server's job queue on its own, with a stand-in engine whose steps the test paces: refusal at once
when full, cancelling one job and no other, per-job timeouts, batching of same-shape jobs, previews,
results that expire; and the API key file and its rate limit."""
import asyncio
import threading
import time

import pytest

from limner.serve.auth import ApiKeys, digest, new_key, read_digests
from limner.serve.config import ServeConfig
from limner.serve.engine import Shape
from limner.serve.jobs import JobQueue, JobSpec, JobStatus, QueueFull
from limner.serve.standin import StandInEngine


def spec(prompt="a", steps=4, n=1, previews=0, negative=""):
    return JobSpec(prompt=prompt, seed=1, shape=Shape(negative, steps, 1.0, n), previews=previews)


def started(job, timeout=10):
    """The job once the worker has started it (the engine held, so it stays running)."""
    end = time.monotonic() + timeout
    while job.status != JobStatus.RUNNING and time.monotonic() < end:
        time.sleep(0.005)
    assert job.status == JobStatus.RUNNING, f"job still {job.status}"
    return job


def wait(job, timeout=10):
    end = time.monotonic() + timeout
    while not job.done and time.monotonic() < end:
        time.sleep(0.005)
    assert job.done, f"job still {job.status}"
    return job


@pytest.fixture
def queue_of():
    made = []

    def make(engine=None, **config):
        q = JobQueue(engine or StandInEngine(step_s=0.01, resolution=8), ServeConfig(**config)).start()
        made.append(q)
        return q

    yield make
    for q in made:
        q.engine.hold.set()
        q.stop(5)


def test_full_queue_refuses_at_once_and_serves_again_after(queue_of):
    q = queue_of(queue_size=2)
    q.engine.hold.clear()
    running = q.submit(spec("running"))
    started(running)
    waiting = [q.submit(spec(f"w{i}", steps=i + 1)) for i in range(2)]
    began = time.monotonic()
    with pytest.raises(QueueFull) as full:
        q.submit(spec("one too many"))
    assert time.monotonic() - began < 0.1 and full.value.retry_after >= 1
    assert "queue is full (2 jobs waiting)" in str(full.value)
    q.engine.hold.set()
    for job in [running, *waiting]:
        assert wait(job).status == JobStatus.SUCCEEDED
    assert wait(q.submit(spec("after"))).status == JobStatus.SUCCEEDED


def test_a_held_place_counts_as_taken_until_filled_or_given_back(queue_of):
    q = queue_of(queue_size=2)
    q.engine.hold.clear()
    first, second = q.hold(), q.hold()
    with pytest.raises(QueueFull):
        q.hold()
    with pytest.raises(QueueFull):
        q.submit(spec("unheld"))
    job = q.submit(spec("held"), first)
    with pytest.raises(RuntimeError, match="already filled"):
        q.submit(spec("twice"), first)   # one place, one job
    first.release()                      # filled: giving it back changes nothing
    with pytest.raises(QueueFull):
        q.hold()
    second.release()
    second.release()                     # given back once only
    q.hold().release()                   # one place free again (the job's is taken until it runs)
    assert q.get(job.id) is job and len(q._queue) + q._held <= 2
    q.engine.hold.set()


def test_cancel_stops_that_job_only(queue_of):
    q = queue_of(max_batch=1)
    q.engine.hold.clear()
    running, queued, other = q.submit(spec("r", steps=50)), q.submit(spec("q")), q.submit(spec("o"))
    started(running)
    assert q.position(queued) == 0 and q.position(other) == 1
    q.cancel(queued.id)
    assert queued.status == JobStatus.CANCELLED and q.position(other) == 0
    q.cancel(running.id)
    q.engine.hold.set()
    assert wait(running).status == JobStatus.CANCELLED and running.step < 50   # stopped at its next step
    assert wait(other).status == JobStatus.SUCCEEDED and len(other.images) == 1


def test_a_cancelled_job_in_a_batch_leaves_the_others_their_images(queue_of):
    q = queue_of(max_batch=8)
    q.engine.hold.clear()
    blocker = q.submit(spec("blocker", steps=1))
    started(blocker)
    a, b = q.submit(spec("a", n=2)), q.submit(spec("b", n=2))
    q.engine.hold.set()
    started(a)
    q.cancel(a.id)
    assert wait(a).status == JobStatus.CANCELLED
    assert wait(b).status == JobStatus.SUCCEEDED and [i.info["parameters"]["prompt"] for i in b.images] == ["b", "b"]
    assert ["a", "b"] in q.engine.batches


def test_same_shape_jobs_are_drawn_together_up_to_max_batch(queue_of):
    q = queue_of(max_batch=4)
    q.engine.hold.clear()
    blocker = q.submit(spec("blocker", steps=1))
    started(blocker)
    same = [q.submit(spec(f"s{i}")) for i in range(5)]
    odd = q.submit(spec("odd", negative="blurry"))
    q.engine.hold.set()
    for job in [*same, odd]:
        wait(job)
    assert q.engine.batches[1:] == [["s0", "s1", "s2", "s3"], ["s4"], ["odd"]]
    assert [j.images[0].info["parameters"]["prompt"] for j in same] == ["s0", "s1", "s2", "s3", "s4"]


def test_jobs_sent_together_wait_the_batch_window_for_each_other(queue_of):
    waits = queue_of(batch_window_s=0.3)
    first = waits.submit(spec("first"))
    time.sleep(0.02)
    second = waits.submit(spec("second"))
    wait(first), wait(second)
    assert waits.engine.batches == [["first", "second"]]
    eager = queue_of(batch_window_s=0)
    first = eager.submit(spec("first"))
    time.sleep(0.02)
    wait(first), wait(eager.submit(spec("second")))
    assert eager.engine.batches == [["first"], ["second"]]


def test_jobs_past_their_deadline_fail_with_timeout(queue_of):
    q = queue_of(job_timeout_s=0.3, max_batch=1)
    q.engine.step_s = 0.05
    slow, late = q.submit(spec("slow", steps=100)), q.submit(spec("late"))
    assert wait(slow).status == JobStatus.FAILED and slow.error["code"] == "timeout"
    assert wait(late).status == JobStatus.FAILED and late.error["code"] == "timeout"
    assert "0.3 s job timeout" in slow.error["message"]
    assert slow.step < 100


def test_previews_are_evenly_spaced_and_reach_subscribers(queue_of):
    q = queue_of()
    q.engine.hold.clear()
    job = q.submit(spec(steps=8, n=2, previews=3))

    async def follow():
        events, seen = job.subscribe(), []
        q.engine.hold.set()
        while not seen or seen[-1]["event"] not in ("succeeded", "failed", "cancelled"):
            seen.append(await asyncio.wait_for(events.get(), 10))
        return seen

    seen = asyncio.run(follow())
    previews = [e for e in seen if e["event"] == "preview"]
    assert [(e["step"], e["image_index"], e["partial_image_index"]) for e in previews] == [
        (2, 0, 0), (2, 1, 0), (4, 0, 1), (4, 1, 1), (6, 0, 2), (6, 1, 2)]
    assert [e["step"] for e in seen if e["event"] == "progress"] == list(range(1, 9))
    assert seen[0]["event"] == "queued" and seen[-1]["event"] == "succeeded"


def test_finished_jobs_go_after_their_time_to_live(queue_of):
    q = queue_of(result_ttl_s=0.2)
    job = wait(q.submit(spec()))
    assert q.get(job.id) is job
    time.sleep(1.5)   # the worker looks at least once a second
    assert q.get(job.id) is None


def test_finished_jobs_are_kept_within_a_memory_budget(queue_of):
    """Counted jobs alone do not bound memory once images can be 1024 px: results past max_result_mb go,
    oldest first."""
    q = queue_of(StandInEngine(resolution=512), max_result_mb=2)   # 0.75 MB of pixels an image: two fit
    jobs = [wait(q.submit(spec(f"p{i}", steps=1))) for i in range(4)]
    time.sleep(1.5)   # the worker looks at least once a second
    assert [q.get(j.id) is not None for j in jobs] == [False, False, True, True]
    assert sum(j.nbytes() for j in jobs[2:]) <= 2 * 2**20


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="queue_size must be at least 1, not 0"):
        ServeConfig(queue_size=0)
    with pytest.raises(ValueError, match="job_timeout_s must be above 0"):
        ServeConfig(job_timeout_s=0)


def test_key_file_keeps_digests_only_and_each_key_has_its_own_budget(tmp_path, monkeypatch):
    path = tmp_path / "keys.txt"
    first, second = new_key(path, "alice"), new_key(path, "bob")
    text = path.read_text()
    assert first not in text and second not in text and digest(first) in text and "alice" in text
    assert read_digests(path) == {digest(first), digest(second)}
    keys = ApiKeys(path, per_minute=2)
    assert keys.identify(f"Bearer {first}") == digest(first)
    assert keys.identify("Bearer lk-wrong") is None and keys.identify(None) is None and keys.identify(first) is None
    a, b = digest(first), digest(second)
    assert keys.take(a) == 0 and keys.take(a) == 0
    assert keys.take(a) == pytest.approx(30, abs=1)   # 2 a minute: the next one in 30 s
    assert keys.take(b) == 0                          # the other key is untouched
    (tmp_path / "bad.txt").write_text("lk-a-plain-key\n")
    with pytest.raises(ValueError, match="expected a SHA-256 hex digest"):
        read_digests(tmp_path / "bad.txt")
