"""`limner train CONFIG`: train an autoencoder or a denoiser, or post-train one against a reward."""
from __future__ import annotations

import os
from pathlib import Path


def cmd_train(a) -> int:
    import dataclasses

    import yaml

    from ..common.config import build
    from ..train.train import TrainConfig, run

    Config = TrainConfig
    if Path(a.config).exists() and (yaml.safe_load(Path(a.config).read_text()) or {}).get("kind") == "reward":
        from ..train import reward  # post-training of an exported model against the Shapes World scorer

        Config, run = reward.RewardConfig, reward.run
    cfg = Config.load(a.config)
    if a.set:
        raw = dataclasses.asdict(cfg)
        for kv in a.set:
            key, _, value = kv.partition("=")
            *parents, leaf = key.split(".")
            node = raw
            for p in parents:
                node = node[p]
            node[leaf] = yaml.safe_load(value)
        cfg = build(Config, raw, a.config)
    path = run(cfg, resume=a.resume)
    if os.environ.get("RANK", "0") == "0":   # under torchrun, one process prints the model folder
        print(path)
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train an autoencoder or denoiser from a YAML config")
    t.add_argument("config")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. steps=100")
    t.set_defaults(fn=cmd_train)
