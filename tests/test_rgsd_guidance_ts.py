"""`hifi123-rgsd-guidance` inside a real threestudio (GPU-only modules stubbed), on CPU."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

NAME = "hifi123-rgsd-guidance"
SAMPLE = Path(__file__).resolve().parents[1] / "custom" / "hifi123" / "assets" / "sample_rgba.png"

pytestmark = pytest.mark.threestudio


@pytest.fixture
def cfg(tiny_models):
    return {
        "pretrained_model_name_or_path": tiny_models["sd2-depth"],
        "cond_image_path": str(SAMPLE),
        "num_steps": 6,
        "inject_steps": 4,
    }


def _render(azimuth, size=64):
    from hifi123.sample.make_sample import render_sample

    r = render_sample(0.0, azimuth, size=size)
    alpha = torch.from_numpy(r["alpha"]).float()[None, ..., None]
    rgb = torch.from_numpy(r["rgb"]).float()[None] * alpha + (1 - alpha)
    # NeRF-style weighted depth
    depth = torch.from_numpy(r["depth_z"]).float()[None, ..., None] * alpha
    return rgb, alpha, depth


def test_registered_and_reads_the_caption(threestudio_env, cfg):
    ts = threestudio_env.threestudio
    g = ts.find(NAME)(cfg)
    caption = (SAMPLE.parent / "sample_caption.txt").read_text().strip()
    assert g.core_config.prompt == " ".join(caption.split())  # prompt "" -> the caption file
    assert g.core is None  # nothing loaded at configure time


def test_random_and_fixed_calls_on_cpu_and_checkpoint_round_trip(threestudio_env, cfg):
    from hifi123.testing.counter import count_unet_evals

    ts = threestudio_env.threestudio
    g = ts.find(NAME)(cfg)
    rgb, alpha, depth = _render(60.0)
    x = rgb.clone().requires_grad_(True)
    out = g(
        x,
        None,
        elevation=torch.zeros(1),
        azimuth=torch.zeros(1),
        camera_distances=torch.ones(1),
        opacity=alpha,
        depth=depth,
        rgsd_t=2,
    )
    assert set(out) >= {"loss_rgsd", "rgsd_t", "rgsd_target_latent"}
    out["loss_rgsd"].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert g.device == rgb.device and g.core.reference_builds == 1
    # fixed views: targets once at refine start, then t = 0 calls cost no UNet evaluation
    cams = g.fixed_cameras(0.0, 0.0)
    assert cams == [(0.0, 90.0), (0.0, -90.0)]
    views = [_render(a) for _, a in cams]
    g.compute_fixed_targets(
        torch.cat([v[0] for v in views]),
        torch.cat([v[1] for v in views]),
        torch.cat([v[2] for v in views]),
    )
    unet = g.core.pipe.c.unet
    with count_unet_evals(unet) as n:
        fixed = g(views[1][0], opacity=views[1][1], depth=views[1][2], fixed_view_index=1)
    assert n.calls == 0 and fixed["loss_rgsd"].item() >= 0
    # the checkpoint round trip restores targets bit-exactly, before and after the model loads
    buf = io.BytesIO()
    torch.save({"hifi123_rgsd": g.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)["hifi123_rgsd"]
    g2 = ts.find(NAME)(cfg)
    g2.load_state_dict(state)
    assert g2.has_fixed_targets and g2.core is None
    again = g2(views[1][0], opacity=views[1][1], depth=views[1][2], fixed_view_index=1)
    assert torch.equal(again["loss_rgsd"], fixed["loss_rgsd"])
    assert g2.core.reference_builds == 1
    with pytest.raises(ValueError, match="other settings"):
        ts.find(NAME)({**cfg, "inject_steps": 3}).load_state_dict(state)


def test_loss_name_for_zero123_system(threestudio_env, cfg):
    g = threestudio_env.threestudio.find(NAME)({**cfg, "loss_name": "sds"})
    rgb, alpha, depth = _render(-30.0)
    out = g(rgb, opacity=alpha, depth=depth, rgsd_t=4)
    assert "loss_sds" in out and "loss_rgsd" not in out


def test_bad_config_fails_before_loading(threestudio_env, cfg):
    from hifi123.errors import InputError

    find = threestudio_env.threestudio.find
    with pytest.raises(InputError, match="cond_image_path"):
        find(NAME)({**cfg, "cond_image_path": "/no/such_rgba.png"})
    with pytest.raises(InputError, match=r"system\.guidance\.weighting"):
        find(NAME)({**cfg, "weighting": "other"})
