"""The side-by-side rating arena: the study and its scheduling, the HTTP app run for real (uvicorn in a
subprocess, httpx clients), the page driven in headless Chromium (Playwright), SQLite and a real
PostgreSQL server started here."""
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from limner.eval.arena.store import VOTE_FIELDS, Settings, Store, Task, write_csv
from limner.eval.arena.study import StudySpec, create_study, neighbour_pairs
from limner.eval.ratings import load_votes, rate

CLI = [sys.executable, "-m", "limner.cli"]
MODELS = ("good", "poor", "worse")


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory, make_generations):
    out = tmp_path_factory.mktemp("gen")
    make_generations(out, models=MODELS)
    return out


def fresh_db(tmp_path, gen_dir, url=None, **spec) -> Store:
    store = Store(url or str(tmp_path / "arena.sqlite"), Settings(attention_rate=0.2), create=True)
    create_study(store, gen_dir, StudySpec(**spec))
    return store


# ------------------------------------------------------------------------------------ the study


def test_study_has_every_pair_question_and_count(tmp_path, gen_dir):
    store = fresh_db(tmp_path, gen_dir)
    with store.session() as s:
        tasks = s.query(Task).order_by(Task.rank).all()
        from limner.eval.arena.store import Image, Prompt
        model = {i.id: i.model for i in s.query(Image)}
        prompts = {p.id: p for p in s.query(Prompt)}
    real = [t for t in tasks if not t.attention]
    pairs = [t for t in real if t.image_b is not None]
    # every pair of the 3 models, on every prompt, under each of its questions
    by_pair = Counter(tuple(sorted((model[t.image_a], model[t.image_b]))) for t in pairs)
    assert set(by_pair) == {("good", "poor"), ("poor", "worse"), ("good", "worse")}
    assert len(set(by_pair.values())) == 1
    for t in pairs:   # long prompts are asked for detailed alignment, short ones for plain alignment
        long = len(prompts[t.prompt_id].text.split()) >= StudySpec.long_prompt_words
        assert t.question in ({"overall", "appeal", "detailed"} if long else {"overall", "appeal", "alignment"})
        if t.question == "detailed":
            assert prompts[t.prompt_id].reference is not None   # the scene rendered as the reference image
    assert any(t.question == "detailed" for t in pairs) and any(t.question == "alignment" for t in pairs)
    counts = [t for t in real if t.image_b is None]
    assert counts and all(t.question == "counting" and t.count_expected >= 1 for t in counts)
    assert {model[t.image_a] for t in counts} == set(MODELS)
    # round robin: any prefix of the schedule covers the pairs within one of each other
    for n in (3, 10, 25):
        seen = Counter(tuple(sorted((model[t.image_a], model[t.image_b]))) for t in real[:n] if t.image_b)
        assert max(seen.values()) - min(seen.values()) <= 1, seen
    assert sum(t.attention == "obvious" for t in tasks) == 10
    # importing again adds nothing; a study made from another folder is refused
    assert create_study(store, gen_dir)["tasks"] == 0
    with pytest.raises(ValueError, match="not found"):
        create_study(store, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="made from"):
        create_study(store, shutil.copytree(gen_dir, tmp_path / "other"))


def rate_all(store: Store, rater: int, choose) -> list[dict]:
    """A scripted rater: answer every item `choose(item)` says, until the arena has none left."""
    items = []
    while (item := store.next_item(rater)) is not None:
        items.append(item)
        store.answer(rater, item["id"], **choose(item))
    return items


def test_scheduling_covers_everything_once_per_target(tmp_path, gen_dir):
    store = fresh_db(tmp_path, gen_dir, votes_per_item=2)
    tokens = store.invite(3)
    raters = [store.rater(t)[0] for t in tokens]
    seen = {r: [] for r in raters}
    # interleave three raters, one item each in turn, as a live study would
    active = list(raters)
    while active:
        for r in list(active):
            item = store.next_item(r)
            if item is None:
                active.remove(r)
                continue
            seen[r].append(item)
            store.answer(r, item["id"], **({"choice": "left"} if item["kind"] == "pair" else {"count": 2}))
    with store.session() as s:
        tasks = s.query(Task).all()
    from limner.eval.arena.store import Assignment
    with store.session() as s:
        answers = s.query(Assignment).filter(Assignment.answered_at.is_not(None)).all()
    real = {t.id for t in tasks if not t.attention}
    per_task = Counter(a.task_id for a in answers if a.attention == "")
    assert set(per_task) == real and set(per_task.values()) == {2}   # each item exactly its target
    # no rater saw an item twice (repeats are the attention checks, and come back sides swapped)
    for r in raters:
        plain = Counter((a.task_id, a.attention) for a in answers if a.rater_id == r)
        assert max(plain.values()) == 1
    repeats = [a for a in answers if a.attention == "repeat"]
    assert repeats and all(a.left_is_a != next(o for o in answers if o.id == a.repeat_of).left_is_a for a in repeats)
    assert any(a.attention == "obvious" for a in answers)
    # a rater always answering "left" is consistent on no repeat (sides are swapped) and passes obvious
    # checks only when the real image happens to be on the left
    prog = store.progress()
    assert all(r["repeats_ok"] == 0 for r in prog["raters"])
    assert prog["answers"] == len(answers)


def test_export_maps_sides_to_models_and_filters_unreliable(tmp_path, gen_dir):
    store = fresh_db(tmp_path, gen_dir, votes_per_item=2)
    root = Path(gen_dir)
    good, lazy = (store.rater(t)[0] for t in store.invite(2))

    def judge(item):   # the scripted expert: picks the image the scorer finds correct
        if item["kind"] == "count":
            return {"count": item["_expected"]}
        return {"choice": item["_best"]}

    from sqlalchemy import select

    from limner.eval.arena.store import Assignment, Image

    def annotate(item):
        with store.session() as s:
            a = s.get(Assignment, item["id"])
            t = s.get(Task, a.task_id)
            img = {i.token: i for i in s.scalars(select(Image))}
        if item["kind"] == "count":
            item["_expected"] = t.count_expected
            return item
        left = img[item["left"].rsplit("/", 1)[1]]
        right = img[item["right"].rsplit("/", 1)[1]]
        rank = {"good": 0, "poor": 1, "worse": 2}
        score = lambda i: rank.get(i.model, 3 if i.model == "__decoy__" else 0)   # noqa: E731
        item["_best"] = "tie" if score(left) == score(right) else ("left" if score(left) < score(right) else "right")
        return item

    rate_all(store, good, lambda it: judge(annotate(it)))
    votes, counts = store.export()
    assert votes and counts and len({v["prompt_id"] for v in votes}) == 14
    for v in votes:   # the expert always preferred the better model, whatever side it was shown on
        order = {"good": 0, "poor": 1, "worse": 2}
        best = min(v["model_a"], v["model_b"], key=order.get)
        assert v["winner"] == ("model_a" if best == v["model_a"] else "model_b")
        assert (root / v["image_a"]).is_file() and v["image_a"].startswith(v["model_a"] + "/")
    assert all(c["correct"] == 1 for c in counts)
    # the lazy rater always says "left": fails about half the obvious checks and every repeat
    store.settings.attention_rate = 0.5
    rate_all(store, lazy, lambda it: {"choice": "left"} if it["kind"] == "pair" else {"count": 1})
    prog = {r["rater"]: r for r in store.progress()["raters"]}
    assert prog["rater-1"]["reliability"] == 1.0
    assert prog["rater-2"]["reliability"] < 0.8
    kept, _ = store.export(min_reliability=0.9)
    assert {v["rater"] for v in kept} == {"rater-1"}
    # with the lazy rater's noise the ratings are finite, and still order the models
    write_csv(store.export()[0], VOTE_FIELDS, tmp_path / "votes.csv")
    r = rate(load_votes(tmp_path / "votes.csv"), rounds=0)
    assert r.models == ["good", "poor", "worse"]


def test_answers_are_checked_and_counted_once(tmp_path, gen_dir):
    store = fresh_db(tmp_path, gen_dir, obvious_checks=0)
    r1, r2 = (store.rater(t)[0] for t in store.invite(2))
    item = store.next_item(r1)
    assert store.next_item(r1)["id"] == item["id"]   # a reload shows the same open item, nothing burnt
    with pytest.raises(ValueError) as e:
        store.answer(r2, item["id"], choice="left")   # not yours
    assert e.value.status == 404
    bad = {"choice": "maybe"} if item["kind"] == "pair" else {"count": -1}
    with pytest.raises(ValueError, match="send"):
        store.answer(r1, item["id"], **bad)
    good = {"choice": "tie"} if item["kind"] == "pair" else {"count": 3}
    store.answer(r1, item["id"], **good)
    with pytest.raises(ValueError, match="already answered") as e:
        store.answer(r1, item["id"], **good)
    assert e.value.status == 409
    with pytest.raises(ValueError, match="invite token"):
        store.rater("not-a-token")


def test_abandoned_items_go_back_to_the_pool(tmp_path, gen_dir):
    from limner.eval.arena.store import Assignment

    store = fresh_db(tmp_path, gen_dir, obvious_checks=0)
    store.settings.expire_s = 0.0
    r1, r2 = (store.rater(t)[0] for t in store.invite(2))
    first = store.next_item(r1)                     # r1 opens an item and walks away
    store._reclaimed_at = 0
    time.sleep(0.01)
    second = store.next_item(r2)                    # ... so it is r2's turn on the same task
    with store.session() as s:
        task = s.get(Assignment, first["id"]).task_id
        assert s.get(Assignment, second["id"]).task_id == task
        assert s.get(Task, task).served == 1
    store.answer(r1, first["id"], **({"choice": "left"} if first["kind"] == "pair" else {"count": 1}))
    with store.session() as s:
        assert s.get(Task, task).served == 2        # a late answer still counts


def test_new_model_is_placed_against_its_neighbours(tmp_path, make_generations):
    gen = tmp_path / "gen"
    make_generations(gen, models=("good", "poor", "worse"), suites=("shapes-counting",))
    store = fresh_db(tmp_path, gen, questions=("overall",), obvious_checks=0)
    rater = store.rater(store.invite()[0])[0]
    order = {"good": 0, "poor": 1, "worse": 2}

    def expert(item):
        from limner.eval.arena.store import Assignment, Image
        with store.session() as s:
            t = s.get(Task, s.get(Assignment, item["id"]).task_id)
            a, b = s.get(Image, t.image_a).model, s.get(Image, t.image_b).model
            left_is_a = s.get(Assignment, item["id"]).left_is_a
        best_a = order[a] < order[b]
        return {"choice": "left" if best_a == left_is_a else "right"}

    rate_all(store, rater, expert)
    make_generations(gen, models=("good", "poor", "worse", "poor-too"), suites=("shapes-counting",))
    pairs = neighbour_pairs(store, "poor-too", k=1)
    assert pairs == [("poor-too", "poor")]   # no votes for it yet: the median model
    added = create_study(store, gen, StudySpec(questions=("overall",), obvious_checks=0), pairs=pairs)
    assert added["tasks"] == 8 and added["pairs"] == 1


# ----------------------------------------------------------------------------------- over HTTP


@pytest.fixture
def server(tmp_path, gen_dir, start_server, invite):
    db = tmp_path / "arena.sqlite"
    subprocess.run(CLI + ["arena", "create", str(gen_dir), "--db", str(db)], check=True, capture_output=True)
    url, proc = start_server(db)
    yield url, (lambda *extra: [f"{url}/login?token={t}" for t in invite(db, url, *extra)]), db
    proc.terminate()
    proc.wait(10)


def pixel_key(png: bytes) -> str:
    """The same image whatever its PNG chunks: the arena strips them, the generation folder has them."""
    from PIL import Image

    return hashlib.sha256(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).tobytes()).hexdigest()


def test_http_app_keeps_models_and_votes_hidden(server, tmp_path, gen_dir):
    """A rater over HTTP who, unlike real raters, knows each image's model (from its pixels) and prefers
    good > poor > worse, except on every fourth vote of a pair: every item is answered, nothing names a model,
    and `eval elo` on the export must find that order, with finite ratings, under every question."""
    import httpx
    from limner.eval.generate import load_generations

    model_of = {pixel_key((gen_dir / r["path"]).read_bytes()): r["model"] for r in load_generations(gen_dir)}
    assert len(model_of) == 3 * 14, "every image must be told apart by its pixels"
    url, invite, db = server
    assert httpx.get(url + "/api/next").status_code == 401
    link = invite()[0]
    c = httpx.Client(base_url=url)
    r = c.get(link.removeprefix(url), follow_redirects=False)
    assert r.status_code == 303 and "limner_arena" in r.cookies
    c.cookies = r.cookies
    assert c.get("/api/admin/progress").status_code == 403
    assert c.get("/api/admin/votes.csv").status_code == 403
    answered, prefers, seen = 0, {}, Counter()
    while not (item := c.get("/api/next").json()).get("finished"):
        text = str(item)
        assert not any(m in text for m in MODELS) and "png" not in text   # opaque URLs, no names
        images = [c.get(item[side]) for side in (("left", "right") if item["kind"] == "pair" else ("image",))]
        for img in images:
            assert img.status_code == 200 and img.headers["content-type"] == "image/png"
            assert b"tEXt" not in img.content and b"iTXt" not in img.content and b"good" not in img.content
        if item["kind"] == "pair":
            assert item["prompt"] is None if item["question"] == "appeal" else item["prompt"]
            keys = [pixel_key(img.content) for img in images]
            # the better side, by the hidden order; an attention check's wrecked copy is in no model
            rank = [MODELS.index(model_of[k]) if k in model_of else len(MODELS) for k in keys]
            item_key = (item["question"], frozenset(keys))
            if item_key not in prefers:   # an item that comes back with sides swapped gets the same answer
                pair = (item["question"], frozenset(rank))
                seen[pair] += 1
                upset = seen[pair] % 4 == 0 and max(rank) < len(MODELS)   # every 4th vote of a pair
                prefers[item_key] = keys[rank.index(max(rank) if upset else min(rank))]
            body = {"id": item["id"], "choice": ("left", "right")[keys.index(prefers[item_key])]}
        else:
            body = {"id": item["id"], "count": 4}
        assert c.post("/api/answer", json=body).json() == {"ok": True}
        answered += 1
        if answered <= 3:
            again = c.post("/api/answer", json=body)
            assert again.status_code == 409 and "already answered" in again.json()["error"]
    assert answered > 100
    assert c.post("/api/answer", json={"id": "nope", "choice": "left"}).status_code == 404
    assert httpx.get(url + "/img/" + "0" * 32, headers={"Authorization": "Bearer x"}).status_code == 401
    # the admin sees progress and exports; the CSV is what `limner eval elo` reads
    admin = httpx.Client(base_url=url, headers={"Authorization": "Bearer " + invite("--admin")[0].split("token=")[1]})
    prog = admin.get("/api/admin/progress").json()
    assert prog["answers"] == answered
    votes = admin.get("/api/admin/votes.csv").text
    rows = list(csv.DictReader(io.StringIO(votes)))
    assert rows and all(r["model_a"] in MODELS and r["winner"] in ("model_a", "model_b", "tie") for r in rows)
    (tmp_path / "votes.csv").write_text(votes)
    out = subprocess.run(CLI + ["eval", "elo", str(tmp_path / "votes.csv"), "--rounds", "50", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    questions = json.loads(out.stdout)["questions"]
    assert {"overall", "alignment", "appeal"} <= set(questions)
    for q, result in questions.items():
        board = result["leaderboard"]
        assert [e["model"] for e in board] == list(MODELS), (q, board)   # good > poor > worse
        assert board[0]["rating"] > board[1]["rating"] + 50 and board[1]["rating"] > board[2]["rating"] + 50, q
        i, j = result["models"].index("good"), result["models"].index("worse")
        assert 0.5 < result["win_rate"][i][j] < 1.0, (q, result["win_rate"])   # upsets: finite ratings
    exported = subprocess.run(CLI + ["arena", "export", "--db", str(db), "--out", str(tmp_path / "x")],
                              capture_output=True, text=True, check=True)
    assert "votes.csv" in exported.stdout
    assert (tmp_path / "x" / "votes.csv").read_text().splitlines()[1:] == votes.splitlines()[1:]


def test_concurrent_raters_lose_and_duplicate_nothing(server):
    import httpx

    url, invite, db = server
    tokens = [link.split("token=")[1] for link in invite("-n", "8")]
    sent = Counter()
    errors = []

    def rater(token):
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer " + token}, timeout=30) as c:
            for _ in range(15):
                item = c.get("/api/next").json()
                if item.get("finished"):
                    return
                body = {"id": item["id"], **({"choice": "tie"} if item["kind"] == "pair" else {"count": 1})}
                r = c.post("/api/answer", json=body)
                if r.status_code != 200:
                    errors.append(r.text)
                sent[token] += 1

    threads = [threading.Thread(target=rater, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = Store(str(db))
    prog = store.progress()
    assert prog["answers"] == sum(sent.values()) == 8 * 15
    from limner.eval.arena.store import Assignment
    with store.session() as s:
        rows = [(a.rater_id, a.task_id, a.attention) for a in s.query(Assignment).filter(Assignment.choice.is_not(None)
                                                                                         | Assignment.count.is_not(None))]
    assert len(rows) == len(set(rows))


# ----------------------------------------------------------------------------- in a real browser


def _chromium():
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        if os.environ.get("LIMNER_REQUIRE_SYSTEM_DEPS"):
            pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return path


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_rater_and_admin_pages_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, invite, _ = server
    token = invite()[0].split("token=")[1]
    admin_token = invite("--admin")[0].split("token=")[1]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", "wrong")
        page.click("#login-button")
        page.wait_for_selector("#error:has-text('unknown invite token')")
        page.fill("#token", token)
        page.click("#login-button")
        page.wait_for_selector("#item:not([hidden])")
        kinds = Counter()
        for i in range(10):   # a batch of items, by mouse and by keyboard
            page.wait_for_function(f"document.getElementById('status').textContent === '{i} answered'")
            page.wait_for_function("[...document.images].filter(im => im.offsetParent).every(im => im.complete "
                                   "&& im.naturalWidth > 0)")
            if page.is_visible("#pair-choices"):
                kinds[page.inner_text("#question").split()[0]] += 1
                assert all(m not in page.content() for m in MODELS)
                if i % 2:
                    page.keyboard.press("3")
                else:
                    page.click("#choose-left")
            else:
                kinds["count"] += 1
                assert "How many" in page.inner_text("#question")
                page.fill("#count", "3")
                page.click("#count-submit")
            if i == 0:
                page.screenshot(path=str(tmp_path / "rate.png"))
        page.wait_for_function("document.getElementById('status').textContent === '10 answered'")
        assert sum(kinds.values()) == 10
        # the admin page, logged in as an admin, shows the ten answers
        admin = browser.new_page()
        admin.goto(f"{url}/login?token={admin_token}")
        admin.goto(url + "/admin")
        admin.wait_for_function("document.getElementById('total').textContent === '10'")
        assert "rater-1" in admin.inner_text("#raters")
        with admin.expect_download() as dl:
            admin.click("#export-votes")
        rows = list(csv.DictReader(open(dl.value.path())))
        assert 0 < len(rows) <= 10 and all(r["rater"] == "rater-1" for r in rows)
        admin.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
        browser.close()
    if os.environ.get("LIMNER_KEEP_SCREENSHOTS"):
        shutil.copy(tmp_path / "rate.png", os.environ["LIMNER_KEEP_SCREENSHOTS"] + "/rate.png")
        shutil.copy(tmp_path / "admin.png", os.environ["LIMNER_KEEP_SCREENSHOTS"] + "/admin.png")


# ----------------------------------------------------------------------------- PostgreSQL, for real


@pytest.fixture(scope="module")
def postgres(free_port):
    """A throwaway PostgreSQL cluster (Debian's server binaries), or LIMNER_TEST_POSTGRES_URL."""
    if os.environ.get("LIMNER_TEST_POSTGRES_URL"):
        yield os.environ["LIMNER_TEST_POSTGRES_URL"]
        return
    bindir = next((Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None) \
        if Path("/usr/lib/postgresql").exists() else None
    if bindir is None or not (bindir / "initdb").exists():
        if os.environ.get("LIMNER_REQUIRE_SYSTEM_DEPS"):
            pytest.fail("PostgreSQL server binaries not found (apt-get install postgresql)")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="limner-pg-"))   # not under pytest's root-only tmp: postgres reads it
    as_user = []
    if os.geteuid() == 0:   # initdb refuses root: run the cluster as the postgres user
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"),
                              "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_postgresql_store(postgres, tmp_path, gen_dir):
    from sqlalchemy import text

    store = Store(postgres, create=True)
    from limner.eval.arena.store import Base
    Base.metadata.drop_all(store.engine)
    Base.metadata.create_all(store.engine)
    assert store.engine.dialect.name == "postgresql"
    create_study(store, gen_dir, StudySpec(votes_per_item=1))
    raters = [store.rater(t)[0] for t in store.invite(4)]

    def work(r):
        while (item := store.next_item(r)) is not None:
            store.answer(r, item["id"], **({"choice": "tie"} if item["kind"] == "pair" else {"count": 2}))

    threads = [threading.Thread(target=work, args=(r,)) for r in raters]   # four servers' worth at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.engine.connect() as c:
        per_task = c.execute(text("select t.id, count(a.id) from task t left join assignment a on a.task_id = t.id "
                                  "and a.attention = '' and a.answered_at is not null where t.attention = '' "
                                  "group by t.id")).all()
    assert per_task and {n for _, n in per_task} == {1}   # every item answered exactly once, none lost
    votes, counts = store.export()
    assert len(votes) + len(counts) == len(per_task)
    assert {v["winner"] for v in votes} == {"tie"} and {c["answer"] for c in counts} == {2}
