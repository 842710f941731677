"""RGNV image loss (HiFi-123 §3.3, Fig. 4c "image loss"): core only, tiny SD2-depth on CPU."""

import pytest
import torch
from hifi123.core.hifi123.rgnv import RGNVPipeline
from hifi123.core.hifi123.rgnv_loss import (
    RGNVImageLoss,
    RGNVLossConfig,
    image_distance,
    object_mask,
    render_disparity,
)
from hifi123.core.images import load_rgba
from hifi123.errors import InputError
from hifi123.models.loader import load_diffusion
from hifi123.models.tiny import ensure_tiny_models
from hifi123.sample.make_sample import render_sample
from hifi123.testing.counter import count_unet_evals

T, S = 6, 4  # small grid for CPU speed; the mechanism does not depend on T and S
SAMPLE = "custom/hifi123/assets/sample_rgba.png"


@pytest.fixture(scope="module")
def components():
    torch.set_num_threads(2)
    return load_diffusion(ensure_tiny_models()["sd2-depth"], "model", with_depth_estimator=True)


@pytest.fixture(scope="module")
def reference():
    from pathlib import Path

    return load_rgba(str(Path(__file__).resolve().parents[1] / SAMPLE))


def make_loss(components, reference, **kw):
    cfg = RGNVLossConfig(num_steps=T, inject_steps=S, prompt="a toy", **kw)
    return RGNVImageLoss(RGNVPipeline(components, cfg), reference, None, cfg)


@pytest.fixture(scope="module")
def shared(components, reference):
    """One loss (one reference build) for the tests that do not count UNet evaluations; the loss
    fields (depth_type, target_background, loss_type) are read per call, so tests may patch them."""
    return make_loss(components, reference)


def render(azimuths, size=64, elevation=10.0):
    """A batch of renders of the sample object: rgb [B,H,W,3] on a grey background (as a
    threestudio background would give), opacity [B,H,W,1], z-depth [B,H,W,1] (0 outside)."""
    rs = [render_sample(elevation, a, size=size) for a in azimuths]
    alpha = torch.stack([torch.from_numpy(r["alpha"]).float() for r in rs])[..., None]
    rgb = torch.stack([torch.from_numpy(r["rgb"]).float() for r in rs])
    rgb = rgb * alpha + 0.3 * (1 - alpha)
    depth = torch.stack([torch.from_numpy(r["depth_z"]).float() for r in rs])[..., None]
    return rgb, alpha, depth


# ------------------------------------------------------------------------ the distance itself
def test_distance_is_zero_with_zero_gradient_at_the_target():
    torch.manual_seed(0)
    target = torch.rand(2, 8, 8, 3)
    rgb = target.clone().requires_grad_(True)
    for kind in ("mse", "l1"):
        loss = image_distance(rgb, target, kind)
        (grad,) = torch.autograd.grad(loss, rgb)
        assert loss.item() == 0.0 and grad.abs().max().item() == 0.0


def test_distance_gradient_is_analytic_and_stops_at_the_target():
    torch.manual_seed(0)
    B, H, W = 2, 8, 6
    target = torch.rand(B, H, W, 3, requires_grad=True)  # a target with a graph must not get grads
    rgb = torch.rand(B, H, W, 3, requires_grad=True)
    N = B * H * W * 3
    loss = image_distance(rgb, target, "mse")
    loss.backward()
    assert torch.allclose(rgb.grad, 2 * (rgb - target).detach() / N, atol=1e-7)
    assert target.grad is None
    # reduction: per-view mean over pixels, summed over the batch / B (= the overall mean)
    per_view = ((rgb - target) ** 2).flatten(1).mean(1)
    assert torch.allclose(loss, per_view.sum() / B)
    rgb.grad = None
    image_distance(rgb, target, "l1").backward()
    assert torch.allclose(rgb.grad, torch.sign(rgb - target).detach() / N)
    with pytest.raises(ValueError, match="loss_type"):
        image_distance(rgb, target, "l2")


def test_render_depth_to_disparity():
    z = torch.tensor([[2.0, 4.0], [5.0, 0.0]])[None, ..., None]  # [1,2,2,1]
    opacity = torch.tensor([[1.0, 0.8], [0.3, 0.0]])[None, ..., None]
    mask = object_mask(opacity, z)
    assert mask.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
    # true z-depth: 1 / z inside the mask, 0 outside
    d = render_disparity(z, opacity, "z", weighted_by_opacity=False)
    assert d.shape == (1, 1, 2, 2)
    assert torch.allclose(d.flatten(), torch.tensor([0.5, 0.25, 0.0, 0.0]))
    # threestudio's NeRF depth is opacity-weighted (sum w_i t_i): divided out first
    dw = render_disparity(z * opacity, opacity, "z", weighted_by_opacity=True)
    assert torch.allclose(dw, d)
    # disparity passes through, masked; no opacity = the whole frame
    disp = render_disparity(z, opacity, "disparity")
    assert torch.allclose(disp.flatten(), torch.tensor([2.0, 4.0, 0.0, 0.0]))
    assert torch.allclose(render_disparity(z[..., 0], None, "disparity").flatten(), z.flatten())
    # [B,H,W] inputs
    assert torch.equal(render_disparity(z[..., 0], opacity[..., 0], "z", False), d)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="loss_type"):
        RGNVLossConfig(loss_type="l2").validate(check_files=False)
    with pytest.raises(ValueError, match="inject_steps"):
        RGNVLossConfig(num_steps=4, inject_steps=5).validate(check_files=False)
    with pytest.raises(InputError, match="cond_image_path"):
        RGNVLossConfig().validate()
    with pytest.raises(InputError, match="cond_image_path: file not found"):
        RGNVLossConfig(cond_image_path=str(tmp_path / "nope.png")).validate()
    with pytest.raises(ValueError, match="load_depth_estimator"):
        RGNVLossConfig(load_depth_estimator=False).validate(check_files=False)


# ------------------------------------------------------------------------ with the pipeline
def test_target_is_a_stop_gradient_and_the_gradient_is_analytic(shared):
    loss_fn = shared
    rgb, opacity, depth = render([60.0], size=48)  # not the model's 64: the target is resized
    rgb.requires_grad_(True)
    out = loss_fn(rgb, opacity, depth)
    assert out.target.shape == rgb.shape and not out.target.requires_grad
    assert out.target.grad_fn is None and torch.isfinite(out.loss)
    out.loss.backward()
    N = rgb.numel()
    assert torch.allclose(rgb.grad, 2 * (rgb - out.target).detach() / N, atol=1e-8)
    # outside the object the target is the render itself: no loss, no gradient there
    outside = out.mask[..., 0] == 0
    assert outside.any() and (out.target - rgb.detach())[outside].abs().max().item() == 0.0
    assert rgb.grad[outside].abs().max().item() == 0.0
    # inside, the target is RGNV's enhancement of the render
    assert (out.target - out.enhanced)[~outside].abs().max().item() == 0.0
    assert out.logs["mse"].item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_reference_branch_is_built_once(components, reference):
    loss_fn = make_loss(components, reference)
    counts = []
    for azimuths in ([60.0], [-90.0], [150.0, -30.0]):
        rgb, opacity, depth = render(azimuths)
        with count_unet_evals(components.unet) as n:
            loss_fn(rgb, opacity, depth)
        counts.append((n.calls, n.items))

    def per_view(B):  # S single-pass inversions + S CFG-batched denoising calls
        return (2 * S, S * B + S * 2 * B)

    # + reference: S + S, unguided
    assert counts[0] == (2 * S + per_view(1)[0], 2 * S + per_view(1)[1])
    assert counts[1] == per_view(1) and counts[2] == per_view(2)
    assert loss_fn.reference_builds == 1


def test_a_gradient_step_lowers_the_loss(shared):
    loss_fn = shared
    rgb, opacity, depth = render([120.0])
    rgb.requires_grad_(True)
    out = loss_fn(rgb, opacity, depth)
    out.loss.backward()
    with torch.no_grad():
        stepped = rgb - 0.1 * rgb.numel() * rgb.grad  # lr in units of 1/N
    after = image_distance(stepped, out.target)
    assert out.loss.item() > 0 and after.item() < out.loss.item()


def test_render_depth_is_the_condition(shared, monkeypatch):
    """z-depth and the equivalent disparity give the same target; DPT gives another one."""
    rgb, opacity, depth = render([45.0])
    disparity = torch.where(depth > 0, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    t_z = shared(rgb, opacity, depth).target
    t_dpt = shared(rgb, opacity, None).target
    monkeypatch.setattr(shared.cfg, "depth_type", "disparity")
    t_disp = shared(rgb, opacity, disparity).target
    assert (t_z - t_disp).abs().max().item() < 1e-5
    assert (t_z - t_dpt).abs().max().item() > 1e-3


def test_without_opacity_the_whole_frame_is_the_object(shared):
    rgb, _, _ = render([30.0])
    out = shared(rgb)  # DPT depth, all-ones mask
    assert out.mask.min().item() == 1.0 and out.logs["mask_fraction"].item() == 1.0
    assert torch.equal(out.target, out.enhanced)


def test_white_target_background(shared, monkeypatch):
    monkeypatch.setattr(shared.cfg, "target_background", "white")
    rgb, opacity, depth = render([90.0])
    out = shared(rgb, opacity, depth)
    outside = opacity[..., 0] == 0
    assert (out.target[outside] == 1.0).all()
    assert shared.reference_builds == 1  # every test on `shared` reused the one reference branch
