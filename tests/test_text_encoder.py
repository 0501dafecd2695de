"""limner.text.encoder: frozen text encoders by path (BERT-style and T5-style folders) and the shipped default."""
import pytest
import torch

from limner.text.encoder import TextEncoder, pad


def tiny_bert(path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a red blue circle square three two and".split()
    (path / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=12)).save_pretrained(path)


def test_text_encoder_by_path_masks_and_warns_on_cut(tmp_path):
    tiny_bert(tmp_path)
    enc = TextEncoder(str(tmp_path), max_length=64)
    assert enc.dim == 16 and enc.max_length == 12  # capped by the model's positions
    short, long_ = enc.encode(["a red circle", "three red circle " * 2])
    assert short.shape == (5, 16)  # CLS + 3 words + SEP, no padding
    x, mask = pad([short, long_])
    assert x.shape[:2] == mask.shape and mask.sum(1).tolist() == [5, 8]
    with pytest.warns(UserWarning, match="prompt cut to 12"):
        enc.encode(["two blue square " * 5])


def test_t5_style_encoder_by_path(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    (tmp_path / "tok").mkdir()
    tiny_bert(tmp_path / "tok")
    T5EncoderModel(T5Config(vocab_size=16, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)).save_pretrained(tmp_path)
    # a T5 folder with a borrowed word-piece tokenizer: only the encoder-loading path is under test
    AutoTokenizer.from_pretrained(tmp_path / "tok").save_pretrained(tmp_path)
    enc = TextEncoder(str(tmp_path))
    assert enc.dim == 8
    (s,) = enc.encode(["a red circle"])
    assert s.shape[1] == 8


def test_default_text_encoder_is_offline_minilm():
    enc = TextEncoder()
    a, b = enc.encode(["three red circles", "two blue squares"])
    assert a.shape[1] == 384
    assert not torch.allclose(a.mean(0), b.mean(0))


def test_a_long_prompt_prints_only_limners_warning():
    """A new user's long prompt (past the tokenizer's own 512 too): one clear line from limner, not transformers'
    "indexing errors" first (issue 26); once, though generation encodes it twice (planner and denoiser); and
    pointing at the caller, not at torch's inference_mode wrapper."""
    import subprocess
    import sys

    code = ("from limner.text.encoder import TextEncoder\nenc = TextEncoder()\nprompt = 'a red circle and ' * 200\n"
            "enc.encode([prompt])\nenc.encode([prompt, 'a blue square'])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Token indices" not in res.stderr and "indexing errors" not in res.stderr, res.stderr
    assert res.stderr.count("prompt cut to 256 of its 802 tokens") == 1, res.stderr
    assert "<string>:4: UserWarning" in res.stderr and "_contextlib" not in res.stderr, res.stderr
