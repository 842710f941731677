"""`hifi123 eval`: end-to-end reports from synthetic inputs, bad inputs, model references."""

import argparse
import json
import os

import numpy as np
import pytest
from hifi123.errors import Hifi123Error, InputError
from hifi123.sample.make_sample import render_sample
from PIL import Image

N_TEST_VIEWS = 16
SIZE = 64


def run_cli(argv):
    """The `hifi123` entry point when `eval` is wired into it, else a parser with our add_parser
    and the same error handling as hifi123.cli.main (exit code 2 with the rendered message)."""
    import sys

    from hifi123 import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "eval" in sub.choices:
        return cli.main(argv)
    from hifi123.evaluation.cli import add_parser

    p = argparse.ArgumentParser(prog="hifi123")
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Hifi123Error as err:
        print(f"hifi123: error: {err.render()}", file=sys.stderr)
        return 2


def _single_view(ref, views, *extra):
    return ["eval", "single-view", "--ref", ref, "--views", views, *extra]


def _u8(x):
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _render_white(az, elev=0.0, size=SIZE):
    r = render_sample(elev, az, size=size)
    return np.where(r["alpha"][..., None], r["rgb"], 1.0), r["alpha"]


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """A threestudio-like trial: save/it600-test/<i>.png frames [rgb | opacity] at the test
    cameras linspace(0, 360, 16), configs/parsed.yaml, and the reference RGBA."""
    root = tmp_path_factory.mktemp("eval")
    t = root / "outputs" / "hifi123-coarse" / "sample@20240101-000000"
    d = t / "save" / "it600-test"
    d.mkdir(parents=True)
    (t / "configs").mkdir()
    (t / "configs" / "parsed.yaml").write_text(
        "data:\n  default_elevation_deg: 0.0\n  default_azimuth_deg: 0.0\n"
        "  default_camera_distance: 3.8\n"
        "  default_fovy_deg: 20.0\n  random_camera:\n    eval_elevation_deg: 0.0\n"
        "    eval_camera_distance: 3.8\n"
        "    eval_fovy_deg: 20.0\n    n_test_views: 16\n"
    )
    frames = []
    for i in range(N_TEST_VIEWS):
        rgb, alpha = _render_white(360.0 * i / (N_TEST_VIEWS - 1))
        opacity = np.repeat(alpha[..., None].astype(np.float32), 3, -1)
        grid = np.concatenate([rgb, opacity], axis=1)
        Image.fromarray(_u8(grid)).save(d / f"{i}.png")
        frames.append(grid)
    r = render_sample(0.0, 0.0, size=2 * SIZE)
    rgba = np.concatenate([r["rgb"], r["alpha"][..., None]], -1)
    ref = root / "ref_rgba.png"
    Image.fromarray(_u8(rgba)).save(ref)
    return {"root": root, "trial": t, "frames": frames, "ref": ref}


def test_single_view_report_end_to_end(trial, tmp_path, capsys):
    out = tmp_path / "rep" / "report.json"
    code = run_cli(
        _single_view(str(trial["ref"]), str(trial["trial"]), "--tiny", "--out", str(out))
    )
    assert code == 0
    rep = json.loads(out.read_text())
    md = (tmp_path / "rep" / "report.md").read_text()
    assert set(rep["metrics"]) == {"lpips_ref", "contextual", "clip"}
    s = rep["settings"]
    for key in (
        "lpips",
        "clip",
        "contextual",
        "reference_view",
        "views",
        "background",
        "arguments",
        "versions",
    ):
        assert key in s, key
    assert s["lpips"]["net"] == "alex" and s["lpips"]["size"] == 256
    assert s["contextual"]["layer"].startswith("relu5_4") and s["contextual"]["band_width"] == 0.5
    assert s["contextual"]["size"] == 256 and s["clip"]["backend"] == "open_clip"
    v = s["views"]
    assert (
        v["kind"] == "threestudio-png"
        and v["count"] == 16
        and v["panels_per_frame"] == 2
        and v["opacity_masked"]
    )
    assert v["threestudio_camera"]["default_azimuth_deg"] == 0.0
    # frame 0 is the reference view; frame 15 (azimuth 360) repeats it and is not a novel view
    assert s["reference_view"]["index"] == 0 and v["novel_count"] == 14
    assert [p["index"] for p in rep["per_view"]] == list(range(1, 15))
    assert rep["protocol_matches"] is False and "papers" not in rep
    assert any("tiny" in d for d in rep["protocol_differences"])
    # the reference-view render is the reference itself (other resolution): tiny but nonzero
    assert 0 <= rep["metrics"]["lpips_ref"] < 0.05
    assert all(p["contextual"] > 0 for p in rep["per_view"]) and all(
        p["clip"] <= 1 + 1e-6 for p in rep["per_view"]
    )
    assert "| **this run** |" in md and "## Settings" in md and "contextual.band_width" in md
    assert "## Per view" in md
    assert "Papers' numbers not shown" in capsys.readouterr().out


def test_single_view_metrics_respond_to_the_views(trial, tmp_path):
    """Replacing the novel views by copies of the reference view makes CLIP 1 and CX minimal."""
    from hifi123.evaluation.protocols import SingleViewSettings, run_single_view

    d = tmp_path / "same"
    d.mkdir()
    ref_frame = trial["frames"][0]
    for i in range(4):
        Image.fromarray(_u8(ref_frame)).save(d / f"{i}.png")
    # the reference is the same frame as RGBA (opacity panel as alpha)
    rgba = np.concatenate([ref_frame[:, :SIZE], ref_frame[:, SIZE:, :1]], -1)
    Image.fromarray(_u8(rgba)).save(tmp_path / "ref.png")
    small = dict(tiny=True, lpips_size=64, cx_size=64)
    rep = run_single_view(SingleViewSettings(ref=str(tmp_path / "ref.png"), views=str(d), **small))
    assert rep["settings"]["reference_view"]["rule"].startswith("first view")
    assert abs(rep["metrics"]["clip"] - 1) < 1e-5
    assert rep["metrics"]["contextual"] < 0.05 and rep["metrics"]["lpips_ref"] < 1e-6
    rep2 = run_single_view(
        SingleViewSettings(ref=str(tmp_path / "ref.png"), views=str(trial["trial"]), **small)
    )
    assert rep2["metrics"]["contextual"] > rep["metrics"]["contextual"] + 0.1
    assert rep2["metrics"]["clip"] < rep["metrics"]["clip"]


def test_single_view_reads_the_test_video(trial, tmp_path):
    cv2 = pytest.importorskip("cv2")
    save = tmp_path / "trial" / "save"
    save.mkdir(parents=True)
    h, w = trial["frames"][0].shape[:2]
    vw = cv2.VideoWriter(str(save / "it600-test.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
    for fr in trial["frames"]:
        vw.write(np.ascontiguousarray(_u8(fr)[..., ::-1]))
    vw.release()
    from hifi123.evaluation.views import load_view_set, select_reference

    try:
        vs = load_view_set(str(tmp_path / "trial"))
    except Hifi123Error as err:
        pytest.skip(f"no mp4 decoder here: {err}")
    assert vs.kind == "threestudio-video" and vs.lossy and len(vs.frames) == 16 and vs.panels == 2
    idx, novel, _ = select_reference(vs, None, None)
    assert idx == 0 and len(novel) == 14
    err = np.abs(vs.frames[3].rgb - trial["frames"][3][:, :SIZE]).mean()
    assert err < 0.05  # lossy, but the same frame


def test_reference_view_selection_follows_the_trial_config(trial, tmp_path):
    from hifi123.evaluation.views import load_view_set, select_reference

    vs = load_view_set(str(trial["trial"]))
    idx, novel, _ = select_reference(vs, None, 120.0)
    # 120 deg = frame 5 of 16
    assert idx == 5 and 5 not in novel and 0 in novel and len(novel) == 15
    idx, novel, _ = select_reference(vs, "3.png", None)
    assert idx == 3 and len(novel) == 15
    idx, _, _ = select_reference(vs, os.path.join(vs.source, "4.png"), None)
    assert idx == 4
    with pytest.raises(Hifi123Error, match="out of range"):
        select_reference(vs, "99", None)
    outside = tmp_path / "refview.png"
    Image.fromarray(_u8(trial["frames"][0][:, :SIZE])).save(outside)
    idx, novel, rule = select_reference(vs, str(outside), None)
    assert idx == 16 and novel == list(range(1, 15)) and "outside" in rule
    assert np.allclose(vs.frames[16].rgb, vs.frames[0].rgb, atol=1 / 255)


def _gso_dirs(root, n=4, size=SIZE, noise=0.0):
    pred, gt = root / "pred", root / "gt"
    pred.mkdir()
    gt.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        r = render_sample(30.0, 360.0 * i / n, size=size)
        rgba = np.concatenate([r["rgb"], r["alpha"][..., None]], -1)
        Image.fromarray(_u8(rgba)).save(gt / f"{i:03d}.png")
        rgb = np.where(r["alpha"][..., None], r["rgb"], 1.0) + noise * rng.standard_normal(
            (size, size, 3)
        )
        Image.fromarray(_u8(rgb)).save(pred / f"{i:03d}.png")
    return pred, gt


def _save_box(path, extents=(1, 1, 1), offset=(0, 0, 0)):
    import trimesh

    m = trimesh.creation.box(extents=extents)
    m.apply_translation(offset)
    m.export(path)
    return path


def test_gso_report_end_to_end(tmp_path):
    pred, gt = _gso_dirs(tmp_path, n=3, size=48, noise=0.02)
    pm = _save_box(tmp_path / "pred.obj", offset=(0.25, 0, 0))
    gm = _save_box(tmp_path / "gt.ply")
    out = tmp_path / "gso.json"
    code = run_cli(
        [
            "eval",
            "gso",
            "--pred",
            str(pred),
            "--gt",
            str(gt),
            "--pred-mesh",
            str(pm),
            "--gt-mesh",
            str(gm),
            "--size",
            "48",
            "--depth-size",
            "64",
            "--mesh-normalize",
            "none",
            "--tiny",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rep = json.loads(out.read_text())
    m = rep["metrics"]
    assert set(m) == {"psnr", "ssim", "lpips", "chamfer", "volume_iou"}
    assert 28 < m["psnr"] < 40 and 0 < m["ssim"] < 1 and m["lpips"] > 0
    assert abs(m["volume_iou"] - 0.6) < 0.01 and m["chamfer"] > 0.05
    g = rep["settings"]["geometry"]
    assert g["chamfer_points"] == "depth" and g["voxel_size"] == 0.01 and g["iou_resolution"] == 64
    assert g["chamfer"]["views"] == 16 and g["chamfer"]["elevation_deg"] == 30.0
    assert rep["settings"]["lpips"]["net"] == "vgg" and len(rep["per_view"]) == 3
    assert not rep["protocol_matches"] and any("3 views" in d for d in rep["protocol_differences"])
    assert (tmp_path / "gso.md").read_text().count("| **this run** |") == 1


def test_gso_identical_inputs(tmp_path):
    from hifi123.evaluation.protocols import GSOSettings, run_gso

    pred, gt = _gso_dirs(tmp_path, n=2)
    for p in gt.iterdir():  # pred := gt exactly (RGBA on white == the white RGB)
        Image.open(p).save(pred / p.name)
    gm = _save_box(tmp_path / "gt.obj", extents=(0.5, 1.0, 0.8))
    rep = run_gso(
        GSOSettings(
            pred=str(pred),
            gt=str(gt),
            pred_mesh=str(gm),
            gt_mesh=str(gm),
            size=32,
            depth_size=64,
            tiny=True,
        )
    )
    m = rep["metrics"]
    assert m["psnr"] == float("inf") and abs(m["ssim"] - 1) < 1e-6 and m["lpips"] < 1e-7
    assert m["chamfer"] == 0.0 and m["volume_iou"] == 1.0
    from hifi123.evaluation.report import write_report

    j, _ = write_report(rep, str(tmp_path / "r.json"))
    assert json.loads(open(j).read())["metrics"]["psnr"] == "inf"  # strict JSON


def test_papers_numbers_appear_when_the_protocol_matches():
    from hifi123.evaluation.report import attach_papers, to_markdown

    rep = {
        "protocol": "gso",
        "metrics": {"psnr": 20.0, "ssim": 0.8, "lpips": 0.15, "chamfer": 0.03, "volume_iou": 0.5},
        "settings": {"a": 1},
        "per_view": [],
        "protocol_matches": True,
        "protocol_differences": [],
        "notes": [],
    }
    md = to_markdown(attach_papers(rep))
    assert "HiFi-123 Tab. 2, GSO: Magic123 | 19.33 | 0.801 | 0.156 | 0.0520 | 0.453 |" in md
    assert "HiFi-123 Tab. 2, GSO: HiFi-123 | lost | lost | lost | 0.0250 | 0.577 |" in md
    rep = {
        "protocol": "single-view",
        "metrics": {"lpips_ref": 0.1, "contextual": 1.5, "clip": 0.9},
        "settings": {},
        "protocol_matches": True,
        "protocol_differences": [],
        "notes": [],
    }
    md = to_markdown(attach_papers(rep))
    assert "HiFi-123 Tab. 2, 400 images: HiFi-123 | 0.0810 | 1.627 | 0.9160 |" in md
    assert "Make-It-3D Tab. 2, 400 images: Make-It-3D enhanced | 0.0780 | 1.330 | 0.9512 |" in md
    rep["protocol_matches"] = False
    assert "papers" not in attach_papers(rep)


# ------------------------------------------------------------------------------------ bad inputs


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load (or tiny-model write) fails the test: errors must come first."""
    from hifi123.evaluation import models

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the input error")

    for name in (
        "load_clip_embedder",
        "load_vgg19_features",
        "load_lpips",
        "ensure_tiny_eval_models",
    ):
        monkeypatch.setattr(models, name, boom)


def _expect_error(capsys, argv, *needles):
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "expected:" in err and "fix:" in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_single_view_bad_inputs(trial, tmp_path, capsys, no_model_loads):
    ref = str(trial["ref"])
    _expect_error(
        capsys,
        _single_view(ref, str(tmp_path / "nope"), "--tiny"),
        "does not exist",
        "--views",
    )
    (tmp_path / "empty").mkdir()
    _expect_error(
        capsys,
        _single_view(ref, str(tmp_path / "empty"), "--tiny"),
        "no test renders and no images",
        "launch.py",
    )
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "rgb.png")
    _expect_error(
        capsys,
        _single_view(str(tmp_path / "rgb.png"), str(trial["trial"]), "--tiny"),
        "no alpha channel",
        "hifi123 preprocess",
    )
    _expect_error(
        capsys,
        _single_view(ref, str(trial["trial"]), "--ref-view", "40", "--tiny"),
        "--ref-view 40",
    )
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(odd / "0.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(odd / "1.png")
    _expect_error(
        capsys,
        _single_view(ref, str(odd), "--tiny"),
        "1.png is 32x32",
    )


def test_gso_bad_inputs(tmp_path, capsys, no_model_loads):
    pred, gt = _gso_dirs(tmp_path, n=2)
    base = ["eval", "gso", "--tiny"]
    _expect_error(
        capsys,
        base + ["--pred", str(tmp_path / "nope"), "--gt", str(gt)],
        "--pred",
        "is not a directory",
    )
    (tmp_path / "empty").mkdir()
    _expect_error(
        capsys,
        base + ["--pred", str(pred), "--gt", str(tmp_path / "empty")],
        "--gt",
        "holds no images",
    )
    small = tmp_path / "small"
    small.mkdir()
    for p in sorted(gt.iterdir()):
        Image.open(p).resize((32, 32)).save(small / p.name)
    _expect_error(
        capsys,
        base + ["--pred", str(pred), "--gt", str(small)],
        "size mismatch",
        "000.png is 64x64",
        "is 32x32",
    )
    one = tmp_path / "one"
    one.mkdir()
    Image.open(next(gt.iterdir())).save(one / "000.png")
    _expect_error(capsys, base + ["--pred", str(pred), "--gt", str(one)], "has 2 views but --gt")
    gm = _save_box(tmp_path / "gt.obj")
    views = base + ["--pred", str(pred), "--gt", str(gt)]
    missing = str(tmp_path / "missing.obj")
    _expect_error(
        capsys,
        views + ["--pred-mesh", missing, "--gt-mesh", str(gm)],
        "--pred-mesh",
        "does not exist",
    )
    _expect_error(capsys, views + ["--pred-mesh", str(gm)], "--gt-mesh is missing")
    (tmp_path / "bad.ply").write_text("not a mesh")
    _expect_error(
        capsys,
        views + ["--pred-mesh", str(tmp_path / "bad.ply"), "--gt-mesh", str(gm)],
        "--pred-mesh",
    )


def test_missing_metric_models_fail_before_loading(
    trial, tmp_path, capsys, monkeypatch, no_model_loads
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch hub cache
    from hifi123.models import loader

    # nothing is in the hub cache
    monkeypatch.setattr(loader, "hub_file_cached", lambda *a, **k: False)
    args = ["eval", "single-view", "--ref", str(trial["ref"]), "--views", str(trial["trial"])]
    _expect_error(capsys, args, "--clip-model", "open_clip:ViT-B-16-quickgelu/openai", "--tiny")
    _expect_error(
        capsys,
        args + ["--clip-model", str(tmp_path / "no-such-dir")],
        "--clip-model",
        "no-such-dir",
    )
    err = _expect_error(
        capsys, args + ["--clip-model", "openai/clip-vit-base-patch16"], "--clip-model"
    )
    assert "huggingface-cli download openai/clip-vit-base-patch16" in err
    from hifi123.evaluation.models import preflight_lpips, preflight_vgg19

    with pytest.raises(Hifi123Error, match="vgg19-dcbb9e9d.pth"):
        preflight_vgg19("torchvision", "--vgg-model")
    with pytest.raises(Hifi123Error, match="timm/vgg19.tv_in1k"):
        preflight_vgg19("timm/vgg19.tv_in1k", "--vgg-model")
    with pytest.raises(Hifi123Error, match="alexnet-owt-7be5be79.pth"):
        preflight_lpips("torchvision", "alex", "--lpips-model")
    pred, gt = _gso_dirs(tmp_path, n=2)
    _expect_error(
        capsys,
        ["eval", "gso", "--pred", str(pred), "--gt", str(gt)],
        "--lpips-model",
        "vgg16-397923af.pth",
    )


def test_out_must_be_a_file(trial, tmp_path, capsys, no_model_loads):
    _expect_error(
        capsys,
        _single_view(str(trial["ref"]), str(trial["trial"]), "--out", str(tmp_path), "--tiny"),
        "is a directory",
    )


def test_frame_panels_and_opacity_masking():
    from hifi123.evaluation.views import split_panels, to_white_rgb

    rgb = np.full((8, 8, 3), 0.2, np.float32)
    opacity = np.zeros((8, 8, 3), np.float32)
    opacity[2:6, 2:6] = 1.0
    normal = np.zeros((8, 8, 3), np.float32)
    normal[..., 2] = 1.0
    frame = np.concatenate([rgb, normal, opacity], axis=1)
    assert len(split_panels(frame)) == 3 and len(split_panels(rgb)) == 1
    out, n, used = to_white_rgb(frame, True)
    assert n == 3 and used and out.shape == (8, 8, 3)
    assert np.all(out[3, 3] == 0.2) and np.all(out[0, 0] == 1.0)
    out, _, used = to_white_rgb(frame, False)
    assert not used and np.all(out == 0.2)
    rgba = np.concatenate([rgb, opacity[..., :1] * 0.5], -1)  # straight alpha 0.5 inside
    out, n, _ = to_white_rgb(rgba, True)
    assert n == 1 and np.allclose(out[3, 3], 0.6) and np.allclose(out[0, 0], 1.0)


# ------------------------------------------------------------------ the protocols as data
def test_protocol_files_drive_the_defaults_the_differences_and_the_papers(monkeypatch, tmp_path):
    import dataclasses

    import yaml
    from hifi123.evaluation import defaults, protocols, report

    sv = yaml.safe_load((defaults.PROTOCOL_DIR / "single-view.yaml").read_text())
    settings = protocols.SingleViewSettings(ref="r.png", views="v")
    assert {k: getattr(settings, k) for k in sv["settings"]} == sv["settings"]
    assert protocols._single_view_differences(settings, sv["models"]) == []
    for key, value in sv["settings"].items():  # every protocol setting is compared, by name
        changed = dataclasses.replace(
            settings, **{key: "other" if isinstance(value, str) else value * 2}
        )
        assert any(
            d.startswith(f"{key}=")
            for d in protocols._single_view_differences(changed, sv["models"])
        ), key
    rows = report.attach_papers({"protocol": "single-view", "protocol_matches": True})["papers"]
    assert rows == sv["reported"] and rows[3]["method"] == "HiFi-123"
    assert "papers" not in report.attach_papers({"protocol": "gso", "protocol_matches": False})
    # a missing protocol file is named, with the fix
    monkeypatch.setattr(defaults, "PROTOCOL_DIR", tmp_path)
    defaults.protocol.cache_clear()
    try:
        with pytest.raises(InputError, match="gso.yaml not found"):
            defaults.protocol("gso")
    finally:
        monkeypatch.undo()
        defaults.protocol.cache_clear()
