"""`limner eval suites | generate | score | report | elo`: prompt suites, generation for several models,
automatic metrics, the report page, and ratings from side-by-side votes."""
from __future__ import annotations

import json
from pathlib import Path

from ..common.files import write_atomic

# --- suites -----------------------------------------------------------------------------------------

BENCHMARKS_HELP = ("a benchmarks folder laid out as ../shared/benchmarks (NAME/FILE), read before the suites "
                   "shipped with limner and the download cache [$LIMNER_BENCHMARKS]")


def cmd_suites_list(args) -> int:
    from ..eval import suites

    listing = suites.list_suites(getattr(args, "benchmarks", None))
    width = max(map(len, listing))
    for name, desc in listing.items():
        print(f"{name:{width}s}  {desc}")
    return 0


def load_prompts(args) -> list:
    from ..eval import suites

    return suites.load_suite(args.name, getattr(args, "format", None), getattr(args, "limit", None),
                             getattr(args, "benchmarks", None))


def format_tags(tags: dict) -> str:
    return "; ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in tags.items())


def cmd_suites_show(args) -> int:
    for p in load_prompts(args):
        if getattr(args, "json", False):
            print(json.dumps(p.to_dict(), ensure_ascii=False))
        else:
            print(f"{p.id}\t{p.text}" + (f"\t[{format_tags(p.tags)}]" if p.tags else ""))
    return 0


def cmd_suites_export(args) -> int:
    prompts = load_prompts(args)
    out = Path(args.out)
    # the JSONL that load_suite reads back (format "jsonl"), ids and constraints kept
    write_atomic(out, "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in prompts))
    print(f"wrote {len(prompts)} prompts to {out}")
    return 0


def add_eval_suites_parser(eval_subparsers) -> None:
    """Register `suites` with `list`, `show` and `export` under the `limner eval` sub-parsers."""
    from ..eval.suites import FORMATS

    s = eval_subparsers.add_parser("suites", help="list, show or export prompt suites (benchmarks, Shapes World)")
    s.add_argument("--benchmarks", help=BENCHMARKS_HELP)
    s.set_defaults(fn=cmd_suites_list)   # bare `limner eval suites` lists
    verbs = s.add_subparsers(dest="suites_verb")
    verbs.add_parser("list", help="suite names, descriptions, prompt counts and where each is read from").set_defaults(fn=cmd_suites_list)

    def source(p):
        p.add_argument("name", help="a suite name (see `list`), a file or folder, or an http(s) URL")
        p.add_argument("--format", choices=list(FORMATS), help="the file format (default: from the name)")
        p.add_argument("--limit", type=int, help="only the first N prompts")

    sh = verbs.add_parser("show", help="print a suite's prompts: id, text, tags")
    source(sh)
    sh.add_argument("--json", action="store_true", help="one JSON object per prompt")
    sh.set_defaults(fn=cmd_suites_show)
    ex = verbs.add_parser("export", help="write a suite as JSONL (one prompt record per line)")
    source(ex)
    ex.add_argument("--out", required=True, help="the .jsonl file to write")
    ex.set_defaults(fn=cmd_suites_export)


# --- generate ---------------------------------------------------------------------------------------


def cmd_eval_generate(args) -> int:
    from ..eval.generate import generate_suite, parse_size, safe_name
    from ..eval.suites import load_suite
    from ..pipeline.backends import load_backend

    size = parse_size(getattr(args, "size", None))   # a bad --size is refused before any model loads
    prompts = load_suite(args.suite, limit=getattr(args, "limit", None), benchmarks=getattr(args, "benchmarks", None))
    backends = [load_backend(spec) for spec in args.model]
    out = Path(getattr(args, "out", None) or Path("generations") / safe_name(Path(str(args.suite)).stem))
    m = generate_suite(prompts, backends, out, seeds=getattr(args, "seeds", None) or (0,),
                       steps=getattr(args, "steps", None), guidance=getattr(args, "guidance", None),
                       size=size, batch_size=getattr(args, "batch_size", 8),
                       progress=not getattr(args, "no_progress", False))
    blocked = f", {m.blocked} refused by the content policy" if m.blocked else ""
    print(f"{m.path}: {m.generated} generated, {m.skipped} already there{blocked}")
    return 0


def add_eval_generate_parser(eval_subparsers):
    p = eval_subparsers.add_parser(
        "generate", help="images for every prompt x model x seed of a suite (resumable, cached)",
        description="Generate a suite with one or more models. A model is a shipped limner name or a folder "
                    "with limner.json, a diffusers pipeline folder (model_index.json), or the URL of an "
                    "OpenAI images API server (URL#model). Rerunning makes only the missing images.")
    p.add_argument("--suite", required=True, help="a suite name (see `limner eval suites`), file, folder or URL")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--benchmarks", help=BENCHMARKS_HELP)
    p.add_argument("--model", action="append", required=True, metavar="SPEC", help="a model (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per prompt (default: 0)")
    p.add_argument("--out", help="output folder (default: generations/<suite>)")
    p.add_argument("--steps", type=int, help="sampling steps (default: each model's own)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: each model's own)")
    p.add_argument("--size", metavar="WxH", help="image size, e.g. 512x512 (default: each model's own)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per model call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_eval_generate)
    return p


# --- score ------------------------------------------------------------------------------------------


def cmd_eval_score(args) -> int:
    from ..eval.metrics import SCORES, score_generations, table

    scores = score_generations(args.gen_dir, args.metric, clip=args.clip, vqa=args.vqa, features=args.features,
                               reference=args.reference, rounds=args.rounds, seed=args.seed, device=args.device,
                               batch_size=args.batch_size, progress=not args.no_progress)
    out = Path(args.out or Path(args.gen_dir) / SCORES)
    write_atomic(out, json.dumps(scores, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(scores, indent=1, ensure_ascii=False) if args.json else f"{table(scores)}\n\nwrote {out}")
    return 0


def add_eval_score_parser(eval_subparsers):
    from ..eval.metrics import METRICS

    p = eval_subparsers.add_parser(
        "score", help="automatic metrics of a generation folder: Shapes World, CLIPScore, VQAScore, FID, KID, CMMD",
        description="Score the images of `limner eval generate` per model and per tag, with bootstrap 95% "
                    "intervals over prompts. Models are local folders you point to; nothing is downloaded. "
                    "Default metrics: shapes on Shapes World suites, plus what --clip, --vqa, --features and "
                    "--reference make possible. Rerunning scores only new images.")
    p.add_argument("gen_dir", help="the --out folder of `limner eval generate` (holds manifest.jsonl)")
    p.add_argument("--metric", action="append", choices=METRICS, help="a metric (repeatable; default: see above)")
    p.add_argument("--clip", help="CLIP for clipscore and cmmd: a transformers CLIPModel folder or open_clip:NAME[:WEIGHTS]")
    p.add_argument("--vqa", help="a generative VQA model folder for vqascore (BLIP VQA, BLIP-2, LLaVA, ...)")
    p.add_argument("--features", help="feature extractor for fid and kid: a transformers vision model or CLIP folder")
    p.add_argument("--reference", help="a folder of real images for fid, kid and cmmd")
    p.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds (0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", help="where to write the summary (default: GEN_DIR/scores.json)")
    p.add_argument("--device", default="cpu", help="torch device for the models, e.g. cuda")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call")
    p.add_argument("--json", action="store_true", help="print scores.json instead of the tables")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(fn=cmd_eval_score)
    return p


# --- report -----------------------------------------------------------------------------------------


def cmd_eval_report(args) -> int:
    from ..eval.ratings import parse_anchor
    from ..eval.report import build_report

    page = build_report(args.out, votes=args.votes, counts=args.counts, gen_dir=args.generations,
                        scores=args.scores, rounds=args.rounds, seed=args.seed, anchor=parse_anchor(args.anchor),
                        samples=args.samples)
    print(page)
    return 0


def add_eval_report_parser(eval_subparsers):
    from ..eval.report_data import COUNT_COLUMNS

    p = eval_subparsers.add_parser(
        "report", help="one HTML page with plots: leaderboards, win rates, counting, metrics, samples",
        description="Write report.html, its PNG plots, samples/ and report.json into one folder: "
                    "leaderboards per question and suite with 95%% intervals and win-rate maps (from --votes), "
                    "counting accuracy (--counts), automatic metrics, their per-skill breakdowns and their "
                    "agreement with the human ratings (--scores), and sample image pairs (--generations). "
                    "Give at least --votes or --scores.")
    p.add_argument("--votes", help="votes (.csv/.jsonl): the arena's export, or any battles in the Chatbot Arena "
                                   "convention")
    p.add_argument("--counts", help=f"counting answers (.csv): {COUNT_COLUMNS}")
    p.add_argument("--generations", metavar="GEN_DIR", help="a `limner eval generate` output folder, for samples")
    p.add_argument("--scores", help="scores.json of `limner eval score`")
    p.add_argument("--out", default="eval-report", help="output folder (default: eval-report)")
    p.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds for the 95%% intervals (0: none)")
    p.add_argument("--anchor", metavar="MODEL=RATING", help="pin one model's rating, e.g. sdxl=860")
    p.add_argument("--samples", type=int, default=6, help="sample image pairs to show (default: 6)")
    p.add_argument("--seed", type=int, default=0, help="seed for the bootstrap and the choice of samples")
    p.set_defaults(fn=cmd_eval_report)
    return p


# --- elo --------------------------------------------------------------------------------------------


def cmd_elo(args) -> int:
    from ..eval.ratings import load_votes, parse_anchor, rate, rate_by_question

    votes = load_votes(args.votes)
    anchor = parse_anchor(getattr(args, "anchor", None))
    rounds, seed = getattr(args, "rounds", 1000), getattr(args, "seed", 0)
    if rounds < 0:
        raise ValueError("--rounds must be 0 (no intervals) or more")
    question = getattr(args, "question", None)
    if question:
        results = {question: rate(votes, question, rounds, seed, anchor)}
    else:
        results = rate_by_question(votes, rounds, seed, anchor)
    if getattr(args, "json", False):
        print(json.dumps({"votes": str(args.votes), "n_votes": len(votes), "models": votes.models,
                          "questions": {q: r.to_dict() for q, r in results.items()}}, indent=2))
    else:
        print("\n\n".join(r.leaderboard() for r in results.values()))
    return 0


def add_elo_parser(eval_subparsers):
    p = eval_subparsers.add_parser(
        "elo", help="Bradley-Terry ratings with bootstrap intervals, online Elo and win rates from votes",
        description="Ratings from side-by-side votes in the Chatbot Arena convention: a CSV, JSONL or "
                    "JSON list with model_a, model_b, winner (model_a, model_b, tie, tie (bothbad)) and "
                    "optionally question, prompt_id, rater. Ratings average 1000 unless anchored.")
    p.add_argument("votes", help="votes file (.csv, .jsonl or .json)")
    p.add_argument("--json", action="store_true", help="print everything as JSON: intervals, Elo, win rates")
    p.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds for the 95%% intervals (0: none)")
    p.add_argument("--anchor", metavar="MODEL=RATING", help="pin one model's rating, e.g. sdxl=860")
    p.add_argument("--question", help="only this question (e.g. overall; 'all' for every vote combined)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(fn=cmd_elo)
    return p


# --- the group --------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluation: prompt suites, generation for several models, ratings from votes")
    verbs = e.add_subparsers(dest="eval_verb", required=True)
    for add in (add_eval_suites_parser, add_eval_generate_parser, add_eval_score_parser, add_eval_report_parser,
                add_elo_parser):
        add(verbs)
