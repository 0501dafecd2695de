"""limner.models.dit: the diffusion transformer's shapes, its adaLN-zero start, text conditioning, options
(long skips, conv MLP, no pooled text), presets, and the grounding adapter (object phrases and boxes)."""
import pytest
import torch

from limner.models.dit import MLP, PRESETS, DiT, DiTConfig


def inputs(b=3, length=5, dim=32):
    torch.manual_seed(0)
    return torch.randn(b, 4, 8, 8), torch.rand(b), torch.randn(b, length, dim), torch.ones(b, length, dtype=torch.bool)


def test_dit_shapes_and_adaln_zero_start(tiny_dit):
    m = tiny_dit()
    x, t, s, mask = inputs()
    out = m(x, t, s, mask)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-zero: the untrained model predicts zero


def test_dit_ignores_padding_and_reads_text(tiny_dit):
    m = tiny_dit()
    for p in m.parameters():  # move off the zero init so text can matter
        torch.nn.init.normal_(p, std=0.05)
    x, t, s, mask = inputs(length=4)
    padded = torch.cat([s, torch.randn(3, 3, 32) * 100], 1)
    pmask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
    assert torch.allclose(m(x, t, s, mask), m(x, t, padded, pmask), atol=1e-5)
    assert not torch.allclose(m(x, t, s, mask), m(x, t, s.flip(0), mask), atol=1e-3)


def test_long_skips_and_conv_mlp(tiny_dit):
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


def test_text_without_pooled_adaln_reaches_tokens_only_by_cross_attention(tiny_dit):
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


def test_grounding_starts_as_the_base_model_and_reads_boxes(tiny_dit):
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
