"""The text-to-image pipeline: prompt -> frozen text encoder -> sampler with classifier-free guidance over
the denoiser -> autoencoder decode -> PIL images carrying their generation parameters.

It takes its parts and knows no world and no policy: the guard (prompt filter before sampling; image filter,
watermark and request id after decoding) and hooks such as a layout planner or a best-of verifier are given
to it. `from_pretrained` attaches the ones a model folder's metadata names (`pipeline.extras`).
"""
from __future__ import annotations

import functools
import operator
import warnings

import torch
from PIL import Image

from .. import __version__
from ..diffusion.sampling import SAMPLERS, guided, timesteps
from ..models import autoencoder as AE
from ..models import folder, grounding
from ..models.dit import DiT
from ..models.planner import TextPlanner
from ..text.encoder import TextEncoder, pad
from .images import carrying_parameters
from .request import validate, validate_upscale
from .upscale import Upscaler

MAX_BATCH = 64
CANDIDATE_STRIDE = 1_000_003  # seed offset between best-of candidates, far from the seed + i of -n images


class Pipeline:
    def __init__(self, denoiser: DiT, vae, encoder: TextEncoder, meta: dict, guard=None, planner=None,
                 verifier=None, notice=None, upscaler: Upscaler | None = None, upscale: int = 1, cascade: bool = True):
        """`guard`: `check_prompt(prompt)` before sampling, `finish(images, params, model)` after decoding
        (None: images get their parameters and nothing else). `planner(prompts, seeds)`: a layout (phrase, box) list or
        None per prompt, for a grounded denoiser. `verifier(prompt)`: image -> score for best-of search, or None for a
        prompt it cannot read. `notice(prompt, model)`: a warning about the prompt, or None. `upscaler`: the
        super-resolution cascade, run on the chosen images before the guard (so the watermark and metadata are
        made once, on the final image). `cascade` and `upscale` are the defaults of a call's `size` and `upscale`:
        with `cascade` a call makes the cascade's output side (`sizes[-1]`), without it the base resolution."""
        self.denoiser, self.vae, self.encoder, self.meta = denoiser.eval(), vae.eval(), encoder, meta
        self.guard, self.planner, self.verifier, self.notice = guard, planner, verifier, notice
        self.resolution = meta["resolution"]
        self.defaults = meta.get("defaults", {})
        self.name = meta.get("name", "limner")
        self.upscaler, self.cascade, self.upscale = upscaler, cascade, 1
        self.set_upscale(upscale)
        self.show_progress = False  # the upscaler's progress bar on stderr (the CLI turns it on)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "shapes-default", device: str = "cpu", safety=None,
                        layout: str = "auto", upscale: int = 1, cascade: bool = True) -> "Pipeline":
        """A model folder (or shipped name) with the guard (`safety`: a SafetyConfig; None: everything on) and
        the hooks its metadata names. `layout`: "learned" (the folder's planner), "rule" (its world's rule
        parser: a research baseline), "none", or "auto" (learned if the folder has a planner, else rule).
        A folder with an upsampler/ makes its cascade's output side by default (`cascade=False`: the base
        resolution by default; a call's `size=` still picks either), then `upscale` times more."""
        from .extras import extras  # the layer above the core: safety and world parts

        if layout not in ("auto", "learned", "rule", "none"):
            raise ValueError(f"layout must be auto, learned, rule or none, not {layout!r}")
        denoiser, vae, meta = folder.load(name_or_path, device)
        encoder = TextEncoder(meta.get("text_encoder", "minilm"))
        parts = extras(meta, encoder, safety)
        learned = folder.load_planner(folder.resolve(name_or_path), meta, device) if layout in ("auto", "learned") else None
        if layout == "learned" and learned is None:
            raise ValueError(f"{meta['name']} has no learned layout planner (train one: kind: planner)")
        if learned is not None:
            parts["planner"] = TextPlanner(learned, encoder, folder.plan_temperature(meta))
        elif layout == "none":
            parts["planner"] = None
        upscaler = Upscaler.from_folder(name_or_path, device)  # 0.6 MB: loaded even when off, so `size=` can ask for it
        return cls(denoiser, vae, encoder, meta, **parts, upscaler=upscaler, upscale=upscale, cascade=cascade)

    def set_upscale(self, upscale: int) -> None:
        """The default `upscale` of a call: 1, or 2, 4, 8 times beyond its size; more than 1 needs an upsampler."""
        self.check_upscale(upscale)
        self.upscale = upscale

    def check_upscale(self, upscale: int) -> None:
        validate_upscale(upscale)
        if upscale > 1 and self.upscaler is None:
            raise ValueError(f"{self.name} has no upsampler to enlarge with: train one (kind: upsampler, "
                             "configs/upsampler-default.yaml) or use `limner upscale --model` with a folder that has one")

    @property
    def sizes(self) -> list[int]:
        """The sides a call's `size=` can ask for: the base resolution, then each stage of the cascade up to its
        output (shapes-default: 64, 256, 1024)."""
        sides = [self.resolution]
        if self.upscaler is not None and self.upscaler.settings.output > self.resolution:
            for f in self.upscaler.plan(self.upscaler.settings.output // self.resolution):
                sides.append(sides[-1] * f)
        return sides

    @property
    def default_size(self) -> int:
        """The side a call makes when it names no `size` (before any `upscale`)."""
        return self.sizes[-1] if self.cascade else self.resolution

    def check_size(self, size: int | None) -> int:
        """The side a call with `size` makes (None: `default_size`), or a ValueError naming the sides there are."""
        if size is None:
            return self.default_size
        try:
            side = None if isinstance(size, bool) else operator.index(size)  # ints of any kind; not 64.0, "64", True
        except TypeError:
            side = None
        if side not in self.sizes:
            sides = self.sizes
            if len(sides) == 1:
                raise ValueError(f"{self.name} makes {self.resolution} px images only (it has no upsampler), not {size!r}")
            listed = ", ".join(map(str, sides[:-1])) + f" or {sides[-1]}"
            raise ValueError(f"{self.name} makes {listed} px images (size={self.resolution}: the base model alone, "
                             f"without the upsampler), not {size!r}; upscale=2, 4 or 8 enlarges them further")
        return side

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | None = None, seed: int | list[int] = 0,
                 steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
                 num_images: int = 1, best_of: int | None = None, progress=None, size: int | None = None,
                 upscale: int | None = None) -> list[Image.Image]:
        """`seed`: one for every prompt, or one per prompt; image i of a prompt uses its seed + i.

        `size`: the side of the square images, one of `sizes` (None: `default_size`, the cascade's output when
        the model has an upsampler, e.g. 1024; the base resolution, e.g. 64, draws with the base model alone and
        skips the upsampler). `upscale`: 2, 4 or 8 enlarges them that many times more with the upsampler (1: not;
        None: the pipeline's default, `set_upscale`). Bad values raise ValueError before any work.

        `progress(t, preview)` is called after each denoiser evaluation at flow time t (1: noise, 0: done);
        `preview()` decodes the current estimate of every image being drawn (unfiltered, unmarked: only for
        showing progress). An exception it raises stops the call (a server cancelling a job).

        `best_of` N > 1 (Shapes World models): draw N candidates per image and keep the one the world's
        scorer finds closest to what the prompt asks (verifier search at inference time); prompts it
        cannot read are drawn once."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else [int(seed)] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"give one seed, or one per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
        steps = int(self.defaults.get("steps", 20) if steps is None else steps)  # 0 is an error, not the default
        guidance = float(self.defaults.get("guidance", 3.0) if guidance is None else guidance)
        sampler = sampler or self.defaults.get("sampler", "euler")
        best_of = int(self.defaults.get("best_of", 1) if best_of is None else best_of)
        validate(prompts, steps, guidance, sampler, num_images, best_of)
        upscale = self.upscale if upscale is None else upscale
        self.check_upscale(upscale)
        factor = self.check_size(size) // self.resolution * upscale
        for p in dict.fromkeys(prompts):
            if self.guard is not None:
                self.guard.check_prompt(p)
        for p in set(prompts):
            message = self.notice(p, self.name) if self.notice else None
            if message:
                warnings.warn(message, stacklevel=3)  # at the caller, past the no_grad wrapper
        jobs = [(p, s + i) for p, s in zip(prompts, seeds) for i in range(num_images)]
        verifiers = {p: self.verifier(p) if best_of > 1 and self.verifier else None for p in prompts}
        # candidate c of seed s starts from seed s + c * CANDIDATE_STRIDE; candidate 0 is the plain image
        draws = [(j, c) for j, (p, _) in enumerate(jobs) for c in range(best_of if verifiers[p] else 1)]
        drawn = []
        for i in range(0, len(draws), MAX_BATCH):
            chunk = draws[i : i + MAX_BATCH]
            drawn += self._sample([jobs[j][0] for j, _ in chunk], [jobs[j][1] + c * CANDIDATE_STRIDE for j, c in chunk],
                                  negative_prompt or "", steps, guidance, sampler, progress)
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
        images = [best[j][1] for j in range(len(jobs))]
        if factor > 1:
            images = [self.upscaler(img, factor, seed=p["seed"], show=self.show_progress) for img, p in zip(images, params)]
            for p in params:
                p["upscale"] = factor
        if self.guard is None:
            for img, p in zip(images, params):
                img.info["parameters"] = p
        else:
            images = self.guard.finish(images, params, f"{self.name}@{__version__}")
        return [carrying_parameters(img) for img in images]  # so `images[0].save("x.png")` records them

    def _sample(self, prompts, seeds, negative, steps, guidance, sampler, progress=None):
        unique = list(dict.fromkeys(prompts))  # -n images and best-of candidates repeat a prompt: encode it once
        encoded = dict(zip(unique, self.encoder.encode(unique)))
        negative_states = self.encoder.encode([negative])[0]
        n = len(prompts)
        cond = pad([encoded[p] for p in prompts] + [negative_states])  # pad together: both branches share one length
        c_states, c_mask = cond[0][:n], cond[1][:n]
        u_states, u_mask = cond[0][n:].expand(n, -1, -1), cond[1][n:].expand(n, -1)
        z = self.sample_latents((c_states, c_mask), (u_states, u_mask), seeds, steps, guidance, sampler,
                                self.layouts(prompts, seeds), progress)
        return [Image.fromarray(a) for a in self.decode(z)]

    def sample_latents(self, cond, uncond, seeds, steps, guidance, sampler="euler", ground=None,
                       progress=None) -> torch.Tensor:
        """Latents from (states, mask) text conditions, starting from each seed's noise."""
        v = guided(self.denoiser, cond, uncond, guidance, ground)
        if progress is not None:
            v = self._reporting(v, progress)
        return SAMPLERS[sampler](v, self.noise(seeds), timesteps(steps))

    def _reporting(self, v, progress):
        """`v` that tells `progress` after each evaluation; x - t v is the flow's estimate of the clean latents."""
        def reported(x, t):
            out = v(x, t)
            progress(float(t), lambda: [Image.fromarray(a) for a in self.decode(x - t * out)])
            return out

        return reported

    def layouts(self, prompts, seeds):
        """A grounded denoiser's layout tensors from the planner's layouts, or None (no planner, or nothing placed)."""
        if not self.denoiser.cfg.grounding or self.planner is None:
            return None
        plans = self.planner(prompts, seeds)
        return grounding.tensors(plans, self.phrases) if any(plans) else None

    @functools.cached_property
    def phrases(self):
        return grounding.PhraseEmbedder(self.encoder)

    def noise(self, seeds) -> torch.Tensor:
        """Starting latents, one generator per seed: an image depends on its own seed, not on its batch."""
        lat = self.resolution // AE.factor(self.vae)
        ch = self.vae.config.latent_channels
        return torch.stack([torch.randn(ch, lat, lat, generator=torch.Generator().manual_seed(s)) for s in seeds])

    def decode(self, z: torch.Tensor):
        """Latents to uint8 images, (B, H, W, 3)."""
        imgs = AE.to_image(self.vae, z)
        return ((imgs + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
