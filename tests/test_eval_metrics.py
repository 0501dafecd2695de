"""`limner eval score` on real generation folders: Shapes World ground truth and shuffled renders made with
`limner eval generate`, tiny CLIP / BLIP VQA / ViT models built here (nothing downloaded); FID, KID and CMMD
against independent formulas; bootstrap intervals; the CLI, the cache and its errors."""
import json
import random
import string

import numpy as np
import pytest
from scipy import linalg

from limner.cli import main
from limner.eval import metrics as M
from limner.eval.generate import generate_suite
from limner.eval.suites import shapes_suite
from limner.world.captions import relation
from limner.world.scene import BACKGROUNDS, Obj, Scene, place, render, sample_scene
from limner.world.scorer import Constraints

# --------------------------------------------------------------------------- Shapes World generations


def truth_scene(prompt, seed: int) -> Scene:
    """What the prompt asks for: a detailed prompt's reference scene, else its groups placed at random until
    their true positions (not the detector's reading) satisfy the prompt's relations."""
    if prompt.reference:
        return Scene.from_dict(json.loads(prompt.reference))
    c = Constraints.from_dict(prompt.constraints)
    rng = random.Random(f"{prompt.id}-{seed}")
    while True:
        objs = [Obj(g["shape"], g["colour"], g.get("size", "small"), 0, 0) for g in c.groups for _ in range(g["count"])]
        kind = lambda o: [o.colour, o.shape]   # noqa: E731
        if place(objs, rng, 0.05) and all(r["rel"] in relation([o for o in objs if kind(o) == list(r["a"])],
                                                               [o for o in objs if kind(o) == list(r["b"])])
                                          for r in c.relations):
            return Scene(rng.choice(list(BACKGROUNDS)), objs)


class Renderer:
    """A backend that draws each prompt's ground truth, or with `shift` that of another prompt for every other one."""

    def __init__(self, name: str, prompts, shift: int = 0):
        self.name, self.shift, self.prompts = name, shift, list(prompts)
        self.index = {p.text: i for i, p in enumerate(self.prompts)}

    def generate(self, prompts, seeds, negative_prompt=None, steps=None, guidance=None, size=None):
        return [render(truth_scene(self.prompts[(self.index[t] + self.shift * (self.index[t] % 2)) % len(self.prompts)],
                                   s), 64) for t, s in zip(prompts, seeds)]

    def identity(self):
        return {"backend": "test-renderer", "shift": self.shift}


PROMPTS = (shapes_suite("shapes-counting", 1) + shapes_suite("shapes-binding", 2) + shapes_suite("shapes-spatial", 1)
           + shapes_suite("shapes-detailed", 1)[:3])


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    generate_suite(PROMPTS, [Renderer("truth", PROMPTS), Renderer("shuffled", PROMPTS, shift=1)], out,
                   seeds=(0, 1), progress=False)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    rng = random.Random(7)
    for i in range(24):
        render(sample_scene(rng), 64).save(folder / f"{i:02d}.png")
    return folder


def test_shapes_scores_ground_truth_exactly_and_shuffled_worse(gen):
    s = M.score_generations(gen, ["shapes"], rounds=200, progress=False)
    n = len(PROMPTS) * 2
    assert s["n_images"] == 2 * n and set(s["suite"].split(", ")) == {p.suite for p in PROMPTS}
    truth, shuffled = ({k: m["models"][name] for k, m in s["metrics"].items()} for name in ("truth", "shuffled"))
    assert {k: v["mean"] for k, v in truth.items()} == {
        "shapes.count_ok": 1.0, "shapes.binding": 1.0, "shapes.relations_ok": 1.0, "shapes.correct": 1.0}
    assert truth["shapes.count_ok"]["ci"] == [1.0, 1.0]
    half = np.mean([i % 2 == 0 for i in range(len(PROMPTS))])   # the prompts drawn right
    assert all(0.3 < shuffled[k]["mean"] < 0.7 for k in ("shapes.count_ok", "shapes.binding", "shapes.correct"))
    assert shuffled["shapes.count_ok"]["mean"] == pytest.approx(half, abs=0.1)
    lo, hi = shuffled["shapes.count_ok"]["ci"]
    assert lo < shuffled["shapes.count_ok"]["mean"] < hi and hi - lo < 0.6
    # binding only on binding prompts, relations only where a prompt asks for one; every seed counted
    binding = sum(p.suite == "shapes-binding" for p in PROMPTS) * 2
    spatial = sum(bool(p.constraints["relations"]) for p in PROMPTS) * 2
    assert (truth["shapes.count_ok"]["n"], truth["shapes.binding"]["n"], truth["shapes.relations_ok"]["n"]) == \
        (n, binding, spatial)
    # per tag value, and per suite as the folder holds several
    tags = truth["shapes.count_ok"]["by_tag"]
    assert tags["count=3"]["n"] == 2 and tags["pairs=2"]["n"] == 4 and tags["suite=shapes-binding"]["n"] == binding
    assert sum(v["n"] for k, v in tags.items() if k.startswith("suite=")) == n
    assert shuffled["shapes.count_ok"]["by_tag"]["suite=shapes-counting"]["mean"] == 0.5   # 8 prompts, 4 right


def test_scores_jsonl_is_one_row_per_image_and_a_cache(gen, monkeypatch, tmp_path):
    import shutil

    folder = tmp_path / "g"
    shutil.copytree(gen, folder)
    first = M.score_generations(folder, ["shapes"], rounds=0, progress=False)
    rows = [json.loads(line) for line in (folder / M.SCORES_ROWS).read_text().splitlines()]
    assert len(rows) == first["n_images"] and len({r["cache_key"] for r in rows}) == len(rows)
    assert {"model", "prompt_id", "seed", "path", "shapes.count_ok", "shapes.correct", "scorers"} <= set(rows[0])
    assert first["metrics"]["shapes.count_ok"]["models"]["truth"]["ci"] is None   # --rounds 0

    calls = []
    real = M.detect
    monkeypatch.setattr(M, "detect", lambda im: calls.append(1) or real(im))
    again = M.score_generations(folder, ["shapes"], rounds=0, progress=False)
    assert calls == [] and again == first
    # a new seed: only its images are scored; a line cut short by a kill is scored again
    generate_suite(PROMPTS, [Renderer("truth", PROMPTS)], folder, seeds=(2,), progress=False)
    with (folder / M.SCORES_ROWS).open("a") as f:
        f.write('{"model": "truth", "cache_key": "x", "sco')
    M.score_generations(folder, ["shapes"], rounds=0, progress=False)
    assert len(calls) == len(PROMPTS)
    assert len((folder / M.SCORES_ROWS).read_text().splitlines()) == first["n_images"] + len(PROMPTS)


# --------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny_byte_clip(tmp_path_factory, byte_chars):
    """A random CLIPModel (hidden 32, 32 px) with a byte-level tokenizer, so that every text tokenizes."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("clip")
    chars = byte_chars()
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    torch.manual_seed(3)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    return path


YES_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"""yes no does this figure show please answer or
    a an the of and to left right above below red blue green yellow purple orange circle circles square squares
    triangle triangles one two three four five six seven eight""".split(), '"', "?", ".", ","]


@pytest.fixture(scope="module")
def tiny_vqa(tmp_path_factory):
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    root = tmp_path_factory.mktemp("vqa")
    (root / "vocab.txt").write_text("\n".join(YES_WORDS) + "\n")
    torch.manual_seed(0)
    text = dict(vocab_size=len(YES_WORDS), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, sep_token_id=3,
                pad_token_id=0, initializer_range=0.2)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, initializer_range=0.2)
    BlipForQuestionAnswering(BlipConfig(vision_config=vision, text_config=text, projection_dim=32)).save_pretrained(root / "m")
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}),
                  BertTokenizer(str(root / "vocab.txt"))).save_pretrained(root / "m")
    return root / "m"


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=37)).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _images(gen, n=6):
    rows = [json.loads(line) for line in (gen / "manifest.jsonl").read_text().splitlines()][:n]
    return [M._open(gen / r["path"]) for r in rows], [r["prompt"] for r in rows]


def test_clipscore_is_hessel_et_al_on_the_models_own_embeddings(gen, tiny_byte_clip):
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    images, prompts = _images(gen)
    got = M.clipscores(M.Clip(str(tiny_byte_clip)), images, prompts)
    model = CLIPModel.from_pretrained(tiny_byte_clip).eval()
    tok = CLIPTokenizer.from_pretrained(tiny_byte_clip)(["A photo depicts " + p for p in prompts], padding=True,
                                                    truncation=True, return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(tiny_byte_clip)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        o = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pixels)
    cos = (o.image_embeds * o.text_embeds).sum(-1).numpy()
    assert np.allclose(got, 2.5 * np.maximum(cos, 0), atol=1e-5)
    assert (cos > 0).sum() >= 2 and len(set(np.round(got, 6))) >= 4   # texts and images tell apart


def test_vqascore_is_the_yes_probability_of_the_first_answer_token(gen, tiny_vqa):
    import torch

    images, prompts = _images(gen, 4)
    vqa = M.Vqa(str(tiny_vqa), batch_size=3)
    assert vqa.yes == [YES_WORDS.index("yes")]   # BERT lower-cases: "Yes" and "yes" are one token
    got = vqa(images, prompts)
    # by hand: image -> question encoder -> answer decoder's first step, no generate()
    m, proc = vqa.model, vqa.processor
    inputs = proc(images=images, text=[M.VQA_QUESTION.format(p) for p in prompts], return_tensors="pt", padding=True)
    with torch.no_grad():
        img = m.vision_model(pixel_values=inputs["pixel_values"])[0]
        q = m.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           encoder_hidden_states=img, encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long))[0]
        bos = torch.full((len(images), 1), m.decoder_start_token_id)
        logits = m.text_decoder(input_ids=bos, encoder_hidden_states=q,
                                encoder_attention_mask=torch.ones(q.shape[:2], dtype=torch.long)).logits[:, -1]
    want = torch.softmax(logits, -1)[:, vqa.yes[0]].numpy()
    assert np.allclose(got, want, atol=1e-5) and np.all((got > 0) & (got < 1)) and np.ptp(got) > 0
    with torch.no_grad():   # a model that always says yes scores 1, one that never does 0
        m.text_decoder.cls.predictions.bias[vqa.yes[0]] += 40
        assert np.all(vqa(images, prompts) > 0.999)
        m.text_decoder.cls.predictions.bias[vqa.yes[0]] -= 80
        assert np.all(vqa(images, prompts) < 1e-3)


def test_feature_extractors(gen, tiny_vit, tiny_byte_clip):
    images, _ = _images(gen, 5)
    vit = M.load_features(str(tiny_vit))
    f = vit(images)
    assert isinstance(vit, M.TransformersFeatures) and f.shape == (5, 32) and np.ptp(f, axis=0).max() > 0
    clip = M.load_features(str(tiny_byte_clip))
    e = clip(images)
    assert isinstance(clip, M.Clip) and e.shape == (5, 16) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert vit.identity != clip.identity and vit.identity == M.load_features(str(tiny_vit)).identity


def test_open_clip_models_by_name_when_it_is_installed(gen, monkeypatch):
    """The open_clip path's plumbing, on a stand-in module (open_clip is optional and not installed here)."""
    import sys
    import types

    import torch

    calls = []

    class Model(torch.nn.Module):
        def encode_image(self, x):
            return x.flatten(1)[:, :8]

        def encode_text(self, t):
            return t.float()

    def create(name, pretrained=None):
        calls.append((name, pretrained))
        to_tensor = lambda im: torch.from_numpy(np.asarray(im.resize((4, 4)), np.float32)).permute(2, 0, 1)  # noqa: E731
        return Model(), None, to_tensor

    tokenizer = lambda texts: torch.tensor([[len(t), 1, 2, 3, 4, 5, 6, 7] for t in texts])   # noqa: E731
    monkeypatch.setitem(sys.modules, "open_clip", types.SimpleNamespace(
        create_model_and_transforms=create, get_tokenizer=lambda name: tokenizer))
    clip, hub = M.Clip("open_clip:ViT-B-32:/weights.bin"), M.Clip("open_clip:hf-hub:org/model")
    assert calls == [("ViT-B-32", "/weights.bin"), ("hf-hub:org/model", None)] and clip.identity != hub.identity
    images, prompts = _images(gen, 3)
    e, t = clip(images), clip.texts([M.CLIP_PREFIX + p for p in prompts])
    assert e.shape == (3, 8) and np.allclose(np.linalg.norm(t, axis=1), 1)
    assert np.allclose(M.clipscores(clip, images, prompts), 2.5 * np.maximum((e * t).sum(1), 0))
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ValueError, match="open_clip is not installed"):
        M.Clip("open_clip:ViT-B-32")


# --------------------------------------------------------------------------- set statistics


def test_frechet_distance_matches_scipy_sqrtm_and_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2, mu1, mu2 = a @ a.T + 0.1 * np.eye(6), b @ b.T, rng.normal(size=6), rng.normal(size=6)
    ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    # samples of two Gaussians: FID -> |m1 - m2|^2 + sum (sqrt(v1) - sqrt(v2))^2 for diagonal covariances
    v1, v2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 1.0, 0.5])
    m1, m2 = np.zeros(4), np.array([1.0, -0.5, 0.0, 2.0])
    x, y = m1 + rng.normal(size=(40000, 4)) * np.sqrt(v1), m2 + rng.normal(size=(40000, 4)) * np.sqrt(v2)
    closed = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert M.fid(x, y) == pytest.approx(closed, rel=0.02) and M.fid(x, x) == pytest.approx(0, abs=1e-9)


def test_kid_is_the_unbiased_estimator_of_a_naive_loop_and_cmmd_its_rbf_v_statistic():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 1.0, size=(9, 5))

    def naive(k, x, y, unbiased):
        n, m = len(x), len(y)
        xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j or not unbiased) / (n * (n - 1 if unbiased else n))
        yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j or not unbiased) / (m * (m - 1 if unbiased else m))
        return xx + yy - 2 * sum(k(a, b) for a in x for b in y) / (n * m)

    assert M.kid(x, y) == pytest.approx(naive(lambda a, b: (a @ b / 5 + 1) ** 3, x, y, True), rel=1e-10)
    rbf = lambda a, b: np.exp(-((a - b) ** 2).sum() / (2 * 10.0**2))   # noqa: E731
    assert M.cmmd(x, y) == pytest.approx(1000 * naive(rbf, x, y, False), rel=1e-8) and M.cmmd(x, x) == pytest.approx(0, abs=1e-9)
    # larger sets: the mean over random subsets, which tracks the full estimate
    big_x, big_y = rng.normal(size=(300, 5)), rng.normal(0.5, 1.0, size=(300, 5))
    assert M.kid(big_x, big_y, subsets=20, subset_size=200) == pytest.approx(M.kid(big_x, big_y), rel=0.1)


def test_set_metrics_per_model_with_a_pluggable_extractor(gen, reference):
    class MeanColour:
        identity = "mean-colour"

        def __call__(self, images):
            return np.stack([np.asarray(im, np.float64).reshape(-1, 3).mean(0) for im in images])

    s = M.score_generations(gen, ["fid", "kid"], features=MeanColour(), reference=reference, progress=False)
    for name in ("fid", "kid"):
        m = s["metrics"][name]
        assert m["higher_is_better"] is False and m["kind"] == "set" and set(m["models"]) == {"truth", "shuffled"}
        assert all(v["ci"] is None and v["by_tag"] == {} and v["n"] == len(PROMPTS) * 2 for v in m["models"].values())
    ref = MeanColour()([M._open(p) for p in sorted(reference.iterdir())])
    own = [M._open(gen / r["path"]) for r in map(json.loads, (gen / "manifest.jsonl").read_text().splitlines())
           if r["model"] == "truth"]
    assert s["metrics"]["fid"]["models"]["truth"]["mean"] == pytest.approx(M.fid(MeanColour()(own), ref))


# --------------------------------------------------------------------------- aggregation


def test_bootstrap_contains_the_mean_shrinks_with_n_and_resamples_prompts():
    rng = np.random.default_rng(0)
    small, large = rng.random(50), rng.random(800)
    m1, (lo1, hi1) = M.bootstrap_mean(small, np.arange(50), 2000)
    m2, (lo2, hi2) = M.bootstrap_mean(large, np.arange(800), 2000)
    assert lo1 < m1 < hi1 and lo2 < m2 < hi2 and m1 == pytest.approx(small.mean())
    assert (hi2 - lo2) < 0.4 * (hi1 - lo1)
    # every prompt's seeds alike: no more information than one seed each, so the same interval
    m3, ci3 = M.bootstrap_mean(np.repeat(small, 4), np.repeat(np.arange(50), 4), 2000)
    assert m3 == pytest.approx(m1) and ci3 == pytest.approx([lo1, hi1])
    # ... while resampling images as if independent would have claimed a narrower one
    _, (lo4, hi4) = M.bootstrap_mean(np.repeat(small, 4), np.arange(200), 2000)
    assert hi4 - lo4 < 0.7 * (hi1 - lo1)
    assert M.bootstrap_mean([0.3], ["p"], 100) == (0.3, None)


def test_list_valued_tags_count_the_row_in_each_value():
    rows = [{"prompt_id": "a", "tags": {"skill": ["counting", "colour"], "category": "toys"}},
            {"prompt_id": "b", "tags": {"skill": ["counting"]}}, {"prompt_id": "c", "tags": {}}]
    s = M.summarise(rows, [1.0, 0.0, 0.5], rounds=100, seed=0)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.5)
    assert {k: (v["n"], v["mean"]) for k, v in s["by_tag"].items()} == {
        "skill=counting": (2, 0.5), "skill=colour": (1, 1.0), "category=toys": (1, 1.0)}
    assert s["by_tag"]["skill=colour"]["ci"] is None
    # the interval resamples prompts: two identical seeds of each prompt add nothing
    values = np.random.default_rng(2).random(20)
    rows = [{"prompt_id": f"p{i}", "tags": {"k": "v"}} for i in range(20) for _ in range(2)]
    s = M.summarise(rows, np.repeat(values, 2), rounds=500, seed=0)
    assert s["ci"] == pytest.approx(M.bootstrap_mean(values, np.arange(20), 500)[1]) == s["by_tag"]["k=v"]["ci"]


def test_metric_agreement_flips_lower_is_better_metrics():
    def metric(better, means):
        return {"higher_is_better": better, "kind": "per_image",
                "models": {m: {"mean": v, "ci": None, "n": 1, "by_tag": {}} for m, v in means.items()}}

    scores = {"suite": None, "n_images": 3, "metrics": {
        "clipscore": metric(True, {"a": 0.3, "b": 0.2, "c": 0.1}), "fid": metric(False, {"a": 5, "b": 9, "c": 20}),
        "kid": metric(False, {"a": 1.0})}}
    out = M.metric_agreement(scores, {"a": 1100.0, "b": 1000.0, "c": 900.0})
    assert out["clipscore"]["agreement"] == 1.0 and out["fid"]["agreement"] == 1.0 and out["fid"]["kendall_tau"] == 1.0
    assert "at least two models" in out["kid"]["error"]


# --------------------------------------------------------------------------- CLI and errors


def test_cli_writes_scores_json_in_the_report_schema(gen, tiny_byte_clip, tiny_vit, reference, tmp_path, capsys):
    import shutil

    from limner.eval.report_data import load_scores

    folder = tmp_path / "g"
    shutil.copytree(gen, folder)
    assert main(["eval", "score", str(folder), "--clip", str(tiny_byte_clip), "--features", str(tiny_vit),
                 "--reference", str(reference), "--rounds", "100", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((folder / "scores.json").read_text())
    assert load_scores(folder / "scores.json") == data
    assert list(data["metrics"]) == ["shapes.count_ok", "shapes.binding", "shapes.relations_ok", "shapes.correct",
                                     "clipscore", "fid", "kid", "cmmd"]
    assert set(data) == {"suite", "n_images", "metrics"} and data["n_images"] == 4 * len(PROMPTS)
    for name, m in data["metrics"].items():
        assert set(m) == {"higher_is_better", "kind", "models"} and m["kind"] in ("per_image", "set")
        assert m["higher_is_better"] == (m["kind"] == "per_image")
        for s in m["models"].values():
            assert set(s) == {"mean", "ci", "n", "by_tag"} and isinstance(s["mean"], float) and isinstance(s["n"], int)
            assert s["ci"] is None or (len(s["ci"]) == 2 and s["ci"][0] <= s["mean"] <= s["ci"][1])
            assert all(set(t) == {"mean", "ci", "n"} for t in s["by_tag"].values())
    assert "shapes.count_ok (higher is better)" in printed and "fid (lower is better)" in printed and "95% CI" in printed
    rows = [json.loads(line) for line in (folder / M.SCORES_ROWS).read_text().splitlines()]
    assert all("clipscore" in r and set(r["scorers"]) == {"shapes", "clipscore"} for r in rows)

    out = tmp_path / "elsewhere" / "s.json"
    assert main(["eval", "score", str(folder), "--metric", "clipscore", "--clip", str(tiny_byte_clip), "--json",
                 "--out", str(out), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(out.read_text())
    assert list(json.loads(out.read_text())["metrics"]) == ["clipscore"]


def test_bad_inputs_say_what_is_wrong_and_what_to_do(gen, tiny_vqa, tmp_path, capsys):
    def error(*argv):
        assert main(["eval", "score", *map(str, argv), "--no-progress"]) == 2
        return capsys.readouterr().err

    assert "no generation folder" in error(tmp_path / "nope")
    assert "run `limner eval generate" in error(tmp_path)
    (tmp_path / "notamodel").mkdir()
    assert "is not a CLIP model folder (no config.json)" in error(gen, "--clip", tmp_path / "notamodel")
    assert "not CLIP" in error(gen, "--clip", tiny_vqa)
    (tmp_path / "empty").mkdir()
    assert "holds 0 images" in error(gen, "--metric", "fid", "--features", tiny_vqa, "--reference", tmp_path / "empty")
    assert "fid needs --features PATH" in error(gen, "--metric", "fid")
    assert "cmmd needs --clip PATH and --reference DIR" in error(gen, "--metric", "cmmd", "--clip", tiny_vqa)
    # a benchmark without Shapes World constraints: no default, and shapes does not apply
    other = tmp_path / "other"
    other.mkdir()
    row = json.loads((gen / "manifest.jsonl").read_text().splitlines()[0]) | {"constraints": {"include": []}}
    (other / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    err = error(other)
    assert "nothing to score" in err and "--clip PATH" in err and "--vqa PATH" in err and "--reference DIR" in err
    assert "no image here has their constraints" in error(other, "--metric", "shapes")
    assert "no image of" in error(other, "--metric", "clipscore", "--clip", tmp_path / "notamodel")
    (other / "manifest.jsonl").write_text('{"prompt": "x"}\n')
    assert "is it the manifest" in error(other)
