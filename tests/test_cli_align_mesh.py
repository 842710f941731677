"""`hifi123 align-mesh`: the sample's mesh in a y-up frame is put back where the reference camera
sees it; a different object is refused with the overlay to look at; bad input stops first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hifi123 import cli
from hifi123.core import mesh_align as MA
from hifi123.sample.mesh import sample_mesh

ASSETS = Path(__file__).resolve().parents[1] / "custom" / "hifi123" / "assets"
SAMPLE = str(ASSETS / "sample_rgba.png")


@pytest.fixture(scope="module")
def y_up_obj(tmp_path_factory):
    import trimesh

    v, f = sample_mesh()
    path = tmp_path_factory.mktemp("mesh") / "triposr_out.obj"
    moved = v @ MA.axis_rotation("+y", "-z") * 1.7 + [0.3, -2.0, 0.5]  # mesh frame: y up
    trimesh.Trimesh(moved, f, process=False).export(path)
    return str(path)


def test_align_mesh_writes_the_mesh_in_the_world_frame(y_up_obj, tmp_path, capsys):
    import trimesh

    out = tmp_path / "aligned"
    assert cli.main(["align-mesh", y_up_obj, "--ref", SAMPLE, "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "up +y, front -z" in log and "silhouette IoU 0.9" in log
    assert "sample_depth.png" in log  # the depth map next to the reference was used
    record = json.loads((out / MA.ALIGNMENT_JSON).read_text())
    assert (
        record["silhouette_iou"] >= 0.95
        and record["accepted"]
        and record["depth_correlation"] > 0.5
    )
    v, _ = sample_mesh()
    aligned = trimesh.load(out / MA.ALIGNED_MESH, process=False)
    assert np.abs(np.asarray(aligned.vertices) - v).mean() < 0.01
    # a second run never replaces the first silently
    assert cli.main(["align-mesh", y_up_obj, "--ref", SAMPLE, "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err


def test_a_different_object_is_refused_with_its_overlay(tmp_path, capsys):
    import trimesh

    torus = tmp_path / "torus.ply"
    trimesh.creation.torus(1.0, 0.3).export(torus)
    out = tmp_path / "out"
    assert (
        cli.main(["align-mesh", str(torus), "--ref", SAMPLE, "--out", str(out), "--no-depth"]) == 2
    )
    captured = capsys.readouterr()
    assert "does not match the object" in captured.err and str(torus) in captured.err
    assert "Traceback" not in captured.err and "alignment_overlay.png" in captured.out
    assert (out / MA.ALIGNMENT_OVERLAY).is_file() and not (out / MA.ALIGNED_MESH).exists()
    assert json.loads((out / MA.ALIGNMENT_JSON).read_text())["accepted"] is False
    # by hand it is taken (with a warning)
    args = [
        "align-mesh",
        str(torus),
        "--ref",
        SAMPLE,
        "--out",
        str(out),
        "--overwrite",
        "--pose",
        "up=+z,front=+x,yaw=0,elevation=0",
    ]
    assert cli.main(args) == 0
    assert "warning: the pose given by hand" in capsys.readouterr().out
    assert (out / MA.ALIGNED_MESH).is_file()


def test_bad_input_stops_before_any_work(y_up_obj, tmp_path, capsys, monkeypatch):
    from PIL import Image

    def no_fit(*a, **k):
        raise AssertionError("aligned despite bad input")

    monkeypatch.setattr(MA, "align_mesh", no_fit)
    empty = tmp_path / "empty_rgba.png"
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(empty)
    junk = tmp_path / "junk.obj"
    junk.write_text("this is not a mesh\n")
    ref_copy = tmp_path / "x_rgba.png"
    shutil.copy(SAMPLE, ref_copy)
    cases = [
        ([str(tmp_path / "missing.glb"), "--ref", SAMPLE], ["missing.glb", "not found"]),
        ([str(junk), "--ref", SAMPLE], ["junk.obj", "expected"]),
        ([y_up_obj, "--ref", str(empty)], ["empty_rgba.png", "empty mask"]),
        ([y_up_obj, "--ref", SAMPLE, "--pose", "up=+q"], ["--pose up=+q"]),
        (
            [y_up_obj, "--ref", str(ref_copy), "--depth", str(tmp_path / "nodepth.png")],
            ["nodepth.png"],
        ),
    ]
    for args, needles in cases:
        code = cli.main(["align-mesh", *args, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (args, err)
        for n in needles:
            assert n in err, (n, err)
