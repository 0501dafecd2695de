import warnings

import pytest
import torch

from limner.diffusion import flow
from limner.diffusion.sampling import SAMPLERS, euler, guided, heun, midpoint, timesteps
from limner.models import autoencoder as AE
from limner.models.dit import MLP, PRESETS, DiT, DiTConfig
from limner.text.encoder import TextEncoder, pad


def tiny_dit(**kw):
    return DiT(DiTConfig(preset="tiny", latent_size=8, in_channels=4, patch=2, text_dim=32, **kw))


def inputs(b=3, length=5, dim=32):
    torch.manual_seed(0)
    return torch.randn(b, 4, 8, 8), torch.rand(b), torch.randn(b, length, dim), torch.ones(b, length, dtype=torch.bool)


def test_dit_shapes_and_adaln_zero_start():
    m = tiny_dit()
    x, t, s, mask = inputs()
    out = m(x, t, s, mask)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-zero: the untrained model predicts zero


def test_dit_ignores_padding_and_reads_text():
    m = tiny_dit()
    for p in m.parameters():  # move off the zero init so text can matter
        torch.nn.init.normal_(p, std=0.05)
    x, t, s, mask = inputs(length=4)
    padded = torch.cat([s, torch.randn(3, 3, 32) * 100], 1)
    pmask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
    assert torch.allclose(m(x, t, s, mask), m(x, t, padded, pmask), atol=1e-5)
    assert not torch.allclose(m(x, t, s, mask), m(x, t, s.flip(0), mask), atol=1e-3)


def test_long_skips_and_conv_mlp():
    m = tiny_dit(skip=True, conv_mlp=True)
    assert len(m.skips) == 1
    x, t, s, mask = inputs()
    assert torch.count_nonzero(m(x, t, s, mask)) == 0  # still starts at zero
    # the conv MLP mixes a token with its 8 grid neighbours and no others; the plain MLP with none
    torch.manual_seed(0)
    conv, plain = MLP(16, 2.0, grid=4), MLP(16, 2.0)
    h = torch.randn(1, 16, 16)
    h2 = h.clone()
    h2[0, 5] += 1.0  # token (1, 1) of the 4x4 grid
    for mlp, touched in [(conv, {0, 1, 2, 4, 5, 6, 8, 9, 10}), (plain, {5})]:
        changed = (mlp(h2) - mlp(h)).abs().amax(-1)[0] > 1e-6
        assert set(changed.nonzero().flatten().tolist()) == touched
    # a model saved without the options loads into the same layout, key for key
    assert set(tiny_dit().state_dict()) < set(m.state_dict())
    tiny_dit().load_state_dict(tiny_dit().state_dict())


def test_text_without_pooled_adaln_reaches_tokens_only_by_cross_attention():
    m = tiny_dit(pooled_text=False)
    assert m.pool is None and not any(k.startswith("pool.") for k in m.state_dict())
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, s, mask = inputs()
    assert not torch.allclose(m(x, t, s, mask), m(x, t, s.flip(0), mask), atol=1e-3)
    for blk in m.blocks:  # cut the cross-attention: the prompt must stop mattering
        torch.nn.init.zeros_(blk.cross.out.weight), torch.nn.init.zeros_(blk.cross.out.bias)
    cut = (m(x, t, s, mask) - m(x, t, s.flip(0), mask)).abs().max()
    with_pool = tiny_dit()
    for p in with_pool.parameters():
        torch.nn.init.normal_(p, std=0.05)
    for blk in with_pool.blocks:  # with the pooled prompt in adaLN it still matters
        torch.nn.init.zeros_(blk.cross.out.weight), torch.nn.init.zeros_(blk.cross.out.bias)
    kept = (with_pool(x, t, s, mask) - with_pool(x, t, s.flip(0), mask)).abs().max()
    assert cut < 1e-7 and kept > 1e-5


def test_presets_scale():
    sizes = {}
    for name in ["tiny", "S", "M", "B"]:
        sizes[name] = sum(p.numel() for p in DiT(DiTConfig(preset=name)).parameters())
    assert sizes["tiny"] < sizes["S"] < sizes["M"] < sizes["B"]
    assert set(PRESETS) >= {"tiny", "S", "B", "L", "XL"}
    with pytest.raises(ValueError, match="unknown preset"):
        DiTConfig(preset="huge")
    with pytest.raises(ValueError, match="multiple of patch"):
        DiTConfig(preset="tiny", latent_size=15, patch=2)


def test_flow_loss_trains_a_tiny_model():
    torch.manual_seed(0)
    m = tiny_dit()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x0 = torch.randn(1, 4, 8, 8).repeat(16, 1, 1, 1)  # one target: the flow must learn it
    s, mask = torch.randn(16, 5, 32), torch.ones(16, 5, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    first = flow.loss(m, x0, s, mask, generator=g).item()
    for _ in range(150):
        loss = flow.loss(m, x0, s, mask, generator=g)
        opt.zero_grad(), loss.backward(), opt.step()
    assert loss.item() < 0.5 * first


def test_timesteps_and_shift():
    t = timesteps(10)
    assert t[0] == 1 and t[-1] == 0 and torch.all(t[1:] < t[:-1])
    assert torch.all(timesteps(10, shift=3.0)[1:-1] > t[1:-1])


def test_samplers_solve_known_flows():
    # straight-line flow x_t = (1-t) x0 + t e has constant velocity e - x0: Euler is exact
    x0, e = torch.randn(2, 3), torch.randn(2, 3)
    for fn in SAMPLERS.values():
        out = fn(lambda x, t: e - x0, e.clone(), timesteps(4))
        assert torch.allclose(out, x0, atol=1e-5)
    # dx/dt = x, from t=1 to 0: x(0) = x(1) / e; second order beats first order
    v = lambda x, t: x
    x1 = torch.ones(1)
    exact = x1 / torch.e
    err = {f.__name__: (f(v, x1, timesteps(8)) - exact).abs().item() for f in (euler, heun, midpoint)}
    assert err["heun"] < err["euler"] / 5 and err["midpoint"] < err["euler"] / 5


def test_euler_matches_diffusers_flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(sigmas=timesteps(6)[:-1].tolist())
    x = torch.randn(1, 4, 8, 8)
    field = lambda x, t: torch.sin(x) * t  # any smooth velocity
    ours = euler(field, x.clone(), timesteps(6))
    theirs = x.clone()
    for i, t in enumerate(sched.timesteps):
        theirs = sched.step(field(theirs, sched.sigmas[i]), t, theirs).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_guidance_combines_branches():
    m = lambda x, t, s, mask: s[:, :1, :1].reshape(-1, 1) * torch.ones_like(x)
    cond = (torch.full((2, 1, 1), 3.0), torch.ones(2, 1, dtype=torch.bool))
    uncond = (torch.full((2, 1, 1), 1.0), torch.ones(2, 1, dtype=torch.bool))
    v = guided(m, cond, uncond, 2.5)
    assert torch.allclose(v(torch.zeros(2, 1), torch.tensor(0.5)), torch.full((2, 1), 1 + 2.5 * 2))


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


def test_grounding_starts_as_the_base_model_and_reads_boxes():
    base, grounded = tiny_dit(), tiny_dit(grounding=True)
    for p in base.parameters():
        torch.nn.init.normal_(p, std=0.05)
    missing, unexpected = grounded.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("ground_in.") or k.endswith(".ground.weight") for k in missing)
    x, t, s, mask = inputs()
    torch.manual_seed(1)
    phrases, boxes = torch.randn(3, 2, 32), torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8]]).expand(3, 2, 4)
    gmask = torch.tensor([[True, True], [True, False], [False, False]])
    ground = (phrases, boxes, gmask)
    ref = base(x, t, s, mask)
    assert torch.allclose(grounded(x, t, s, mask, ground), ref, atol=1e-6)  # zero projections: the base model
    for blk in grounded.blocks:
        torch.nn.init.normal_(blk.ground.weight, std=0.05)
    out = grounded(x, t, s, mask, ground)
    assert torch.allclose(grounded(x, t, s, mask), ref, atol=1e-6)  # no layout: the base model
    assert torch.allclose(out[2], ref[2], atol=1e-6)  # an image without objects in a grounded batch too
    assert not torch.allclose(out[:2], ref[:2], atol=1e-4)
    moved = (phrases, boxes.flip(1), gmask)  # the objects' boxes swapped: a different image
    assert not torch.allclose(grounded(x, t, s, mask, moved)[0], out[0], atol=1e-4)
    # a masked (padding) object token does not matter, whatever it holds
    noisy = (phrases.clone(), boxes.clone(), gmask)
    noisy[0][1, 1], noisy[1][1, 1] = 100.0, 0.5
    assert torch.allclose(grounded(x, t, s, mask, noisy)[1], out[1], atol=1e-5)
    # the prompt and layout read once (`condition`, as the sampler does) give the same output at every step
    fixed = grounded.condition(s, mask, ground)
    for tt in (t, t * 0.3):
        assert torch.equal(grounded(x, tt, None, mask, cond=fixed), grounded(x, tt, s, mask, ground))
