"""Prompt suites: every shared benchmark loads with the count its SOURCE.md states, each format parses from a
small file of its own, bad input says where and what, Shapes World suites carry constraints, and the CLI."""
import io
import json
import re
import urllib.error
from argparse import Namespace
from collections import Counter

import pytest

from limner.eval import suites
from limner.cli.eval import cmd_suites_export, cmd_suites_list, cmd_suites_show
from limner.eval.suites import SuiteFormatError, list_suites, load_suite

ROOT = suites.benchmarks_dir()
needs_shared = pytest.mark.skipif(not ROOT.is_dir(), reason=f"shared benchmarks folder {ROOT} not present "
                                                            "(set $LIMNER_BENCHMARKS to run these)")


def source_md(name: str, root=ROOT) -> str:
    return (root / name / "SOURCE.md").read_text(encoding="utf-8")


def stated_count(name: str, root=ROOT) -> int:
    """The prompt count a SOURCE.md states ("- Prompts: 1632 rows"; T2I-CompBench: "(2400 total)")."""
    text = source_md(name, root)
    m = re.search(r"\((\d+) total\)", text) or re.search(r"^- Prompts: (\d+)", text, re.M)
    assert m, f"no prompt count in {name}/SOURCE.md"
    return int(m.group(1))


def stated_breakdown(name: str, label: str) -> dict[str, int]:
    """'label a 80, b c 99, ...' in a SOURCE.md -> {"a": 80, "b c": 99}."""
    line = next(l for l in source_md(name).splitlines() if label in l)
    return {k.strip(): int(n) for k, n in re.findall(r"(\w[\w -]*?) (\d+)(?=[,)]|\.?$)", line.split(label, 1)[1])}


# ----------------------------------------------------------------------------- the shared benchmark files


@needs_shared
@pytest.mark.parametrize("name", list(suites.BENCHMARKS))
def test_shared_suite_loads_with_stated_count(name):
    prompts = load_suite(name)
    assert len(prompts) == stated_count(name)
    ids = [p.id for p in prompts]
    assert len(set(ids)) == len(ids), "ids must be unique"
    assert all(i.startswith(f"{name}-") for i in ids)
    assert all(p.text and p.text == p.text.strip() and p.suite == name for p in prompts)
    assert [p.id for p in load_suite(name)] == ids, "ids must be stable"
    assert [p.id for p in load_suite(name, limit=5)] == ids[:5]


@needs_shared
def test_shared_tags():
    parti = load_suite("partiprompts")
    assert len({p.tags["category"] for p in parti}) == 12 and len({p.tags["challenge"] for p in parti}) == 11
    assert any(p.text.startswith('"G I G G L E"') for p in parti), "TSV quotes are part of the prompt"

    draw = Counter(p.tags["category"] for p in load_suite("drawbench"))
    assert len(draw) == 11 and "Gary Marcus et al." in draw          # upstream's trailing space stripped

    skills = Counter(s for p in load_suite("genai_bench") for s in p.tags["skills"])
    assert skills == stated_breakdown("genai_bench", "prompt ids.")

    geneval = load_suite("geneval")
    assert Counter(p.tags["tag"] for p in geneval) == stated_breakdown("geneval", "tags:")
    assert all(p.constraints["include"] for p in geneval)
    assert any(p.constraints["exclude"] for p in geneval if p.tags["tag"] == "counting")

    num = load_suite("geckonum")
    assert Counter(p.tags["prompt_type"] for p in num) == stated_breakdown("geckonum", "prompt_type counts:")
    assert next(p for p in num if p.text == "3 corkscrews, one crib and 1 okra.").constraints == \
        {"counts": {"corkscrew": 3, "crib": 1, "okra": 1}}

    gecko = Counter(p.tags["subset"] for p in load_suite("gecko2k"))
    assert gecko == {"Gecko(R)": 616, "Gecko(S)": 930}                  # as SOURCE.md splits the 1546
    assert Counter(p.tags["category"] for p in load_suite("t2i_compbench")) == {
        c: 300 for c in ("color", "shape", "texture", "spatial", "non_spatial", "complex", "3d_spatial", "numeracy")}


@needs_shared
def test_shared_folders_and_files_by_path():
    assert len(load_suite(ROOT / "partiprompts")) == 1632                  # folder named after its format
    assert load_suite(ROOT / "geckonum" / "prompts.csv")[0].suite == "geckonum"   # sniffed from the header
    assert load_suite(ROOT / "gecko2k" / "prompts.csv")[0].suite == "gecko2k"
    color = load_suite(ROOT / "t2i_compbench" / "dataset" / "color_val.txt")
    assert len(color) == 300 and color[0].tags == {"category": "color", "split": "val"}


# ----------------------------------------------------------------------------- each format from a small file

FIXTURES = {
    "PartiPrompts.tsv": ("partiprompts", 'Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\tsome note\n'
                                         '"HI" on a wall\tArts\tWriting & Symbols\t\n'),
    "DrawBench.tsv": ("drawbench", "Prompts\tCategory\r\nA red colored car.\tColors\r\nTwo cats.\tCounting \r\n"),
    "DALLE3.txt": ("dalle3_eval", "a cat on a sofa\n\nun cuerpo de cristal"),
    "DOCCI-Test-Pivots.txt": ("docci_test_pivots", "A view of a tow truck.\r\nA close up of a leaf.\r\n"),
    "genai_image.json": ("genai_bench", json.dumps({"00000": {"id": "00000", "prompt": "A baker. ", "models": {}},
                                                    "00001": {"id": "00001", "prompt": "No cats."}})),
    "geckonum.csv": ("geckonum", "index,prompt,has_numeral,is_frequent,entities,prompt_type,dataset_id\n"
                                 "0,1 dog.,0,1,dog:1,numeric_simple,geckonum_00000\n"
                                 '1,"fewer kangaroos than cribs",0,1,"kangaroo:fewer,crib:X",approx-2-entity,'
                                 'geckonum_00001\n'),
    "gecko.csv": ("gecko2k", ",dataset_id,prompt,prompt_type,prompt_id,max_disagreement_less_0.5\n"
                             '0,att/count:x,"three cats, one dog",Gecko(S),0,True\n'
                             '1,tifa_45,a bowl,Gecko(R),1,False\n'),
    "evaluation_metadata.jsonl": ("geneval", '{"tag": "counting", "include": [{"class": "clock", "count": 2}], '
                                             '"exclude": [{"class": "clock", "count": 3}], "prompt": "two clocks"}\n'
                                             '{"tag": "single_object", "include": [{"class": "cow", "count": 1}], '
                                             '"prompt": "a photo of a cow"}\n'),
    "shape_val.txt": ("t2i_compbench", "a round clock and a square table\r\na oval mirror"),
}


@pytest.mark.parametrize("filename", list(FIXTURES))
def test_each_format_parses_a_small_file(tmp_path, filename):
    fmt, content = FIXTURES[filename]
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    assert suites.sniff_format(path) == fmt
    prompts = load_suite(path)
    assert len(prompts) == 2 and [p.id for p in prompts] == [p.id for p in load_suite(path, fmt)]
    assert len({p.id for p in prompts}) == 2 and all(p.text == p.text.strip() for p in prompts)
    assert load_suite(path, fmt, limit=1) == prompts[:1]


def test_format_details(tmp_path):
    def load(name):
        (tmp_path / name).write_text(FIXTURES[name][1], encoding="utf-8")
        return load_suite(tmp_path / name)

    parti = load("PartiPrompts.tsv")
    assert parti[0].tags == {"category": "Abstract", "challenge": "Basic", "note": "some note"}
    assert parti[1].text == '"HI" on a wall' and "note" not in parti[1].tags
    assert load("DrawBench.tsv")[1].tags == {"category": "Counting"}
    assert [p.text for p in load("DALLE3.txt")] == ["a cat on a sofa", "un cuerpo de cristal"]
    (tmp_path / "genai_skills.json").write_text(json.dumps({"basic": [0], "negation": [1], "counting": [1]}))
    genai = load("genai_image.json")
    assert [p.id for p in genai] == ["genai_bench-00000", "genai_bench-00001"]
    assert genai[1].tags == {"skills": ["negation", "counting"]}
    num = load("geckonum.csv")
    assert num[0].constraints == {"counts": {"dog": 1}} and num[1].constraints is None
    assert num[1].tags["entities"] == ["kangaroo:fewer", "crib:X"]
    gecko = load("gecko.csv")
    assert gecko[0].text == "three cats, one dog" and gecko[0].tags["subskill"] == "att/count"
    assert gecko[0].tags["reliable"] == "true" and "skill" not in gecko[1].tags
    geneval = load("evaluation_metadata.jsonl")
    assert geneval[0].constraints["exclude"] == [{"class": "clock", "count": 3}]
    assert geneval[1].constraints["exclude"] == []


def offline(url, timeout):
    raise urllib.error.URLError("Name or service not known")


def test_benchmarks_folder_from_env(tmp_path, monkeypatch):
    """A folder given wins; a suite it lacks comes from the package when shipped, else is fetched (offline: a
    clear error that says where to put the file); listing never downloads."""
    (tmp_path / "drawbench").mkdir()
    (tmp_path / "drawbench" / "DrawBench.tsv").write_text(FIXTURES["DrawBench.tsv"][1])
    monkeypatch.setenv("LIMNER_BENCHMARKS", str(tmp_path))
    monkeypatch.setenv("LIMNER_SUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(suites.urllib.request, "urlopen", offline)
    assert [p.text for p in load_suite("drawbench")] == ["A red colored car.", "Two cats."]
    listing = list_suites()
    assert "2 prompts" in listing["drawbench"] and str(tmp_path) in listing["drawbench"]
    assert "(1632 prompts) [shipped with limner]" in listing["partiprompts"]
    assert len(load_suite("partiprompts")) == 1632
    gecko = suites.FETCHED["gecko2k"]
    assert listing["gecko2k"].endswith(f"[not shipped: {gecko.why}; fetched on first use from {gecko.url}]")
    with pytest.raises(FileNotFoundError, match=r"'gecko2k' is not shipped with limner .*Name or service not known"
                                                r".*Offline\? .* put it at .*gecko2k/prompts.csv"):
        load_suite("gecko2k")


def test_every_public_suite_is_shipped_or_fetched():
    shipped = {name for name, (rel, _) in suites.BENCHMARKS.items() if (suites.SHIPPED_BENCHMARKS / rel).exists()}
    assert shipped.isdisjoint(suites.FETCHED) and shipped | set(suites.FETCHED) == set(suites.BENCHMARKS)
    # licences: only the suites whose licences let limner redistribute them (benchmarks/README.md says why)
    assert shipped == {"partiprompts", "geneval", "t2i_compbench", "geckonum", "genai_bench", "docci_test_pivots"}
    for name in shipped:   # each with its provenance and licence, and a prompt count that matches it
        assert "icense" in source_md(name, suites.SHIPPED_BENCHMARKS)
        assert len(load_suite(name, benchmarks=suites.SHIPPED_BENCHMARKS)) == stated_count(name, suites.SHIPPED_BENCHMARKS)
    readme = (suites.SHIPPED_BENCHMARKS / "README.md").read_text(encoding="utf-8")
    assert all(f"| {name} |" in readme for name in shipped) and all(f"- {name}:" in readme for name in suites.FETCHED)


def test_the_shipped_suites_are_package_data():
    import tomllib

    package = suites.SHIPPED_BENCHMARKS.parent.parent   # src/limner
    config = tomllib.loads((package.parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["limner"]
    packaged = {f for pattern in patterns for f in package.glob(pattern) if f.is_file()}
    assert {f for f in suites.SHIPPED_BENCHMARKS.rglob("*") if f.is_file()} <= packaged


@needs_shared
def test_shipped_and_fetched_files_are_the_shared_ones():
    import hashlib

    shipped = [f for f in suites.SHIPPED_BENCHMARKS.rglob("*") if f.is_file() and f.name != "README.md"]
    assert len(shipped) >= 14
    for f in shipped:
        assert f.read_bytes() == (ROOT / f.relative_to(suites.SHIPPED_BENCHMARKS)).read_bytes(), f
    for name, source in suites.FETCHED.items():
        assert hashlib.sha256((ROOT / suites.BENCHMARKS[name][0]).read_bytes()).hexdigest() == source.sha256, name


@needs_shared
def test_a_fetched_suite_is_downloaded_once_and_checked(tmp_path, monkeypatch):
    calls = []
    served = {"body": (ROOT / "drawbench" / "DrawBench.tsv").read_bytes()}

    def urlopen(url, timeout):
        calls.append(url)
        return FakeResponse(served["body"])

    monkeypatch.setattr(suites.urllib.request, "urlopen", urlopen)
    monkeypatch.setenv("LIMNER_BENCHMARKS", str(tmp_path / "empty"))
    monkeypatch.setenv("LIMNER_SUITE_CACHE", str(tmp_path / "cache"))
    assert "fetched on first use" in list_suites()["drawbench"] and not calls   # listing never downloads
    prompts = load_suite("drawbench")
    assert calls == [suites.FETCHED["drawbench"].url]
    assert [p.id for p in prompts] == [p.id for p in load_suite("drawbench", benchmarks=ROOT)]
    assert load_suite("drawbench") == prompts and len(calls) == 1
    assert "(200 prompts) [downloaded from https://" in list_suites()["drawbench"]
    # a file that changed upstream is refused, not read under the old file's ids
    served["body"] = FIXTURES["DrawBench.tsv"][1].encode()
    with pytest.raises(ValueError, match="not the file limner was tested with"):
        load_suite("dalle3_eval")


# ----------------------------------------------------------------------------- errors


def test_unknown_name_lists_known_suites():
    with pytest.raises(ValueError, match="partiprompts.*shapes-counting"):
        load_suite("no-such-suite")
    with pytest.raises(ValueError, match="unknown format"):
        load_suite("drawbench", fmt="xml")


@pytest.mark.parametrize("name, fmt, content, message", [
    ("p.tsv", "partiprompts", "Prompt\tCategory\nbond\tAbstract\n", r"p\.tsv, line 1: expected a header.*Challenge"),
    ("d.tsv", "drawbench", "Prompts\tCategory\nA car.\tColors\nno category here\n", r"d\.tsv, line 3: expected"),
    ("g.jsonl", "geneval", '{"tag": "x", "include": [], "prompt": "a"}\nnot json\n',
     r"g\.jsonl, line 2: expected one JSON"),
    ("g2.jsonl", "geneval", '{"prompt": "a"}\n', r'line 1: expected a GenEval record with "tag"'),
    ("x.json", "genai_bench", '["a", "b"]', r"x\.json: expected a JSON object"),
    ("n.csv", "geckonum", "prompt,other\n1 dog.,x\n", r"n\.csv, line 1: expected a header.*missing entities"),
])
def test_unparsable_files_say_where_and_what(tmp_path, name, fmt, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(SuiteFormatError, match=message):
        load_suite(tmp_path / name, fmt)


def test_unknown_file_format_asks_for_one(tmp_path):
    (tmp_path / "data.bin").write_text("something")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_suite(tmp_path / "data.bin")


# ----------------------------------------------------------------------------- URLs


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_url_is_downloaded_once_into_the_cache(tmp_path, monkeypatch):
    calls = []

    def urlopen(url, timeout):
        calls.append(url)
        return FakeResponse(FIXTURES["DrawBench.tsv"][1].encode())

    monkeypatch.setattr(suites.urllib.request, "urlopen", urlopen)
    monkeypatch.setenv("LIMNER_SUITE_CACHE", str(tmp_path))
    url = "https://example.org/data/DrawBench.tsv"
    first = load_suite(url)
    assert [p.tags["category"] for p in first] == ["Colors", "Counting"] and first[0].suite == "drawbench"
    assert load_suite(url) == first and len(calls) == 1
    assert not list(tmp_path.glob("*.part"))


def test_url_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(suites.urllib.request, "urlopen", offline)
    monkeypatch.setenv("LIMNER_SUITE_CACHE", str(tmp_path))
    with pytest.raises(ConnectionError, match="cannot download https://example.org/p.tsv.*offline"):
        load_suite("https://example.org/p.tsv")


# ----------------------------------------------------------------------------- Shapes World suites


@pytest.mark.parametrize("name, cells", [("shapes-counting", 8), ("shapes-binding", 2), ("shapes-spatial", None),
                                         ("shapes-detailed", 6)])
def test_shapes_suites_have_constraints(name, cells):
    prompts = load_suite(name)
    assert prompts and all(p.suite == name and p.id.startswith("shapes-") for p in prompts)
    assert len({p.id for p in prompts}) == len(prompts)
    assert all(p.constraints and p.constraints["groups"] for p in prompts)
    if cells:
        assert len(prompts) == 25 * cells
    if name == "shapes-counting":
        assert {p.tags["count"] for p in prompts} == {str(n) for n in range(1, 9)}
        assert all(p.constraints["groups"][0]["count"] == int(p.tags["count"]) for p in prompts)
    if name == "shapes-spatial":
        assert all(p.constraints["relations"] for p in prompts)
    if name == "shapes-detailed":
        assert all(json.loads(p.reference)["objects"] for p in prompts)
    assert load_suite(name, limit=3) == prompts[:3]


def test_shapes_constraints_round_trip_to_the_scorer():
    from limner.world.scorer import Constraints

    for p in load_suite("shapes-binding", limit=5):
        assert Constraints.from_dict(p.constraints).to_dict() == p.constraints


# ----------------------------------------------------------------------------- the CLI


def test_cli_list(tmp_path, capsys):
    (tmp_path / "drawbench").mkdir()
    (tmp_path / "drawbench" / "DrawBench.tsv").write_text(FIXTURES["DrawBench.tsv"][1])
    assert cmd_suites_list(Namespace(benchmarks=str(tmp_path))) == 0
    out = capsys.readouterr().out
    assert re.search(r"drawbench .*\(2 prompts\)", out) and re.search(r"shapes-counting .*\(200 prompts\)", out)


def test_cli_show_and_export_round_trip(tmp_path, capsys):
    assert cmd_suites_show(Namespace(name="shapes-spatial", limit=2, json=False, format=None)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("shapes-spatial-") and "relation=" in lines[0]

    assert cmd_suites_show(Namespace(name="shapes-counting", limit=3, json=True, format=None)) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == [p.id for p in load_suite("shapes-counting", limit=3)]

    out = tmp_path / "sub" / "suite.jsonl"
    assert cmd_suites_export(Namespace(name="shapes-detailed", out=str(out), limit=4, format=None)) == 0
    assert "wrote 4 prompts" in capsys.readouterr().out
    assert load_suite(out) == load_suite("shapes-detailed", limit=4)     # the export loads back unchanged


def test_cli_show_a_file_with_explicit_format(tmp_path, capsys):
    path = tmp_path / "mine.txt"
    path.write_text("a red circle\na blue square\n")
    assert cmd_suites_show(Namespace(name=str(path), limit=None, json=False, format="lines")) == 0
    assert capsys.readouterr().out.splitlines() == ["mine-0000\ta red circle", "mine-0001\ta blue square"]
    with pytest.raises(SuiteFormatError, match="mine.txt, line 1"):
        cmd_suites_show(Namespace(name=str(path), limit=None, json=False, format="drawbench"))


def test_cli_parser_wiring(capsys):
    import argparse

    from limner.cli.eval import add_eval_suites_parser

    p = argparse.ArgumentParser(prog="limner eval")
    add_eval_suites_parser(p.add_subparsers(dest="eval_verb", required=True))
    args = p.parse_args(["suites", "show", "shapes-binding", "--limit", "2", "--json"])
    assert args.fn(args) == 0 and len(capsys.readouterr().out.splitlines()) == 2
    assert p.parse_args(["suites"]).fn is cmd_suites_list
    assert p.parse_args(["suites", "export", "geneval", "--out", "x.jsonl"]).fn is cmd_suites_export
    with pytest.raises(SystemExit):
        p.parse_args(["suites", "export", "geneval"])    # --out is required
