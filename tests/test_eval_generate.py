"""`limner eval generate`: every prompt of a suite by every model (the backends are tested in
test_pipeline_backends.py), resumable, refusals recorded, folder names, the command."""
import argparse
import json

import pytest
from PIL import Image

from limner.cli.eval import add_eval_generate_parser
from limner.eval.generate import folder_names, generate_suite, read_manifest, safe_name
from limner.eval.suites import Prompt, load_suite
from limner.pipeline.backends import load_backend
from limner.safety import watermark as W

# --------------------------------------------------------------------------- generate_suite and the CLI


@pytest.mark.slow
def test_generate_suite_is_resumable(sd_backend, tmp_path):
    prompts = load_suite("shapes-counting")[:3]
    backends = [load_backend("shapes-default"), sd_backend]
    first = generate_suite(prompts, backends, tmp_path, seeds=(0, 1), steps=2, progress=False)
    assert (first.generated, first.skipped) == (12, 0)
    pngs = sorted(tmp_path.rglob("*.png"))
    assert len(pngs) == 12 and {p.parent.name for p in pngs} == {"shapes-default", "tiny-sd"}
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({r["cache_key"] for r in rows}) == 12
    row = rows[0]
    assert row["path"] == f"shapes-default/{safe_name(prompts[0].id)}-s0.png" and row["constraints"]
    assert set(row) >= {"model", "prompt_id", "prompt", "seed", "path", "tags", "constraints", "cache_key"}
    assert W.detect(Image.open(tmp_path / rows[-1]["path"])).detected is True

    again = generate_suite(prompts, backends, tmp_path, seeds=(0, 1), steps=2, progress=False)
    assert (again.generated, again.skipped) == (0, 12)
    # a run killed mid-way: one image lost, the manifest's last line cut short
    (tmp_path / rows[7]["path"]).unlink()
    with (tmp_path / "manifest.jsonl").open("a") as f:
        f.write('{"cache_key": "ab')
    resumed = generate_suite(prompts, backends, tmp_path, seeds=(0, 1), steps=2, progress=False)
    assert (resumed.generated, resumed.skipped) == (1, 11)
    assert (tmp_path / rows[7]["path"]).exists() and len(read_manifest(tmp_path / "manifest.jsonl")) == 12
    # other settings are other images
    assert generate_suite(prompts[:1], backends[:1], tmp_path, seeds=(0,), steps=3, progress=False).generated == 1


def test_refusals_are_recorded_not_fatal(openai_server, tmp_path, capsys):
    prompts = [Prompt("p0", "a red circle", "t", {}), Prompt("p1", "a forbidden thing", "t", {})]
    m = generate_suite(prompts, [load_backend(openai_server)], tmp_path, seeds=(0,))
    assert "2/2" in capsys.readouterr().err   # the progress bar
    assert (m.generated, m.blocked) == (2, 1)
    assert m.rows[1]["path"] is None and "content policy" in m.rows[1]["blocked"]
    assert generate_suite(prompts, [load_backend(openai_server)], tmp_path, progress=False).generated == 0


def test_model_folders_are_safe_and_distinct():
    class Fake:
        def __init__(self, name):
            self.name = name

    names = folder_names([Fake("a/b:c"), Fake("x"), Fake("x")], [{"n": 1}, {"n": 2}, {"n": 3}])
    assert names[0] == "a-b-c" and len(set(names)) == 3 and all(n.startswith("x-") for n in names[1:])
    # the suffix comes from the identity, so the order of --model does not move images between folders
    assert folder_names([Fake("x"), Fake("x")], [{"n": 3}, {"n": 2}]) == names[:0:-1]


def test_cli(openai_server, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_eval_generate_parser(parser.add_subparsers(dest="eval_verb"))
    argv = ["generate", "--suite", "shapes-counting", "--limit", "2", "--model", openai_server + "#a",
            "--model", openai_server + "#b", "--seeds", "0", "1", "--size", "40x40", "--out", str(tmp_path),
            "--no-progress"]
    args = parser.parse_args(argv)
    assert args.fn(args) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'manifest.jsonl'}: 8 generated, 0 already there"
    assert Image.open(next(tmp_path.rglob("*.png"))).size == (40, 40)
    assert len({p.parent for p in tmp_path.rglob("*.png")}) == 2
    assert args.fn(parser.parse_args(argv)) == 0
    assert "0 generated, 8 already there" in capsys.readouterr().out
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        args.fn(parser.parse_args([*argv, "--size", "big"]))
