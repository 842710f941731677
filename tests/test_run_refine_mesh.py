"""`hifi123 run IMAGE --method refine-mesh --mesh MESH`: preprocess -> align -> refine -> export ->
glb -> video -> eval, planned, resumed and dry-run like the other methods (fake executor, fake
threestudio root; run_helpers)."""

from __future__ import annotations

import json
import os

from hifi123.run import plan as pl
from hifi123.run import runner as rn
from run_helpers import (
    ALIGNED_ELEVATION,
    PY,
    FakeExecutor,
    _cli,
    _printed_commands,
    make_done,
    make_opts,
    plan_now,
    runs,
    trial,
)

STAGES = ["preprocess", "align", "refine", "export", "glb", "video", "eval"]


def write_mesh(path):
    import trimesh

    os.makedirs(os.path.dirname(path), exist_ok=True)
    trimesh.creation.icosphere(2).export(path)
    return str(path)


def mesh_opts(tmp_path, **kw):
    mesh = kw.pop("mesh", None) or write_mesh(tmp_path / "meshes" / "triposr.obj")
    return make_opts(tmp_path, method="refine-mesh", mesh=mesh, **kw)


def test_plan_exact_argv(tmp_path):
    opts = mesh_opts(tmp_path)
    lay = pl.Layout.of(opts)
    st = plan_now(opts)
    assert list(st) == STAGES == list(pl.stage_names("refine-mesh")) and runs(st) == STAGES[:-2] + [
        "eval"
    ]
    aligned_dir = os.path.join(opts.out, "aligned", "cat")
    assert st["align"].argv == [
        PY,
        "-m",
        "hifi123.cli",
        "align-mesh",
        opts.mesh,
        "--ref",
        lay.rgba,
        "--out",
        aligned_dir,
        "--overwrite",
    ]
    assert not st["align"].needs_gpu and st["refine"].needs_gpu
    refine = st["refine"].argv
    assert refine[:4] == [PY, "launch.py", "--config", "custom/hifi123/configs/refine-mesh.yaml"]
    assert f"system.geometry.shape_init='mesh:{aligned_dir}/aligned_mesh.ply'" in refine
    assert not any("geometry_convert_from" in a for a in refine)
    # before the align stage ran the elevation is a placeholder the runner never executes
    (elev,) = [a for a in refine if a.startswith("data.default_elevation_deg=")]
    assert "alignment.json" in elev
    # after it ran, the fitted elevation is passed
    make_done(opts, "preprocess", "align")
    st = plan_now(opts, ran=["preprocess", "align"])
    assert f"data.default_elevation_deg={ALIGNED_ELEVATION}" in st["refine"].argv
    assert st["export"].trial == trial(opts, "refine")
    assert st["video"].skip.startswith("made by the refine run")
    low = plan_now(mesh_opts(tmp_path / "low", lowvram=True))
    assert low["refine"].argv[3] == "custom/hifi123/configs/refine-mesh-lowvram.yaml"
    posed = plan_now(mesh_opts(tmp_path / "pose", pose="up=+y,front=+z"))
    assert posed["align"].argv[-2:] == ["--pose", "up=+y,front=+z"]


def test_resume_and_a_changed_mesh_or_pose(tmp_path):
    opts = mesh_opts(tmp_path)
    make_done(opts, *STAGES)
    st = plan_now(opts)
    assert runs(st) == [] and st["align"].skip.startswith("done")
    # the same path, another mesh: align again, and refine from scratch after it
    write_mesh_text = open(opts.mesh).read().replace("v ", "v  ", 1)
    with open(opts.mesh, "w") as f:
        f.write(write_mesh_text)
    st = plan_now(opts)
    assert "not the mesh that was aligned" in st["align"].why
    assert runs(st) == ["align", "refine", "export", "glb", "eval"]
    assert st["refine"].move_aside == trial(opts, "refine")
    # another --pose: align again
    import dataclasses

    opts2 = dataclasses.replace(opts, pose="up=+z")
    make_done(opts, "align")
    assert "--pose changed" in plan_now(opts2)["align"].why
    # a crashed refine resumes from its checkpoint
    opts3 = mesh_opts(tmp_path / "crash")
    make_done(opts3, "preprocess", "align", crashed=["refine"])
    st = plan_now(opts3)
    assert runs(st)[0] == "refine" and st["refine"].resume.endswith("ckpts/last.ckpt")


def test_runner_fresh_then_nothing(tmp_path, gpu, capsys):
    opts = mesh_opts(tmp_path)
    fake = FakeExecutor(opts)
    rec = rn.run_image(opts, execute=fake, echo=False)
    assert [s.name for s in fake.calls] == "preprocess align refine export glb eval".split()
    refine = fake.calls[2]
    # re-planned after align
    assert f"data.default_elevation_deg={ALIGNED_ELEVATION}" in refine.argv
    marker = json.load(open(os.path.join(trial(opts, "refine"), pl.MARKER)))
    assert marker["identity"]["alignment"]
    assert rec["status"] == "done" and all(rec["outputs"][k] for k in rec["outputs"]), rec[
        "outputs"
    ]
    assert "aligned_mesh.ply" in capsys.readouterr().out
    again = FakeExecutor(opts)
    rn.run_image(opts, execute=again, echo=False)
    assert again.calls == []


def test_cli_refuses_bad_mesh_options_before_any_stage(tmp_path):
    opts = mesh_opts(tmp_path)
    base = [opts.image, "--out", opts.out, "--threestudio-root", opts.threestudio_root, "--dry-run"]
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"no mesh here")
    cases = [
        (["--method", "refine-mesh"], "needs --mesh"),
        (["--mesh", opts.mesh], "--mesh is for --method refine-mesh"),
        (["--method", "refine-mesh", "--mesh", str(tmp_path / "gone.obj")], "gone.obj"),
        (["--method", "refine-mesh", "--mesh", str(junk)], "junk.glb"),
        (
            ["--method", "refine-mesh", "--mesh", opts.mesh, "--pose", "up=sideways"],
            "--pose up=sideways",
        ),
        (
            ["--method", "refine-mesh", "--mesh", opts.mesh, "--set", "coarse:trainer.max_steps=2"],
            "no coarse stage",
        ),
    ]
    for extra, needle in cases:
        code, out, err = _cli(base + extra)
        assert code == 2 and needle in err and "Traceback" not in err, (extra, err)
        assert "[1/" not in out  # nothing planned
    code, out, err = _cli(base + ["--method", "refine-mesh", "--mesh", opts.mesh])
    assert code == 0, err
    cmds = [c for _, _, c in _printed_commands(out)]
    assert [c[3] for c in cmds[:2]] == ["preprocess", "align-mesh"]
    assert any("refine-mesh.yaml" in " ".join(c) for c in cmds)
    assert not os.path.exists(opts.out)  # a dry run writes nothing
