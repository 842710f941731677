"""`hifi123-rgnv-guidance` inside a real threestudio (GPU-only modules stubbed), on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

NAME = "hifi123-rgnv-guidance"
SAMPLE = Path(__file__).resolve().parents[1] / "custom" / "hifi123" / "assets" / "sample_rgba.png"

pytestmark = pytest.mark.threestudio


def _cfg(**kw):
    from hifi123.models.tiny import ensure_tiny_models

    cfg = {
        "pretrained_model_name_or_path": ensure_tiny_models()["sd2-depth"],
        "cond_image_path": str(SAMPLE),
        "num_steps": 6,
        "inject_steps": 4,
        "prompt": "a toy",
    }
    cfg.update(kw)
    return cfg


def _render(size=64):
    from hifi123.sample.make_sample import render_sample

    r = render_sample(10.0, 75.0, size=size)
    alpha = torch.from_numpy(r["alpha"]).float()[None, ..., None]
    rgb = torch.from_numpy(r["rgb"]).float()[None] * alpha + (1 - alpha)  # white background
    depth = torch.from_numpy(r["depth_z"]).float()[None, ..., None] * alpha
    return rgb, alpha, depth


def test_registered_by_the_launch_style_load(threestudio_env):
    import hifi123

    ts = threestudio_env.threestudio
    assert threestudio_env.ok, threestudio_env.output
    assert NAME in ts.__modules__ and NAME in hifi123.REGISTERED_NAMES
    from hifi123.threestudio_ext.guidance.rgnv import RGNVGuidance

    assert ts.find(NAME) is RGNVGuidance
    # a BaseObject: SD weights stay out of ckpts
    assert not issubclass(RGNVGuidance, torch.nn.Module)


def test_errors_name_the_threestudio_field_before_loading_a_model(threestudio_env, tmp_path):
    from hifi123.errors import InputError

    find = threestudio_env.threestudio.find
    with pytest.raises(InputError, match="cond_image_path"):
        find(NAME)(_cfg(cond_image_path=""))
    with pytest.raises(InputError, match="cond_depth_path: file not found"):
        find(NAME)(_cfg(cond_depth_path=str(tmp_path / "missing.png")))
    with pytest.raises(InputError, match=r"system\.guidance\.loss_type"):
        find(NAME)(_cfg(loss_type="huber"))
    with pytest.raises(
        InputError, match=r"system\.guidance\.not_a_field"
    ):  # before threestudio's TypeError
        find(NAME)(_cfg(not_a_field=1))


def test_one_call_on_cpu_reaches_rgb(threestudio_env):
    guidance = threestudio_env.threestudio.find(NAME)(_cfg())
    assert guidance.loss_fn is None  # nothing loaded by configure
    rgb, opacity, depth = _render()
    rgb.requires_grad_(True)
    batch = {  # what a system passes with **batch (random-camera keys), all ignored
        "elevation": torch.tensor([10.0]),
        "azimuth": torch.tensor([75.0]),
        "camera_distances": torch.tensor([3.8]),
        "height": 64,
        "width": 64,
    }
    prompt_utils = object()  # text-guidance style positional argument, ignored
    out = guidance(
        rgb,
        prompt_utils,
        **batch,
        rgb_as_latents=False,
        guidance_eval=True,
        opacity=opacity,
        depth=depth,
    )
    loss = out["loss_rgnv"]
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    assert out["rgnv_target"].shape == rgb.shape and not out["rgnv_target"].requires_grad
    # from the input, never threestudio's get_device()
    assert guidance.device == torch.device("cpu")
    assert guidance.loss_fn.device == torch.device("cpu")
    ev = out["eval"]
    assert ev["bs"] == 1 and len(ev["texts"]) == 1
    for key in ("imgs_noisy", "imgs_1step", "imgs_1orig", "imgs_final"):
        assert ev[key].shape == rgb.shape, key
    loss.backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    # scalar logs only, besides the target image (systems log every non-image value)
    assert all(
        v.numel() == 1 for k, v in out.items() if k.startswith("rgnv_") and k != "rgnv_target"
    )

    with pytest.raises(ValueError, match="rgb_as_latents"):
        guidance(rgb, rgb_as_latents=True)
