"""Prompt suites: the public text-to-image benchmarks read from their own files, and Shapes World suites.

`load_suite(name_or_path)` accepts
- a known benchmark name ("partiprompts", "drawbench", ... see `BENCHMARKS`), read from a benchmarks folder
  where one is given or found (``$LIMNER_BENCHMARKS``, or ``../shared/benchmarks`` beside a checkout: the
  tests read those), else from the copy shipped in the package (the suites whose licences allow it, see
  ``benchmarks/README.md``), else fetched once from the pinned URL in `FETCHED` into the download cache;
- a Shapes World suite name ("shapes-counting", "shapes-binding", "shapes-spatial", "shapes-detailed"),
  generated with exact constraints that `limner.world.scorer` checks;
- a path to a benchmark file or folder, its format given (`fmt`) or recognised from its name or header;
- an http(s) URL, downloaded once into ``suites/`` under `limner.cache_root()` (or ``$LIMNER_SUITE_CACHE``).

Every format has one small parser in `FORMATS`; each returns `Prompt`s whose ids depend only on the
file (the row or the upstream id), so the same file always yields the same ids and generations can be
cached by them.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..common.cache import cache_root
from ..common.files import digest, write_atomic

# the repository's sibling folder shared/benchmarks (src/limner/eval/suites.py -> repo -> ..)
DEFAULT_BENCHMARKS = Path(__file__).resolve().parents[3].parent / "shared" / "benchmarks"
# the suites whose licences allow redistribution, shipped as package data in the shared folder's layout
SHIPPED_BENCHMARKS = Path(__file__).resolve().with_name("benchmarks")


@dataclass
class Prompt:
    """One prompt of a suite.

    tags: what the benchmark says about the prompt (category, skills, ...), for per-tag breakdowns.
    constraints: machine-checkable content (GenEval's include/exclude, GeckoNum's counts, a Shapes
    World `Constraints` dict). reference: what the prompt was written from, where the suite has it
    (a Shapes World scene as JSON).
    """

    id: str
    text: str
    suite: str
    tags: dict[str, str | list[str]]
    constraints: dict | None = None
    reference: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class DownloadError(ConnectionError):
    """A suite file that could not be downloaded (`reason`: what urllib said)."""

    def __init__(self, url: str, reason: object):
        self.url, self.reason = url, reason
        super().__init__(f"cannot download {url} ({reason}); offline? Download it elsewhere and pass the file "
                         f"path instead")


class BenchmarkUnavailable(FileNotFoundError, ConnectionError):
    """A named benchmark that is in no folder, not shipped, and could not be fetched: a file the user must
    supply (so the CLI prints the one-line message, as for any missing file)."""


class SuiteFormatError(ValueError):
    """A benchmark file that does not parse as its format; the message names file, line and expectation."""

    def __init__(self, path: Path | str, line: int | None, expected: str):
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: expected {expected}")


# ----------------------------------------------------------------------------- readers shared by parsers


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for non-blank lines; CRLF and a missing final newline are fine."""
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if line.strip():
            yield n, line.strip()


def _table(path: Path, required: tuple[str, ...], delimiter: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a CSV/TSV with a header that must hold `required` columns."""
    # TSV benchmark files quote nothing: a prompt may start with '"' (Parti: '"G I G G L E" painted ...'),
    # and csv's default quoting would eat those quotes. Real CSVs (Gecko) do quote fields with commas.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise SuiteFormatError(path, 1, f"a header with columns {', '.join(required)} "
                                            f"(missing {', '.join(missing)}; found {reader.fieldnames})")
        for row in reader:
            line = reader.line_num
            if any(row.get(c) is None for c in required) or not row[required[0]].strip():
                raise SuiteFormatError(path, line, f"{len(required)}+ fields with a non-empty {required[0]!r}")
            yield line, {k: (v or "").strip() for k, v in row.items() if k is not None}


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SuiteFormatError(path, e.lineno, f"JSON ({e.msg})") from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for n, line in _text_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SuiteFormatError(path, n, f"one JSON object per line ({e.msg})") from None
        if not isinstance(record, dict):
            raise SuiteFormatError(path, n, "a JSON object")
        yield n, record


# ----------------------------------------------------------------------------- one parser per format
# Ids are "<suite>-<upstream id or 0-based row>", so they are stable for a given file.


def parse_lines(path: Path, suite: str = "lines") -> list[Prompt]:
    """One prompt per line (DALL·E 3 Eval, DOCCI-Test-Pivots, GenEval's generation_prompts.txt)."""
    return [Prompt(f"{suite}-{i:04d}", text, suite, {}) for i, (_, text) in enumerate(_text_lines(path))]


def parse_parti(path: Path, suite: str = "partiprompts") -> list[Prompt]:
    """PartiPrompts.tsv: Prompt, Category, Challenge, Note."""
    out = []
    for i, (_, row) in enumerate(_table(path, ("Prompt", "Category", "Challenge"), "\t")):
        tags = {"category": row["Category"], "challenge": row["Challenge"]}
        if row.get("Note"):
            tags["note"] = row["Note"]
        out.append(Prompt(f"{suite}-{i:04d}", row["Prompt"], suite, tags))
    return out


def parse_drawbench(path: Path, suite: str = "drawbench") -> list[Prompt]:
    """DrawBench.tsv: Prompts, Category (one category carries a trailing space upstream; stripped)."""
    return [Prompt(f"{suite}-{i:03d}", row["Prompts"], suite, {"category": row["Category"]})
            for i, (_, row) in enumerate(_table(path, ("Prompts", "Category"), "\t"))]


def parse_genai_bench(path: Path, suite: str = "genai_bench") -> list[Prompt]:
    """genai_image.json ({id: {id, prompt, ...}}) with skill tags from genai_skills.json beside it.

    The per-model Likert ratings in the same file are human ratings, not prompt metadata: not kept here.
    """
    data = _json(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "prompt" in v for v in data.values()):
        raise SuiteFormatError(path, None, 'a JSON object {"00000": {"id": ..., "prompt": ...}, ...}')
    skills: dict[int, list[str]] = {}
    skills_file = path.with_name("genai_skills.json")
    if skills_file.exists():
        for skill, ids in _json(skills_file).items():
            for i in ids:
                skills.setdefault(int(i), []).append(skill)
    out = []
    for key, item in data.items():
        native = str(item.get("id", key))
        tags: dict = {"skills": skills.get(int(native), [])} if native.isdigit() and skills else {}
        out.append(Prompt(f"{suite}-{native}", item["prompt"].strip(), suite, tags))
    return out


def _counts(entities: str) -> dict[str, int] | None:
    """GeckoNum "corkscrew:3, crib:1" -> {"corkscrew": 3, "crib": 1}; None where a count is not a number
    ("kangaroo:fewer,crib:X" in the comparative prompts)."""
    pairs = [e.rsplit(":", 1) for e in entities.split(",") if e.strip()]
    if not pairs or any(len(p) != 2 or not p[1].strip().isdigit() for p in pairs):
        return None
    return {noun.strip(): int(n) for noun, n in pairs}


def parse_geckonum(path: Path, suite: str = "geckonum") -> list[Prompt]:
    """GeckoNum prompts.csv: index, prompt, has_numeral, is_frequent, entities (noun:number), prompt_type."""
    out = []
    for _, row in _table(path, ("prompt", "entities", "prompt_type"), ","):
        index = row.get("index") or str(len(out))
        tags = {"prompt_type": row["prompt_type"], "entities": [e.strip() for e in row["entities"].split(",")]}
        tags |= {k: row[k] for k in ("has_numeral", "is_frequent", "dataset_id") if row.get(k)}
        counts = _counts(row["entities"])
        out.append(Prompt(f"{suite}-{index.zfill(5)}", row["prompt"], suite, tags,
                          {"counts": counts} if counts else None))
    return out


def parse_gecko(path: Path, suite: str = "gecko2k") -> list[Prompt]:
    """Gecko2K prompts.csv: dataset_id (skill/sub-skill for Gecko(S)), prompt, prompt_type, prompt_id, flags."""
    out = []
    for _, row in _table(path, ("prompt", "dataset_id", "prompt_type"), ","):
        native = row.get("prompt_id") or str(len(out))
        skill = row["dataset_id"].split(":")[0]   # "att/count:..." -> "att/count"; Gecko(R) keeps "tifa_45"
        tags = {"subset": row["prompt_type"], "dataset_id": row["dataset_id"]}
        if "/" in skill:
            tags |= {"skill": skill.split("/")[0], "subskill": skill}
        # the reliability flag the Gecko paper uses to pick prompts annotators agree on
        if row.get("max_disagreement_less_0.5"):
            tags["reliable"] = row["max_disagreement_less_0.5"].lower()
        out.append(Prompt(f"{suite}-{native}", row["prompt"], suite, tags))
    return out


def parse_geneval(path: Path, suite: str = "geneval") -> list[Prompt]:
    """GenEval evaluation_metadata.jsonl: {tag, include: [{class, count, ...}], exclude?, prompt} per line."""
    out = []
    for i, (n, rec) in enumerate(_jsonl(path)):
        if not {"tag", "include", "prompt"} <= rec.keys():
            raise SuiteFormatError(path, n, 'a GenEval record with "tag", "include" and "prompt"')
        constraints = {"include": rec["include"], "exclude": rec.get("exclude", [])}
        out.append(Prompt(f"{suite}-{i:04d}", rec["prompt"], suite, {"tag": rec["tag"]}, constraints))
    return out


def parse_compbench(path: Path, suite: str = "t2i_compbench") -> list[Prompt]:
    """T2I-CompBench lists: a folder of the 8 `<category>_val.txt` (the evaluation split), or one list file."""
    if path.is_dir():
        files = sorted(path.glob("*_val.txt")) or sorted(path.glob("dataset/*_val.txt"))
        if not files:
            raise SuiteFormatError(path, None, "a folder with T2I-CompBench <category>_val.txt files")
    else:
        files = [path]
    out = []
    for f in files:
        category, _, split = f.stem.rpartition("_")
        if split not in ("val", "train") or not category:   # color.txt, color_val_seen.txt: the file is the set
            category, split = f.stem, "all"
        for i, (_, text) in enumerate(_text_lines(f)):
            out.append(Prompt(f"{suite}-{f.stem}-{i:03d}", text, suite, {"category": category, "split": split}))
    return out


def parse_limner_jsonl(path: Path, suite: str = "jsonl") -> list[Prompt]:
    """Prompts as `export` writes them: one `Prompt.to_dict()` per line (the suite name is kept)."""
    out = []
    for n, rec in _jsonl(path):
        if not {"id", "text"} <= rec.keys():
            raise SuiteFormatError(path, n, 'a prompt record with "id" and "text"')
        out.append(Prompt(str(rec["id"]), rec["text"], rec.get("suite", suite), rec.get("tags") or {},
                          rec.get("constraints"), rec.get("reference")))
    return out


FORMATS: dict[str, Callable[..., list[Prompt]]] = {
    "partiprompts": parse_parti,
    "drawbench": parse_drawbench,
    "dalle3_eval": parse_lines,
    "docci_test_pivots": parse_lines,
    "genai_bench": parse_genai_bench,
    "geckonum": parse_geckonum,
    "gecko2k": parse_gecko,
    "geneval": parse_geneval,
    "t2i_compbench": parse_compbench,
    "lines": parse_lines,
    "jsonl": parse_limner_jsonl,
}

# benchmark name -> (file or folder inside the shared benchmarks folder, description)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "partiprompts": ("partiprompts/PartiPrompts.tsv", "PartiPrompts (P2), 12 categories x 11 challenges"),
    "drawbench": ("drawbench/DrawBench.tsv", "DrawBench (Imagen), 11 categories"),
    "dalle3_eval": ("dalle3_eval/DALLE3.txt", "DALL·E 3 Eval, long descriptive prompts"),
    "docci_test_pivots": ("docci_test_pivots/DOCCI-Test-Pivots.txt", "DOCCI-Test-Pivots, long detailed prompts"),
    "genai_bench": ("genai_bench/genai_image.json", "GenAI-Bench (image) with 12 skill tags"),
    "geckonum": ("geckonum/prompts.csv", "GeckoNum, numerical reasoning with entity counts"),
    "gecko2k": ("gecko2k/prompts.csv", "Gecko2K, Gecko(R) + Gecko(S) with skill tags"),
    "geneval": ("geneval/evaluation_metadata.jsonl", "GenEval, 6 tags with include/exclude objects"),
    "t2i_compbench": ("t2i_compbench/dataset", "T2I-CompBench val split, 8 categories"),
}



@dataclass(frozen=True)
class Fetched:
    """A benchmark limner may not redistribute: the file to download (pinned to the commit its SOURCE.md
    names), the SHA-256 of the copy limner's parser and ids were tested with, and why it is not shipped."""
    url: str
    sha256: str
    why: str


_OPEN_SORA = "https://raw.githubusercontent.com/PKU-YuanGroup/Open-Sora-Plan/e1095c3ceed30a33b74bfd6e65f45a209c0a6245"
FETCHED: dict[str, Fetched] = {
    "drawbench": Fetched(f"{_OPEN_SORA}/opensora/eval/eval_prompts/DrawBench.tsv",
                         "7b15a7771229808df72ac01667d520774c273d8d975fffb66f8215a07c1d5fa8",
                         "Google published DrawBench without a licence"),
    "dalle3_eval": Fetched(f"{_OPEN_SORA}/opensora/eval/eval_prompts/DALLE3.txt",
                           "5f1e2c4e11737f26e9573f4e86148731fce28f2e307ba80657f47f095a75b8c0",
                           "OpenAI's licence for these prompts is unspecified"),
    "gecko2k": Fetched("https://raw.githubusercontent.com/google-deepmind/gecko_benchmark_t2i/"
                       "84eda5c42188f639108b579ec98843b9bea2046a/prompts.csv",
                       "81058b468d1bef5bfe19f5be76594f7efd0ae2e19e856a705194d83bf5953c45",
                       "some prompts keep their sources' licences, e.g. CC-BY-NC-SA"),
}

# file names that say their format; "prompts.csv" is ambiguous (GeckoNum, Gecko) and is sniffed by header
_FILE_NAMES = {
    "partiprompts.tsv": "partiprompts", "drawbench.tsv": "drawbench", "dalle3.txt": "dalle3_eval",
    "docci-test-pivots.txt": "docci_test_pivots", "genai_image.json": "genai_bench",
    "evaluation_metadata.jsonl": "geneval",
}


# ----------------------------------------------------------------------------- Shapes World suites

SHAPES_SUITES = {
    "shapes-counting": "Shapes World counting, 1-8 of a kind (GeckoNum-like)",
    "shapes-binding": "Shapes World attribute binding, 2-3 colour-shape pairs",
    "shapes-spatial": "Shapes World spatial relations between two objects",
    "shapes-detailed": "Shapes World long detailed scene descriptions",
}


def shapes_suite(name: str, per_cell: int = 25, seed: int | None = None) -> list[Prompt]:
    """A Shapes World suite as Prompts; constraints are `limner.world.scorer.Constraints` dicts."""
    from ..world import suites as world

    if name not in SHAPES_SUITES:
        raise ValueError(f"unknown Shapes World suite {name!r}; choose one of {', '.join(SHAPES_SUITES)}")
    items = world.build(name.removeprefix("shapes-"), per_cell, world.HELD_OUT_SEED if seed is None else seed)
    return [_from_world(name, item) for item in items]


def _from_world(suite: str, item: dict) -> Prompt:
    tags = dict(item["tags"])
    scene = tags.pop("scene", None)   # the scene a detailed prompt describes is its reference, not a tag
    # world ids ("counting-3-0") are prefixed like every other id, so they are unique across suites
    return Prompt(f"shapes-{item['id']}", item["prompt"], suite, {k: str(v) for k, v in tags.items()},
                  item["constraints"], json.dumps(scene, sort_keys=True) if scene is not None else None)


# ----------------------------------------------------------------------------- loading


def benchmarks_dir() -> Path:
    return Path(os.environ.get("LIMNER_BENCHMARKS") or DEFAULT_BENCHMARKS)


def load_suite(name_or_path: str | Path, fmt: str | None = None, limit: int | None = None,
               benchmarks: str | Path | None = None) -> list[Prompt]:
    """The prompts of a suite name, a file or folder, or an http(s) URL; the first `limit` if given."""
    source = str(name_or_path)
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if source in SHAPES_SUITES:
        prompts = shapes_suite(source)
    elif source in BENCHMARKS:
        prompts = _load_benchmark(source, Path(benchmarks) if benchmarks else benchmarks_dir(), fmt)
    elif re.match(r"https?://", source):
        path = download(source)
        prompts = _parse(path, fmt or sniff_format(path, hint=source.split("?")[0]))
    elif Path(source).exists():
        path = Path(source)
        prompts = _parse(path, fmt or sniff_format(path))
    else:
        raise ValueError(f"unknown suite {source!r}: not a file or folder, nor a known suite; known suites: "
                         f"{', '.join([*BENCHMARKS, *SHAPES_SUITES])}")
    return prompts if limit is None else prompts[:limit]


def locate_benchmark(name: str, root: Path) -> tuple[Path, str] | None:
    """(path, where it came from) of a benchmark's file without downloading anything: the folder `root`,
    else the copy shipped with limner, else an earlier download; None when none has it."""
    relative = BENCHMARKS[name][0]
    if (root / relative).exists():
        return root / relative, str(root)
    if (SHIPPED_BENCHMARKS / relative).exists():
        return SHIPPED_BENCHMARKS / relative, "shipped with limner"
    if name in FETCHED and (cached := _cache_path(FETCHED[name].url)).exists():
        return cached, f"downloaded from {FETCHED[name].url}"
    return None


def _load_benchmark(name: str, root: Path, fmt: str | None) -> list[Prompt]:
    found = locate_benchmark(name, root)
    if found:
        path = found[0]
    elif name in FETCHED:
        source = FETCHED[name]
        try:
            path = download(source.url, sha256=source.sha256)
        except DownloadError as e:
            raise BenchmarkUnavailable(
                f"suite {name!r} is not shipped with limner ({source.why}), and downloading it from {source.url} "
                f"failed ({e.reason}). Offline? Fetch that file on a machine that is online and put it at "
                f"{root / BENCHMARKS[name][0]} (or under the folder $LIMNER_BENCHMARKS names), or pass its path "
                f"as the suite") from None
    else:
        raise FileNotFoundError(f"{root / BENCHMARKS[name][0]} not found: suite {name!r} is read from the shared "
                                f"benchmarks folder {root} (set $LIMNER_BENCHMARKS to the folder that holds {name}/)")
    return FORMATS[fmt or name](path, name)


def _parse(path: Path, fmt: str) -> list[Prompt]:
    if path.is_dir():
        path = _file_in(path, fmt)
    return FORMATS[fmt](path, fmt if fmt in BENCHMARKS else path.stem)


def _file_in(folder: Path, fmt: str) -> Path:
    """The benchmark file inside a folder laid out as upstream (T2I-CompBench parses the folder itself)."""
    if fmt == "t2i_compbench":
        return folder
    if fmt in BENCHMARKS:
        name = Path(BENCHMARKS[fmt][0]).name
        for candidate in (folder / name, folder / fmt / name):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{folder} has no {name} (the {fmt} file)")
    raise ValueError(f"{folder} is a folder; format {fmt!r} reads a single file")


def sniff_format(path: Path, hint: str | None = None) -> str:
    """The format of a file or folder from its name, else from its first line; ValueError if unsure."""
    name = Path(hint or path).name.lower()
    if name in _FILE_NAMES:
        return _FILE_NAMES[name]
    for fmt in BENCHMARKS:                  # a folder named after its benchmark (shared/benchmarks/<fmt>)
        if name == fmt or name.startswith(fmt + "-"):
            return fmt
    if path.is_dir():
        if list(path.glob("*_val.txt")) or list(path.glob("dataset/*_val.txt")):
            return "t2i_compbench"
        known = [f for f in BENCHMARKS if (path / Path(BENCHMARKS[f][0]).name).exists()]
        if len(known) == 1:
            return known[0]
        raise ValueError(f"cannot tell the format of folder {path}; pass a format ({', '.join(FORMATS)})")
    if re.search(r"_(val|train)(_\w+)?\.txt$", name):
        return "t2i_compbench"
    return _sniff_content(path)


def _sniff_content(path: Path) -> str:
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        first = f.readline().strip()
    header = set(first.split("\t" if "\t" in first else ","))
    if {"Prompt", "Category", "Challenge"} <= header:
        return "partiprompts"
    if {"Prompts", "Category"} <= header:
        return "drawbench"
    if {"prompt", "entities", "prompt_type"} <= header:
        return "geckonum"
    if {"prompt", "dataset_id", "prompt_type"} <= header:
        return "gecko2k"
    if path.suffix == ".jsonl" and first.startswith("{"):
        try:
            keys = set(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            keys = set()
        if {"tag", "include"} <= keys:
            return "geneval"
        if {"id", "text"} <= keys:
            return "jsonl"
    if path.suffix == ".json":
        return "genai_bench"
    if path.suffix == ".txt":
        return "lines"
    raise ValueError(f"cannot tell the format of {path} from its name or first line; pass a format "
                     f"({', '.join(FORMATS)})")


def _cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where `download` keeps `url`: named by a hash of the URL, so a re-run is offline."""
    cache = Path(cache_dir or os.environ.get("LIMNER_SUITE_CACHE") or cache_root() / "suites")
    base = Path(url.split("?")[0].rstrip("/")).name or "suite"
    return cache / f"{digest(url, size=12)}-{base}"


def download(url: str, cache_dir: str | Path | None = None, timeout: float = 30, sha256: str | None = None) -> Path:
    """The file at `url`, fetched once into the cache; with `sha256`, only that exact file is accepted."""
    path = _cache_path(url, cache_dir)
    if path.exists():
        return path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(url, getattr(e, "reason", e)) from None
    if sha256 and (got := hashlib.sha256(data).hexdigest()) != sha256:
        # another file's rows would get the ids, and so the cached generations, of the file limner knows
        raise ValueError(f"{url} is not the file limner was tested with (SHA-256 {got}, expected {sha256}); "
                         f"it may have changed upstream: pass the file's path as the suite to use it anyway")
    return write_atomic(path, data)   # a partial download never looks like a cached file


def list_suites(benchmarks: str | Path | None = None) -> dict[str, str]:
    """Suite name -> one-line description: the prompt count and where the prompts come from when the suite
    can be read without downloading, else where it would be fetched from (listing never downloads)."""
    root = Path(benchmarks) if benchmarks else benchmarks_dir()
    out = {}
    for name, (_, desc) in BENCHMARKS.items():
        found = locate_benchmark(name, root)
        if found is None and name in FETCHED:
            out[name] = f"{desc} [not shipped: {FETCHED[name].why}; fetched on first use from {FETCHED[name].url}]"
            continue
        try:
            out[name] = f"{desc} ({len(_load_benchmark(name, root, None))} prompts) [{found[1]}]"
        except (FileNotFoundError, ValueError):
            out[name] = f"{desc} (not found under {root})"
    for name, desc in SHAPES_SUITES.items():
        out[name] = f"{desc} ({len(shapes_suite(name))} prompts)"
    return out
