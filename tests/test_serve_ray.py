"""limner serve on Ray Serve: limner's queue settings become Ray's backpressure and autoscaling options, bad
settings are one clear line, and (slow) two CPU replicas behind one address: either answers for a job the
other drew (status, events, results, cancel), both answer the official `openai` client, a replica killed
mid-load loses no request, and stopping the server leaves no Ray process."""
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.serve.grpc_util", reason="needs Ray Serve: pip install 'limner[ray]'")

from limner.serve.config import ServeConfig   # noqa: E402
from limner.serve.ray_app import (REPLICA_HEADER, RayOptions, alive, deployment_options, descendants,   # noqa: E402
                                  split_settings)

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "limner.cli"]


def test_queue_settings_become_rays_backpressure():
    options = deployment_options(ServeConfig(queue_size=16, max_batch=8), RayOptions(replicas=3, replica_cpus=0.5))
    assert options["max_ongoing_requests"] == 24 and options["max_queued_requests"] == 16
    assert options["backpressure_config"]["status_code"] == 429   # as a lone server refuses, not Ray's 503
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}


def test_max_replicas_turns_on_autoscaling_on_batch_size():
    options = deployment_options(ServeConfig(max_batch=4), RayOptions(replicas=2, max_replicas=6))
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 6,
                                             "target_ongoing_requests": 4}


def test_the_shipped_serve_run_config_is_valid():
    app = yaml.safe_load((ROOT / "configs/serve/ray.yaml").read_text())["applications"][0]
    assert app["import_path"] == "limner.serve.ray_app:build"
    config, options = split_settings(app["args"])
    assert config.model == "shapes-default" and options.replicas == 2


def test_an_unknown_setting_names_both_lists():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) replica: limner's are .*queue_size.*Ray's are .*replicas"):
        split_settings({"replica": 2})


@pytest.mark.parametrize("flags, says", [
    (["--replicas", "0"], "--replicas must be at least 1, not 0"),
    (["--replicas", "3", "--max-replicas", "2"], "--max-replicas (2) must be at least --replicas (3)"),
    (["--replica-cpus", "0"], "must reserve some --replica-cpus or --replica-gpus"),
    (["--replica-gpus", "1"], "--replica-gpus: limner serve still draws on the CPU"),
])
def test_bad_ray_flags_are_one_clear_line(flags, says, tmp_path):
    r = subprocess.run(CLI + ["serve", "--ray", "--port", "1", *flags], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------------------------------------- two real replicas


def replica_pids(server_pid: int, deployment: str = "LimnerServer") -> list[int]:
    """The processes of one deployment's replicas: the servers (LimnerServer) or the job board (LimnerJobBoard)."""
    return [p for p, c in descendants(server_pid).items()
            if c.startswith("ray::ServeReplica") and deployment in c]


RETRYABLE = {408, 409, 429, 500, 502, 503, 504}   # what the openai client itself retries


@pytest.fixture(scope="module")
def two_replicas():
    """One `limner serve --ray --replicas 2` for the module; the last test stops it itself."""
    from limner.serve.process import ServerProcess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with ServerProcess("--ray", "--replicas", "2", "--replica-cpus", "0.5", ready_timeout=300, env=env) as server:
        yield server


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_either_replica_answers_for_a_job_the_other_drew(two_replicas):
    """Status, events, result URLs and cancel, each asked through the one address many times: Ray's router
    spreads them over both replicas, the job's own and the other."""
    import httpx
    from httpx_sse import connect_sse

    url = two_replicas.url
    by_owner = collections.Counter()   # did the job's own replica answer (True) or the other one (False)?
    # four at a time: one after another, Ray's router (fewest requests in flight, ties alike) mostly picks the
    # same replica; overlapping requests are spread
    with httpx.Client(timeout=120) as http, ThreadPoolExecutor(4) as pool:
        for seed in range(4):
            created = http.post(url + "/v1/jobs", json={"prompt": "two red circles", "seed": seed, "steps": 6,
                                                        "previews": 1})
            assert created.status_code == 202, created.text
            owner, job_id = created.headers[REPLICA_HEADER], created.json()["id"]
            for r in pool.map(lambda _: http.get(f"{url}/v1/jobs/{job_id}"), range(8)):
                assert r.status_code == 200 and r.json()["id"] == job_id, r.text
                by_owner[r.headers[REPLICA_HEADER] == owner] += 1
            with connect_sse(http, "GET", f"{url}/v1/jobs/{job_id}/events") as events:
                by_owner[events.response.headers[REPLICA_HEADER] == owner] += 1
                names = [e.event for e in events.iter_sse()]
            assert names[-1] == "succeeded" and "progress" in names, names
            final = http.get(f"{url}/v1/jobs/{job_id}").json()
            image = final["result"]["data"][0]
            assert image["url"].startswith(url) and image["seed"] == seed
            got = set()
            for r in pool.map(lambda _: http.get(image["url"]), range(8)):
                assert r.status_code == 200 and r.headers["content-type"] == "image/png"
                got.add(r.content)
                by_owner[r.headers[REPLICA_HEADER] == owner] += 1
            assert len(got) == 1   # the same bytes from either replica
        assert by_owner[True] and by_owner[False], by_owner

        # DELETE through the address until it has reached both a job's own replica and the other
        cancels = collections.Counter()
        for seed in range(16):
            created = http.post(url + "/v1/jobs", json={"prompt": "a blue square", "seed": seed, "steps": 100})
            owner, job_id = created.headers[REPLICA_HEADER], created.json()["id"]
            reads = [pool.submit(http.get, f"{url}/v1/jobs/{job_id}") for _ in range(3)]   # company for the DELETE
            r = http.delete(f"{url}/v1/jobs/{job_id}")
            assert all(read.result().status_code == 200 for read in reads)
            assert r.status_code == 200 and r.json()["id"] == job_id, r.text
            cancels[r.headers[REPLICA_HEADER] == owner] += 1
            end = time.monotonic() + 60
            while (status := http.get(f"{url}/v1/jobs/{job_id}").json()["status"]) != "cancelled" \
                    and time.monotonic() < end:
                time.sleep(0.2)
            assert status == "cancelled", status
            again = http.delete(f"{url}/v1/jobs/{job_id}")
            assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
            if cancels[True] and cancels[False]:
                break
        assert cancels[True] and cancels[False], cancels
        print(f"answers by the job's own replica / the other: {by_owner[True]} / {by_owner[False]}; "
              f"cancels {cancels[True]} / {cancels[False]}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_job_board_comes_back_with_every_job(two_replicas):
    """Ray Serve restarts a dead board empty; the replicas post their jobs again, so a job drawn before the kill
    is still answered by the replica that did not draw it."""
    import httpx

    url = two_replicas.url
    with httpx.Client(timeout=120) as http, ThreadPoolExecutor(4) as pool:
        jobs = {}
        for seed in range(2):
            created = http.post(url + "/v1/jobs", json={"prompt": "two red circles", "seed": seed, "steps": 4})
            jobs[created.json()["id"]] = created.headers[REPLICA_HEADER]
        for job_id in jobs:
            end = time.monotonic() + 60
            while http.get(f"{url}/v1/jobs/{job_id}").json()["status"] != "succeeded" and time.monotonic() < end:
                time.sleep(0.1)
        [board] = replica_pids(two_replicas.proc.pid, "LimnerJobBoard")
        os.kill(board, signal.SIGKILL)
        end = time.monotonic() + 120
        while not (restarted := [p for p in replica_pids(two_replicas.proc.pid, "LimnerJobBoard") if p != board]) \
                and time.monotonic() < end:
            time.sleep(0.5)
        assert restarted, "Ray Serve did not restart the job board"
        by_other = set()   # the jobs another replica than their own answered for, from the new board
        end = time.monotonic() + 60
        while by_other != set(jobs) and time.monotonic() < end:
            for job_id, r in zip([*jobs] * 4, pool.map(lambda j: http.get(f"{url}/v1/jobs/{j}"), [*jobs] * 4)):
                if r.status_code == 200 and r.headers[REPLICA_HEADER] != jobs[job_id]:
                    assert r.json()["status"] == "succeeded", r.text
                    by_other.add(job_id)
            time.sleep(0.2)
        assert by_other == set(jobs), by_other


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_replicas_share_one_address_and_a_killed_one_loses_no_request(two_replicas):
    from openai import APIConnectionError, APIStatusError, OpenAI

    server = two_replicas   # the module's: this test stops it at the end, to see Ray go with it
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def draw(seed: int):
        """(replica, seed of the image) or (None, status) for a failure."""
        try:
            r = client.images.with_raw_response.generate(prompt="two red circles", extra_body={"seed": seed,
                                                                                           "steps": 8})
            return r.headers[REPLICA_HEADER], r.parse().data[0].seed
        except APIStatusError as e:
            return None, e.status_code
        except APIConnectionError:
            return None, "connection"

    replicas = {draw(seed)[0] for seed in range(12)}
    assert len(replicas) == 2 and None not in replicas, replicas   # both answered, behind one address
    pids = replica_pids(server.proc.pid)
    assert len(pids) == 2, descendants(server.proc.pid)

    # load from 6 clients; one replica is killed once the load is running
    outcomes, lock, began = {}, threading.Lock(), threading.Event()

    def client_loop(first: int):
        for seed in range(first, first + 60, 6):
            outcome = draw(seed)
            with lock:
                outcomes[seed] = [outcome]
            began.set()

    threads = [threading.Thread(target=client_loop, args=(100 + i,)) for i in range(6)]
    for t in threads:
        t.start()
    assert began.wait(120)
    time.sleep(0.5)
    killed_at = len(outcomes)
    os.kill(pids[0], signal.SIGKILL)
    for t in threads:
        t.join(300)
    assert len(outcomes) == 60 and killed_at < 50, (len(outcomes), killed_at)

    failures = {seed: o[0][1] for seed, o in outcomes.items() if o[0][0] is None}
    assert set(failures.values()) <= RETRYABLE | {"connection"}, failures   # retryable, never a 400
    for seed in failures:   # what the client's own retries would do: the same request again
        for _ in range(10):
            outcome = draw(seed)
            outcomes[seed].append(outcome)
            if outcome[0] is not None:
                break
            time.sleep(1)
    lost = {seed: o for seed, o in outcomes.items() if o[-1][1] != seed}
    assert not lost, lost   # every request got its own image in the end
    print(f"killed a replica after {killed_at}/60 answers; {len(failures)} retryable failures: {failures}")

    # the server stops cleanly: Ray's cluster goes with it (a driver that died would leave it behind)
    ray_processes = descendants(server.proc.pid)
    server.proc.terminate()
    server.proc.wait(120)
    # a killed process leaves the process table only once the kernel has torn it down, which on a loaded
    # machine can take a few seconds after the driver's own exit; one that lives on past that was leaked
    deadline = time.monotonic() + 15
    while (left := {p: c for p, c in ray_processes.items() if alive(p, c)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left
