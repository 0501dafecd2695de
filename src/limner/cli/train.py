"""`limner train CONFIG`: train what the config's `kind:` names (autoencoder, denoiser, planner), or post-train
a model against a reward."""
from __future__ import annotations

import os


def cmd_train(a) -> int:
    from ..train import load_config, run

    path = run(load_config(a.config, overrides=a.set or ()), resume=a.resume)
    if os.environ.get("RANK", "0") == "0":   # under torchrun, one process prints the model folder
        print(path)
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train an autoencoder, denoiser or layout planner from a YAML config")
    t.add_argument("config")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. steps=100")
    t.set_defaults(fn=cmd_train)
