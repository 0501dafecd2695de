"""limner.models.local: a transformers model by path, never downloaded unless HF_HUB_OFFLINE=0."""
import socket

import pytest

from limner.models.local import local_model, model_folder


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_a_folder_is_taken_as_it_is_and_a_missing_name_fails_offline(tmp_path, monkeypatch, no_network):
    assert local_model(str(tmp_path)) == str(tmp_path)
    for name in ["limner-tests/no-such-model", str(tmp_path / "missing")]:
        with pytest.raises(FileNotFoundError, match=r"no local model at .*pass the folder of a VQA model.*"
                                                    r"hf download .*HF_HUB_OFFLINE=0"):
            local_model(name, "VQA model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")   # downloads allowed: the name goes on to transformers
    assert local_model("limner-tests/no-such-model") == "limner-tests/no-such-model"


def test_model_folder_needs_a_config(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="is not a CLIP model folder .no config.json.: pass a folder"):
        model_folder(tmp_path, "CLIP model")
    with pytest.raises(FileNotFoundError, match="is not a vision model folder"):
        model_folder("limner-tests/no-such-model", "vision model")
    (tmp_path / "config.json").write_text("{}")
    assert model_folder(tmp_path, "CLIP model") == tmp_path
