"""The job board: what every replica of one server may know of a job another replica is drawing.

A job is drawn by the replica that queued it (its queue, its worker, its batch). Behind Ray Serve the next
request for that job (`GET /v1/jobs/{id}`, its events, `DELETE`, a result URL) may reach another replica, so
the replica that owns a job posts its story here: the job as GET shows it, its events in order, the encoded
images once done. Any replica reads it back; a cancel asked of another replica waits here until the owner
takes it (`take_cancels`, a long poll). One board serves the whole application (under Ray it is a deployment
of its own, `ray_app.JobBoardDeployment`); a single server has none and needs none.

Plain asyncio and no Ray, so it runs (and is tested) anywhere; every method is a coroutine called on the
board's own event loop. Finished jobs go after `ttl_s`, or oldest first past `max_finished` or `max_mb` of
images, as in a single server's queue; a job whose owner vanished (no word past its deadline) is answered as
failed.

The board keeps no state that its replicas do not also hold: a board that restarts (Ray Serve restarts a dead
replica, empty) has a new `epoch`, every replica notices it at its next post or cancel poll, and posts again the
jobs it still keeps (`app.create_app`'s `repost`), so a restart loses no job that a replica could still answer.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

from .jobs import FINAL, past_keeping

FINAL_STATUSES = tuple(s.value for s in FINAL)
LATEST_ONLY = ("queued", "progress")   # once the job is done, the last of these tells a late reader enough


@dataclass
class Entry:
    owner: str
    view: dict
    deadline: float                                   # time.time() by which the owner must have finished it
    events: list[tuple[int, str, dict]] = field(default_factory=list)   # (seq, name, data)
    images: list[tuple[bytes, int]] = field(default_factory=list)       # (encoded bytes, seed)
    finished: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        """Wake the readers waiting for this job, and make the next ones wait for the next change."""
        self.changed.set()
        self.changed = asyncio.Event()


class JobBoard:
    def __init__(self, ttl_s: float = 3600.0, max_finished: int = 1000, max_mb: float = 512, grace_s: float = 30.0):
        self.ttl_s, self.max_finished, self.max_bytes, self.grace_s = ttl_s, max_finished, max_mb * 2**20, grace_s
        self.jobs: dict[str, Entry] = {}
        self.cancels: dict[str, set[str]] = {}       # owner -> job ids another replica asked to cancel
        self.cancel_posted: dict[str, asyncio.Event] = {}
        self.epoch = secrets.token_hex(8)            # this board's life: a restarted one has another

    # --------------------------------------------------------------------------------------- the owner

    async def post(self, job_id: str, owner: str, view: dict, events: list[tuple[str, dict]], timeout_s: float,
                   images: list[tuple[bytes, int]] | None = None) -> str:
        """The owner's news of a job: its view now, the events since its last post, its images once done.
        Returns the board's epoch (a changed one: the board restarted and knows none of the owner's jobs)."""
        entry = self.jobs.get(job_id)
        if entry is None:
            entry = self.jobs[job_id] = Entry(owner, view, time.time() + timeout_s + self.grace_s)
        entry.view = view
        seq = entry.events[-1][0] if entry.events else 0
        for name, data in events:
            seq += 1
            entry.events.append((seq, name, data))
        if images is not None:
            entry.images = images
        if view["status"] in FINAL_STATUSES and entry.finished is None:
            entry.finished = time.time()
            entry.events = compact(entry.events)
        entry.touch()
        self._expire()
        return self.epoch

    async def take_cancels(self, owner: str, wait_s: float = 10.0) -> tuple[str, list[str]]:
        """The board's epoch, and the ids another replica asked this owner to cancel; waits up to wait_s for one."""
        if not self.cancels.get(owner):
            posted = self.cancel_posted.setdefault(owner, asyncio.Event())
            try:
                await asyncio.wait_for(posted.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
            self.cancel_posted.pop(owner, None)
        return self.epoch, sorted(self.cancels.pop(owner, set()))

    # -------------------------------------------------------------------------------------- any replica

    async def view(self, job_id: str) -> dict | None:
        entry = self._entry(job_id)
        return entry and entry.view

    async def events_after(self, job_id: str, seq: int = 0, wait_s: float = 10.0) -> list[tuple[int, str, dict]] | None:
        """The job's events after `seq`, waiting up to wait_s for one; None: no such job."""
        entry = self._entry(job_id)
        if entry is None:
            return None
        if not any(s > seq for s, _, _ in entry.events) and entry.finished is None:
            changed = entry.changed
            try:
                await asyncio.wait_for(changed.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
            entry = self._entry(job_id) or entry
        return [e for e in entry.events if e[0] > seq]

    async def cancel(self, job_id: str) -> dict | None:
        """Ask the owner to cancel the job; its view now (None: no such job). A finished job is left as it is."""
        entry = self._entry(job_id)
        if entry is None:
            return None
        if entry.view["status"] not in FINAL_STATUSES:
            self.cancels.setdefault(entry.owner, set()).add(job_id)
            if entry.owner in self.cancel_posted:
                self.cancel_posted[entry.owner].set()
        return entry.view

    async def image(self, job_id: str, index: int) -> tuple[bytes, int] | None:
        entry = self._entry(job_id)
        if entry is None or not 0 <= index < len(entry.images):
            return None
        return entry.images[index]

    async def count(self) -> int:
        return len(self.jobs)

    # ---------------------------------------------------------------------------------------- upkeep

    def _entry(self, job_id: str) -> Entry | None:
        entry = self.jobs.get(job_id)
        if entry is not None and entry.finished is None and time.time() > entry.deadline:
            # the owner should have finished or failed it by now: it is gone (a replica killed mid-job)
            entry.view = {**entry.view, "status": "failed", "queue_position": None, "error": {
                "message": "the replica drawing this job stopped before it finished; submit it again",
                "type": "server_error", "param": None, "code": "replica_lost"}}
            entry.finished = time.time()
            entry.events.append(((entry.events[-1][0] if entry.events else 0) + 1, "failed", entry.view))
            entry.touch()
        return entry

    def _expire(self) -> None:
        """Finished jobs past the TTL, or beyond the count or the memory budget (newest kept), go; and cancels
        no owner will take (its replica died) with them."""
        done = [(e.finished, sum(len(data) for data, _ in e.images), i) for i, e in self.jobs.items()
                if e.finished is not None]
        for job_id in past_keeping(done, self.max_finished, self.max_bytes, self.ttl_s):
            del self.jobs[job_id]
        for owner, ids in list(self.cancels.items()):
            live = {i for i in ids if i in self.jobs and self.jobs[i].finished is None}
            if live:
                self.cancels[owner] = live
            else:
                del self.cancels[owner]


def compact(events: list[tuple[int, str, dict]]) -> list[tuple[int, str, dict]]:
    """A finished job's events without its previews and with only the last queued and progress event."""
    last = {name: seq for seq, name, _ in events if name in LATEST_ONLY}
    return [e for e in events if e[1] != "preview" and (e[1] not in LATEST_ONLY or last[e[1]] == e[0])]
