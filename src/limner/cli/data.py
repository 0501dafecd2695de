"""`limner data init | run | demo | report`: curate image-text data and see what each stage did."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path


def cmd_run(a) -> int:
    from ..data.pipeline import PipelineConfig, run, summary
    from ..data.report import load, table

    cfg = PipelineConfig.load(a.config)
    if a.executor:
        cfg.executor = a.executor
    if a.workers:
        cfg.workers = a.workers
    if a.out:
        cfg.out_dir = a.out
    manifest = run(cfg, quiet=a.quiet)
    rows = load(manifest)
    print(json.dumps(summary(rows)) if a.json else table(rows))
    print(manifest)
    return 0


def cmd_init(a) -> int:
    from ..data.template import write_template

    config, cfg, parts = write_template(a.data, a.config, a.out_dir, a.force)
    found = (f"{sum(len(s.members) for s in parts)} images" if cfg.source.kind == "folder"
             else f"{len(parts)} {cfg.source.kind} shard(s)")
    print(f"wrote {config}: {cfg.source.kind} source {cfg.source.path} ({found}), output to {cfg.out_dir}")
    print(f"run it as it is with `limner data run {config}`, or edit its stages first (every key is there, "
          f"with its default)")
    return 0


def cmd_demo(a) -> int:
    from ..data import demo
    from ..data.pipeline import PipelineConfig, run
    from ..data.report import load, write

    root = Path(a.out)
    if not (root / "ground_truth.jsonl").exists():
        print(f"planting a messy corpus in {root / 'raw'} ...", file=sys.stderr)
        demo.build(root, n=a.n, per_defect=a.per_defect, seed=a.seed)
    cfg = demo.configure(PipelineConfig.load(a.config or Path(demo.__file__).with_name("demo.yaml")), root)
    if a.executor:
        cfg.executor = a.executor
    manifest = run(cfg, quiet=a.quiet)
    truth = [json.loads(line) for line in (root / "ground_truth.jsonl").read_text().splitlines()]
    scores = demo.evaluate(load(manifest), truth)
    (root / "scores.json").write_text(json.dumps(scores, indent=2))
    print(f"{'planted defect':<34} {'n':>4} {'recall':>7} {'precision':>9}")
    for k, v in scores.items():
        if "false_positive_rate" in v:
            print(f"{k:<34} {v['n']:>4} false-positive rate {v['false_positive_rate']:.3f} "
                  f"(scores: p99 {v['p99_score']:.3f}, max {v['max_score']:.3f})")
            continue
        prec = "" if v.get("precision") is None else f"{v['precision']:.3f}"
        print(f"{k:<34} {v['n']:>4} {v['recall']:>7.3f} {prec:>9}")
    print(textwrap.fill(demo.SAFETY_NOTE, 100))
    print(f"report: {write(manifest)}")
    print(f"shards: {Path(cfg.out_dir) / 'shards'}  (train on them: data.source webdataset, data.shards "
          f"\"{Path(cfg.out_dir) / 'shards' / '*.tar'}\")")
    return 0


def cmd_report(a) -> int:
    from ..data.report import load, table, write

    print(table(load(a.manifest)))
    print(write(a.manifest, a.out))
    return 0


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="curate image-text data: filter, deduplicate, recaption, scrub")
    ds = d.add_subparsers(dest="data_verb", required=True)
    i = ds.add_parser("init", help="write a pipeline config for your own images that runs as written")
    i.add_argument("data", help="a folder of images (.txt/.json side files), of WebDataset .tar shards, or a .parquet")
    i.add_argument("--config", help="the YAML file to write (default: DATA-curate.yaml in this folder)")
    i.add_argument("--out-dir", help="where the run writes shards and manifest (default: DATA-curated beside DATA)")
    i.add_argument("--force", action="store_true", help="overwrite the config file if it exists")
    i.set_defaults(fn=cmd_init)
    r = ds.add_parser("run", help="run (or resume) a curation pipeline from a YAML config")
    r.add_argument("config")
    r.add_argument("--executor", choices=["local", "ray"])
    r.add_argument("--workers", type=int)
    r.add_argument("--out", help="override out_dir")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(fn=cmd_run)
    m = ds.add_parser("demo", help="plant a messy Shapes World corpus, curate it, score every stage")
    m.add_argument("--out", required=True)
    m.add_argument("-n", type=int, default=300, help="clean scenes (defects come on top)")
    m.add_argument("--per-defect", type=int, default=12)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--config", help="a pipeline YAML to use instead of the demo's (limner/data/demo.yaml)")
    m.add_argument("--executor", choices=["local", "ray"])
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(fn=cmd_demo)
    p = ds.add_parser("report", help="what each stage did: table, PNG plots, report.html")
    p.add_argument("manifest", help="manifest.parquet, or the run's out_dir")
    p.add_argument("--out", help="folder for report.html (default: beside the manifest)")
    p.set_defaults(fn=cmd_report)
