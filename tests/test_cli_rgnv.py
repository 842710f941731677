"""`hifi123 rgnv` and `hifi123 tiny-models` as a user runs them."""

import os

import numpy as np
import pytest
from hifi123 import cli
from hifi123.models import loader
from PIL import Image

SAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "custom", "hifi123", "assets", "sample_rgba.png"
)


@pytest.fixture
def no_model_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(loader, "load_diffusion", boom)


def _run(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _rgnv_argv(ref, coarse, out, *extra):
    """`hifi123 rgnv` arguments; `args[4]` is the coarse view."""
    return ["rgnv", "--ref", ref, "--coarse", coarse, "--out", out, *extra]


def _png(path, arr, mode=None):
    Image.fromarray(arr, mode=mode).save(path)
    return str(path)


@pytest.mark.parametrize(
    "case",
    [
        "rgb",
        "empty",
        "unreadable",
        "missing",
        "nonsquare",
        "depth_size",
        "depth_count",
        "model_dir",
    ],
)
def test_bad_inputs_fail_early_with_clear_errors(case, tmp_path, capsys, no_model_loading):
    good = SAMPLE
    args = _rgnv_argv(good, good, str(tmp_path / "out"))
    expect = {
        "rgb": ("no alpha channel", "hifi123 preprocess"),
        "empty": ("empty mask", "hifi123 preprocess"),
        "unreadable": ("not a readable image", "PNG"),
        "missing": ("not found", "bad.png"),
        "nonsquare": ("not square", "hifi123 preprocess"),
        "depth_size": ("depth map", "but its image is 512x512"),
        "depth_count": ("--depth maps", "one --depth per --coarse"),
        "model_dir": ("no directory at", "--model"),
    }[case]
    if case == "rgb":
        args[4] = _png(tmp_path / "rgb.png", np.full((64, 64, 3), 200, np.uint8))
    elif case == "empty":
        args[4] = _png(tmp_path / "empty.png", np.zeros((64, 64, 4), np.uint8))
    elif case == "unreadable":
        p = tmp_path / "bad.png"
        p.write_text("not an image")
        args[4] = str(p)
    elif case == "missing":
        args[4] = str(tmp_path / "bad.png")
    elif case == "nonsquare":
        a = np.zeros((64, 96, 4), np.uint8)
        a[20:40, 30:60] = 255
        args[4] = _png(tmp_path / "wide.png", a)
    elif case == "depth_size":
        args += ["--depth", _png(tmp_path / "d.png", np.zeros((64, 64), np.uint8))]
    elif case == "depth_count":
        d = _png(tmp_path / "d.png", np.zeros((512, 512), np.uint8))
        args += ["--depth", d, d]
    elif case == "model_dir":
        args += ["--model", str(tmp_path / "no-such-model")]
    code, err = _run(capsys, *args)
    assert code == 2
    for needle in expect:
        assert needle in err, err
    assert "Traceback" not in err


def test_rgnv_command_end_to_end_on_the_tiny_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from hifi123.sample.make_sample import render_sample

    r = render_sample(5.0, 120.0, size=128)
    rgba = np.concatenate([r["rgb"], r["alpha"][..., None]], -1)
    coarse = _png(tmp_path / "view_rgba.png", (rgba * 255).round().astype(np.uint8))
    out = tmp_path / "out"
    code = cli.main(
        _rgnv_argv(
            SAMPLE,
            coarse,
            str(out),
            *"--tiny --steps 6 --inject-steps 4 --quiet --prompt".split(),
            "a toy",
        )
    )
    assert code == 0, capsys.readouterr().err
    enhanced = np.asarray(Image.open(out / "view_enhanced.png"))
    sheet = Image.open(out / "comparison.png")
    assert enhanced.shape == (64, 64, 3)  # the tiny model's native size
    assert sheet.size[0] > 3 * 64 and sheet.size[1] > 64  # reference | coarse | enhanced
    mask = (
        np.asarray(
            Image.fromarray((r["alpha"] * 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
        )
        > 127
    )
    assert (enhanced[~mask] == 255).all()  # composited on white outside the coarse view's mask
    assert enhanced[mask].std() > 0


def test_tiny_models_command_writes_loadable_models(tmp_path, capsys):
    code = cli.main(["tiny-models", "--out", str(tmp_path / "tiny")])
    assert code == 0
    assert "sd2-depth" in capsys.readouterr().out
    comps = loader.load_diffusion(
        str(tmp_path / "tiny" / "sd2-depth"), "--model", with_depth_estimator=True
    )
    assert comps.is_depth_model and comps.depth_estimator is not None
    # the folder is marked as ours: a second run may write there again
    assert os.path.isfile(tmp_path / "tiny" / ".hifi123-tiny-models")
    assert cli.main(["tiny-models", "--out", str(tmp_path / "tiny")]) == 0


def test_rgnv_x4_upscale_on_the_tiny_upscaler(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out"
    coarse = os.path.join(os.path.dirname(SAMPLE), "sample_coarse_az090_rgba.png")
    code = cli.main(
        _rgnv_argv(
            SAMPLE,
            coarse,
            str(out),
            *"--tiny --steps 4 --inject-steps 2 --quiet --upscale --upscale-steps 2".split(),
        )
    )
    assert code == 0, capsys.readouterr().err
    up = np.asarray(Image.open(out / "sample_coarse_az090_upsample.png"))
    base = np.asarray(Image.open(out / "sample_coarse_az090_enhanced.png"))
    assert up.shape == (2 * base.shape[0], 2 * base.shape[1], 3)  # half-size input, x4 upscaler
    # the enhanced view's white background (outside the coarse mask)
    outside = (base == 255).all(-1)
    # nearest-upsampled, as the pipeline does
    outside_up = np.repeat(np.repeat(outside, 2, 0), 2, 1)
    assert (up[outside_up] == 255).all() and up[~outside_up].std() > 0


def test_missing_upscaler_fails_before_any_model_loads(tmp_path, capsys, no_model_loading):
    code, err = _run(
        capsys,
        *_rgnv_argv(SAMPLE, SAMPLE, str(tmp_path / "o")),
        "--upscale",
        "--upscaler-model",
        str(tmp_path / "nope"),
        "--model",
        str(tmp_path),
    )
    assert code == 2 and ("--upscaler-model" in err or "--model" in err)


@pytest.mark.parametrize("with_caption", [True, False])
def test_default_prompt_is_the_caption_else_a_view_prompt(
    tmp_path, capsys, monkeypatch, with_caption
):
    """CFG acts only with a target prompt: without --prompt, the caption next to --ref (what
    `hifi123 preprocess` writes), else a generic view prompt; never the empty prompt."""
    import shutil

    from hifi123.core.hifi123 import rgnv

    ref = tmp_path / "obj_rgba.png"
    shutil.copy(SAMPLE, ref)
    if with_caption:
        (tmp_path / "obj_caption.txt").write_text("  a red   toy \n")
    seen = {}

    class Stop(Exception):
        pass

    def capture(components, config=None, *a, **k):
        seen["prompt"] = config.prompt
        raise Stop

    monkeypatch.setattr(rgnv, "RGNVPipeline", capture)
    monkeypatch.setattr(loader, "load_diffusion", lambda *a, **k: object())
    monkeypatch.setattr(loader, "preflight", lambda ref, *a, **k: ref)
    with pytest.raises(Stop):
        cli.main(_rgnv_argv(str(ref), SAMPLE, str(tmp_path / "out"), "--model", "x"))
    assert seen["prompt"] == ("a red toy" if with_caption else "side view")
    assert seen["prompt"] in capsys.readouterr().out
