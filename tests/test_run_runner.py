"""`hifi123 run`: the runner (fake stage executor; one real subprocess), the dry run and
the command line, and the user errors. No GPU, no threestudio: a fake threestudio root holds a
launch.py stub and our config names, and torch.cuda.is_available is monkeypatched (run_helpers)."""

from __future__ import annotations

import json
import os

import pytest
from hifi123.errors import Hifi123Error, InputError
from hifi123.run import plan as pl
from hifi123.run import runner as rn
from run_helpers import (
    PY,
    SAMPLE,
    FakeExecutor,
    _cli,
    _printed_commands,
    fake_threestudio,
    make_done,
    make_opts,
    train_argv,
    trial,
    write_manifest,
    write_textured_box,
)

# ----------------------------------------------------------------------------------- runner


def test_runner_fresh_then_nothing_then_outputs(tmp_path, gpu, capsys):
    opts = make_opts(tmp_path, method="makeit3d")
    fake = FakeExecutor(opts)
    rec = rn.run_image(opts, execute=fake, echo=False)
    assert [s.name for s in fake.calls] == "preprocess coarse refine export glb ply eval".split()
    for st in ("coarse", "refine"):
        marker = json.load(open(os.path.join(trial(opts, st), pl.MARKER)))
        assert marker["stage"] == st and marker["argv"][1] == "launch.py"
    assert rec["status"] == "done" and rec["metrics"]["clip"] == pytest.approx(0.91)
    assert rec["stages"]["video"]["status"] == "done"  # made by the refine run
    assert all(rec["outputs"][k] for k in rec["outputs"]), rec["outputs"]
    assert json.load(open(pl.Layout.of(opts).record))["status"] == "done"
    out = capsys.readouterr().out
    assert "point cloud (PLY)" in out and "pointcloud.ply" in out and "model.glb" in out
    fake2 = FakeExecutor(opts)
    rn.run_image(opts, execute=fake2, echo=False)
    assert fake2.calls == []


def test_finished_training_is_redone_when_its_inputs_change(tmp_path, gpu):
    """A finished stage is keyed on what shapes it: its --set options, the prompt, the photo's
    content and (refine) the coarse stage's inputs. A change redoes it (and what follows) from
    scratch, saying why; the same options skip it."""
    import dataclasses

    opts = make_opts(tmp_path, overrides=(("coarse", "system.loss.lambda_rgb=1000"),))
    rn.run_image(opts, execute=FakeExecutor(opts), echo=False)
    marker = json.load(open(os.path.join(trial(opts, "coarse"), pl.MARKER)))
    assert marker["identity"]["set"] == ["system.loss.lambda_rgb=1000"]
    same = FakeExecutor(opts)
    rn.run_image(opts, execute=same, echo=False)
    assert same.calls == []
    # a changed --set for the finished coarse stage: coarse and everything after it run again
    changed = dataclasses.replace(opts, overrides=(("coarse", "system.loss.lambda_rgb=500"),))
    stages = {s.name: s for s in pl.plan_stages(changed, pl.scan_state(changed))}
    assert "--set changed" in stages["coarse"].why and "lambda_rgb=500" in stages["coarse"].why
    assert stages["coarse"].move_aside == trial(opts, "coarse")
    redo = FakeExecutor(changed)
    rn.run_image(changed, execute=redo, echo=False)
    assert [s.name for s in redo.calls][:3] == ["coarse", "refine", "export"]
    # a --set of the refine stage only: coarse is kept
    refine_only = dataclasses.replace(
        changed, overrides=changed.overrides + (("refine", "trainer.max_steps=7"),)
    )
    stages = {s.name: s for s in pl.plan_stages(refine_only, pl.scan_state(refine_only))}
    assert (
        stages["coarse"].skip
        and not stages["refine"].skip
        and "--set changed" in stages["refine"].why
    )
    # a different prompt redoes the stages that read it
    prompted = dataclasses.replace(changed, prompt="a red toy car")
    stages = {s.name: s for s in pl.plan_stages(prompted, pl.scan_state(prompted))}
    assert not stages["preprocess"].skip  # re-captions first, and the training stages follow
    # a marker written before identities were recorded still counts as finished
    for st in ("coarse", "refine"):
        path = os.path.join(trial(changed, st), pl.MARKER)
        old = json.load(open(path))
        old.pop("identity")
        json.dump(old, open(path, "w"))
    assert [
        s.name for s in pl.pending_stages(pl.plan_stages(changed, pl.scan_state(changed)))
    ] == []


def test_runner_crash_then_resume(tmp_path, gpu):
    opts = make_opts(tmp_path)
    crash = FakeExecutor(
        opts, fail={"refine": (1, "Traceback ...\nRuntimeError: CUDA out of memory\n", True)}
    )
    with pytest.raises(rn.StageFailed) as err:
        rn.run_image(opts, execute=crash, echo=False)
    e = err.value
    assert e.stage == "refine" and "CUDA out of memory" in e.what and "exit code 1" in e.what
    assert "resumes from its ckpts/last.ckpt" in e.fix
    rec = json.load(open(pl.Layout.of(opts).record))
    assert rec["status"] == "failed" and rec["failed_stage"] == "refine"
    assert not os.path.exists(os.path.join(trial(opts, "refine"), pl.MARKER))
    again = FakeExecutor(opts)
    rn.run_image(opts, execute=again, echo=False)
    assert [s.name for s in again.calls] == ["refine", "export", "glb", "eval"]
    ckpt = os.path.join(trial(opts, "refine"), "ckpts", "last.ckpt")
    assert f"resume={ckpt}" in again.calls[0].argv


def test_runner_stage_without_outputs_fails(tmp_path, gpu):
    opts = make_opts(tmp_path)
    make_done(opts, "preprocess", "coarse", "refine", "video")

    def lazy(stage, echo):
        os.makedirs(os.path.dirname(stage.log), exist_ok=True)
        return 0  # "succeeds" without writing model.obj

    with pytest.raises(rn.StageFailed, match="exited 0 but did not write"):
        rn.run_image(opts, execute=lazy, echo=False)


def test_runner_moves_stale_trial_aside(tmp_path, gpu):
    opts = make_opts(tmp_path)
    make_done(opts, "preprocess", "refine")  # a refine trial without its coarse: stale
    fake = FakeExecutor(opts)
    rn.run_image(opts, execute=fake, echo=False)
    assert os.path.isdir(trial(opts, "refine") + ".old-1")
    assert fake.calls[1].name == "refine" and fake.calls[1].resume is None


def test_preprocess_failure_names_the_image_and_the_error(tmp_path, gpu):
    opts = make_opts(tmp_path)
    msg = (
        "loading seg model ...\n"
        "hifi123: error: input /x/cat.png: the segmentation found no foreground\n"
        "  expected: an object in front of a background\n  fix: cut the object out yourself\n"
    )
    fake = FakeExecutor(opts, fail={"preprocess": (2, msg, False)})
    with pytest.raises(rn.PreprocessFailed) as err:
        rn.run_image(opts, execute=fake, echo=False)
    text = err.value.render()
    assert (
        opts.image in text
        and "segmentation found no foreground" in text
        and "cut the object out" in text
    )
    assert [s.name for s in fake.calls] == ["preprocess"]


def test_real_subprocess_logs_and_exit_code(tmp_path):
    stage = pl.Stage(
        name="x",
        argv=[PY, "-c", "import sys; print('hello from the stage'); sys.exit(3)"],
        cwd=str(tmp_path),
        env={"HIFI123_TEST": "1"},
        log=str(tmp_path / "logs" / "x.log"),
    )
    assert rn.execute_subprocess(stage, echo=False) == 3
    log = open(stage.log).read()
    assert "hello from the stage" in log and "HIFI123_TEST=1" in log


def test_real_glb_stage_through_the_runner(tmp_path):
    """The glb command as planned really runs (`python -m hifi123.run.export glb TRIAL`)."""
    opts = make_opts(tmp_path)
    make_done(opts, "preprocess", "coarse", "refine", "video", "eval")
    write_textured_box(os.path.join(trial(opts, "refine"), "save", "it100-export"))
    rec = rn.run_image(opts, echo=False, say=lambda m: None)  # no GPU needed: glb only
    glb = os.path.join(trial(opts, "refine"), "save", "it100-export", "model.glb")
    assert os.path.isfile(glb) and rec["outputs"]["mesh (GLB)"] == glb
    assert rec["stages"]["glb"]["status"] == "ran"


# --------------------------------------------------------------------------------- dry run / CLI


def test_dry_run_prints_the_exact_commands_without_gpu(tmp_path, no_gpu):
    opts = make_opts(tmp_path)
    code, out, err = _cli(
        [
            opts.image,
            "--out",
            opts.out,
            "--threestudio-root",
            opts.threestudio_root,
            "--dry-run",
            "--set",
            "trainer.max_steps=10",
        ]
    )
    assert code == 0, err
    planned = [
        s
        for s in pl.plan_stages(
            pl.RunOptions(
                **{**opts.__dict__, "overrides": (pl.parse_override("trainer.max_steps=10"),)}
            ),
            pl.State(),
        )
        if s.runs
    ]
    printed = _printed_commands(out)
    assert [(s.cwd, s.env, s.argv) for s in planned] == printed
    # and literally: the coarse stage's command carries the override at its end
    coarse = next(argv for _, _, argv in printed if "custom/hifi123/configs/coarse.yaml" in argv)
    rgba = f"{opts.out}/preprocessed/cat/cat_rgba.png"
    assert coarse == train_argv(
        "coarse.yaml",
        f"data.image_path={rgba}",
        f"exp_root_dir={opts.out}",
        "name=hifi123-coarse",
        "tag=cat",
        "use_timestamp=false",
        "checkpoint.save_last=true",
        "trainer.max_steps=10",
    )
    assert not os.path.exists(opts.out)  # nothing ran, nothing written


def test_manifest_dry_run_lists_workers_and_commands(tmp_path, no_gpu):
    root = fake_threestudio(tmp_path)
    man = write_manifest(tmp_path, ["a.png", "b.png", "c.png"])
    code, out, err = _cli(
        [
            "--manifest",
            man,
            "--gpus",
            "0,1",
            "--threestudio-root",
            root,
            "--out",
            str(tmp_path / "out"),
            "--dry-run",
            "--method",
            "makeit3d",
        ]
    )
    assert code == 0, err
    assert "worker 0, GPU 0: 2 image(s)" in out and "worker 1, GPU 1: 1 image(s)" in out
    cmds = _printed_commands(out)
    assert sum(1 for _, _, argv in cmds if "preprocess" in argv) == 3
    assert {env.get("CUDA_VISIBLE_DEVICES") for _, env, argv in cmds if "--train" in argv} == {
        "0",
        "1",
    }


# --------------------------------------------------------------------------------------- errors


def test_missing_threestudio_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("THREESTUDIO_ROOT", raising=False)
    with pytest.raises(Hifi123Error) as err:
        rn.find_threestudio_root(None, environ={}, cwd=str(tmp_path), repo_root=tmp_path / "repo")
    assert "threestudio not found" in err.value.what and "bash install.sh" in err.value.fix
    with pytest.raises(Hifi123Error, match="--threestudio-root .* has no launch.py"):
        rn.find_threestudio_root(str(tmp_path), environ={})
    with pytest.raises(Hifi123Error, match="THREESTUDIO_ROOT"):
        rn.find_threestudio_root(None, environ={"THREESTUDIO_ROOT": str(tmp_path / "none")})
    root = fake_threestudio(tmp_path)
    assert rn.find_threestudio_root(None, environ={"THREESTUDIO_ROOT": root}) == root
    assert rn.find_threestudio_root(None, environ={}, cwd=str(tmp_path), repo_root=None) == root
    # through the CLI: exit code 2 and the fix on stderr
    code, _, errtext = _cli([SAMPLE, "--dry-run", "--threestudio-root", str(tmp_path / "nowhere")])
    assert code == 2 and "bash install.sh" in errtext


def test_threestudio_without_link_or_configs(tmp_path):
    opts = make_opts(tmp_path, threestudio_root=fake_threestudio(tmp_path / "a", link=False))
    with pytest.raises(Hifi123Error, match="not installed in threestudio") as err:
        rn.check_threestudio(opts)
    assert "bash install.sh" in err.value.fix
    opts = make_opts(
        tmp_path / "b", threestudio_root=fake_threestudio(tmp_path / "c", configs=False)
    )
    with pytest.raises(Hifi123Error, match="configs/coarse.yaml"):
        rn.check_threestudio(opts)


def test_missing_gpu_error_but_dry_run_works(tmp_path, no_gpu):
    opts = make_opts(tmp_path)
    with pytest.raises(Hifi123Error) as err:
        rn.run_image(opts, execute=FakeExecutor(opts), say=lambda m: None)
    assert "torch.cuda.is_available() is False" in err.value.what and "--dry-run" in err.value.fix
    assert rn.run_image(opts, dry_run=True, say=lambda m: None) == {}
    make_done(opts, *pl.stage_names("hifi123"))
    # nothing to run: no GPU needed
    rn.run_image(opts, execute=FakeExecutor(opts), say=lambda m: None)


def test_missing_image_and_bad_options(tmp_path):
    opts = make_opts(tmp_path, image=str(tmp_path / "nope.png"))
    with pytest.raises(InputError, match="nope.png not found"):
        rn.run_image(opts, dry_run=True, say=lambda m: None)
    root = fake_threestudio(tmp_path / "r")
    for argv, needle in [
        ([], "either IMAGE or --manifest"),
        ([SAMPLE, "--gpus", "0,1"], "--gpus is for --manifest"),
        (["--manifest", "m.txt", "--gpu", "0"], "--gpu is for one image"),
        ([SAMPLE, "--gpu", "cuda:0"], "bad --gpu"),
        ([SAMPLE, "--set", "nokey"], "bad --set"),
    ]:
        code, _, errtext = _cli(argv + ["--threestudio-root", root, "--dry-run"])
        assert code == 2 and needle in errtext, (argv, errtext)


def test_out_that_cannot_hold_outputs_is_refused_before_any_stage(tmp_path, gpu):
    root = fake_threestudio(tmp_path / "r")
    a_file = tmp_path / "outputs.txt"
    a_file.write_text("mine")
    for dry in ([], ["--dry-run"]):
        code, _, errtext = _cli([SAMPLE, "--out", str(a_file), "--threestudio-root", root, *dry])
        assert (
            code == 2
            and "is a file" in errtext
            and "fix:" in errtext
            and "Traceback" not in errtext
        )
    assert a_file.read_text() == "mine"
    # a folder that cannot be created (its parent is a file): refused with the OS's reason
    code, _, errtext = _cli([SAMPLE, "--out", str(a_file / "sub"), "--threestudio-root", root])
    assert code == 2 and "cannot write to the output folder" in errtext and "--out" in errtext
    assert a_file.read_text() == "mine" and "Traceback" not in errtext
