"""RGSD (HiFi-123 §3.3; decisions 7-11): our reconstruction, checked exactly."""

import io

import numpy as np
import pytest
import torch
from hifi123.core.hifi123.rgsd import RGSD, FixedViewSchedule, RGSDConfig, relative_fixed_cameras
from hifi123.sample.make_sample import render_sample
from hifi123.testing.counter import count_unet_evals
from hifi123.testing.oracle import CleanLatentOracle

T, S = 8, 5


def render(azimuth, elevation=0.0, size=64):
    r = render_sample(elevation, azimuth, size=size)
    rgb = torch.from_numpy(r["rgb"]).float()[None]
    alpha = torch.from_numpy(r["alpha"]).float()[None, ..., None]
    rgb = rgb * alpha + (1 - alpha)  # threestudio-like render on white
    depth = torch.from_numpy(r["depth_z"]).float()[None, ..., None]
    return rgb, alpha, depth


@pytest.fixture
def rgsd(sd2_depth, sample_rgba):
    m = RGSD(sd2_depth, RGSDConfig(num_steps=T, inject_steps=S, prompt="a toy"))
    m.set_reference(sample_rgba)
    return m


def test_t_positive_term_is_the_alpha_weighted_latent_mse(rgsd):
    rgb, alpha, depth = render(70.0)
    rgb = rgb.requires_grad_(True)
    out = rgsd.loss_random(rgb, alpha, depth, t=3)
    (g_ours,) = torch.autograd.grad(out["loss_rgsd"], rgb)
    # the paper's form: z_t = sqrt(a) z + sqrt(1-a) eps~ vs the RGNV state z~_t, both built
    # explicitly
    rgb2 = rgb.detach().clone().requires_grad_(True)
    image, mask, cond = rgsd.prepare_render(rgb2, alpha, depth)
    z = rgsd.encode(image)
    r = rgsd.random_state(z, cond, 3)
    a = rgsd.pipe.grid.alpha(r.index)
    z_t = a**0.5 * z + (1 - a) ** 0.5 * r.eps
    w = rgsd.latent_mask(mask)  # the object's latents (mask_background, the default)
    assert 0 < w.mean() < 1
    explicit = ((z_t - r.z_in) ** 2 * w).sum() / (w.sum() * z.shape[1])
    (g_paper,) = torch.autograd.grad(explicit, rgb2)
    assert out["loss_rgsd"].item() == pytest.approx(explicit.item(), rel=1e-4, abs=1e-9)
    assert torch.allclose(g_ours, g_paper, rtol=1e-3, atol=1e-8)
    assert r.index == T - 3  # t = 3 steps to go: evaluated at grid index T - t
    assert out["loss_rgsd"].item() > 0


def test_oracle_zero_gradient_at_the_target_and_descent_lowers_the_distance(rgsd):
    rgb, alpha, depth = render(-40.0)
    with torch.no_grad():
        image, _, _ = rgsd.prepare_render(rgb, alpha, depth)
        z_target = rgsd.encode(image)
    ac = rgsd.pipe.grid.alphas_cumprod
    # oracle denoiser whose clean prediction is exactly z_target: RGSD's target IS the rendering
    rgsd.pipe.noise_model = lambda prompt, d, guided: CleanLatentOracle(z_target.double(), ac)
    x = rgb.clone().requires_grad_(True)
    out = rgsd.loss_random(x, alpha, depth, t=2)
    (g,) = torch.autograd.grad(out["loss_rgsd"], x)
    assert out["loss_rgsd"].item() < 1e-10 and g.abs().max().item() < 1e-8
    # a different target: one gradient step on the rendering lowers the distance
    z_other = z_target + 0.3 * torch.randn(
        z_target.shape, generator=torch.Generator().manual_seed(0)
    )
    rgsd.pipe.noise_model = lambda prompt, d, guided: CleanLatentOracle(z_other.double(), ac)
    x = rgb.clone().requires_grad_(True)
    before = rgsd.loss_random(x, alpha, depth, t=2)
    (g,) = torch.autograd.grad(before["loss_rgsd"], x)
    assert torch.allclose(before["rgsd_target_latent"], z_other, atol=1e-5)  # x̂0 exact
    after = rgsd.loss_random((x - 0.05 * g / g.abs().max()).detach(), alpha, depth, t=2)
    assert after["loss_rgsd"].item() < before["loss_rgsd"].item()


def test_fixed_view_loss_zero_at_target_and_descent(rgsd):
    rgb, alpha, depth = render(90.0)
    with torch.no_grad():
        image, _, _ = rgsd.prepare_render(rgb, alpha, depth)
        rgsd.fixed_targets = torch.cat([rgsd.encode(image), rgsd.encode(image) + 0.5])
    x = rgb.clone().requires_grad_(True)
    out = rgsd.loss_fixed(x, 0, alpha, depth)
    (g,) = torch.autograd.grad(out["loss_rgsd"], x)
    assert out["loss_rgsd"].item() < 1e-12 and g.abs().max() < 1e-10
    x = rgb.clone().requires_grad_(True)
    before = rgsd.loss_fixed(x, 1, alpha, depth)["loss_rgsd"]
    (g,) = torch.autograd.grad(before, x)
    after = rgsd.loss_fixed((x - 0.05 * g / g.abs().max()).detach(), 1, alpha, depth)["loss_rgsd"]
    assert after < before


def test_reference_branch_runs_once_per_run(sd2_depth, sample_rgba):
    m = RGSD(sd2_depth, RGSDConfig(num_steps=T, inject_steps=S, prompt="a toy"))
    rgb, alpha, depth = render(120.0)
    ts = [1, 3, 5]
    with count_unet_evals(sd2_depth.unet) as n:
        m.set_reference(sample_rgba)
        m.set_reference(sample_rgba)  # idempotent
        for t in ts:
            m.loss_random(rgb, alpha, depth, t=t)
    ref = 2 * S
    per_iter = sum(S + (S - t + 1) for t in ts)  # S inversions + (S - t + 1) CFG evaluations
    assert n.calls == ref + per_iter


def test_fixed_targets_computed_once_and_survive_checkpoint_bit_exactly(
    sd2_depth, sample_rgba, rgsd
):
    views = [render(a) for a in (90.0, -90.0)]
    rgb = torch.cat([v[0] for v in views])
    alpha = torch.cat([v[1] for v in views])
    depth = torch.cat([v[2] for v in views])
    with count_unet_evals(sd2_depth.unet) as n:
        targets = rgsd.compute_fixed_targets(rgb, alpha, depth)
    assert n.calls == 2 * (S + S) and targets.shape[0] == 2
    buf = io.BytesIO()
    torch.save({"hifi123_rgsd": rgsd.state_dict()}, buf)
    buf.seek(0)
    restored = RGSD(sd2_depth, RGSDConfig(num_steps=T, inject_steps=S, prompt="a toy"))
    restored.load_state_dict(torch.load(buf, weights_only=False)["hifi123_rgsd"])
    assert torch.equal(restored.fixed_targets, targets)
    with count_unet_evals(sd2_depth.unet) as n:  # t = 0 iterations need no UNet evaluation
        a = rgsd.loss_fixed(views[0][0], 0, views[0][1], views[0][2])["loss_rgsd"]
        b = restored.loss_fixed(views[0][0], 0, views[0][1], views[0][2])["loss_rgsd"]
    assert n.calls == 0 and torch.equal(a, b)
    other = RGSD(sd2_depth, RGSDConfig(num_steps=T, inject_steps=S - 1, prompt="a toy"))
    with pytest.raises(ValueError, match="other settings"):
        other.load_state_dict(rgsd.state_dict())
    fresh = RGSD(sd2_depth, RGSDConfig(num_steps=T, inject_steps=S))
    with pytest.raises(RuntimeError, match="fixed-view targets are missing"):
        fresh.loss_fixed(views[0][0], 0)


def test_render_depth_becomes_a_near_bright_masked_condition(rgsd):
    rgb, alpha, depth = render(0.0)
    _, mask, cond = rgsd.prepare_render(rgb, alpha, depth)
    z = depth[0, ..., 0]
    near = torch.nonzero(z == z[alpha[0, ..., 0] > 0].min())[0]
    small = torch.nn.functional.interpolate(mask, size=(32, 32))
    grown = torch.nn.functional.max_pool2d(small, 5, stride=1, padding=2)  # away from the border
    assert cond[0, 0, near[0] // 2, near[1] // 2] > 0.5  # nearest surface point -> near +1
    assert cond[0, 0][grown[0, 0] == 0].max() <= -0.99  # background -> -1
    # disparity input gives the same condition as the z-depth it came from
    rgsd.cfg.depth_type = "disparity"
    disp = torch.where(alpha > 0, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    _, _, cond_disp = rgsd.prepare_render(rgb, alpha, disp)
    assert torch.allclose(cond, cond_disp, atol=1e-5)


def test_schedule_and_fixed_cameras():
    s = FixedViewSchedule(n_fixed=2, every=2)
    steps = range(8)
    assert [s.is_fixed(i) for i in steps] == [True, False] * 4
    assert [s.fixed_index(i) for i in steps if s.is_fixed(i)] == [0, 1, 0, 1]
    cams = relative_fixed_cameras(RGSDConfig().fixed_views, 0.0, 0.0)
    assert cams == [(0.0, 90.0), (0.0, -90.0)]
    assert np.allclose(relative_fixed_cameras([(0.0, 90.0)], 5.0, 120.0), [(5.0, -150.0)])


def test_rgsd_built_on_a_pipeline_uses_its_own_grid_and_layers(sd2_depth):
    from hifi123.core.hifi123.rgnv import RGNVConfig, RGNVPipeline

    pipe = RGNVPipeline(sd2_depth, RGNVConfig(num_steps=50, inject_steps=30, inject_blocks=(15,)))
    assert pipe.grid.num_steps == 50 and len(pipe.layers) == 1
    rgsd = RGSD(pipe, RGSDConfig(num_steps=8, inject_steps=4, load_depth_estimator=True))
    assert rgsd.pipe is pipe and pipe.grid.num_steps == 8 and pipe.grid.timesteps[0] == 875
    assert len(pipe.layers) == 4  # blocks 12-15, RGSD's default, not the pipeline's old (15,)


def test_restoring_targets_compares_every_setting_that_shapes_them():
    from dataclasses import asdict, fields, replace

    from hifi123.core.hifi123.rgsd import TARGET_INDEPENDENT

    base = RGSDConfig(num_steps=8, inject_steps=4, prompt="a toy")
    state = {"fixed_targets": torch.zeros(2, 4, 8, 8), "config": asdict(base)}
    other = {  # a changed value per field, each of which would change the t = 0 targets
        "pretrained_model_name_or_path": "another/model",
        "num_steps": 10,
        "steps_offset": None,
        "inject_steps": 3,
        "guidance_scale": 5.0,
        "cfg_form": "threestudio",
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "reference_prompt": "x",
        "inject_blocks": (14, 15),
        "mask_reference_depth": False,
        "reference_background": "white",
        "coarse_background": "white",
        "texture_seed": 1,
        "depth_type": "disparity",
        "depth_weighted_by_opacity": False,
        "depth_source": "dpt",
        "fixed_views": ((0.0, 45.0),),
        "inject": False,
    }
    checked = {f.name for f in fields(RGSDConfig)} - TARGET_INDEPENDENT
    # a new field must be listed here or excluded there
    assert checked == set(other), checked ^ set(other)
    for name, value in other.items():
        changed = replace(base, **{name: value})
        with pytest.raises(ValueError, match=name):
            RGSD.check_state(state, changed)
    RGSD.check_state(state, replace(base, half_precision_weights=False))


def test_background_changes_of_the_target_give_zero_loss_and_gradient(rgsd):
    """RGNV paints its own background where the render has grey: with mask_background (default)
    a target that differs from the render only there costs nothing; in the object it does."""
    rgb, alpha, depth = render(30.0)
    with torch.no_grad():
        image, mask, _ = rgsd.prepare_render(rgb, alpha, depth)
        z_render = rgsd.encode(image)
        w = rgsd.latent_mask(mask)
    ac = rgsd.pipe.grid.alphas_cumprod
    noise = torch.randn(z_render.shape, generator=torch.Generator().manual_seed(1))

    def loss_and_grad(target, cfg_mask=True):
        rgsd.cfg.mask_background = cfg_mask
        rgsd.pipe.noise_model = lambda prompt, d, guided: CleanLatentOracle(target.double(), ac)
        x = rgb.clone().requires_grad_(True)
        out = rgsd.loss_random(x, alpha, depth, t=2)
        (g,) = torch.autograd.grad(out["loss_rgsd"], x)
        return out["loss_rgsd"].item(), g.abs().max().item()

    background_only = z_render + noise * (1 - w)
    loss, grad = loss_and_grad(background_only)
    assert loss < 1e-10 and grad < 1e-8
    loss, grad = loss_and_grad(background_only, cfg_mask=False)  # the old whole-latent loss
    assert loss > 1e-4 and grad > 1e-6
    loss, grad = loss_and_grad(z_render + noise * w)  # the object differs: a loss and a gradient
    assert loss > 1e-4 and grad > 1e-6
    rgsd.cfg.mask_background = True


def test_t_is_uniform_over_1_to_S(rgsd):
    """RGSD's t > 0 branch draws t from {1, ..., S}: never 0 (the fixed-view branch), never S + 1,
    every value about equally often."""
    g = torch.Generator().manual_seed(0)
    s = rgsd.cfg.inject_steps
    draws = np.array([rgsd.sample_t(g) for _ in range(400 * s)])
    counts = np.bincount(draws, minlength=s + 2)
    assert counts[0] == 0 and counts[s + 1 :].sum() == 0
    # ~4 sigma of a binomial(400 s, 1/s)
    assert np.all(np.abs(counts[1 : s + 1] - 400) < 80), counts


def test_fixed_view_steps_build_no_depth_condition(rgsd, monkeypatch):
    """t = 0 compares latents only: no depth condition is made (no DPT forward without a render
    depth, no disparity with one), and the loss is unchanged by that."""
    rgb, alpha, depth = render(90.0)
    if rgsd.fixed_targets is None:
        rgsd.compute_fixed_targets(rgb, alpha, depth)
    before = rgsd.loss_fixed(rgb, 0, alpha, depth)["loss_rgsd"]
    calls = []
    monkeypatch.setattr(rgsd.pipe, "depth_condition", lambda *a, **k: calls.append("dpt"))
    monkeypatch.setattr(
        "hifi123.core.hifi123.rgsd.render_disparity", lambda *a, **k: calls.append("disparity")
    )
    for d in (None, depth):
        after = rgsd.loss_fixed(rgb, 0, alpha, d)["loss_rgsd"]
        assert torch.equal(after, before)
    assert calls == []
