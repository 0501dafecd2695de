"""`limner data init | run | demo | report | paraphrase`: curate image-text data and see what each stage did;
rewrite captions with a language model."""
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


def cmd_paraphrase(a) -> int:
    from ..common.files import write_atomic
    from ..data.paraphrase import ParaphraserConfig, paraphrase

    captions = [line.strip() for line in Path(a.captions).read_text().splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"{a.captions} holds no captions: write one caption a line")
    spec = {"base_url": a.base_url, "model": a.model, "path": a.path, "n": a.n, "temperature": a.temperature,
            "api_key_env": a.api_key_env}
    if a.prompt_file:
        spec["prompt"] = Path(a.prompt_file).read_text()
    cfg = ParaphraserConfig(**spec, batch_size=a.batch_size)
    try:
        rewrites, report = paraphrase(cfg.build(), captions, cfg.n, a.cache_dir, cfg.batch_size, show=not a.quiet)
    except RuntimeError as e:   # the server refused the key or the model: every caption would fail the same way
        print(f"limner: error: {e}", file=sys.stderr)
        return 2
    out = Path(a.output)
    write_atomic(out, "".join(json.dumps({"caption": c, "paraphrases": rewrites[c]}) + "\n"
                              for c in dict.fromkeys(captions)))
    print(report.line(), file=sys.stderr)
    print(out)
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
    q = ds.add_parser("paraphrase", help="rewrite captions in other words with a language model (cached)")
    q.add_argument("captions", help="a text file, one caption a line")
    q.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://localhost:8000/v1 (with --model)")
    q.add_argument("--model", help="the model the server serves")
    q.add_argument("--api-key-env", default="OPENAI_API_KEY", help="the environment variable holding its key")
    q.add_argument("--path", help="or: a local transformers model folder (causal LM or seq2seq such as Flan-T5)")
    q.add_argument("-n", "--n", type=int, default=3, help="rewrites asked per caption (default 3)")
    q.add_argument("--temperature", type=float, default=0.8)
    q.add_argument("--prompt-file", help="a prompt of your own, with {caption} where the caption goes")
    q.add_argument("--batch-size", type=int, default=32, help="captions asked (and cached) together")
    q.add_argument("--cache-dir", help="where answers are kept (default: <limner cache>/paraphrase)")
    q.add_argument("--output", "-o", required=True, help="JSONL to write: {caption, paraphrases} a line")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(fn=cmd_paraphrase)
    p = ds.add_parser("report", help="what each stage did: table, PNG plots, report.html")
    p.add_argument("manifest", help="manifest.parquet, or the run's out_dir")
    p.add_argument("--out", help="folder for report.html (default: beside the manifest)")
    p.set_defaults(fn=cmd_report)
