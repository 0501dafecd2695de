"""The rating arena's storage: a study (images, prompts, tasks), raters and their answers, in SQLAlchemy.

A *task* is one thing to rate: a pair of images of the same prompt and seed by two models, under one
question, or one image under the counting question. An *assignment* is a task shown to a rater, with
sides shuffled; the answer is written on it. One rater gets a task at most once
(a unique constraint: a vote cannot be cast twice, even by a retried request); repeats for attention
checks are assignments of their own kind.

Scheduling is a single ordered query: the next task is the one served least often, then lowest `rank`.
Ranks interleave the model pairs round-robin over shuffled prompts, so at any moment every pair of
models has been shown (within one) equally often, and over prompts as evenly as the tasks allow.

SQLite (the default) serialises writers; its busy handler backs off in sleeps of up to 100 ms, so writes
in one process take a lock of ours instead. PostgreSQL takes row locks: concurrent requests skip a task another
one has locked (`FOR UPDATE SKIP LOCKED`), and `served` is compared and set besides.

Filling a store from a generation folder is `limner.eval.arena.study`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import secrets
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, create_engine,
                        event, func, select, update)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ...common.files import atomic_path

QUESTIONS = {
    "overall": "Which image do you prefer overall?",
    "alignment": "Which image matches the prompt better? Ignore defects, style and quality: judge only "
                 "whether what the prompt asks for is there.",
    "appeal": "Which image is more visually appealing? (The prompt is hidden on purpose.)",
    "detailed": "Which image matches this detailed description better? Check each part of it.",
    "counting": "How many {object} does this image show?",
}
PAIR_QUESTIONS = ("overall", "alignment", "appeal", "detailed")
REFERENCE_MODEL = "__reference__"   # images that are not any model's: references and attention decoys
DECOY_MODEL = "__decoy__"
ANSWERS = ("left", "right", "tie")
VOTE_FIELDS = ["model_a", "model_b", "winner", "question", "prompt_id", "seed", "suite", "rater", "tstamp",
               "image_a", "image_b"]
COUNT_FIELDS = ["model", "prompt_id", "seed", "suite", "rater", "tstamp", "image", "object", "expected", "answer",
                "correct"]


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Rater(Base):
    __tablename__ = "rater"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class Image(Base):
    __tablename__ = "image"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)   # what URLs show: nothing about the model
    path: Mapped[str] = mapped_column(Text, unique=True)
    model: Mapped[str] = mapped_column(String(200))
    prompt_id: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int] = mapped_column(Integer)


class Prompt(Base):
    __tablename__ = "prompt"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    suite: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tags: Mapped[str] = mapped_column(Text, default="{}")
    reference: Mapped[int | None] = mapped_column(ForeignKey("image.id"), nullable=True)


class Task(Base):
    __tablename__ = "task"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    question: Mapped[str] = mapped_column(String(32))
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompt.id"))
    image_a: Mapped[int] = mapped_column(ForeignKey("image.id"))
    image_b: Mapped[int | None] = mapped_column(ForeignKey("image.id"), nullable=True)   # None: counting
    count_object: Mapped[str | None] = mapped_column(String(200), nullable=True)
    count_expected: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attention: Mapped[str] = mapped_column(String(16), default="")   # "" or "obvious" (a is the right answer)
    target: Mapped[int] = mapped_column(Integer, default=1)          # answers wanted
    served: Mapped[int] = mapped_column(Integer, default=0)          # live assignments made
    rank: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_task_next", "served", "rank"),)


class Assignment(Base):
    __tablename__ = "assignment"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("rater.id"))
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"))
    attention: Mapped[str] = mapped_column(String(16), default="")   # "", "obvious" or "repeat" (not NULL: unique)
    repeat_of: Mapped[str | None] = mapped_column(String(32), nullable=True)
    left_is_a: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[float] = mapped_column(Float)
    answered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    choice: Mapped[str | None] = mapped_column(String(8), nullable=True)   # left / right / tie
    count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expired: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (UniqueConstraint("rater_id", "task_id", "attention", name="one_answer_per_item"),
                      Index("ix_assignment_open", "rater_id", "answered_at"))


class ArenaError(ValueError):
    """A request the arena refuses; `status` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def hash_token(token: str) -> str:
    """What the database keeps of a rater's token. sha256, not common.files.digest (a short cache key, not for
    security): this one guards access, and tokens already handed out must keep working."""
    return hashlib.sha256(token.encode()).hexdigest()


def database_url(db: str) -> str:
    """A SQLAlchemy URL from a URL or a plain SQLite file path; PostgreSQL through psycopg 3."""
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if db.startswith(prefix):
            return "postgresql+psycopg://" + db[len(prefix):]
    return db


# --------------------------------------------------------------------------------------------- store

@dataclass
class Settings:
    attention_rate: float = 0.1     # share of a rater's items that are attention checks
    repeat_gap: int = 3             # a repeat comes back at least this many items after the original
    expire_s: float = 900.0         # an unanswered assignment goes back to the pool after this


class Store:
    def __init__(self, db: str, settings: Settings | None = None, create: bool = False):
        url = database_url(db)
        self.sqlite = url.startswith("sqlite")
        if self.sqlite and not create and not Path(url.removeprefix("sqlite:///")).exists():
            raise ArenaError(f"no arena database at {url.removeprefix('sqlite:///')}: "
                             "make one with `limner arena create GENERATIONS --db ...`")
        kw = {"connect_args": {"check_same_thread": False, "timeout": 30}} if self.sqlite else {"pool_size": 20}
        self.engine = create_engine(url, **kw)
        if self.sqlite:
            @event.listens_for(self.engine, "connect")
            def _pragmas(conn, _):   # WAL: readers never wait for the writer
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
        if create:
            Base.metadata.create_all(self.engine)
        self.settings = settings or Settings()
        self._write_lock = threading.Lock() if self.sqlite else None
        self._reclaimed_at = 0.0
        self._raters: dict[str, tuple[int, bool]] = {}
        self._tasks: dict[int, dict] = {}     # task id -> what never changes about it
        self._tokens: dict[int, str] = {}     # image id -> its URL token

    @contextmanager
    def session(self, write: bool = False):
        with self._locked(write), Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def _locked(self, write: bool):
        """SQLite's writers take our lock (see the module docstring); readers and PostgreSQL do not."""
        if write and self._write_lock:
            with self._write_lock:
                yield
        else:
            yield

    def meta(self) -> dict:
        with self.session() as s:
            return {m.key: json.loads(m.value) for m in s.scalars(select(Meta))}

    # ------------------------------------------------------------------------------------- raters

    def invite(self, n: int = 1, name: str = "rater", admin: bool = False) -> list[str]:
        """Make n invite tokens; only their hashes are stored, so print them now."""
        tokens = [secrets.token_urlsafe(18) for _ in range(n)]
        with self.session(write=True) as s:
            start = s.scalar(select(func.count()).select_from(Rater)) or 0
            for i, t in enumerate(tokens):
                s.add(Rater(name=f"{name}-{start + i + 1}" if n > 1 or name == "rater" else name,
                            token_hash=hash_token(t), is_admin=admin, created_at=time.time()))
        return tokens

    def rater(self, token: str | None) -> tuple[int, bool]:
        """(rater id, is admin) for an invite token, or ArenaError 401."""
        if not token:
            raise ArenaError("not logged in: open the invite link you were given", 401)
        h = hash_token(token)
        if h not in self._raters:
            with self.session() as s:
                r = s.scalar(select(Rater).where(Rater.token_hash == h))
            if r is None:
                raise ArenaError("unknown invite token: check the link, or ask the organiser for a new one", 401)
            self._raters[h] = (r.id, r.is_admin)
        return self._raters[h]

    # ------------------------------------------------------------------------------------ scheduling

    # The rating path runs on every request, so it is Core SQL on one connection, and what never changes
    # once imported (tasks' images and questions, prompts, image tokens) is read once and kept.

    @contextmanager
    def _write(self):
        with self._locked(True), self.engine.begin() as conn:
            yield conn

    def _static(self, conn, task_id: int) -> dict:
        if task_id not in self._tasks:
            t = conn.execute(select(Task.question, Task.prompt_id, Task.image_a, Task.image_b, Task.count_object)
                             .where(Task.id == task_id)).one()
            p = conn.execute(select(Prompt.text, Prompt.reference).where(Prompt.id == t.prompt_id)).one()
            ids = [i for i in (t.image_a, t.image_b, p.reference) if i is not None and i not in self._tokens]
            if ids:
                self._tokens |= dict(conn.execute(select(Image.id, Image.token).where(Image.id.in_(ids))).all())
            self._tasks[task_id] = {"question": t.question, "prompt": p.text, "a": t.image_a, "b": t.image_b,
                                    "reference": p.reference, "object": t.count_object}
        return self._tasks[task_id]

    def next_item(self, rater_id: int) -> dict | None:
        """The rater's open item, else a new one (an attention check now and then); None when done."""
        self._reclaim()
        with self._write() as conn:
            row = conn.execute(select(Assignment.id, Assignment.task_id, Assignment.left_is_a).where(
                Assignment.rater_id == rater_id, Assignment.answered_at.is_(None),
                Assignment.expired.is_(False)).limit(1)).first()
            if row is None:
                row = self._repeat(conn, rater_id) or self._assign(conn, rater_id)
            if row is None:
                return None
            done = conn.execute(select(func.count()).select_from(Assignment).where(
                Assignment.rater_id == rater_id, Assignment.answered_at.is_not(None))).scalar()
            return self._item(self._static(conn, row[1]), row[0], row[2], done)

    def _new_assignment(self, conn, rater_id: int, task_id: int, attention: str, left_is_a: bool,
                        repeat_of: str | None = None) -> tuple[str, int, bool]:
        aid = secrets.token_hex(16)
        conn.execute(Assignment.__table__.insert().values(
            id=aid, rater_id=rater_id, task_id=task_id, attention=attention, repeat_of=repeat_of,
            left_is_a=left_is_a, created_at=time.time(), expired=False))
        return aid, task_id, left_is_a

    def _assign(self, conn, rater_id: int):
        done = select(Assignment.task_id).where(Assignment.rater_id == rater_id)
        want_check = random.random() < self.settings.attention_rate
        for attempt in range(8):
            kind = "obvious" if want_check and attempt == 0 else ""
            q = select(Task.id, Task.served).where(Task.served < Task.target, Task.attention == kind,
                                                   Task.id.not_in(done)).order_by(Task.served, Task.rank).limit(1)
            if not self.sqlite:   # concurrent servers each take a different task instead of racing for one
                q = q.with_for_update(skip_locked=True)
            row = conn.execute(q).first()
            if row is None:
                if kind:
                    continue
                return None
            # compare-and-set: another server may have claimed it since the select (PostgreSQL)
            claimed = conn.execute(update(Task).where(Task.id == row.id, Task.served == row.served)
                                   .values(served=Task.served + 1)).rowcount
            if claimed:
                return self._new_assignment(conn, rater_id, row.id, kind, random.random() < 0.5)
        return None

    def _repeat(self, conn, rater_id: int):
        """Now and then, an item the rater answered a while ago again, sides swapped: are they consistent?"""
        if random.random() >= self.settings.attention_rate / 2:
            return None
        answered = conn.execute(select(Assignment.id, Assignment.task_id, Assignment.left_is_a).where(
            Assignment.rater_id == rater_id, Assignment.attention == "", Assignment.choice.is_not(None))
            .order_by(Assignment.answered_at.desc()).offset(self.settings.repeat_gap).limit(20)).all()
        repeated = set(conn.execute(select(Assignment.task_id).where(
            Assignment.rater_id == rater_id, Assignment.attention == "repeat")).scalars())
        fresh = [a for a in answered if a.task_id not in repeated]
        if not fresh:
            return None
        orig = random.choice(fresh)
        return self._new_assignment(conn, rater_id, orig.task_id, "repeat", not orig.left_is_a, orig.id)

    def _reclaim(self) -> None:
        """Put the tasks of abandoned assignments back in the pool (at most once a minute)."""
        now = time.time()
        if now - self._reclaimed_at < 60:
            return
        self._reclaimed_at = now
        with self._write() as conn:
            stale = conn.execute(select(Assignment.id, Assignment.task_id, Assignment.attention).where(
                Assignment.answered_at.is_(None), Assignment.expired.is_(False),
                Assignment.created_at < now - self.settings.expire_s)).all()
            for a in stale:
                conn.execute(update(Assignment).where(Assignment.id == a.id).values(expired=True))
                if a.attention != "repeat":
                    conn.execute(update(Task).where(Task.id == a.task_id).values(served=Task.served - 1))

    def _item(self, t: dict, assignment_id: str, left_is_a: bool, done: int) -> dict:
        """What the rater's page shows: no model names, image URLs by opaque token, sides as assigned."""
        url = lambda i: f"/img/{self._tokens[i]}"   # noqa: E731
        item = {"id": assignment_id, "question": t["question"], "done": done}
        if t["b"] is None:
            return item | {"kind": "count", "text": QUESTIONS["counting"].format(object=t["object"]),
                           "prompt": t["prompt"], "image": url(t["a"])}
        left, right = (t["a"], t["b"]) if left_is_a else (t["b"], t["a"])
        return item | {"kind": "pair", "text": QUESTIONS[t["question"]],
                       "prompt": None if t["question"] == "appeal" else t["prompt"],
                       "left": url(left), "right": url(right),
                       "reference": url(t["reference"]) if t["question"] == "detailed" and t["reference"] else None}

    # ---------------------------------------------------------------------------------------- votes

    def answer(self, rater_id: int, assignment_id: str, choice: str | None = None, count: int | None = None) -> dict:
        """Record an answer once. A second answer to the same item is refused (409), so a retried
        request never makes two votes."""
        with self._write() as conn:
            a = conn.execute(select(Assignment.rater_id, Assignment.task_id, Assignment.expired, Assignment.attention)
                             .where(Assignment.id == assignment_id)).first()
            if a is None or a.rater_id != rater_id:
                raise ArenaError("no such item for this rater", 404)
            if self._static(conn, a.task_id)["b"] is None:
                if count is None or not isinstance(count, int) or not 0 <= count <= 1000:
                    raise ArenaError("this item asks for a count: send {\"count\": N} with 0 <= N <= 1000")
                values = {"count": count}
            else:
                if choice not in ANSWERS:
                    raise ArenaError(f"this item asks for a choice: send {{\"choice\": one of {', '.join(ANSWERS)}}}")
                values = {"choice": choice}
            done = conn.execute(update(Assignment).where(Assignment.id == assignment_id,
                                                         Assignment.answered_at.is_(None))
                                .values(answered_at=time.time(), expired=False, **values)).rowcount
            if not done:
                raise ArenaError("this item is already answered", 409)
            if a.expired and a.attention != "repeat":   # reclaimed meanwhile: it counts again
                conn.execute(update(Task).where(Task.id == a.task_id).values(served=Task.served + 1))
        return {"ok": True}

    # ------------------------------------------------------------------------------------ reporting

    def progress(self) -> dict:
        """What the admin page shows: answers per question and model pair, raters and their reliability."""
        with self.session() as s:
            models = {i.id: i.model for i in s.scalars(select(Image))}
            tasks = {t.id: t for t in s.scalars(select(Task))}
            raters = {r.id: r for r in s.scalars(select(Rater))}
            answers = s.scalars(select(Assignment).where(Assignment.answered_at.is_not(None))).all()
        per_question = defaultdict(lambda: {"tasks": 0, "wanted": 0, "answered": 0})
        pairs = defaultdict(int)
        for t in tasks.values():
            if not t.attention:
                q = per_question[t.question]
                q["tasks"] += 1
                q["wanted"] += t.target
        blank = lambda rid: {"rater": raters[rid].name, "answers": 0, "obvious": 0, "obvious_ok": 0,   # noqa: E731
                             "repeats": 0, "repeats_ok": 0}
        rel = {rid: blank(rid) for rid, r in raters.items() if not r.is_admin}
        by_id = {a.id: a for a in answers}
        for a in answers:
            t = tasks[a.task_id]
            r = rel.setdefault(a.rater_id, blank(a.rater_id))
            r["answers"] += 1
            if a.attention == "obvious":
                r["obvious"] += 1
                r["obvious_ok"] += winner(a) == "model_a"
            elif a.attention == "repeat":
                orig = by_id.get(a.repeat_of)
                if orig is not None:
                    r["repeats"] += 1
                    r["repeats_ok"] += winner(orig) == winner(a)
            else:
                per_question[t.question]["answered"] += 1
                if t.image_b is not None:
                    pairs[" vs ".join(sorted((models[t.image_a], models[t.image_b])))] += 1
        for r in rel.values():
            checks = r["obvious"] + r["repeats"]
            r["reliability"] = None if not checks else round((r["obvious_ok"] + r["repeats_ok"]) / checks, 3)
        return {"questions": dict(per_question), "pairs": dict(sorted(pairs.items())), "raters": list(rel.values()),
                "answers": sum(r["answers"] for r in rel.values())}

    def export(self, min_reliability: float | None = None) -> tuple[list[dict], list[dict]]:
        """Votes in the Chatbot Arena convention, and counting answers; attention checks left out, and
        raters below `min_reliability` (share of attention checks passed) too."""
        with self.session() as s:
            raters = {r.id: r.name for r in s.scalars(select(Rater))}
            images = {i.id: i for i in s.scalars(select(Image))}
            prompts = {p.id: p for p in s.scalars(select(Prompt))}
            rows = s.execute(select(Assignment, Task).join(Task, Task.id == Assignment.task_id).where(
                Assignment.answered_at.is_not(None), Assignment.attention == "").order_by(Assignment.answered_at)).all()
        unreliable = set()
        if min_reliability is not None:   # reliability needs every answer, attention checks included
            unreliable = {r["rater"] for r in self.progress()["raters"]
                          if r["reliability"] is not None and r["reliability"] < min_reliability}
        root = Path(self.meta().get("root", "."))
        rel = lambda i: _relative(images[i].path, root)   # noqa: E731
        votes, counts = [], []
        for a, t in rows:
            name = raters[a.rater_id]
            if name in unreliable:
                continue
            p = prompts[t.prompt_id]
            ia = images[t.image_a]
            common = {"prompt_id": t.prompt_id, "seed": ia.seed, "suite": p.suite, "rater": name,
                      "tstamp": round(a.answered_at, 3)}
            if t.image_b is None:
                counts.append({"model": ia.model, **common, "image": rel(t.image_a), "object": t.count_object,
                               "expected": t.count_expected, "answer": a.count,
                               "correct": int(a.count == t.count_expected)})
            else:
                votes.append({"model_a": ia.model, "model_b": images[t.image_b].model, "winner": winner(a),
                              "question": t.question, **common, "image_a": rel(t.image_a), "image_b": rel(t.image_b)})
        return votes, counts


def write_csv(rows: list[dict], fields: list[str], path: str | Path) -> Path:
    """An export as CSV, atomically: a half-written export never replaces a good one."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return Path(path)


def winner(a: Assignment) -> str:
    """left/right/tie on the screen -> model_a/model_b/tie of the task."""
    if a.choice == "tie":
        return "tie"
    return "model_a" if (a.choice == "left") == a.left_is_a else "model_b"


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
