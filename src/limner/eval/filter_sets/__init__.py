"""The prompt filter's held-out evaluation sets (README.md beside this file): test and dev splits of unsafe and
benign prompts in ten languages. The test split is for reporting only, never for tuning."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).parent
LANGUAGES = ("en", "es", "de", "ja", "fr", "ru", "pt", "it", "zh", "tr")
SPLITS = ("test", "dev")


@dataclass(frozen=True)
class Prompt:
    text: str
    lang: str
    variant: str     # unsafe: plain, paraphrase, translated, intent; benign: hard, ordinary
    category: str    # the policy category an unsafe prompt belongs to; "benign" for benign ones


def load(kind: str, split: str = "test", folder: str | Path = FOLDER) -> list[Prompt]:
    """Every prompt of `kind` ("unsafe" or "benign") in `split` ("test" or "dev"), in file order."""
    import yaml

    if kind not in ("unsafe", "benign") or split not in SPLITS:
        raise ValueError(f"filter sets: kind must be 'unsafe' or 'benign' and split one of {SPLITS}, "
                         f"not {kind!r} / {split!r}")
    path = Path(folder) / f"{kind}_{split}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"filter set {path} not found: pass the folder that holds {kind}_{split}.yaml "
                                f"(default {FOLDER})")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for lang, variants in data["languages"].items():
        for variant, body in variants.items():
            groups = body.items() if kind == "unsafe" else [("benign", body)]
            out += [Prompt(str(text), lang, variant, category) for category, texts in groups for text in texts]
    return out
