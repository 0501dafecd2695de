"""The autoencoder module: build, latents and back, save and load; diffusers' AutoencoderKL loaded without
importing the rest of diffusers' models."""
import subprocess
import sys
from pathlib import Path

import torch

import limner
from limner.models import autoencoder as AE

SHIPPED = Path(limner.__file__).parent / "weights" / "shapes-default" / "autoencoder"

LIGHT_THEN_FULL = f"""
import sys
from limner.models import autoencoder as AE

vae = AE.load({str(SHIPPED)!r})
eager = [m for m in sys.modules if m.startswith("diffusers.models.autoencoders.autoencoder_") and
         not m.endswith((".autoencoder_kl",))]
assert not eager, eager                                 # no other autoencoder was imported
assert not any(m in sys.modules for m in AE._EAGER_PACKAGES)   # no stand-in package left behind
from diffusers import AutoencoderKL, AutoencoderDC      # the ordinary import still works afterwards
import diffusers.models.autoencoders as package
assert AutoencoderKL is AE.autoencoder_kl() is type(vae) is package.AutoencoderKL
print("ok")
"""


def test_autoencoder_loads_without_the_rest_of_diffusers():
    out = subprocess.run([sys.executable, "-c", LIGHT_THEN_FULL], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_after_a_full_import_the_same_class():
    code = ("from diffusers import AutoencoderKL\nfrom limner.models import autoencoder as AE\n"
            "assert AE.autoencoder_kl() is AutoencoderKL\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_autoencoder_round_trip_and_folder(tmp_path):
    vae = AE.build(AE.AutoencoderConfig(channels=[8, 16, 16], latent_channels=4))
    assert AE.factor(vae) == 4
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = AE.to_latent(vae, x)
    assert z.shape == (2, 4, 8, 8)
    assert AE.to_image(vae, z).shape == x.shape
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    vae.save_pretrained(tmp_path / "vae")
    loaded = AE.load(str(tmp_path / "vae"))
    assert loaded.config.scaling_factor == 0.5
    assert torch.allclose(AE.to_latent(loaded, x), AE.to_latent(vae.eval(), x), atol=1e-5)
