"""Provenance: PNG parameters round trip; C2PA sign -> read round trip, tamper detection, bad credentials."""
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from limner.safety.provenance import (TRAINED_ALGORITHMIC_MEDIA, make_test_certificate, png_parameters,
                                      read_c2pa, read_parameters, sign_c2pa)

PARAMS = {"prompt": "three red circles", "negative_prompt": "blue", "seed": 7, "steps": 20, "guidance": 3.0,
          "sampler": "euler", "model": "shapes-default", "limner_version": "0.1.0"}


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    pytest.importorskip("c2pa")
    pytest.importorskip("cryptography")
    return make_test_certificate(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def png(tmp_path):
    img = Image.new("RGB", (64, 64), (245, 242, 232))
    ImageDraw.Draw(img).ellipse((8, 8, 28, 28), fill=(220, 40, 40))
    path = tmp_path / "image.png"
    img.save(path, pnginfo=png_parameters(PARAMS))
    return path


def test_png_parameters_round_trip(png, tmp_path):
    assert read_parameters(png) == PARAMS
    unicode = {**PARAMS, "prompt": "drei rote Kreise — ünïcode"}
    Image.new("RGB", (8, 8)).save(tmp_path / "u.png", pnginfo=png_parameters(unicode))
    assert read_parameters(tmp_path / "u.png") == unicode


def test_png_parameters_opt_out_and_foreign_text(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "none.png", pnginfo=png_parameters(None))
    assert read_parameters(tmp_path / "none.png") is None
    info = png_parameters(None)
    info.add_text("parameters", "a1111-style free text, Steps: 20")  # another tool's chunk is not ours
    Image.new("RGB", (8, 8)).save(tmp_path / "other.png", pnginfo=info)
    assert read_parameters(tmp_path / "other.png") is None


def test_c2pa_round_trip(png, creds, tmp_path):
    chain, key = creds
    out = sign_c2pa(png, tmp_path / "signed.png", chain, key, params=PARAMS)
    got = read_c2pa(out)
    assert got["ai_generated"] is True
    # a test CA is on no trust list: intact and correctly signed, but untrusted, and said so
    assert got["validation"] == "Valid" and got["failures"] == ["signingCredential.untrusted"]
    assert got["parameters"] == PARAMS
    store = got["manifest_store"]
    manifest = store["manifests"][store["active_manifest"]]
    actions = [a for x in manifest["assertions"] if x["label"].startswith("c2pa.actions") for a in x["data"]["actions"]]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert actions[0]["softwareAgent"]["name"] == "limner"
    # the signed file is still a normal PNG with the same pixels and its parameters chunk
    with Image.open(out) as a, Image.open(png) as b:
        assert a.tobytes() == b.tobytes()
    assert read_parameters(out) == PARAMS

    trusted = read_c2pa(out, trust_anchors=chain.parent / "test-ca.pem")
    assert trusted["validation"] == "Trusted" and trusted["failures"] == []


def test_c2pa_params_opt_out_and_in_place(png, creds):
    chain, key = creds
    sign_c2pa(png, png, chain.read_text(), key.read_bytes(), title="mine")  # PEM text/bytes, in place
    got = read_c2pa(png)
    assert got["ai_generated"] and got["parameters"] is None
    assert got["manifest_store"]["manifests"][got["manifest_store"]["active_manifest"]]["title"] == "mine"
    assert not list(png.parent.glob(".*tmp"))


def test_unsigned_image_has_no_manifest(png):
    pytest.importorskip("c2pa")
    assert read_c2pa(png) is None


def _change_a_pixel(path):
    """Rewrite the PNG with one pixel changed, keeping every other chunk (the C2PA one too) byte for byte."""
    data, out, pos = path.read_bytes(), bytearray(), 8
    out += data[:8]
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IDAT":
            raw = bytearray(zlib.decompress(body))
            raw[1 + 3 * 40] ^= 0xFF  # row 0 (after its filter byte), pixel 40, red channel
            body = zlib.compress(bytes(raw))
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        pos += 12 + n
    path.write_bytes(bytes(out))


def test_c2pa_detects_changed_pixels(png, creds, tmp_path):
    chain, key = creds
    out = sign_c2pa(png, tmp_path / "signed.png", chain, key, params=PARAMS)
    _change_a_pixel(out)
    with Image.open(out) as im:
        assert im.getpixel((40, 0))[0] != 245  # the edit really is a valid PNG with a changed pixel
    got = read_c2pa(out, trust_anchors=chain.parent / "test-ca.pem")
    assert got["validation"] == "Invalid"
    assert "assertion.dataHash.mismatch" in got["failures"]


def test_c2pa_bad_credentials(png, creds, tmp_path):
    chain, key = creds
    with pytest.raises(FileNotFoundError, match="private key not found"):
        sign_c2pa(png, tmp_path / "o.png", chain, tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        sign_c2pa(png, tmp_path / "o.png", chain, tmp_path / "junk.pem")
    other_chain, other_key = make_test_certificate(tmp_path / "other")
    with pytest.raises(ValueError, match="does not match the signing certificate"):
        sign_c2pa(png, tmp_path / "o.png", chain, other_key)
    # a self-signed certificate (the CA alone) is refused with the reason, before c2pa sees it
    with pytest.raises(ValueError, match="self-signed"):
        sign_c2pa(png, tmp_path / "o.png", other_chain.parent / "test-ca.pem", other_key)
    with pytest.raises(ValueError, match="unknown C2PA signing algorithm"):
        sign_c2pa(png, tmp_path / "o.png", chain, key, alg="md5")
    assert not (tmp_path / "o.png").exists()
