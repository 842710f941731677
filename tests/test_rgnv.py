"""RGNV (HiFi-123 §3.2): each test fails if its mechanism is wrong."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from hifi123.core.diffusion import ddim, sd
from hifi123.core.diffusion.attention import InjectionState, mutual_self_attention
from hifi123.core.hifi123.rgnv import RGNVConfig, RGNVPipeline
from hifi123.sample.make_sample import render_sample
from hifi123.testing.counter import count_unet_evals

T, S = 10, 6  # small grid for CPU speed; the mechanism is independent of T and S


def view(azimuth, elevation=10.0, size=128):
    r = render_sample(elevation, azimuth, size=size)
    return np.concatenate([r["rgb"], r["alpha"][..., None]], -1).astype(np.float32)


@pytest.fixture(scope="module")
def views():
    return [view(90.0), view(-60.0)]


def make(sd2_depth, **kw):
    base = dict(num_steps=T, inject_steps=S, prompt="a toy", guidance_scale=9.0)
    base.update(kw)
    return RGNVPipeline(sd2_depth, RGNVConfig(**base))


def test_coarse_equal_to_reference_returns_the_reference_reconstruction(sd2_depth, sample_rgba):
    # same prompt and guidance on both branches, same background: the target attends to K/V equal
    # to its own, so its trajectory is the reference's
    pipe = make(sd2_depth, prompt="", reference_background="grey", coarse_background="grey")
    cache = pipe.build_reference(sample_rgba)
    out = pipe.enhance(cache, [sample_rgba])
    rec = pipe.reference_reconstruction(cache)
    assert (out.latents - cache.z_final).abs().max() < 1e-4
    assert (out.images - rec).abs().max() < 1e-4


def test_injection_off_equals_the_coarse_views_own_reconstruction(sd2_depth, views, sample_rgba):
    pipe = make(sd2_depth, inject=False)
    out = pipe.enhance(None, views[:1])
    # independent computation: plain UNet (stock processors), same sampler settings
    image, mask = pipe.prepare(views[0], "grey")
    depth = pipe.depth_condition(image, mask)
    z0 = pipe.encode(image)
    ac = pipe.grid.alphas_cumprod
    inv = sd.UNetNoisePredictor(sd2_depth.unet, ac, pipe.text_embedding(""), depth=depth)
    smp = sd.UNetNoisePredictor(
        sd2_depth.unet,
        ac,
        pipe.text_embedding("a toy"),
        depth=depth,
        text_uncond=pipe.text_embedding(""),
        guidance_scale=9.0,
    )
    with torch.no_grad():
        z = ddim.sample(smp, ddim.invert(inv, z0, pipe.grid, S), pipe.grid, start=T - S)
        expected = pipe.decode(z) * mask + (1 - mask)
    assert (out.images - expected).abs().max() < 1e-5
    # and switching injection on does change the result (the mechanism is live)
    on = make(sd2_depth)
    assert (
        on.enhance(on.build_reference(sample_rgba), views[:1]).images - out.images
    ).abs().max() > 1e-3


def test_cached_reference_equals_recomputation_with_fewer_unet_evaluations(
    sd2_depth, views, sample_rgba
):
    pipe = make(sd2_depth)
    with count_unet_evals(sd2_depth.unet) as cached_n:
        cache = pipe.build_reference(sample_rgba)
        cached = pipe.enhance(cache, views).images
    with count_unet_evals(sd2_depth.unet) as recomputed_n:
        recomputed = torch.cat(
            [pipe.enhance(pipe.build_reference(sample_rgba), [v]).images for v in views]
        )
    assert (cached - recomputed).abs().max() <= 1e-5
    n = len(views)
    # reference once; per view S inversions + S CFG calls
    assert cached_n.calls == 2 * S + n * 2 * S
    assert recomputed_n.calls == n * 4 * S
    assert cached_n.items == 2 * S + n * 3 * S
    # batching views changes nothing but the layout
    batched = pipe.enhance(cache, views, batch_size=2).images
    assert (batched - cached).abs().max() < 1e-4


def test_cached_kv_injection_equals_in_batch_mutual_attention(sd2_depth):
    """The cache reproduces MasaCtrl's in-batch layout [ref, tgt, tgt] exactly."""
    pipe = make(sd2_depth)
    unet, layers = sd2_depth.unet, pipe.layers
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32, 32)
    emb = torch.randn(3, 77, 32)
    t = torch.full((3,), 400)
    st = InjectionState(mode="joint", ref_row=0, target_rows=(1, 2), step=0)
    with torch.no_grad(), mutual_self_attention(unet, layers, st):
        joint = unet(x, t, encoder_hidden_states=emb).sample
        st.mode = "record"
        ref = unet(x[:1], t[:1], encoder_hidden_states=emb[:1]).sample
        st.mode = "inject"
        tgt = unet(x[1:], t[1:], encoder_hidden_states=emb[1:]).sample
    assert (joint[0:1] - ref).abs().max() < 1e-5
    assert (joint[1:] - tgt).abs().max() < 1e-5


def test_only_the_targets_self_attention_in_selected_layers_changes(sd2_depth, views, sample_rgba):
    pipe = make(sd2_depth)
    cache = pipe.build_reference(sample_rgba)
    selected = set(pipe.layers)
    calls = []

    def hook(module, args, kwargs, output):
        hs = args[0] if args else kwargs["hidden_states"]
        calls.append(
            (
                module._hifi_name,
                pipe.state.mode,
                pipe.state.step,
                hs,
                kwargs.get("encoder_hidden_states"),
                output,
            )
        )

    handles = []
    for name, m in sd2_depth.unet.named_modules():
        if isinstance(m, Attention):
            m._hifi_name = name
            handles.append(m.register_forward_hook(hook, with_kwargs=True))
    try:
        pipe.enhance(cache, views[:1])
    finally:
        for h in handles:
            h.remove()
    stock = AttnProcessor2_0()
    injected_steps, changed = set(), 0
    for name, mode, step, hs, enc, out in calls:
        attn = sd2_depth.unet.get_submodule(name)
        with torch.no_grad():
            plain = stock(attn, hs, encoder_hidden_states=enc)
        if name in selected and mode == "inject":
            # Eq. 3: softmax(Q_tgt K_ref^T / sqrt d) V_ref, in this layer, at this step
            k_ref, v_ref = cache.kv[step][name]
            with torch.no_grad():
                q = attn.to_q(hs)
                b, n, c = q.shape
                h = attn.heads
                qh = q.view(b, n, h, c // h).transpose(1, 2)
                kh = k_ref.expand(b, -1, -1).reshape(b, -1, h, c // h).transpose(1, 2)
                vh = v_ref.expand(b, -1, -1).reshape(b, -1, h, c // h).transpose(1, 2)
                w = torch.softmax(qh @ kh.transpose(-1, -2) * attn.scale, -1)
                manual = attn.to_out[0]((w @ vh).transpose(1, 2).reshape(b, n, c))
            assert (out - manual).abs().max() < 1e-5, name
            assert (out - plain).abs().max() > 1e-6, f"{name} was not changed by injection"
            injected_steps.add(step)
            changed += 1
        else:  # cross-attention, unselected layers, inversion: exactly the stock computation
            assert (out - plain).abs().max() < 1e-5, (name, mode)
    assert injected_steps == set(range(T - S, T))  # injection on every target denoising step
    assert changed == S * len(selected)
    # the reference branch is untouched: its trajectory equals plain sampling
    eps = sd.UNetNoisePredictor(
        sd2_depth.unet, pipe.grid.alphas_cumprod, pipe.text_embedding(""), depth=cache.depth
    )
    with torch.no_grad():
        plain_ref = ddim.sample(eps, cache.z_start, pipe.grid, start=T - S)
    assert (plain_ref - cache.z_final).abs().max() < 1e-5


def test_changing_the_depth_map_changes_the_output(sd2_depth, views, sample_rgba):
    pipe = make(sd2_depth)
    cache = pipe.build_reference(sample_rgba)
    r = render_sample(10.0, 90.0, size=128)
    disp = np.where(r["alpha"], 1.0 / np.maximum(r["depth_z"], 1e-6), 0.0).astype(np.float32)
    a = pipe.enhance(cache, views[:1], depths=[disp]).images
    again = pipe.enhance(cache, views[:1], depths=[disp]).images
    flipped = pipe.enhance(cache, views[:1], depths=[disp[::-1].copy()]).images
    assert torch.equal(a, again)  # deterministic
    assert (a - flipped).abs().max() > 1e-3


def test_depth_condition_is_masked_normalised_and_latent_sized(sd2_depth, sample_rgba):
    pipe = make(sd2_depth)
    image, mask = pipe.prepare(sample_rgba, "texture")
    d = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 1, 64, 64)
    cond = pipe.depth_condition(image, mask, d)
    assert cond.shape == (1, 1, 32, 32)
    assert cond.max() <= 1.0 and cond.min() >= -1.001
    small = torch.nn.functional.interpolate(mask, size=(32, 32), mode="nearest")
    assert cond[small == 0].mean() < -0.9  # background -> far (-1)
    unmasked = pipe.depth_condition(image, mask, d, apply_mask=False)
    assert (unmasked - cond).abs().max() > 0.5


def test_reference_is_composited_on_the_procedural_texture(sd2_depth, sample_rgba):
    pipe = make(sd2_depth)
    img, mask = pipe.prepare(sample_rgba, "texture")
    bg = img[0][:, mask[0, 0] == 0]
    assert bg.std(dim=1).min() > 0.03  # textured in every channel, not flat
    grey, _ = pipe.prepare(sample_rgba, "grey")
    assert grey[0][:, mask[0, 0] == 0].std(dim=1).max() < 1e-6  # flat per channel


def test_cache_from_other_settings_is_rejected(sd2_depth, sample_rgba, views):
    cache = make(sd2_depth).build_reference(sample_rgba)
    with pytest.raises(ValueError, match="reference cache was built for"):
        make(sd2_depth, inject_steps=S - 1).enhance(cache, views[:1])
    with pytest.raises(ValueError, match="inject_steps"):
        RGNVConfig(num_steps=10, inject_steps=11).validate()


def test_rgnv_defaults_to_the_official_grid_and_refuses_a_reference_prompt(sd2_depth):
    pipe = RGNVPipeline(sd2_depth, RGNVConfig(num_steps=10, inject_steps=4))
    assert pipe.grid.timesteps[0] == 900 and pipe.grid.timesteps[-1] == 0  # steps_offset 0
    pipe.configure(RGNVConfig(num_steps=10, inject_steps=4, steps_offset=None))
    assert pipe.grid.timesteps[0] == 901  # the model's own offset (SD2: 1)
    with pytest.raises(ValueError, match="reference_prompt must be empty"):
        RGNVConfig(reference_prompt="a toy").validate()
    RGNVConfig(reference_prompt="a toy", inject=False).validate()  # no injection: nothing shared


#: SD2's injected self-attention layers (decision 2), written out: the last 32x32 decoder block and
#: the three 64x64 decoder blocks, attn1 only
SD2_INJECTED = {
    "up_blocks.2.attentions.2.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn1",
}


def test_default_injection_is_pinned_to_sd2s_decoder_self_attention_and_elsewhere_differs(
    sd2_depth, views, sample_rgba
):
    pipe = make(sd2_depth)
    cache = pipe.build_reference(sample_rgba)
    injected = []  # per UNet call while the target is injected: the modules that run our processor

    def pre(module, args, kwargs):
        if pipe.state.mode == "inject":
            injected.append(
                {
                    n[: -len(".processor")]
                    for n, p in module.attn_processors.items()
                    if type(p).__name__ == "MutualSelfAttentionProcessor"
                }
            )

    handle = sd2_depth.unet.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        out = pipe.enhance(cache, views[:1]).images
    finally:
        handle.remove()
    assert len(injected) == S and all(s == SD2_INJECTED for s in injected)
    # the choice is observable: injecting into other blocks changes the enhanced view
    other = make(sd2_depth, inject_blocks=(7, 8, 9, 10))
    out_other = other.enhance(other.build_reference(sample_rgba), views[:1]).images
    assert (out - out_other).abs().max() > 1e-3


def test_backgrounds_are_made_once_per_kind_and_size(sd2_depth, monkeypatch):
    import hifi123.core.images as images

    made = []
    real = images.procedural_background
    monkeypatch.setattr(
        images, "procedural_background", lambda *a, **k: made.append(a) or real(*a, **k)
    )
    pipe = make(sd2_depth)
    first = pipe.background("texture", 64)
    assert torch.equal(pipe.background("texture", 64), first) and len(made) == 1
    pipe.background("texture", 32)
    pipe.background("grey", 64), pipe.background("grey", 64)
    assert len(made) == 2
