"""The text-to-image pipeline that the CLI, the evaluation and the server all call.

prompt -> prompt filter -> frozen text encoder -> sampler with classifier-free guidance over the denoiser
-> autoencoder decode -> image filter -> watermark -> PIL images carrying their generation parameters.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import warnings
from importlib import resources
from pathlib import Path

import torch
from PIL import Image

from .. import __version__
from ..diffusion.sampling import SAMPLERS, guided, timesteps
from ..models import autoencoder as AE
from ..models.dit import DiT, DiTConfig
from ..safety.guard import Guard, SafetyConfig
from ..text.encoder import TextEncoder, pad

log = logging.getLogger(__name__)
SHIPPED = {"shapes-default": "shapes-default"}
MAX_BATCH = 64
CANDIDATE_STRIDE = 1_000_003  # seed offset between best-of candidates, far from the seed + i of -n images
WORLD_WORDS = None


def resolve_model(name_or_path: str) -> Path:
    if name_or_path in SHIPPED:
        return Path(str(resources.files("limner") / "weights" / SHIPPED[name_or_path]))
    path = Path(name_or_path)
    if not (path / "limner.json").exists():
        known = ", ".join(SHIPPED)
        raise FileNotFoundError(f"no limner model at {name_or_path!r}: expected a folder with limner.json "
                                f"(as `limner train` exports) or a shipped name ({known})")
    return path


def model_name(name_or_path: str, path: Path, meta: dict) -> str:
    """What outputs and watermarks call a model: its exported name, else the shipped name or folder name."""
    return meta.get("name") or (name_or_path if name_or_path in SHIPPED else path.name)


def outside_world(prompt: str) -> list[str]:
    """Words of a prompt that Shapes World captions never use (the default model knows nothing else)."""
    global WORLD_WORDS
    if WORLD_WORDS is None:  # the vocabulary of the captions themselves, every kind, many scenes
        import random

        from ..world import captions as C
        from ..world.scene import sample_scene

        rng = random.Random(0)
        text = " ".join(" ".join(C.captions(sample_scene(rng), rng).values()) for _ in range(600))
        WORLD_WORDS = set(re.findall(r"[a-z]+", text.lower())) | set(C.NUMBER_WORDS) | {"center", "boxes"}
    tokens = re.findall(r"[a-z]+", prompt.lower())
    return [t for t in tokens if t not in WORLD_WORDS]


class Pipeline:
    def __init__(self, denoiser: DiT, vae, encoder: TextEncoder, meta: dict, safety: SafetyConfig | None = None):
        self.denoiser, self.vae, self.encoder, self.meta = denoiser.eval(), vae.eval(), encoder, meta
        self.guard = Guard(safety)
        self.resolution = meta["resolution"]
        self.defaults = meta.get("defaults", {})
        self.name = meta.get("name", "limner")

    @classmethod
    def from_pretrained(cls, name_or_path: str = "shapes-default", device: str = "cpu",
                        safety: SafetyConfig | None = None) -> "Pipeline":
        from safetensors.torch import load_file

        path = resolve_model(name_or_path)
        meta = json.loads((path / "limner.json").read_text())
        meta["name"] = model_name(name_or_path, path, meta)
        denoiser = DiT(DiTConfig(**meta["denoiser"]))
        denoiser.load_state_dict({k: v.float() for k, v in load_file(path / "denoiser.safetensors").items()})
        vae = AE.load(str(path / "autoencoder"))
        encoder = TextEncoder(meta.get("text_encoder", "minilm"))
        return cls(denoiser.to(device), vae.to(device), encoder, meta, safety)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | None = None, seed: int | list[int] = 0,
                 steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
                 num_images: int = 1, best_of: int | None = None) -> list[Image.Image]:
        """`seed`: one for every prompt, or one per prompt; image i of a prompt uses its seed + i.

        `best_of` N > 1 (Shapes World models): draw N candidates per image and keep the one the world's
        scorer finds closest to what the prompt asks (verifier search at inference time); prompts it
        cannot read are drawn once."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else [int(seed)] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"give one seed, or one per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
        steps = int(steps or self.defaults.get("steps", 20))
        guidance = float(self.defaults.get("guidance", 3.0) if guidance is None else guidance)
        sampler = sampler or self.defaults.get("sampler", "euler")
        best_of = int(self.defaults.get("best_of", 1) if best_of is None else best_of)
        validate(prompts, steps, guidance, sampler, num_images, best_of)
        for p in dict.fromkeys(prompts):
            self.guard.check_prompt(p)
        if self.meta.get("world") == "shapes":
            for p in set(prompts):
                unknown = outside_world(p)
                if unknown:
                    warnings.warn(f"{self.name} only knows Shapes World (circles, squares and triangles in red, "
                                  f"green, blue, yellow, purple, orange; counts, sizes, positions): it has never "
                                  f"seen {', '.join(sorted(set(unknown))[:8])!r}", stacklevel=2)
        jobs = [(p, s + i) for p, s in zip(prompts, seeds) for i in range(num_images)]
        verifiers = {p: self._verifier(p) if best_of > 1 else None for p in prompts}
        # candidate c of seed s starts from seed s + c * CANDIDATE_STRIDE; candidate 0 is the plain image
        draws = [(j, c) for j, (p, _) in enumerate(jobs) for c in range(best_of if verifiers[p] else 1)]
        drawn = []
        for i in range(0, len(draws), MAX_BATCH):
            chunk = draws[i : i + MAX_BATCH]
            drawn += self._sample([jobs[j][0] for j, _ in chunk], [jobs[j][1] + c * CANDIDATE_STRIDE for j, c in chunk],
                                  negative_prompt or "", steps, guidance, sampler)
        best: dict[int, tuple] = {}  # job -> (verifier value, image, candidate)
        for (j, c), img in zip(draws, drawn):
            verify = verifiers[jobs[j][0]]
            value = verify(img) if verify else 0.0
            if j not in best or value > best[j][0]:  # ties keep the earlier candidate
                best[j] = (value, img, c)
        params = [{"prompt": p, "negative_prompt": negative_prompt or "", "seed": s, "steps": steps,
                   "guidance": guidance, "sampler": sampler, "model": self.name, "limner_version": __version__}
                  for p, s in jobs]
        for j, p in enumerate(params):
            if verifiers[p["prompt"]]:
                p["best_of"], p["candidate"] = best_of, best[j][2]
        return self.guard.finish([best[j][1] for j in range(len(jobs))], params, f"{self.name}@{__version__}")

    def _verifier(self, prompt: str):
        """The prompt's exact constraints as a score of an image, or None outside Shapes World."""
        if self.meta.get("world") != "shapes":
            return None
        from ..world.parse import parse_prompt
        from ..world.scorer import detect, reward, score

        cons = parse_prompt(prompt)
        return None if cons is None else (lambda img: reward(score(detect(img), cons), cons))

    def _sample(self, prompts, seeds, negative, steps, guidance, sampler):
        unique = list(dict.fromkeys(prompts))  # -n images and best-of candidates repeat a prompt: encode it once
        encoded = dict(zip(unique, self.encoder.encode(unique)))
        negative_states = self.encoder.encode([negative])[0]
        n = len(prompts)
        cond = pad([encoded[p] for p in prompts] + [negative_states])  # pad together: both branches share one length
        c_states, c_mask = cond[0][:n], cond[1][:n]
        u_states, u_mask = cond[0][n:].expand(n, -1, -1), cond[1][n:].expand(n, -1)
        z = self.sample_latents((c_states, c_mask), (u_states, u_mask), seeds, steps, guidance, sampler,
                                self.layouts(prompts, seeds))
        return [Image.fromarray(a) for a in self.decode(z)]

    def sample_latents(self, cond, uncond, seeds, steps, guidance, sampler="euler", ground=None) -> torch.Tensor:
        """Latents from (states, mask) text conditions, starting from each seed's noise."""
        v = guided(self.denoiser, cond, uncond, guidance, ground)
        return SAMPLERS[sampler](v, self.noise(seeds), timesteps(steps))

    def layouts(self, prompts, seeds):
        """A grounded denoiser's layout tensors: each prompt that places its objects (a detailed Shapes World
        prompt) gets a plan drawn from its seed; None when the model is not grounded or no prompt places any."""
        if not self.denoiser.cfg.grounding or self.meta.get("world") != "shapes":
            return None
        import random

        from ..world import layout
        from ..world.parse import parse_prompt

        placed = {p: getattr(parse_prompt(p), "objects", None) for p in dict.fromkeys(prompts)}  # candidates repeat prompts
        plans = [layout.plan(placed[p], random.Random(s)) if placed[p] else None for p, s in zip(prompts, seeds)]
        return layout.tensors(plans, self.phrases) if any(plans) else None

    @functools.cached_property
    def phrases(self):
        from ..world.layout import PhraseEmbedder

        return PhraseEmbedder(self.encoder)

    def noise(self, seeds) -> torch.Tensor:
        """Starting latents, one generator per seed: an image depends on its own seed, not on its batch."""
        lat = self.resolution // AE.factor(self.vae)
        ch = self.vae.config.latent_channels
        return torch.stack([torch.randn(ch, lat, lat, generator=torch.Generator().manual_seed(s)) for s in seeds])

    def decode(self, z: torch.Tensor):
        """Latents to uint8 images, (B, H, W, 3)."""
        imgs = AE.to_image(self.vae, z)
        return ((imgs + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def validate(prompts, steps, guidance, sampler, num_images, best_of=1):
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError("the prompt is empty: describe the image you want, e.g. 'three red circles'")
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps must be between 1 and 1000, not {steps}")
    if not 0 <= guidance <= 50:
        raise ValueError(f"guidance must be between 0 and 50, not {guidance}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not 1 <= num_images <= 256:
        raise ValueError(f"-n must be between 1 and 256, not {num_images}")
    if not 1 <= best_of <= 64:
        raise ValueError(f"--best-of must be between 1 and 64, not {best_of}")


def save_png(img: Image.Image, path: str | Path, metadata: bool = True) -> Path:
    """Write a PNG atomically, with its generation parameters as a `parameters` text chunk."""
    from ..safety.provenance import png_parameters

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG", pnginfo=png_parameters(img.info.get("parameters") if metadata else None))
    tmp.replace(path)
    return path


def grid(images: list[Image.Image], cols: int = 4, scale: int = 2) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    out = Image.new("RGB", (cols * w * scale, rows * h * scale), "white")
    for i, im in enumerate(images):
        out.paste(im.resize((w * scale, h * scale), Image.NEAREST), ((i % cols) * w * scale, (i // cols) * h * scale))
    return out
