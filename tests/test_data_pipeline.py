"""`limner data`: every stage on planted and real images, the whole pipeline on the planted demo corpus,
resume after a kill, the Ray executor, the report, and training on what the pipeline wrote."""
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, PngImagePlugin

from limner.data import demo, stages as S
from limner.data.pipeline import DedupConfig, PipelineConfig, run
from limner.data.report import load, table, write
from limner.world.scene import render, sample_scene

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "limner.cli"]
FIXTURE = Path(__file__).parent / "data" / "astronaut-256-sdxl-dwtdct.png"  # made by invisible-watermark 0.2.0's
# dwtDct encoder with SDXL's 48-bit message, as diffusers' StableDiffusionXLWatermarker does


def png(img, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def jpeg(img, q=92, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q, **kw)
    return buf.getvalue()


def scene(seed, side=256):
    return render(sample_scene(random.Random(seed)), side)


def photos():
    import skimage.data as sd

    return [Image.fromarray(getattr(sd, n)()).convert("RGB") for n in ("astronaut", "coffee", "chelsea", "rocket")]


# ------------------------------------------------------------------------------------------------ stages


def test_decode_turns_every_bad_file_into_a_reason():
    cfg = S.DecodeConfig()
    good = jpeg(scene(0))
    frames = [scene(i, 64) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    cases = {
        b"": "decode:empty",
        os.urandom(3000): "decode:corrupt",
        good[: len(good) // 2]: "decode:truncated",
        png(scene(1, 16)): "decode:tiny",
        png(Image.new("RGB", (900, 100), "white")): "decode:aspect",
        gif.getvalue(): "decode:animated",
    }
    for data, reason in cases.items():
        dec, _, got = S.decode(data, cfg)
        assert got == reason and dec is None
    # conversions keep the image and say what they did
    cmyk, _, r1 = S.decode(jpeg(scene(2).convert("CMYK")), cfg)
    g16, _, r2 = S.decode(png(Image.fromarray(np.asarray(scene(3).convert("L"), np.uint16) * 257)), cfg)
    rgba, _, r3 = S.decode(png(scene(4).convert("RGBA")), cfg)
    assert (r1, r2, r3) == (None, None, None)
    assert [d.image.mode for d in (cmyk, g16, rgba)] == ["RGB"] * 3
    assert cmyk.notes == ["CMYK->RGB"] and "8bit" in g16.notes[0] and "alpha" in rgba.notes[0]
    assert np.abs(np.asarray(g16.image, float) - np.asarray(scene(3).convert("L").convert("RGB"), float)).max() <= 1
    _, _, first = S.decode(gif.getvalue(), S.DecodeConfig(animated="first_frame"))
    assert first is None


def test_quality_flags_planted_defects_and_keeps_real_photos():
    cfg = S.QualityConfig()

    def reason(img, as_jpeg=None):
        data = jpeg(img, as_jpeg) if as_jpeg else png(img)
        dec, _, r = S.decode(data, S.DecodeConfig())
        return r or S.quality(dec, cfg)[1]

    for i in range(6):
        img = scene(10 + i, 320)
        assert reason(img) is None and reason(img, 90) is None
        assert reason(img.filter(ImageFilter.GaussianBlur(3))) == "quality:blur"
        assert reason(scene(10 + i, 96)) == "quality:low_resolution"
        assert reason(ImageEnhance.Brightness(img).enhance(1.5)) == "quality:overexposed"
        assert reason(ImageEnhance.Brightness(img).enhance(0.05)) == "quality:underexposed"
        assert reason(img, 4) == "quality:jpeg_artifacts"
    assert reason(Image.new("RGB", (300, 300), (90, 120, 30))) == "quality:flat"
    for p in photos():
        assert reason(p) is None and reason(p, 85) is None
        assert reason(p.filter(ImageFilter.GaussianBlur(4 * max(p.size) / 256))) == "quality:blur"


def test_ai_generated_images_are_recognised_without_a_learned_detector(tmp_path):
    from limner.safety.provenance import make_test_certificate, sign_c2pa
    from limner.safety.watermark import embed

    cfg = S.AIGeneratedConfig()
    img = scene(20)

    def signal(data):
        dec, _, _ = S.decode(data, S.DecodeConfig())
        return S.ai_generated(dec, data, cfg)[1]

    a1111 = PngImagePlugin.PngInfo()
    a1111.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512")
    comfy = PngImagePlugin.PngInfo()
    comfy.add_text("prompt", json.dumps({"3": {"class_type": "KSampler"}}))
    exif = Image.Exif()
    exif[0x0131] = "Midjourney v6"
    xmp = PngImagePlugin.PngInfo()
    xmp.add_text("XML:com.adobe.xmp", '<rdf:Description Iptc4xmpExt:DigitalSourceType='
                 '"http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>')
    src = tmp_path / "in.png"
    img.save(src)
    sign_c2pa(src, tmp_path / "signed.png", *make_test_certificate(tmp_path))
    assert signal(png(img)) is None and signal(jpeg(img)) is None
    assert signal(png(embed(img, payload=7))) == "ai_generated:limner_watermark"
    assert signal(png(img, pnginfo=a1111)) == "ai_generated:a1111_parameters"
    assert signal(png(img, pnginfo=comfy)) == "ai_generated:comfyui"
    assert signal(jpeg(img, exif=exif)) == "ai_generated:exif_software"
    assert signal(png(img, pnginfo=xmp)) == "ai_generated:iptc_ai_source"
    assert signal((tmp_path / "signed.png").read_bytes()) == "ai_generated:c2pa"
    # SDXL's invisible-watermark mark, and the same photo unmarked
    marked = FIXTURE.read_bytes()
    assert signal(marked) == "ai_generated:invisible_watermark_sdxl"
    import skimage.data as sd

    clean = Image.fromarray(sd.astronaut()).resize((256, 256), Image.LANCZOS)
    assert signal(png(clean)) is None
    assert (S.dwtdct_bits(Image.open(FIXTURE)) == S.SDXL_BITS).sum() == 48


def test_safety_stage_runs_the_shared_classifier_interface(tmp_path, tiny_clip_config):
    """The generation-time image filter's interface, with a tiny CLIP checker the test builds."""
    torch = pytest.importorskip("torch")
    from transformers import CLIPModel

    from limner.safety.image_filter import ClipSafetyChecker

    torch.manual_seed(0)
    CLIPModel(tiny_clip_config()).save_pretrained(tmp_path / "clip")
    bad, good = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), scene(5, 64)
    emb = ClipSafetyChecker(tmp_path / "clip", concepts={"x": {"text": "x", "threshold": 1}}).embed([bad, good])
    threshold = (1 + float(emb[0] @ emb[1])) / 2
    np.savez(tmp_path / "concepts.npz", embeddings=emb[:1].numpy(), thresholds=np.float32([threshold]), names=np.array(["bad"]))
    cfg = S.SafetyConfig({"classifier": "clip", "path": str(tmp_path / "clip"), "embeddings": str(tmp_path / "concepts.npz")})
    (sb, rb), (sg, rg) = S.safety([bad, good], cfg)
    assert rb == "safety:bad" and rg is None and sb["safety_bad"] > sg["safety_bad"]
    assert S.safety([bad], S.SafetyConfig(None)) == [({}, None)] == S.safety([bad], S.SafetyConfig("none"))

    # several classifiers by path, as a user configures their own: the demo's hand-set stand-in checker too
    standin = str(demo.standin_checker(tmp_path / "standin"))
    stamped = scene(6, 224)
    stamped.paste(demo.STAMP, (0, 0, 64, 96))  # exactly 2 x 3 of its 32 px patches
    both = S.SafetyConfig([cfg.classifier, f"clip:{standin}"])
    (sb, rb), (sg, rg), (ss, rs) = S.safety([bad, good, stamped], both)
    assert (rb, rg, rs) == ("safety:bad", None, "safety:standin")
    assert set(sb) == set(sg) == set(ss) == {"safety_bad", "safety_standin"}
    assert ss["safety_standin"] == pytest.approx(6 / 37 ** 0.5, abs=1e-4) and sg["safety_standin"] == 0
    with pytest.raises(ValueError, match=r"share the labels \['standin'\]"):
        S.safety([good], S.SafetyConfig([f"clip:{standin}", {"classifier": "clip", "path": standin}]))
    with pytest.raises(ValueError, match="with a list, give each classifier its thresholds"):
        S.SafetyConfig(["opennsfw", f"clip:{standin}"], {"standin": 0.9})


# ------------------------------------------------------------------------------- the whole pipeline


def demo_config(root: Path, **over) -> PipelineConfig:
    cfg = demo.configure(PipelineConfig.load(ROOT / "src/limner/data/demo.yaml"), root)
    cfg.source.shard_size, cfg.workers = 40, 1
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """A small planted corpus, curated once with the demo pipeline."""
    root = tmp_path_factory.mktemp("demo")
    demo.build(root, n=24, per_defect=2, seed=1, sides=(128, 160))
    cfg = demo_config(root)
    manifest = run(cfg, quiet=True)
    truth = [json.loads(line) for line in (root / "ground_truth.jsonl").read_text().splitlines()]
    return root, cfg, load(manifest), truth


def test_demo_corpus_every_stage_finds_what_was_planted(curated):
    _, _, rows, truth = curated
    assert len(rows) == len(truth) and {r["key"] for r in rows} == {t["key"] for t in truth}
    scores = demo.evaluate(rows, truth)
    classes = {t["expected"] for t in truth}
    assert {"decode:corrupt", "quality:blur", "ai_generated:c2pa", "caption:unsafe", "safety:standin"} <= classes
    for name, s in scores.items():
        assert s["recall"] is None or s["recall"] >= 0.98, (name, s)
        assert s["precision"] is None or s["precision"] >= 0.98, (name, s)
    # open_nsfw scored every image that reached the safety stage, all of them benign, and flagged none
    nsfw = scores[demo.NSFW_ROW]
    assert nsfw["n"] == sum(r["safety_nsfw"] is not None for r in rows) >= 40 and nsfw["false_positive_rate"] == 0
    # the stand-in class went through the stage with its score in the manifest
    by_key = {r["key"]: r for r in rows}
    standins = {t["key"] for t in truth if t["class"] == demo.STANDIN}
    assert len(standins) == 2 and all(by_key[k]["safety_standin"] >= 0.7 for k in standins)
    assert all(r["safety_standin"] == 0 for r in rows if r["safety_standin"] is not None and r["key"] not in standins)


def test_manifest_and_shards_hold_fates_weights_and_captions(curated):
    root, cfg, rows, truth = curated
    kept = [r for r in rows if r["fate"] == "kept"]
    assert all(r["reason"] for r in rows if r["fate"] == "dropped")
    # near-duplicates are kept and down-weighted: a cluster of k images weighs 1 in all
    clusters = {}
    for r in kept:
        clusters.setdefault(r["cluster"], []).append(r["weight"])
    assert any(len(w) > 1 for w in clusters.values())
    assert all(sum(w) == pytest.approx(1.0) for w in clusters.values())
    # every kept image has its alt-text and the oracle's captions, with their sources, in the shards too
    members = {}
    for tar in sorted((Path(cfg.out_dir) / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            members.update({m.name: t.extractfile(m).read() for m in t})
    for r in kept:
        caps = json.loads(r["captions"])
        if "scene" in json.loads(r["meta"]):  # edited copies have no scene, and read back as no Shapes World scene
            assert {"count", "spatial"} <= set(caps), r["key"]
            assert json.loads(r["caption_sources"])["count"] == "oracle"
        meta = json.loads(members[f"{r['member']}.json"])
        assert meta["captions"] == caps and meta["weight"] == r["weight"] and meta["key"] == r["key"]
    # nothing the safety stage dropped reaches a shard
    in_shards = {json.loads(v)["key"] for k, v in members.items() if k.endswith(".json")}
    unsafe = {r["key"] for r in rows if (r["reason"] or "").startswith("safety:")}
    assert unsafe and not unsafe & in_shards
    # planted personal data never reaches a shard
    blob = b"".join(v for k, v in members.items() if k.endswith((".json", ".txt")))
    for t in truth:
        if "pii" in t:
            assert t["pii"].encode() not in blob


def test_alt_text_is_scrubbed_once_and_captioners_see_it_scrubbed(tmp_path, monkeypatch):
    from limner.data import captioners, pii

    shown = []

    class Recording:
        kind, errors = "recording", []

        def caption(self, images, alts, metas):
            shown.extend(alts)
            return [{"recaption": "a scene"} for _ in images]

    scrubbed = []
    scrub = pii.Scrubber.scrub
    monkeypatch.setattr(pii.Scrubber, "scrub", lambda self, text: scrubbed.append(text) or scrub(self, text))
    monkeypatch.setitem(captioners.CAPTIONERS, "recording", lambda: Recording())
    raw = tmp_path / "raw"
    raw.mkdir()
    alts = {"a": "two circles, mail jane.doe@example.com", "b": "gore and dismembered bodies", "c": "a square"}
    for i, (key, alt) in enumerate(alts.items()):
        (raw / f"{key}.png").write_bytes(png(scene(40 + i)))
        (raw / f"{key}.txt").write_text(alt)
    cfg = PipelineConfig.from_dict({"source": {"path": str(raw)}, "out_dir": str(tmp_path / "out"), "workers": 1,
                                    "safety": {"classifier": None}, "dedup": {"near": False},
                                    "captions": {"captioners": [{"type": "recording"}], "unsafe_alt": "drop_caption"}})
    rows = {r["key"]: r for r in load(run(cfg, quiet=True))}
    assert shown == ["two circles, mail <EMAIL>", None, "a square"]  # no PII, no unsafe alt-text
    assert scrubbed == list(alts.values()) + ["a scene"] * 3  # each alt-text once (pass 1), each new caption once
    assert json.loads(rows["a"]["captions"]) == {"alt": "two circles, mail <EMAIL>", "recaption": "a scene"}
    assert json.loads(rows["b"]["captions"]) == {"recaption": "a scene"} and rows["b"]["fate"] == "kept"
    assert rows["b"]["captions_dropped"].startswith("alt:unsafe_")
    assert rows["a"]["alt_pii"] == "email" and isinstance(rows["a"]["thumb"], bytes)
    assert not any(k.startswith("hash_thumb") for k in rows["a"])  # the thumbnail is one column


def test_report_draws_what_each_stage_did(curated):
    root, cfg, rows, _ = curated
    text = table(rows)
    assert "decode" in text and "quality:blur" in text and "duplicate" in text
    page = write(Path(cfg.out_dir) / "manifest.parquet")
    html = page.read_text()
    assert "largest duplicate clusters" in html and html.count("data:image/png;base64,") >= 4
    assert (page.parent / "report-fates.png").exists() and (page.parent / "report-scores.png").exists()


@pytest.mark.slow
def test_resume_after_kill_loses_and_duplicates_nothing(curated, tmp_path):
    root, cfg, rows, _ = curated
    cfg_file = tmp_path / "pipeline.yaml"
    d = demo_config(root).to_dict()
    d["out_dir"] = str(tmp_path / "killed")
    d["source"]["shard_size"] = 10
    cfg_file.write_text(json.dumps(d))
    proc = subprocess.Popen(CLI + ["data", "run", str(cfg_file), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list((tmp_path / "killed" / "work").glob("analysed-*.parquet")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list((tmp_path / "killed" / "work").glob("analysed-*.parquet"))
    assert done and not (tmp_path / "killed" / "manifest.parquet").exists()
    stamps = {p: p.stat().st_mtime_ns for p in done}
    subprocess.run(CLI + ["data", "run", str(cfg_file), "--quiet"], check=True, capture_output=True)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished shards were not redone
    again = load(tmp_path / "killed" / "manifest.parquet")
    assert sorted(r["key"] for r in again) == sorted(r["key"] for r in rows)  # nothing lost, nothing twice
    strip = lambda rs: sorted((r["key"], r["fate"], r["reason"], r["weight"], r["captions"]) for r in rs)
    assert strip(again) == strip(rows)
    # the same directory with another configuration is refused, not mixed
    d["dedup"]["alpha"] = 0.5
    cfg_file.write_text(json.dumps(d))
    bad = subprocess.run(CLI + ["data", "run", str(cfg_file)], capture_output=True, text=True)
    assert bad.returncode == 2 and "another configuration" in bad.stderr


@pytest.mark.slow
def test_ray_executor_writes_the_same_manifest_and_shards(curated, tmp_path):
    pytest.importorskip("ray")
    root, cfg, rows, _ = curated
    ray_cfg = demo_config(root, executor="ray", workers=2, out_dir=str(tmp_path / "ray"))
    ray_rows = load(run(ray_cfg, quiet=True))
    ignore = {"tar", "member"}
    key = lambda r: r["key"]
    assert [{k: v for k, v in r.items() if k not in ignore} for r in sorted(ray_rows, key=key)] == \
           [{k: v for k, v in r.items() if k not in ignore} for r in sorted(rows, key=key)]
    for tar in (Path(cfg.out_dir) / "shards").glob("*.tar"):
        assert (tmp_path / "ray" / "shards" / tar.name).read_bytes() == tar.read_bytes()


def test_sources_folder_parquet_and_webdataset_agree(curated, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, cfg, rows, _ = curated
    files = sorted(p for p in (root / "raw").iterdir() if p.suffix in (".png", ".jpg", ".gif", ".webp"))[:30]
    table_ = pa.table({"key": [p.stem for p in files], "image": [p.read_bytes() for p in files],
                       "caption": [(p.with_suffix(".txt").read_text() if p.with_suffix(".txt").exists() else None) for p in files]})
    pq.write_table(table_, tmp_path / "in.parquet")
    with tarfile.open(tmp_path / "in-000.tar", "w") as tar:
        for p in files:
            for f in (p, p.with_suffix(".txt")):
                if f.exists():
                    tar.add(f, arcname=f.name)
    fates = {}
    for kind, path in (("parquet", tmp_path / "in.parquet"), ("webdataset", tmp_path / "in-*.tar")):
        c = demo_config(root, out_dir=str(tmp_path / kind))
        c.source.kind, c.source.path = kind, str(path)
        c.captions.captioners = []
        fates[kind] = {r["key"]: (r["fate"], r["reason"]) for r in load(run(c, quiet=True))}
    expected = {r["key"]: (r["fate"], r["reason"]) for r in rows if r["key"] in fates["parquet"]}
    # duplicates depend on which other images are present; every other fate must agree
    same = lambda f: {k: v for k, v in f.items() if not (v[1] or "").startswith("duplicate")}
    assert same(fates["parquet"]) == same(fates["webdataset"]) == same(expected) and len(fates["parquet"]) == 30


def test_bad_configuration_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        PipelineConfig.from_dict({"sauce": {}})
    with pytest.raises(ValueError, match=r"quality: unknown keys \['blurr'\]"):
        PipelineConfig.from_dict({"quality": {"blurr": 1}})
    with pytest.raises(ValueError, match="executor"):
        PipelineConfig.from_dict({"executor": "spark"})
    with pytest.raises(ValueError, match="captions: unsafe_alt must be drop_image or drop_caption"):
        PipelineConfig.from_dict({"captions": {"unsafe_alt": "keep"}})
    with pytest.raises(ValueError, match="action must be .downweight. or .drop."):
        PipelineConfig(dedup=DedupConfig(action="merge"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(PipelineConfig.from_dict({"source": {"path": str(tmp_path / "nowhere")}, "out_dir": str(tmp_path / "o")}))
    r = subprocess.run(CLI + ["data", "run", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr


# ------------------------------------------------------------------------------- a new user's own folder


def own_folder(root: Path, n: int = 5) -> Path:
    """A user's folder: images with alt-text side files (Shapes World scenes stand in for photos)."""
    root.mkdir(parents=True)
    for i in range(n):
        scene(100 + i, 160).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"picture number {i}")
    return root


def test_init_template_keeps_demo_keys_without_the_demo_parts(tmp_path):
    from limner.data.template import write_template

    data = own_folder(tmp_path / "photos")
    config, cfg, parts = write_template(data, tmp_path / "c.yaml")
    assert PipelineConfig.load(config) == cfg and sum(len(p.members) for p in parts) == 5
    assert (cfg.source.kind, cfg.source.path, cfg.out_dir) == ("folder", str(data), str(tmp_path / "photos-curated"))
    # the demo's stand-in checker and Shapes World oracle are the only differences from demo.yaml
    assert cfg.safety.classifier == ["opennsfw"] and cfg.captions.captioners == []
    ours, theirs = cfg.to_dict(), PipelineConfig.load(ROOT / "src/limner/data/demo.yaml").to_dict()
    for d in (ours, theirs):
        d["source"].pop("kind"), d["source"].pop("path"), d.pop("out_dir"), d["safety"].pop("classifier")
        d["captions"].pop("captioners")
    assert ours == theirs
    with pytest.raises(FileExistsError, match="--force"):
        write_template(data, config)
    assert write_template(data, config, force=True)[0] == config
    with pytest.raises(ValueError, match="inside the source folder"):
        write_template(data, tmp_path / "d.yaml", out_dir=data / "curated")
    with pytest.raises(FileNotFoundError, match="give the folder that holds your images"):
        write_template(tmp_path / "nowhere", tmp_path / "e.yaml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        write_template(tmp_path / "empty", tmp_path / "f.yaml")
    assert not (tmp_path / "e.yaml").exists() and not (tmp_path / "f.yaml").exists()


@pytest.mark.slow
def test_init_writes_a_config_that_runs_as_written(tmp_path):
    own_folder(tmp_path / "photos")
    init = subprocess.run(CLI + ["data", "init", "photos"], cwd=tmp_path, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert "5 images" in init.stdout and "limner data run photos-curate.yaml" in init.stdout
    done = subprocess.run(CLI + ["data", "run", "photos-curate.yaml", "--json", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = load(tmp_path / "photos-curated" / "manifest.parquet")
    assert sorted(r["key"] for r in rows) == [f"img{i}" for i in range(5)]
    assert all(json.loads(r["captions"])["alt"].startswith("picture number") for r in rows)


def test_a_copy_of_demo_yaml_fails_in_words_and_locks_nothing(tmp_path):
    cfg = PipelineConfig.load(ROOT / "src/limner/data/demo.yaml")   # as copied: the stand-in's demo/ path
    cfg.source.path, cfg.out_dir = str(own_folder(tmp_path / "photos")), str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="demo's stand-in checker.*limner data init"):
        run(cfg, quiet=True)
    cfg.safety.classifier = ["opennsfw"]
    cfg.source.path = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(cfg, quiet=True)
    assert not (tmp_path / "out").exists()


def test_a_run_that_wrote_nothing_restarts_with_another_configuration(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    base = {"source": {"path": str(own_folder(tmp_path / "photos"))}, "out_dir": str(tmp_path / "out"),
            "workers": 1, "captions": {"captioners": []}}
    broken = PipelineConfig.from_dict({**base, "safety": {"classifier": f"clip:{tmp_path / 'not-a-model'}"}})
    with pytest.raises(FileNotFoundError, match="no CLIP model"):
        run(broken, quiet=True)   # fails in the first shard, after out/work/config.json was written
    assert (tmp_path / "out" / "work" / "config.json").exists()
    fixed = PipelineConfig.from_dict({**base, "safety": {"classifier": None}})
    rows = load(run(fixed, quiet=True))
    assert len(rows) == 5 and all(r["fate"] == "kept" for r in rows)
    # once a run has results, another configuration is still refused: results are never mixed
    other = PipelineConfig.from_dict({**base, "safety": {"classifier": None}, "dedup": {"alpha": 0.5}})
    with pytest.raises(ValueError, match="another configuration"):
        run(other, quiet=True)


@pytest.mark.slow
def test_train_reads_the_pipeline_shards_with_their_captions_and_weights(curated, tmp_path, tiny):
    from limner.train.data import DataConfig, load_records
    from limner.train import run as train

    root, cfg, rows, _ = curated
    shards = str(Path(cfg.out_dir) / "shards" / "*.tar")
    records = load_records(DataConfig(source="webdataset", shards=shards))
    kept = {r["key"]: r for r in rows if r["fate"] == "kept"}
    assert len(records) == len(kept)
    assert sorted(r.weight for r in records) == pytest.approx(sorted(r["weight"] for r in kept.values()))
    assert all({"alt", "count"} <= set(r.captions) for r in records if "count" in r.captions)

    ae = train(tiny("autoencoder", tmp_path, steps=4), quiet=True)
    dn = tiny("denoiser", tmp_path, autoencoder=str(ae), steps=6, sample_every=10**6)
    dn.data.source, dn.data.shards = "webdataset", shards
    model = train(dn, quiet=True)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "denoiser" / "metrics.jsonl").read_text().splitlines()
              if "loss" in line]
    assert (model / "denoiser.safetensors").exists() and all(np.isfinite(losses))
