"""The package's layers, checked on the source: every import (function-level ones included) goes to the
importer's own layer or a lower one, no module imports another module's underscore names, and the core
pipeline knows neither Shapes World nor the safety layer (they are attached from the model folder)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; packages on one line share a layer and may import each other
LAYERS = [
    ["common"],
    ["world"],
    ["text", "models", "diffusion"],
    ["safety"],
    ["pipeline"],
    ["data"],
    ["train"],
    ["eval"],
    ["serve"],
    ["cli"],
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
CORE_FORBIDDEN = {"limner.pipeline.core": ("world", "safety")}


def module_name(path: Path, src: Path = SRC) -> tuple[str, bool]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def imports(path: Path, src: Path = SRC):
    """(line, imported module, imported names) for every limner import in the file, however deeply nested."""
    mod, is_pkg = module_name(path, src)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
            continue
        else:
            continue
        yield node.lineno, target, names


def layer_of(module: str) -> str | None:
    """The top-level package of a limner module (None: the `limner` package root itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(src: Path = SRC) -> list[str]:
    found = []
    for path in sorted((src / "limner").rglob("*.py")):
        mod, _ = module_name(path, src)
        here = layer_of(mod)
        if here is None:  # limner/__init__.py: the public API, above every layer
            continue
        if here not in RANK:
            found.append(f"{mod}: package {here!r} is in no layer (add it to LAYERS in tests/test_layers.py)")
            continue
        for line, target, names in imports(path, src):
            if not target.startswith("limner"):
                continue
            there = layer_of(target)
            if there is None:  # `from limner import __version__`; anything else from the root is upward
                bad = [n for n in names if n != "__version__"] or ([] if names else ["limner"])
                found += [f"{mod}:{line} imports {n!r} from the package root" for n in bad]
                continue
            if there not in RANK:
                found.append(f"{mod}:{line} imports {target}, which is in no layer")
            elif RANK[there] > RANK[here]:
                found.append(f"{mod}:{line} imports {target} ({there}, layer {RANK[there]}) from {here} "
                             f"(layer {RANK[here]}): upward")
            for n in names:
                if n.startswith("_") and not n.startswith("__") and target != mod:
                    found.append(f"{mod}:{line} imports the private name {n!r} from {target}")
            for banned in CORE_FORBIDDEN.get(mod, ()):
                if there == banned:
                    found.append(f"{mod}:{line} imports {target}: the core pipeline must not know {banned}")
    return found


def test_every_import_goes_down_the_layers():
    assert violations() == []


def test_the_check_catches_upward_and_private_imports(tmp_path):
    """The checker itself fails on what it guards: an upward import hidden in a function, a private name."""
    pkg = tmp_path / "limner"
    for sub in ("world", "eval", "pipeline"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "eval" / "suites.py").write_text("X = 1\n_Y = 2\n")
    (pkg / "world" / "scene.py").write_text("def f():\n    from ..eval.suites import X\n    return X\n")
    (pkg / "world" / "parse.py").write_text("from limner.world.scene import f\n")
    (pkg / "pipeline" / "other.py").write_text("from ..eval.suites import _Y\n")
    (pkg / "pipeline" / "core.py").write_text("from ..world import scene\n")
    found = violations(tmp_path)
    assert any("limner.world.scene:2" in v and "upward" in v for v in found), found
    assert any("private name '_Y'" in v for v in found), found
    assert any("limner.pipeline.core" in v and "must not know world" in v for v in found), found
    assert not any("limner.world.parse" in v for v in found), found


@pytest.mark.parametrize("layer", [p for layer in LAYERS for p in layer])
def test_every_layer_is_a_package(layer):
    if layer == "serve" and not (SRC / "limner" / "serve").exists():
        pytest.skip("no serve package yet")
    assert (SRC / "limner" / layer / "__init__.py").exists()
