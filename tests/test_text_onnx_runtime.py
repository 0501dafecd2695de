"""The semantic layer's encoder through ONNX Runtime: the same embeddings and verdicts as PyTorch, the
fallback to PyTorch, the exported graph's cache, and the cheap encoder identity that keys it."""
import copy
import os
import sys

import numpy as np
import pytest
import torch

import limner
from limner.common import cache as C
from limner.eval import redteam
from limner.safety.prompt_filter import PromptFilter, load_policy
from limner.text import encoder as E
from limner.text import onnx_runtime as O


PROMPTS = ["three red circles and a blue square", "a bicycle leaning against a brick wall",
           "an oil painting of a fox in the snow at dusk. Highly detailed, warm light from the left.",
           "a woman lying on a sofa with no clothing at all", "a pile of human bodies with their limbs torn off", "x"]


@pytest.fixture
def counted_exports(monkeypatch, count_calls):
    """Counts the exports load_onnx runs (a cache hit runs none)."""
    return count_calls(monkeypatch, O, "export")


# ----------------------------------------------------------------------------- the real encoder


def filter_with(runtime: str) -> PromptFilter:
    policy = copy.deepcopy(load_policy())
    policy["semantic"]["runtime"] = runtime
    return PromptFilter(policy, cascade=False)


@pytest.fixture(scope="module")
def both():
    return filter_with("torch"), filter_with("onnx")


def test_onnx_embeddings_match_pytorch_on_real_prompts(both):
    pt, ox = both
    assert pt.semantic.runtime == "torch" and pt.semantic.onnx is None
    assert ox.semantic.runtime == "onnx" and ox.semantic.onnx is not None
    rt = redteam.load_redteam()
    prompts = PROMPTS + [p for ps in rt["paraphrase"].values() for p in ps]
    a, b = pt.semantic.embed(prompts), ox.semantic.embed(prompts)
    assert a.shape == b.shape == (len(prompts), 384)
    assert (a - b).abs().max() < 1e-5                                   # one padded batch of mixed lengths
    for x, y in zip(pt.check_many(prompts), ox.check_many(prompts)):
        assert x.allowed == y.allowed and x.category == y.category and abs(x.score - y.score) <= 1e-4


def test_export_leaves_the_shared_model_as_it_was(both):
    model = both[1].semantic.encoder.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- fallback to PyTorch


def test_falls_back_when_onnxruntime_is_missing(monkeypatch, tmp_path, caplog, tiny_encoder):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)               # `import onnxruntime` raises ImportError
    tok, model = tiny_encoder()
    with caplog.at_level("INFO"):
        assert O.load_onnx(tok, model, cache=tmp_path) is None
    assert "onnxruntime is not installed" in caplog.text and not list(tmp_path.iterdir())
    policy = copy.deepcopy(load_policy())
    policy["semantic"]["screen"]["enabled"] = False
    filt = PromptFilter(policy)
    assert filt.semantic.runtime == "torch" and filt.semantic.onnx is None
    v = filt.check("a woman lying on a sofa with no clothing at all")
    assert (v.allowed, v.category, v.layer) == (False, "sexual", "semantic")


def test_falls_back_when_the_export_fails(monkeypatch, tmp_path, caplog, tiny_encoder):
    def broken(*a, **k):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(O, "export", broken)
    assert O.load_onnx(*tiny_encoder(), cache=tmp_path) is None
    assert "ONNX export failed (RuntimeError: unsupported operator)" in caplog.text


def test_unknown_runtime_is_a_clear_error():
    policy = copy.deepcopy(load_policy())
    policy["semantic"]["runtime"] = "tensorrt"
    with pytest.raises(ValueError, match="semantic.runtime must be 'onnx' or 'torch'"):
        PromptFilter(policy).check("a red square")


# ----------------------------------------------------------------------------- the cached graph


def test_graph_is_exported_once_and_matches(tmp_path, counted_exports, tiny_encoder):
    tok, model = tiny_encoder()
    first = O.load_onnx(tok, model, cache=tmp_path)
    again = O.load_onnx(tok, model, cache=tmp_path)
    assert len(counted_exports) == 1 and first.path == again.path and first.path.parent == tmp_path
    assert [p.suffix for p in tmp_path.iterdir()] == [".onnx"]          # no temporary file left
    batch = tok(["a red circle and a blue square", "dog"], padding=True, return_tensors="pt")   # other shapes
    with torch.inference_mode():
        ref = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).last_hidden_state.numpy()
    out = again(batch["input_ids"].numpy(), batch["attention_mask"].numpy())
    real = batch["attention_mask"].numpy().astype(bool)
    assert np.abs(out[real] - ref[real]).max() < 1e-5


def test_damaged_or_stale_graph_is_exported_again(tmp_path, counted_exports, tiny_encoder):
    tok, model = tiny_encoder()
    path = O.load_onnx(tok, model, cache=tmp_path).path
    path.write_bytes(b"not a graph")
    assert O.load_onnx(tok, model, cache=tmp_path) is not None and len(counted_exports) == 2
    other = O.load_onnx(*tiny_encoder(seed=1), cache=tmp_path / "other").path
    os.replace(other, path)                                             # a graph of other weights under this key
    assert O.load_onnx(tok, model, cache=tmp_path) is not None and len(counted_exports) == 4
    assert O.max_difference(O.OnnxEncoder(path), tok, model) < O.TOLERANCE


def test_graph_that_differs_from_pytorch_is_not_used(tmp_path, monkeypatch, caplog, tiny_encoder):
    monkeypatch.setattr(O, "TOLERANCE", -1.0)                            # nothing can match
    assert O.load_onnx(*tiny_encoder(), cache=tmp_path) is None
    assert "differs from PyTorch" in caplog.text and not list(tmp_path.glob("*.onnx"))


# ----------------------------------------------------------------------------- the encoder's identity


def test_identity_changes_when_the_weight_files_change(tmp_path, tiny_encoder, saved_tiny_encoder):
    tok, model = saved_tiny_encoder(tmp_path / "enc")
    assert E.weight_files(model) == [tmp_path / "enc" / "model.safetensors"]
    key = E.identity(tok, model)
    assert E.identity(tok, model) == key and E.identity(tok, model, recipe=2) != key
    # other weights saved over the same file, its modification time put back as `cp -p` would
    st = (tmp_path / "enc" / "model.safetensors").stat()
    _, other = tiny_encoder(seed=1)
    other.save_pretrained(tmp_path / "enc")
    os.utime(tmp_path / "enc" / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert E.identity(tok, E.load.__wrapped__(str(tmp_path / "enc"))[1]) != key
    # the same weights in another folder: the same key (the path is not part of it)
    assert E.identity(*saved_tiny_encoder(tmp_path / "copy")) == key


def test_identity_of_files_is_memoised_by_stat(tmp_path, monkeypatch, saved_tiny_encoder, count_calls):
    monkeypatch.setenv("LIMNER_CACHE", str(tmp_path / "cache"))
    tok, model = saved_tiny_encoder(tmp_path / "enc")
    hashed = count_calls(monkeypatch, C, "_hash_file")
    key = E.identity(tok, model)
    assert E.identity(tok, model) == key and len(hashed) == 1            # the second costs a stat
    assert len(list((tmp_path / "cache" / "digests").glob("*.json"))) == 1
    (tmp_path / "enc" / "model.safetensors").touch()
    assert E.identity(tok, model) == key and len(hashed) == 2            # changed stat: hashed again, same bytes


def test_model_without_files_is_hashed_by_its_tensors(tiny_encoder):
    tok, model = tiny_encoder()
    assert E.weight_files(model) == []
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.encoder.layer[0].output.dense.weight[0, 0] += 1e-3
    assert E.identity(tok, model) != E.identity(tok, other)


# ----------------------------------------------------------------------------- one cache root


def test_one_cache_root(monkeypatch, tmp_path):
    from limner.eval import suites
    from limner.safety import screen

    monkeypatch.delenv("LIMNER_CACHE", raising=False)
    monkeypatch.delenv("LIMNER_SUITE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert limner.cache_root() == tmp_path / "xdg" / "limner"
    monkeypatch.setenv("LIMNER_CACHE", str(tmp_path / "mine"))
    assert limner.cache_root() == tmp_path / "mine"
    assert screen.cache_dir() == tmp_path / "mine" / "prompt_screen"
    assert O.cache_dir() == tmp_path / "mine" / "text_onnx"
    source = tmp_path / "prompts.txt"
    source.write_text("a red square\n")
    got = suites.download(source.as_uri())                              # file:// : no network
    assert got.parent == tmp_path / "mine" / "suites" and got.read_text() == "a red square\n"


# ----------------------------------------------------------------------------- the int8 graph


@pytest.fixture
def counted_quantisations(monkeypatch, count_calls):
    from onnxruntime import quantization

    return count_calls(monkeypatch, quantization, "quantize_dynamic")


def test_int8_graph_is_made_once_beside_the_fp32_one(tmp_path, counted_quantisations, tiny_encoder):
    tok, model = tiny_encoder()
    fp32 = O.load_onnx(tok, model, cache=tmp_path)
    first, again = O.load_int8(fp32), O.load_int8(fp32)
    assert len(counted_quantisations) == 1 and first.path == again.path and first.path.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fp32.path.name, first.path.name])   # no temp file
    batch = tok(["a red circle and a blue square", "dog"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    a, b = fp32(ids, mask), again(ids, mask)
    real = mask.astype(bool)
    assert 0 < np.abs(a[real] - b[real]).max() < 0.1 * np.abs(a[real]).max()    # int8 weights: close, not equal


def test_int8_graph_is_made_again_when_the_fp32_graph_is_replaced(tmp_path, counted_quantisations, tiny_encoder):
    tok, model = tiny_encoder()
    fp32 = O.load_onnx(tok, model, cache=tmp_path)
    O.load_int8(fp32)
    fp32.path.write_bytes(b"not a graph")
    fp32 = O.load_onnx(tok, model, cache=tmp_path)                       # exported again: newer than the int8 one
    assert O.load_int8(fp32) is not None and len(counted_quantisations) == 2


def test_filter_works_without_the_int8_stage(monkeypatch, caplog):
    from onnxruntime import quantization

    def broken(*a, **k):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(quantization, "quantize_dynamic", broken)
    monkeypatch.setattr(O, "INT8_RECIPE", 10**6)                         # not in the cache: quantised now, and fails
    filt = PromptFilter(copy.deepcopy(load_policy()))
    assert filt.semantic.onnx is not None and filt.semantic.int8 is None
    assert "int8 quantisation failed (RuntimeError: no kernel)" in caplog.text
    v = filt.check("a woman lying on a sofa with no clothing at all")
    assert (v.allowed, v.category, v.layer) == (False, "sexual", "semantic")
    assert filt.check("a bicycle leaning against a brick wall").allowed
    torch_policy = copy.deepcopy(load_policy())
    torch_policy["semantic"]["runtime"] = "torch"
    assert PromptFilter(torch_policy).semantic.int8 is None               # the int8 stage needs ONNX Runtime


# ----------------------------------------------------------------------------- one check per graph file


def test_cached_graph_is_checked_once_per_file(tmp_path, monkeypatch, counted_exports, tiny_encoder, count_calls):
    monkeypatch.setenv("LIMNER_CACHE", str(tmp_path / "cache"))        # where passed checks are remembered
    checks = count_calls(monkeypatch, O, "max_difference")
    tok, model = tiny_encoder()
    first = O.load_onnx(tok, model, cache=tmp_path)
    assert len(counted_exports) == 1 and len(checks) == 1 and first._session is not None
    again = O.load_onnx(tok, model, cache=tmp_path)
    assert len(checks) == 1 and again.path == first.path and again._session is None   # no check, no session yet
    ids, mask = (np.array([[2, 9, 3]]), np.ones((1, 3), np.int64))
    assert np.array_equal(again(ids, mask), first(ids, mask)) and again._session is not None
    assert O.load_onnx(tok, model, cache=tmp_path, threads=2) is not None and len(checks) == 2   # other settings
    first.path.write_bytes(b"not a graph")                              # another file: not trusted, exported again
    assert O.load_onnx(tok, model, cache=tmp_path) is not None and len(checks) == 3 and len(counted_exports) == 2
    assert O.load_onnx(tok, model, cache=tmp_path) is not None and len(checks) == 3   # the new file's check holds


def test_check_is_not_shared_with_another_encoder(tmp_path, monkeypatch, counted_exports, tiny_encoder):
    """A checked graph of other weights moved under this encoder's name is checked, fails and is replaced."""
    monkeypatch.setenv("LIMNER_CACHE", str(tmp_path / "cache"))
    tok, model = tiny_encoder()
    path = O.load_onnx(tok, model, cache=tmp_path).path
    os.replace(O.load_onnx(*tiny_encoder(seed=1), cache=tmp_path / "other").path, path)
    runner = O.load_onnx(tok, model, cache=tmp_path)
    assert len(counted_exports) == 3 and O.max_difference(runner, tok, model) < O.TOLERANCE


def test_fingerprint_follows_the_file_and_the_settings(tmp_path, monkeypatch, tiny_encoder):
    monkeypatch.setenv("LIMNER_CACHE", str(tmp_path / "cache"))
    runner = O.load_onnx(*tiny_encoder(), cache=tmp_path)
    print_ = runner.fingerprint
    assert O.fingerprint(runner.path) == print_ and O.fingerprint(runner.path, threads=2) != print_
    runner.path.write_bytes(b"other bytes")
    assert O.fingerprint(runner.path) != print_
