"""Make-It-3D's novel-view prior: SDS at large t, CLIP-D at small t (paper §3.2, decision 14).

Mechanism tests with oracles (exact x0, exact SDS gradient, the branch switch) and with the tiny
SD2-base + tiny CLIP (the CLIP-D gradient reaches the rendering: the official code's no_grad bug
would fail it).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hifi123.core.makeit3d.prior import (
    MakeIt3DPrior,
    MakeIt3DPriorConfig,
    build_prior_from_models,
    enable_vae_gradient_checkpointing,
    select_clip_d,
    step_from_percent,
)
from hifi123.core.makeit3d.reference import reference_on_white
from hifi123.core.prompts import caption_path, resolve_prompt
from hifi123.errors import InputError
from hifi123.testing.oracle import CleanLatentOracle

SAMPLE = "custom/hifi123/assets/sample_rgba.png"


def _alphas():
    # SD2's scaled-linear schedule
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class LinearClip:
    """A fake CLIP: a fixed linear projection of the flattened image, normalised."""

    def __init__(self, n_in: int, dim: int = 8, seed: int = 0):
        self.w = torch.randn(n_in, dim, generator=torch.Generator().manual_seed(seed))

    def encode_image(self, img):
        return F.normalize(img.flatten(1) @ self.w, dim=-1)


def _decode(z):  # a fixed differentiable "decoder": latents -> 3-channel image
    return torch.sigmoid(z[:, :3] * 0.7 + 0.1 * z[:, 3:4])


def _oracle_prior(x0, **cfg_kw):
    ac = _alphas()
    clip = LinearClip(3 * x0.shape[-1] * x0.shape[-2])
    ref = F.normalize(torch.randn(1, 8, generator=torch.Generator().manual_seed(5)), dim=-1)
    prior = MakeIt3DPrior(
        MakeIt3DPriorConfig(**cfg_kw),
        ac,
        CleanLatentOracle(x0, ac),
        decode_fn=_decode,
        clip=clip,
        reference_embedding=ref,
        text_embedding=ref.flip(-1),
        latent_size=x0.shape[-1],
    )
    return prior, ac


@pytest.fixture
def x0():
    return torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def test_defaults_are_the_official_numbers():
    p = MakeIt3DPrior(MakeIt3DPriorConfig(), _alphas(), eps_fn=None)
    assert (p.min_step, p.max_step, p.clip_d_max_step) == (200, 600, 400)
    assert (
        p.cfg.guidance_scale == 10.0
        and p.cfg.cfg_form == "threestudio"
        and p.cfg.weighting_strategy == "sds"
    )
    t = p.sample_timesteps(40000, "cpu", torch.Generator().manual_seed(0))
    assert t.min() == 200 and t.max() == 600  # randint[200, 600] inclusive
    assert (t <= 400).float().mean().item() == pytest.approx(201 / 401, abs=0.01)
    assert step_from_percent(0.6) == 600 and step_from_percent(0.2) == 200
    with pytest.raises(ValueError, match="min_step_percent"):
        MakeIt3DPriorConfig(min_step_percent=0.7, max_step_percent=0.6).validate()
    with pytest.raises(ValueError, match="cfg_form"):
        MakeIt3DPriorConfig(cfg_form="other").validate()


def test_x0_is_exact_with_the_oracle_and_clip_d_equals_the_clean_decode(x0):
    prior, _ = _oracle_prior(x0)
    lat = x0.clone().requires_grad_(True)
    t = torch.tensor([200, 350, 400])
    out = prior(lat, torch.zeros(3), terms=["clip_d", "sds"], t=t, as_latents=True)
    assert out["use_clip_d"].all()
    assert torch.allclose(out["x0_pred"], x0, atol=2e-5)
    # CLIP-D through x0^ == CLIP-D on the clean latent itself, value AND gradient (d x0^/dz = I)
    out["loss_clip_d"].backward()
    direct_lat = x0.clone().requires_grad_(True)
    emb = prior.clip.encode_image(_decode(direct_lat))
    direct = -(emb * prior.reference_embedding).sum(-1).sum() / 3
    direct.backward()
    assert out["loss_clip_d"].item() == pytest.approx(direct.item(), abs=1e-5)
    assert torch.allclose(lat.grad, direct_lat.grad, atol=1e-5)
    assert lat.grad.abs().sum() > 0
    # the SDS term is inactive on CLIP-D items
    assert out["loss_sds"].item() == 0.0


def test_sds_gradient_is_exactly_w_times_eps_error_over_batch(x0):
    ac = _alphas()
    bias = torch.randn(1, 4, 1, 1, generator=torch.Generator().manual_seed(2))
    calls = []

    def known_model(z, t):  # a known, non-oracle eps model
        calls.append(torch.is_grad_enabled())
        return 0.3 * z + bias

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([450, 500, 599])
    for weighting in ("sds", "uniform"):
        prior = MakeIt3DPrior(
            MakeIt3DPriorConfig(weighting_strategy=weighting), ac, known_model, latent_size=8
        )
        lat = x0.clone().requires_grad_(True)
        out = prior(lat, terms=["sds"], t=t, noise=noise, as_latents=True)
        out["loss_sds"].backward()
        a = ac[t].view(-1, 1, 1, 1)
        eps_hat = 0.3 * (a.sqrt() * x0 + (1 - a).sqrt() * noise) + bias
        w = (1 - a) if weighting == "sds" else torch.ones_like(a)
        expected = w * (eps_hat - noise) / x0.shape[0]
        assert torch.allclose(lat.grad, expected, atol=1e-6), weighting
    assert calls and not any(calls)  # the UNet stand-in always ran without grad


def test_sds_gradient_vanishes_for_the_oracle(x0):
    prior, _ = _oracle_prior(x0)
    lat = x0.clone().requires_grad_(True)
    out = prior(lat, terms=["sds"], t=torch.tensor([450, 500, 600]), as_latents=True)
    out["loss_sds"].backward()
    assert lat.grad.abs().max() < 1e-5  # the model already predicts the true noise


def test_branch_switch_follows_t_and_view(x0):
    prior, _ = _oracle_prior(x0[:1].expand(5, -1, -1, -1).contiguous())
    t = torch.tensor([400, 401, 200, 300, 250])
    az = torch.tensor([0.0, 0.0, 135.0, -134.9, 200.0])  # 200 wraps to -160: back
    expected = [True, False, False, True, False]
    assert select_clip_d(t, az, 400).tolist() == expected
    lat = torch.randn(5, 4, 8, 8, requires_grad=True)
    out = prior(lat, az, terms=["sds", "clip_d"], t=t, as_latents=True)
    assert out["use_clip_d"].tolist() == expected
    assert out["is_back"].tolist() == [False, False, True, False, True]
    (g_sds,) = torch.autograd.grad(out["loss_sds"], lat, retain_graph=True)
    (g_clip,) = torch.autograd.grad(out["loss_clip_d"], lat)
    per_item = lambda g: (g.flatten(1).abs().sum(1) > 0).tolist()  # noqa: E731
    assert per_item(g_sds) == [not e for e in expected]
    assert per_item(g_clip) == expected
    # switched off: CLIP-D never applies
    never, _ = _oracle_prior(x0, clip_d_max_step_percent=0.0)
    assert not never(x0, terms=["sds"], t=torch.tensor([200, 250, 300]), as_latents=True)[
        "use_clip_d"
    ].any()


def test_only_the_requested_terms_run(x0):
    prior, _ = _oracle_prior(x0)
    calls = prior.eps_fn.calls
    out = prior(x0, terms=["sds"], t=torch.tensor([500] * 3), as_latents=True)
    assert [k for k in out if k.startswith("loss_")] == ["loss_sds"]
    assert prior.eps_fn.calls == calls + 1
    out = prior(torch.rand(3, 3, 8, 8), terms=["clip_img", "clip_txt"])
    assert sorted(k for k in out if k.startswith("loss_")) == ["loss_clip_img", "loss_clip_txt"]
    assert prior.eps_fn.calls == calls + 1  # no diffusion call for the raw-render terms
    with pytest.raises(ValueError, match="unknown"):
        prior(x0, terms=["sds", "lpips"], as_latents=True)


@pytest.fixture(scope="module")
def tiny_prior(tiny_models):
    from hifi123.models.clip_encoder import load_clip_encoder
    from hifi123.models.loader import load_diffusion

    torch.set_num_threads(2)
    comps = load_diffusion(tiny_models["sd2-base"], "pretrained_model_name_or_path")
    clip = load_clip_encoder("transformers", tiny_models["clip"], None)
    prior = build_prior_from_models(
        MakeIt3DPriorConfig(), comps, clip, "a toy", "", reference_on_white(SAMPLE)
    )
    # a smaller working resolution than the tiny model's 64 px: same code path, faster
    prior.image_size, prior.latent_size = 16, 8
    return prior, comps


def test_clip_d_gradient_reaches_the_rendering(tiny_prior):
    prior, comps = tiny_prior
    rgb = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = prior(
        rgb, torch.tensor([10.0]), terms=["sds", "clip_d", "clip_d_txt"], t=torch.tensor([300])
    )
    assert out["use_clip_d"].item()
    assert -1.0 <= out["loss_clip_d"].item() <= 1.0
    out["loss_clip_d"].backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in comps.unet.parameters())  # frozen, no grad through it


def test_sds_gradient_reaches_the_rendering_at_large_t(tiny_prior):
    prior, _ = tiny_prior
    rgb = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    out = prior(rgb, torch.tensor([10.0]), terms=["sds", "clip_d"], t=torch.tensor([500]))
    assert not out["use_clip_d"].item() and out["loss_clip_d"].item() == 0.0
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_raw_render_clip_terms(tiny_prior):
    prior, _ = tiny_prior
    ref = reference_on_white(SAMPLE)
    out = prior(ref, terms=["clip_img", "clip_txt"])
    assert out["loss_clip_img"].item() == pytest.approx(-1.0, abs=1e-4)  # the reference itself
    rgb = torch.rand(1, 3, 16, 16).requires_grad_(True)
    out = prior(rgb, terms=["clip_img", "clip_txt"])
    assert out["loss_clip_img"].item() > -0.9999
    (out["loss_clip_img"] + out["loss_clip_txt"]).backward()
    assert rgb.grad.abs().sum() > 0


def test_vae_gradient_checkpointing_recomputes_and_keeps_gradients(tiny_models):
    from hifi123.core.diffusion.sd import VaeCodec
    from hifi123.models.loader import load_diffusion

    vae = load_diffusion(tiny_models["sd2-base"]).vae
    codec = VaeCodec(vae, "mean")
    enc, dec = codec.encode, codec.decode
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    runs = []
    # a pre-hook: non-reentrant checkpointing may stop the recomputation before the block returns
    hook = vae.decoder.mid_block.register_forward_pre_hook(lambda *a: runs.append(1))
    dec(enc(x)).sum().backward()
    plain, n_plain = x.grad.clone(), len(runs)
    x.grad = None
    enable_vae_gradient_checkpointing(vae)
    dec(enc(x)).sum().backward()
    hook.remove()
    assert torch.allclose(plain, x.grad, atol=1e-5)
    assert len(runs) - n_plain > n_plain  # the decoder block ran again in the backward pass


def test_an_explicit_prompt_wins_then_the_caption_file(tmp_path):
    assert caption_path("a/b/toy_rgba.png") == "a/b/toy_caption.txt"
    assert caption_path("a/b/toy.png") == "a/b/toy_caption.txt"
    prompt, src = resolve_prompt(SAMPLE, "")
    assert prompt.startswith("a toy made of") and "caption file" in src
    prompt, src = resolve_prompt(SAMPLE, "  a  wooden   toy ")  # a caption exists, the field wins
    assert prompt == "a wooden toy" and src == "`prompt`"
    img = tmp_path / "obj_rgba.png"
    img.write_bytes(b"")
    assert resolve_prompt(str(img), "  a  red   chair ")[0] == "a red chair"
    assert resolve_prompt(SAMPLE, "a chair", use_caption_file=False)[0] == "a chair"
    with pytest.raises(InputError, match="prompt"):
        resolve_prompt(str(img), "")


class RecordingClip(LinearClip):
    """LinearClip that keeps every image batch it encodes (resized to 8x8 first)."""

    def __init__(self):
        super().__init__(3 * 8 * 8)
        self.seen = []

    def encode_image(self, img):
        self.seen.append(img.detach().clone())
        return super().encode_image(
            F.interpolate(img, (8, 8), mode="bilinear", align_corners=False)
        )


def test_clip_d_reference_is_composited_on_the_renders_own_background(x0):
    """The official code composites the reference on the render's per-iteration background colour
    before CLIP; a reference fixed on white would reward whitening the background."""
    from hifi123.core.makeit3d.reference import reference_rgba

    rgba = reference_rgba(SAMPLE)
    alpha = rgba[0, 3] > 0.99
    clear = rgba[0, 3] < 0.01
    assert alpha.any() and clear.any()
    clip = RecordingClip()
    ac = _alphas()
    white = clip.encode_image(rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:]))
    clip.seen.clear()
    prior = MakeIt3DPrior(
        MakeIt3DPriorConfig(),
        ac,
        CleanLatentOracle(x0, ac),
        decode_fn=_decode,
        clip=clip,
        reference_embedding=white,
        latent_size=8,
        reference_rgba=rgba,
    )
    bg = torch.tensor([[0.2, 0.7, 0.1], [0.9, 0.3, 0.5], [0.0, 0.0, 1.0]])  # one colour per view

    def clip_d(**background):
        return prior(
            x0,
            torch.zeros(3),
            terms=["clip_d"],
            t=torch.full((3,), 100),
            as_latents=True,
            **background,
        )

    out = clip_d(background=bg)
    assert out["use_clip_d"].all()
    refs = [img for img in clip.seen if img.shape[-2:] == rgba.shape[-2:]]
    assert len(refs) == 1 and refs[0].shape[0] == 3
    for k in range(3):  # where the reference is transparent, CLIP sees exactly that view's colour
        assert torch.allclose(
            refs[0][k][:, clear], bg[k][:, None].expand(3, int(clear.sum())), atol=1e-6
        )
        assert torch.allclose(refs[0][k][:, alpha], rgba[0, :3][:, alpha], atol=1e-2)
    # without a background: the white embedding, no new reference encoding
    clip.seen.clear()
    clip_d()
    assert not [img for img in clip.seen if img.shape[-2:] == rgba.shape[-2:]]
    # a render-background IMAGE (threestudio's comp_rgb_bg, channels last) works the same way
    img_bg = bg[:, None, None, :].expand(3, 16, 16, 3)
    clip.seen.clear()
    clip_d(background=img_bg)
    (ref,) = [img for img in clip.seen if img.shape[-2:] == rgba.shape[-2:]]
    assert torch.allclose(ref[1][:, clear], bg[1][:, None].expand(3, int(clear.sum())), atol=1e-6)


def test_the_configured_w_and_both_text_halves_reach_the_noise_estimate(tiny_prior, tiny_models):
    """The prior's noise estimate is (1 + w) eps_c - w eps_u with eps_c, eps_u the UNet's own
    predictions for the caption and the negative prompt (distinct), for the configured w."""
    from hifi123.core.diffusion.sd import encode_prompts
    from hifi123.models.clip_encoder import load_clip_encoder

    _, comps = tiny_prior
    clip = load_clip_encoder("transformers", tiny_models["clip"], None)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([300])
    cond = encode_prompts(comps.tokenizer, comps.text_encoder, ["a toy"], comps.device)
    uncond = encode_prompts(comps.tokenizer, comps.text_encoder, [""], comps.device)
    with torch.no_grad():
        eps_c = comps.unet(z, t, encoder_hidden_states=cond).sample
        eps_u = comps.unet(z, t, encoder_hidden_states=uncond).sample
    assert (eps_c - eps_u).abs().max() > 1e-3  # the two halves are distinguishable
    for w in (3.0, 10.0):
        prior = build_prior_from_models(
            MakeIt3DPriorConfig(guidance_scale=w),
            comps,
            clip,
            "a toy",
            "",
            reference_on_white(SAMPLE),
        )
        got = prior.predict_noise(z, t)
        torch.testing.assert_close(got, (1 + w) * eps_c - w * eps_u, atol=1e-5, rtol=1e-4)
