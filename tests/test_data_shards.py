"""limner.data.shards, the WebDataset format's one writer and one reader: grouping by key, the members
`limner data` writes, foreign tars, damaged tars, and bytes that depend only on the samples."""
import io
import json
import os
import stat
import tarfile

import pytest

from limner.data.shards import Sample, read_shard, write_shard

SAMPLES = [("00000_000000", {"png": b"\x89PNG one", "json": json.dumps({"captions": {"alt": "a red circle"},
                                                                        "weight": 0.5}).encode(), "txt": b"a red circle"}),
           ("00000_000001", {"jpg": b"\xff\xd8 two", "json": b"{}"})]


def test_round_trip_in_order(tmp_path):
    path = write_shard(tmp_path / "shards" / "00000.tar", SAMPLES)
    samples, error = read_shard(path)
    assert error is None and [(s.key, s.members) for s in samples] == SAMPLES
    first, second = samples
    assert first.image() == ("png", b"\x89PNG one") and first.text() == "a red circle"
    assert first.meta() == {"captions": {"alt": "a red circle"}, "weight": 0.5}
    assert second.image(("png", "webp")) is None and second.image() == ("jpg", b"\xff\xd8 two") and second.text() is None
    with tarfile.open(path) as tar:   # plain WebDataset members, in the order given
        assert tar.getnames() == ["00000_000000.png", "00000_000000.json", "00000_000000.txt",
                                  "00000_000001.jpg", "00000_000001.json"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()   # as a direct write makes it
    assert [p.name for p in path.parent.iterdir()] == ["00000.tar"]   # no temporary file left


def test_the_same_samples_make_the_same_bytes(tmp_path):
    """Fixed member times, and the bytes `limner data` wrote before the format had a module of its own."""
    a, b = write_shard(tmp_path / "a.tar", SAMPLES), write_shard(tmp_path / "b.tar", SAMPLES)
    old = io.BytesIO()
    with tarfile.open(fileobj=old, mode="w") as tar:
        for key, members in SAMPLES:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    assert a.read_bytes() == b.read_bytes() == old.getvalue()
    with pytest.raises(ValueError, match="has a dot"):
        write_shard(tmp_path / "c.tar", [("a.b", {"png": b""})])
    assert not (tmp_path / "c.tar").exists()


def test_foreign_tars_group_by_key_across_folders_and_case(tmp_path):
    path = tmp_path / "foreign.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("x/cat.JPG", b"jpeg"), ("y/cat.txt", b"other folder"), ("x/cat.txt", b"caf\xe9"),
                           ("x/cat.seg.png", b"mask"), ("README", b"no dot"), ("x/bad.json", b"{nope")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(tarfile.TarInfo("x/dir.d"))   # not a regular file once its type says so
        tar.getmember("x/dir.d").type = tarfile.DIRTYPE
    samples, error = read_shard(path)
    by_key = {s.key: s for s in samples}
    assert error is None and list(by_key) == ["x/cat", "y/cat", "x/bad", "x/dir"]
    assert by_key["x/cat"].members == {"jpg": b"jpeg", "txt": b"caf\xe9", "seg.png": b"mask"}
    assert by_key["x/cat"].text() == "caf\ufffd" and by_key["x/cat"].image() == ("jpg", b"jpeg")
    with pytest.raises(ValueError, match="x/bad.json is not valid JSON"):
        by_key["x/bad"].meta()


def test_a_truncated_tar_keeps_what_came_before(tmp_path):
    path = write_shard(tmp_path / "whole.tar", SAMPLES)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:512 * 7 + 4])   # 3 members of 2 blocks each, a header, half an image
    samples, error = read_shard(cut)
    assert "unexpected end of data" in error
    assert [s.key for s in samples] == ["00000_000000"] and samples[0].members == SAMPLES[0][1]
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all")
    assert read_shard(tmp_path / "junk.tar")[0] == [] and read_shard(tmp_path / "junk.tar")[1]
    assert Sample("k", {}).meta() == {} and Sample("k", {}).image() is None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
