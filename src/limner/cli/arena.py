"""`limner arena create | add-model | invite | serve | status | export`: a human side-by-side study end to end."""
from __future__ import annotations

import json
from pathlib import Path

DEFAULT_DB = "arena.sqlite"


def open_store(args, create: bool = False):
    from ..eval.arena.store import Settings, Store

    settings = Settings(attention_rate=getattr(args, "attention_rate", Settings.attention_rate))
    return Store(args.db, settings, create=create)


def cmd_create(args) -> int:
    from ..eval.arena.study import StudySpec, create_study

    spec = StudySpec(questions=tuple(args.questions), votes_per_item=args.votes_per_item,
                     obvious_checks=args.obvious_checks, seed=args.seed)
    made = create_study(open_store(args, create=True), args.generations, spec, models=args.model or None)
    print(f"{args.db}: {made['tasks']} items over {made['pairs']} model pairs ({', '.join(made['models'])}), "
          f"{made['attention_checks']} attention checks")
    print(f"next: limner arena invite --db {args.db} -n 10 ; limner arena serve --db {args.db}")
    return 0


def cmd_add_model(args) -> int:
    """Place a new model cheaply: pairs only with its k nearest neighbours by current rating."""
    from ..eval.arena.study import StudySpec, create_study, neighbour_pairs

    store = open_store(args)
    pairs = neighbour_pairs(store, args.model, args.neighbours)
    meta = store.meta()
    spec = StudySpec(**{**meta["spec"], "obvious_checks": 0, "questions": tuple(meta["spec"]["questions"])})
    made = create_study(store, meta["root"], spec, pairs=pairs)
    print(f"{args.model} against {', '.join(b for _, b in pairs)}: {made['tasks']} new items")
    return 0


def cmd_invite(args) -> int:
    tokens = open_store(args).invite(args.n, args.name, admin=args.admin)
    base = args.url.rstrip("/")
    for t in tokens:
        print(f"{base}/login?token={t}")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from ..eval.arena.app import create_app

    store = open_store(args)
    print(f"limner arena on http://{args.host}:{args.port}/ (admin page: /admin); invite raters with "
          f"`limner arena invite --db {args.db}`", flush=True)
    uvicorn.run(create_app(store), host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_status(args) -> int:
    p = open_store(args).progress()
    if args.json:
        print(json.dumps(p, indent=1))
        return 0
    print(f"{p['answers']} answers")
    for q, s in p["questions"].items():
        print(f"  {q:10s} {s['answered']:6d} / {s['wanted']:<6d} ({s['tasks']} items)")
    for pair, n in p["pairs"].items():
        print(f"  {pair}: {n}")
    for r in p["raters"]:
        rel = "-" if r["reliability"] is None else f"{r['reliability']:.2f}"
        print(f"  {r['rater']}: {r['answers']} answers, reliability {rel}")
    return 0


def cmd_export(args) -> int:
    from ..eval.arena.store import COUNT_FIELDS, VOTE_FIELDS, write_csv

    votes, counts = open_store(args).export(args.min_reliability)
    out = Path(args.out)
    write_csv(votes, VOTE_FIELDS, out / "votes.csv")
    write_csv(counts, COUNT_FIELDS, out / "counts.csv")
    print(f"{out / 'votes.csv'}: {len(votes)} votes; {out / 'counts.csv'}: {len(counts)} counting answers")
    print(f"next: limner eval elo {out / 'votes.csv'}")
    return 0


def add_parser(sub) -> None:
    from ..eval.arena.store import QUESTIONS, Settings
    from ..eval.arena.study import StudySpec

    a = sub.add_parser("arena", help="the side-by-side human rating app: create a study, invite, serve, export")
    verbs = a.add_subparsers(dest="arena_verb", required=True)

    def db(p):
        p.add_argument("--db", default=DEFAULT_DB, help=f"SQLite file or database URL, e.g. "
                       f"postgresql://user@host/db (default: {DEFAULT_DB})")

    c = verbs.add_parser("create", help="make (or extend) a study from a `limner eval generate` folder")
    c.add_argument("generations", help="the folder with manifest.jsonl")
    db(c)
    c.add_argument("--questions", nargs="+", default=list(StudySpec.questions), choices=list(QUESTIONS))
    c.add_argument("--model", action="append", help="only these models (repeatable; default: all)")
    c.add_argument("--votes-per-item", type=int, default=1, help="answers wanted per item (default 1)")
    c.add_argument("--obvious-checks", type=int, default=10, help="attention items: an image vs a wrecked copy")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(fn=cmd_create)

    m = verbs.add_parser("add-model", help="place a new model against its nearest neighbours only")
    m.add_argument("model", help="the new model's name in the generation manifest")
    db(m)
    m.add_argument("--neighbours", type=int, default=2)
    m.set_defaults(fn=cmd_add_model)

    i = verbs.add_parser("invite", help="make invite tokens and print their login links")
    db(i)
    i.add_argument("-n", type=int, default=1)
    i.add_argument("--name", default="rater")
    i.add_argument("--admin", action="store_true", help="tokens that can see the admin page and export")
    i.add_argument("--url", default="http://127.0.0.1:8000", help="the address raters reach the server at")
    i.set_defaults(fn=cmd_invite)

    s = verbs.add_parser("serve", help="serve the rating page, the admin page and the API")
    db(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--attention-rate", type=float, default=Settings.attention_rate)
    s.set_defaults(fn=cmd_serve)

    st = verbs.add_parser("status", help="answers per question and pair, rater reliability")
    db(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)

    e = verbs.add_parser("export", help="votes.csv (Chatbot Arena convention) and counts.csv")
    db(e)
    e.add_argument("--out", default=".", help="folder to write votes.csv and counts.csv in")
    e.add_argument("--min-reliability", type=float, help="leave out raters who passed fewer attention checks")
    e.set_defaults(fn=cmd_export)
