"""The core pipeline takes its parts and knows no world and no policy; a model folder's metadata attaches
the guard and the hooks of the world it was trained on."""
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from limner.models import folder
from limner.pipeline import Pipeline
from limner.pipeline.extras import extras
from limner.safety.guard import Guard, SafetyConfig
from limner.text.encoder import TextEncoder


@pytest.fixture(scope="module")
def parts():
    denoiser, vae, meta = folder.load("shapes-default")
    return denoiser, vae, TextEncoder(meta["text_encoder"]), meta


def test_bare_core_draws_what_the_assembled_pipeline_draws(parts):
    denoiser, vae, encoder, meta = parts
    bare = Pipeline(denoiser, vae, encoder, {**meta, "world": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no world, so no notice about words that world never uses
        img = bare("a cat on a sofa", seed=3, steps=2, best_of=5)[0]
    p = img.info["parameters"]
    assert p["prompt"] == "a cat on a sofa" and p["seed"] == 3 and p["steps"] == 2
    assert "best_of" not in p and "watermark" not in p   # no verifier: drawn once; no guard: no mark
    # without a planner and with an inactive guard, the assembled pipeline draws what the bare core draws
    full = Pipeline.from_pretrained("shapes-default", safety=SafetyConfig.off(), layout="none")
    same = [x("three red circles and a blue square", seed=1, steps=3, best_of=1, size=64)[0] for x in (bare, full)]
    assert np.array_equal(np.asarray(same[0]), np.asarray(same[1]))


def test_metadata_attaches_the_world_hooks_and_the_guard(parts):
    _, _, encoder, _ = parts
    shapes, own = extras({"world": "shapes"}, encoder), extras({"world": None}, encoder)
    assert isinstance(shapes["guard"], Guard) and isinstance(own["guard"], Guard)
    assert shapes["planner"] is not None and shapes["verifier"] is not None and shapes["notice"] is not None
    assert own["planner"] is None and own["verifier"] is None and own["notice"] is None
    assert shapes["notice"]("a cat", "m") and shapes["notice"]("two red circles", "m") is None
    # the captioners' words are known too: the planner trained on them
    assert shapes["notice"]("a big crimson disc in the top-left corner", "m") is None
    placing = "There is a red circle. At the top there is a small red circle. There is a blue square. At the bottom there is a large blue square."
    plan = shapes["planner"]([placing], [0])
    assert plan[0] is not None and shapes["planner"](["two red circles"], [0]) == [None]


def test_core_runs_with_world_and_safety_unimportable(tmp_path):
    """Nothing on the core path reaches Shapes World or the safety layer, even through a lazy import."""
    script = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.startswith(("limner.world", "limner.safety")):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from limner.models import folder
        from limner.pipeline import Pipeline
        from limner.text.encoder import TextEncoder
        denoiser, vae, meta = folder.load("shapes-default")
        pipe = Pipeline(denoiser, vae, TextEncoder(meta["text_encoder"]), {**meta, "world": None})
        img = pipe(["A small red circle in the upper left.", "a cat"], seed=0, steps=2, best_of=3)[0]
        assert img.size == (64, 64)
        print("ok", sorted(m for m in sys.modules if m.startswith(("limner.world", "limner.safety"))))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok []"


def test_request_checks_know_every_sampler_and_refuse_zero_steps(parts):
    from limner.diffusion.sampling import SAMPLERS
    from limner.pipeline import request

    assert set(request.SAMPLERS) == set(SAMPLERS)
    denoiser, vae, encoder, meta = parts
    with pytest.raises(ValueError, match="steps must be between 1 and 1000, not 0"):
        Pipeline(denoiser, vae, encoder, meta)("two red circles", steps=0)   # was the model's default


@pytest.mark.slow
def test_default_generation_needs_no_parser_and_no_scorer(tmp_path):
    """The shipped default path is learned end to end: generation works with Shapes World's rule parser and
    scorer (the benchmark's grader) unimportable, and its layouts come from the model's own planner. (Building
    the whole CLI parser still imports them through the arena's and the world verbs' modules.)"""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in ("limner.world.parse", "limner.world.scorer"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import limner
        from limner.models.planner import TextPlanner
        from limner.pipeline import save_png
        pipe = limner.Pipeline.from_pretrained("shapes-default")
        assert isinstance(pipe.planner, TextPlanner) and pipe.defaults.get("best_of", 1) == 1
        save_png(pipe("three red circles and a blue square", seed=0)[0], {str(tmp_path / 'x.png')!r})
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
    assert (tmp_path / "x.png").exists()
