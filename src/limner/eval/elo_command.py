"""``limner eval elo VOTES``: leaderboards from side-by-side votes (see limner.eval.ratings)."""
from __future__ import annotations

import json


def parse_anchor(text: str | None) -> tuple[str, float] | None:
    if not text:
        return None
    model, sep, value = text.rpartition("=")
    try:
        if not sep or not model:
            raise ValueError
        return model, float(value)
    except ValueError:
        raise ValueError(f"--anchor wants MODEL=RATING (e.g. sdxl=860), got {text!r}") from None


def cmd_elo(args) -> int:
    from .ratings import rate, rate_by_question, load_votes

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
