"""A frozen text encoder run through ONNX Runtime: the same weights, about twice as fast on one core.

The encoder is exported once with `torch.onnx.export` (input_ids and attention_mask in, the last hidden
state out; batch and sequence axes dynamic) and cached under `limner.cache_root()` as
text_onnx/<key>.onnx, the key the encoder's identity (`limner.text.encoder.identity`: configuration,
vocabulary, weight files) with this recipe, so other weights never meet a stale graph. A graph is
checked against the PyTorch model on a padded probe batch of other shapes than the export's, and not
used (the caller keeps PyTorch) unless the hidden states agree within `TOLERANCE`. The check runs once
per graph file: a pass is remembered under onnx_checked/, keyed by the file's content digest, the
encoder's identity, the library versions and the session settings; a remembered graph's session is
only made at its first call (a prompt the screen clears never needs one).

    runner = load_onnx(encoder.tokenizer, encoder.model)   # None: onnxruntime or onnx missing, export failed
    states = runner(input_ids, attention_mask)             # int64 numpy arrays -> (B, L, hidden) float32
    quick = load_int8(runner)                              # the same graph with int8 weights (~3x faster)

Needs `onnxruntime` to run and `onnx` to export (both dependencies of limner); without either, or
when the export or the check fails, `load_onnx` logs why and returns None.
"""
from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from ..common.cache import cache_root, file_digest
from ..common.files import atomic_path, digest, write_atomic

log = logging.getLogger(__name__)

RECIPE = 1          # bump when export() changes what it writes: cached graphs are then ignored
INT8_RECIPE = 1     # the same for load_int8's quantisation
OPSET = 17
TOLERANCE = 1e-4    # max |hidden state difference| to PyTorch on the probe (fp32 export: ~2e-6 for MiniLM)
PROBE = ["a", "three red circles and a blue square to the left of a green triangle, on a white table."]
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def cache_dir() -> Path:
    return cache_root() / "text_onnx"


class OnnxEncoder:
    """The last hidden state of an exported encoder, through one ONNX Runtime session (made now, or at
    the first call when `lazy`: ~0.1-0.2 s that a process which never calls it does not pay)."""

    def __init__(self, path: str | Path, threads: int = 1, level: str = "all", lazy: bool = False):
        self.path, self.threads, self.level = Path(path), threads, level
        self._session = None
        self._lock = threading.Lock()
        if not lazy:
            self.session  # noqa: B018  (made now: a damaged file raises here, where callers expect it)

    @property
    def session(self):
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[self.level])
                self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            return self._session

    @property
    def fingerprint(self) -> str:
        """What this runner's numbers depend on (see `fingerprint`)."""
        return fingerprint(self.path, self.threads, self.level)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
        return self.session.run(None, feed)[0]


class _LastHiddenState(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state: the signature the graph is exported with."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export(tokenizer, model, path: str | Path) -> None:
    """Export the encoder to `path` (written atomically: a reader never sees a partial graph). The
    model is traced in eval mode and left in the mode it was in."""
    batch = tokenizer(["a photo of a cat", "a red square"], padding=True, return_tensors="pt")
    args = (batch["input_ids"], batch["attention_mask"])
    wrapper = _LastHiddenState(model).eval()   # eval: the exporter restores the wrapper's mode afterwards
    was_training = model.training
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")          # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(wrapper, args, str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_axes={name: {0: "batch", 1: "sequence"}
                                            for name in ("input_ids", "attention_mask", "last_hidden_state")})
    finally:
        model.train(was_training)


def max_difference(runner: OnnxEncoder, tokenizer, model, texts: list[str] = PROBE) -> float:
    """Max |hidden state difference| between the graph and the PyTorch model over the real tokens
    of a padded batch of `texts`."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    out = runner(batch["input_ids"].numpy(), batch["attention_mask"].numpy())
    real = batch["attention_mask"].numpy().astype(bool)
    return float(np.abs(out[real] - ref.float().numpy()[real]).max())


def load_int8(runner: OnnxEncoder, threads: int = 1) -> OnnxEncoder | None:
    """`runner`'s graph with its MatMul weights quantised to int8 (onnxruntime's dynamic quantisation, per
    channel), cached beside it; about 3x faster on one core (VNNI), but not the same numbers: callers use
    it only where a margin covers the difference. None (logged) when quantisation fails."""
    path = runner.path.with_name(f"{runner.path.stem}.int8-{INT8_RECIPE}.onnx")
    if not path.is_file() or path.stat().st_mtime_ns < runner.path.stat().st_mtime_ns:  # none, or of a replaced graph
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)   # quantize_dynamic logs a "pre-process first" hint on the root logger
            try:
                with atomic_path(path) as tmp:
                    quantize_dynamic(runner.path, tmp, weight_type=QuantType.QInt8, per_channel=True,
                                     op_types_to_quantize=["MatMul"])
            finally:
                root.setLevel(level)
        except Exception as e:
            log.warning("text encoder: int8 quantisation failed (%s: %s); the fp32 graph decides alone",
                        type(e).__name__, e)
            return None
    try:
        return OnnxEncoder(path, threads=threads)
    except Exception as e:   # a damaged file: made again at the next load
        log.warning("text encoder: cannot run the int8 graph %s (%s: %s)", path, type(e).__name__, e)
        path.unlink(missing_ok=True)
        return None


def graph_path(tokenizer, model, cache: str | Path | None = None) -> Path:
    """Where the encoder's graph is cached: named by the encoder's identity and this recipe."""
    from .encoder import identity

    key = identity(tokenizer, model, onnx_recipe=RECIPE, opset=OPSET)
    return (Path(cache) if cache is not None else cache_dir()) / f"{key}.onnx"


def fingerprint(path: str | Path, threads: int = 1, level: str = "all") -> str:
    """A digest of what a graph's outputs depend on: the file's content (its digest, remembered by stat),
    the ONNX Runtime version and the session settings. Keys what is computed through it."""
    import onnxruntime

    return digest(file_digest(path), onnxruntime.__version__, threads, level, size=24)


def check_record(path: Path, threads: int, level: str) -> Path:
    """The file that remembers a passed check of this very graph file against this encoder (the graph's name
    is the encoder's identity), with this torch, ONNX Runtime and these session settings."""
    key = digest(path.name, fingerprint(path, threads, level), torch.__version__, TOLERANCE, *PROBE, size=24)
    return cache_root() / "onnx_checked" / f"{key}.json"


def load_onnx(tokenizer, model, cache: str | Path | None = None, threads: int = 1,
              level: str = "all") -> OnnxEncoder | None:
    """The encoder through ONNX Runtime, from the cache, else exported now; None (with a log line
    saying why) when onnxruntime or onnx is missing or the graph cannot be made to match PyTorch.
    A cached graph that passed the check before is returned unchecked, its session made at first call."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("text encoder: onnxruntime is not installed; running the encoder in PyTorch")
        return None
    path = graph_path(tokenizer, model, cache)
    for attempt in ("cached", "exported"):
        if attempt == "cached" and path.is_file() and check_record(path, threads, level).is_file():
            return OnnxEncoder(path, threads=threads, level=level, lazy=True)
        if attempt == "exported" or not path.is_file():
            attempt = "exported"
            try:
                import onnx  # noqa: F401  (the exporter needs it)
            except ImportError:
                log.info("text encoder: the onnx package is not installed, so the encoder cannot be exported; "
                         "running it in PyTorch (pip install onnx)")
                return None
            try:
                export(tokenizer, model, path)
            except Exception as e:   # an architecture or torch version the exporter cannot handle
                log.warning("text encoder: ONNX export failed (%s: %s); running the encoder in PyTorch",
                            type(e).__name__, e)
                return None
        try:
            runner = OnnxEncoder(path, threads=threads, level=level)
            diff = max_difference(runner, tokenizer, model)
        except Exception as e:   # a damaged or foreign file
            log.warning("text encoder: cannot run the %s ONNX graph %s (%s: %s)", attempt, path, type(e).__name__, e)
            diff = float("inf")
        if diff <= TOLERANCE:
            try:
                write_atomic(check_record(path, threads, level), json.dumps({"graph": path.name, "difference": diff}))
            except OSError:   # a read-only cache: checked again at the next load
                pass
            return runner
        if attempt == "cached":
            log.warning("text encoder: the cached ONNX graph %s differs from PyTorch (%.2g); exporting it again",
                        path, diff)
            continue
        log.warning("text encoder: the exported ONNX graph differs from PyTorch by %.2g (> %.0e); running the "
                    "encoder in PyTorch", diff, TOLERANCE)
        path.unlink(missing_ok=True)
    return None
