"""`hifi123 run` (issue 9): the stage plan and its exact commands, resumption decisions from
synthetic outputs trees, the runner (fake stage executor; one real subprocess), manifest sharding
and summaries, GLB / PLY exports, and the user errors. No GPU, no threestudio: a fake threestudio
root holds a launch.py stub and our config names, and torch.cuda.is_available is monkeypatched.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import sys
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from hifi123.errors import Hifi123Error, InputError
from hifi123.run import cli as run_cli
from hifi123.run import export as ex
from hifi123.run import manifest as mf
from hifi123.run import plan as pl
from hifi123.run import runner as rn
from hifi123.sample import make_sample as ms
from PIL import Image

SAMPLE = str(ms.DEFAULT_ASSETS_DIR / "sample_rgba.png")
PY = sys.executable


# ------------------------------------------------------------------------------------ helpers


def fake_threestudio(tmp_path, configs=True, link=True):
    root = tmp_path / "threestudio"
    root.mkdir(parents=True)
    (root / "launch.py").write_text("raise SystemExit('launch.py stub: never run by these tests')\n")
    if link:
        cdir = root / "custom" / "hifi123" / "configs"
        cdir.mkdir(parents=True)
        if configs:
            for spec in pl.METHODS.values():
                for stages in spec.stages.values():
                    for ts in stages.values():
                        (cdir / ts.config).write_text("name: x\n")
    return str(root)


def make_opts(tmp_path, method="hifi123", **kw):
    root = kw.pop("threestudio_root", None) or fake_threestudio(tmp_path)
    image = kw.pop("image", None)
    if image is None:
        image = str(tmp_path / "photos" / "cat.png")
        os.makedirs(os.path.dirname(image), exist_ok=True)
        Image.open(SAMPLE).save(image)
    return pl.RunOptions(image=image, method=method, out=str(tmp_path / "out"), threestudio_root=root,
                         python=PY, **kw)


def touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def trial(opts, stage):
    return pl.Layout.of(opts).trial(opts.training(stage).name)


def make_done(opts, *stages, crashed=()):
    """Write the completion evidence of `stages` (and a checkpoint without marker for `crashed`)."""
    lay = pl.Layout.of(opts)
    for st in stages:
        if st == "preprocess":
            for p in lay.preprocessed_files:
                touch(p, "a red cup" if p.endswith("_caption.txt") else "x")
        elif st in pl.TRAINING_STAGES:
            t = trial(opts, st)
            for rel in ("ckpts/last.ckpt", "configs/parsed.yaml", pl.MARKER):
                touch(os.path.join(t, rel))
        elif st == "export":
            touch(os.path.join(trial(opts, opts.spec.mesh_from), "save/it100-export/model.obj"))
        elif st == "glb":
            touch(os.path.join(trial(opts, opts.spec.mesh_from), "save/it100-export/model.glb"))
        elif st == "ply":
            touch(os.path.join(trial(opts, "refine"), pl.POINTCLOUD))
        elif st == "video":
            touch(os.path.join(trial(opts, "refine"), "save/it100-test.mp4"))
        elif st == "eval":
            touch(os.path.join(trial(opts, "refine"), pl.EVAL_REPORT),
                  json.dumps({"metrics": {"lpips_ref": 0.08, "contextual": 1.6, "clip": 0.91}}))
    for st in crashed:
        touch(os.path.join(trial(opts, st), "ckpts/last.ckpt"))


def plan_now(opts, ran=()):
    return {s.name: s for s in pl.plan_stages(opts, pl.scan_state(opts), ran)}


def runs(stages):
    return [n for n, s in stages.items() if s.runs]


class FakeExecutor:
    """Stands in for subprocesses: writes what each stage's real command writes. `fail` maps a
    stage name, or (tag, stage), to (exit code, log text, write a checkpoint first)."""

    def __init__(self, *opts, fail=None):
        self.opts = {o.run_tag: o for o in opts}
        self.fail = fail or {}
        self.calls = []

    def __call__(self, stage, echo):
        self.calls.append(stage)
        os.makedirs(os.path.dirname(stage.log), exist_ok=True)
        tag = os.path.basename(os.path.dirname(stage.log))  # OUT/logs/TAG/<stage>.log
        opts = self.opts[tag]
        failure = self.fail.get((tag, stage.name)) or self.fail.get(stage.name)
        if failure:
            code, text, ckpt = failure
            with open(stage.log, "a") as f:
                f.write(text)
            if ckpt:
                touch(os.path.join(stage.trial, "ckpts/last.ckpt"))
            return code
        with open(stage.log, "a") as f:
            f.write(f"{stage.name} ok\n")
        if stage.name in pl.TRAINING_STAGES:
            for rel in ("ckpts/last.ckpt", "configs/parsed.yaml"):
                touch(os.path.join(stage.trial, rel))
            if stage.name == "refine":  # launch.py --train ends with the test pass
                touch(os.path.join(stage.trial, "save/it100-test.mp4"))
        else:
            make_done(opts, stage.name)
        return 0


@pytest.fixture
def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


# ----------------------------------------------------------------------------- plan and argv


def test_plan_hifi123_exact_argv(tmp_path):
    opts = make_opts(tmp_path)
    lay = pl.Layout.of(opts)
    out, root = opts.out, opts.threestudio_root
    st = plan_now(opts)
    assert list(st) == ["preprocess", "coarse", "refine", "export", "glb", "video", "eval"]
    assert runs(st) == ["preprocess", "coarse", "refine", "export", "glb", "eval"]
    assert "made by the refine run" in st["video"].skip
    rgba = f"{out}/preprocessed/cat/cat_rgba.png"
    assert lay.rgba == rgba
    coarse_t, refine_t = f"{out}/hifi123-coarse/cat", f"{out}/hifi123-refine/cat"
    common = [f"data.image_path={rgba}", f"exp_root_dir={out}", "tag=cat", "use_timestamp=false", "checkpoint.save_last=true"]
    assert st["preprocess"].argv == [PY, "-m", "hifi123.cli", "preprocess", opts.image, "--out", f"{out}/preprocessed/cat"]
    assert st["coarse"].argv == [PY, "launch.py", "--config", "custom/hifi123/configs/coarse.yaml", "--train", "--gpu", "0",
                                 common[0], common[1], "name=hifi123-coarse", *common[2:]]
    assert st["refine"].argv == [PY, "launch.py", "--config", "custom/hifi123/configs/refine.yaml", "--train", "--gpu", "0",
                                 common[0], common[1], "name=hifi123-refine", *common[2:],
                                 f"system.geometry_convert_from={coarse_t}/ckpts/last.ckpt"]
    assert st["export"].argv == [PY, "launch.py", "--config", f"{refine_t}/configs/parsed.yaml", "--export", "--gpu", "0",
                                 f"resume={refine_t}/ckpts/last.ckpt", "system.exporter_type=mesh-exporter",
                                 "system.exporter.fmt=obj-mtl", "system.exporter.context_type=cuda"]
    assert st["glb"].argv == [PY, "-m", "hifi123.run.export", "glb", refine_t]
    assert st["video"].argv == [PY, "launch.py", "--config", f"{refine_t}/configs/parsed.yaml", "--test", "--gpu", "0",
                                f"resume={refine_t}/ckpts/last.ckpt"]
    assert st["eval"].argv == [PY, "-m", "hifi123.cli", "eval", "single-view", "--ref", rgba, "--views", refine_t,
                               "--out", f"{refine_t}/save/eval/single_view.json"]
    for name in ("coarse", "refine", "export", "video"):
        assert st[name].cwd == root and st[name].needs_gpu
    assert st["preprocess"].cwd == out and not st["glb"].needs_gpu
    assert st["coarse"].env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}
    assert st["glb"].env == {}


def test_plan_makeit3d_lowvram_prompt_gpus_and_overrides(tmp_path):
    opts = make_opts(tmp_path, method="makeit3d", lowvram=True, gpu="2,3", prompt="a cat: sitting",
                     overrides=(pl.parse_override("trainer.max_steps=100"), pl.parse_override("refine:system.x=a b"),
                                pl.parse_override("export:system.geometry.isosurface_threshold=10.")))
    out = opts.out
    st = plan_now(opts)
    assert list(st) == ["preprocess", "coarse", "refine", "export", "glb", "ply", "video", "eval"]
    coarse_t, refine_t = f"{out}/makeit3d-coarse-lowvram/cat", f"{out}/makeit3d-refine-lowvram/cat"
    assert st["preprocess"].argv[-2:] == ["--caption", "a cat: sitting"]
    assert st["coarse"].argv[:7] == [PY, "launch.py", "--config", "custom/hifi123/configs/makeit3d-coarse-lowvram.yaml",
                                     "--train", "--gpu", "2,3"]
    # Make-It-3D's guidance reads <name>_caption.txt itself: no prompt override
    assert not any("prompt" in a for a in st["coarse"].argv + st["refine"].argv)
    assert st["coarse"].argv[-1] == "trainer.max_steps=100"
    assert st["refine"].argv[-3:] == [f"system.geometry_convert_from={coarse_t}/ckpts/last.ckpt",
                                      "trainer.max_steps=100", "system.x=a b"]
    assert "name=makeit3d-refine-lowvram" in st["refine"].argv
    # the mesh of Make-It-3D is the coarse NeRF's; the point cloud is the refine stage's
    assert st["export"].argv[3] == f"{coarse_t}/configs/parsed.yaml"
    assert st["export"].argv[-1] == "system.geometry.isosurface_threshold=10."
    assert st["glb"].argv[-1] == coarse_t
    assert st["ply"].argv == [PY, "-m", "hifi123.run.export", "ply", f"{refine_t}/ckpts/last.ckpt",
                              "--out", f"{refine_t}/save/pointcloud.ply"]
    assert st["coarse"].env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_override_quoting_survives_omegaconf():
    from omegaconf import OmegaConf

    assert pl.override("tag", "cat_01") == "tag=cat_01"
    for text in ["a cat: sitting", "it's a [red] cup", "yes", "1.5", "# not a comment", "{x}", "a=b", "null"]:
        kv = pl.override("system.prompt_processor.prompt", text)
        cfg = OmegaConf.from_cli([kv])
        OmegaConf.resolve(cfg)  # threestudio resolves, then builds a structured config from it
        again = OmegaConf.create(OmegaConf.to_container(cfg))
        assert again.system.prompt_processor.prompt == text
    assert pl.override("p", "a ${x} b") == "p='a {x} b'"  # `${` cannot survive threestudio's double resolution
    assert pl.parse_override("coarse:a.b=1") == ("coarse", "a.b=1")
    with pytest.raises(ValueError):
        pl.parse_override("preprocess:a=1")
    with pytest.raises(ValueError):
        pl.parse_override("no-equals")


def test_tags_are_safe_for_threestudio():
    assert pl.make_tag("/x/my cat (2)_rgba.png") == "my_cat_2"
    assert pl.make_tag("/x/???.png") == "image"


# -------------------------------------------------------------------------- resumption decisions


def test_resume_nothing_done_runs_everything(tmp_path):
    opts = make_opts(tmp_path, method="makeit3d")
    assert runs(plan_now(opts)) == ["preprocess", "coarse", "refine", "export", "glb", "ply", "eval"]


def test_resume_coarse_done_chains_refine_from_its_checkpoint(tmp_path):
    opts = make_opts(tmp_path)
    make_done(opts, "preprocess", "coarse")
    st = plan_now(opts)
    assert st["preprocess"].skip.startswith("done") and st["coarse"].skip.startswith("done")
    assert runs(st) == ["refine", "export", "glb", "eval"]
    ckpt = os.path.join(trial(opts, "coarse"), "ckpts", "last.ckpt")
    assert f"system.geometry_convert_from={ckpt}" in st["refine"].argv
    assert st["refine"].resume is None and not any(a.startswith("resume=") for a in st["refine"].argv)
    # both methods' configs read <name>_caption.txt: no prompt override
    assert not any("prompt" in a for a in st["refine"].argv)


def test_prompt_key_and_changed_prompt(tmp_path, monkeypatch):
    """A config that takes the caption as an override gets it (placeholder until preprocess wrote
    it); a --prompt that differs from the written caption re-captions and redoes what follows."""
    import dataclasses

    spec = dataclasses.replace(pl.METHODS["hifi123"], prompt_key="system.prompt_processor.prompt")
    monkeypatch.setitem(pl.METHODS, "hifi123", spec)
    opts = make_opts(tmp_path)
    lay = pl.Layout.of(opts)
    st = plan_now(opts)
    placeholder = pl.CAPTION_PLACEHOLDER.format(path=lay.caption)
    assert st["coarse"].argv[-1] == f"system.prompt_processor.prompt='{placeholder}'"
    make_done(opts, "preprocess", "coarse")
    st = plan_now(opts)
    assert st["refine"].argv[-1] == "system.prompt_processor.prompt='a red cup'"
    st = plan_now(dataclasses.replace(opts, prompt="a  red cup "))  # same after whitespace cleaning
    assert runs(st)[0] == "refine"
    st = plan_now(dataclasses.replace(opts, prompt="a blue cup"))
    assert runs(st)[:2] == ["preprocess", "coarse"] and st["preprocess"].why == "the caption differs from --prompt"
    assert st["coarse"].move_aside == trial(opts, "coarse")
    assert st["coarse"].argv[-1] == "system.prompt_processor.prompt='a blue cup'"


def test_resume_crashed_refine_resumes_from_its_checkpoint(tmp_path):
    opts = make_opts(tmp_path)
    make_done(opts, "preprocess", "coarse", crashed=["refine"])
    st = plan_now(opts)
    ckpt = os.path.join(trial(opts, "refine"), "ckpts", "last.ckpt")
    assert runs(st) == ["refine", "export", "glb", "eval"]
    assert st["refine"].resume == ckpt and f"resume={ckpt}" in st["refine"].argv
    assert st["refine"].move_aside is None and "resume" in st["refine"].why
    # the chain stays (threestudio ignores it when resuming)
    assert any(a.startswith("system.geometry_convert_from=") for a in st["refine"].argv)


def test_resume_all_done_runs_nothing(tmp_path):
    for method in ("hifi123", "makeit3d"):
        opts = make_opts(tmp_path / method, method=method)
        make_done(opts, *pl.stage_names(method))
        st = plan_now(opts)
        assert runs(st) == []
        assert all(s.skip.startswith("done") for s in st.values())
        assert "it100-test.mp4" in st["video"].skip


def test_resume_video_missing_runs_a_test_pass(tmp_path):
    opts = make_opts(tmp_path)
    make_done(opts, "preprocess", "coarse", "refine", "export", "glb")
    st = plan_now(opts)
    assert runs(st) == ["video", "eval"]
    assert "--test" in st["video"].argv


def test_resume_glb_must_belong_to_the_newest_export(tmp_path):
    opts = make_opts(tmp_path)
    make_done(opts, *pl.stage_names("hifi123"))
    touch(os.path.join(trial(opts, "refine"), "save/it2000-export/model.obj"))  # re-exported later
    st = plan_now(opts)
    assert runs(st) == ["glb"]
    assert "it2000-export/model.obj" in st["export"].skip


def test_resume_upstream_rerun_redoes_dependents_from_scratch(tmp_path):
    opts = make_opts(tmp_path)
    make_done(opts, "preprocess", "refine", "export", "glb", "video", "eval")  # coarse deleted
    st = plan_now(opts)
    assert runs(st) == ["coarse", "refine", "export", "glb", "eval"]
    assert st["refine"].resume is None and st["refine"].move_aside == trial(opts, "refine")
    # after coarse ran in this invocation, refine is redone even though its marker exists
    make_done(opts, "coarse")
    st = plan_now(opts, ran=["coarse"])
    assert runs(st)[0] == "refine" and st["refine"].move_aside == trial(opts, "refine")


# ----------------------------------------------------------------------------------- runner


def test_runner_fresh_then_nothing_then_outputs(tmp_path, gpu, capsys):
    opts = make_opts(tmp_path, method="makeit3d")
    fake = FakeExecutor(opts)
    rec = rn.run_image(opts, execute=fake, echo=False)
    assert [s.name for s in fake.calls] == ["preprocess", "coarse", "refine", "export", "glb", "ply", "eval"]
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


def test_runner_crash_then_resume(tmp_path, gpu):
    opts = make_opts(tmp_path)
    crash = FakeExecutor(opts, fail={"refine": (1, "Traceback ...\nRuntimeError: CUDA out of memory\n", True)})
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
    msg = ("loading seg model ...\nhifi123: error: input /x/cat.png: the segmentation found no foreground\n"
           "  expected: an object in front of a background\n  fix: cut the object out yourself\n")
    fake = FakeExecutor(opts, fail={"preprocess": (2, msg, False)})
    with pytest.raises(rn.PreprocessFailed) as err:
        rn.run_image(opts, execute=fake, echo=False)
    text = err.value.render()
    assert opts.image in text and "segmentation found no foreground" in text and "cut the object out" in text
    assert [s.name for s in fake.calls] == ["preprocess"]


def test_real_subprocess_logs_and_exit_code(tmp_path):
    stage = pl.Stage(name="x", argv=[PY, "-c", "import sys; print('hello from the stage'); sys.exit(3)"],
                     cwd=str(tmp_path), env={"HIFI123_TEST": "1"}, log=str(tmp_path / "logs" / "x.log"))
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


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run_cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _printed_commands(text):
    cmds = []
    for line in text.splitlines():
        if line.startswith("    cd "):
            words = shlex.split(line.strip())
            cwd = words[1]
            assert words[2] == "&&"
            rest = words[3:]
            env = {}
            while rest and "=" in rest[0] and not rest[0].startswith("/"):
                k, v = rest.pop(0).split("=", 1)
                env[k] = v
            cmds.append((cwd, env, rest))
    return cmds


def test_dry_run_prints_the_exact_commands_without_gpu(tmp_path, no_gpu):
    opts = make_opts(tmp_path)
    code, out, err = _cli([opts.image, "--out", opts.out, "--threestudio-root", opts.threestudio_root,
                           "--dry-run", "--set", "trainer.max_steps=10"])
    assert code == 0, err
    planned = [s for s in pl.plan_stages(pl.RunOptions(**{**opts.__dict__, "overrides": (pl.parse_override("trainer.max_steps=10"),)}),
                                         pl.State()) if s.runs]
    printed = _printed_commands(out)
    assert [(s.cwd, s.env, s.argv) for s in planned] == printed
    # and literally: the coarse stage's command carries the override at its end
    coarse = next(argv for _, _, argv in printed if "custom/hifi123/configs/coarse.yaml" in argv)
    rgba = f"{opts.out}/preprocessed/cat/cat_rgba.png"
    assert coarse == [PY, "launch.py", "--config", "custom/hifi123/configs/coarse.yaml", "--train", "--gpu", "0",
                      f"data.image_path={rgba}", f"exp_root_dir={opts.out}", "name=hifi123-coarse", "tag=cat",
                      "use_timestamp=false", "checkpoint.save_last=true", "trainer.max_steps=10"]
    assert not os.path.exists(opts.out)  # nothing ran, nothing written


def test_manifest_dry_run_lists_workers_and_commands(tmp_path, no_gpu):
    root = fake_threestudio(tmp_path)
    man = write_manifest(tmp_path, ["a.png", "b.png", "c.png"])
    code, out, err = _cli(["--manifest", man, "--gpus", "0,1", "--threestudio-root", root, "--out",
                           str(tmp_path / "out"), "--dry-run", "--method", "makeit3d"])
    assert code == 0, err
    assert "worker 0, GPU 0: 2 image(s)" in out and "worker 1, GPU 1: 1 image(s)" in out
    cmds = _printed_commands(out)
    assert sum(1 for _, _, argv in cmds if "preprocess" in argv) == 3
    assert {env.get("CUDA_VISIBLE_DEVICES") for _, env, argv in cmds if "--train" in argv} == {"0", "1"}


# ------------------------------------------------------------------------------------- manifest


def write_manifest(tmp_path, names, extra=""):
    d = tmp_path / "photos"
    d.mkdir(exist_ok=True)
    for n in names:
        if not (d / n).exists():
            Image.open(SAMPLE).resize((64, 64)).save(d / n)
    p = tmp_path / "images.txt"
    p.write_text("# my photos\n\n" + "\n".join(f"photos/{n}" for n in names) + "\n" + extra)
    return str(p)


def test_manifest_paths_tags_and_missing_entries(tmp_path):
    (tmp_path / "photos" / "x").mkdir(parents=True)
    Image.open(SAMPLE).resize((32, 32)).save(tmp_path / "photos" / "x" / "a.png")
    man = write_manifest(tmp_path, ["a.png", "b.png"], extra="photos/x/a.png\n")
    entries = mf.read_manifest(man)
    assert [e.tag for e in entries] == ["a", "b", "a-2"]
    assert [e.line for e in entries] == [3, 4, 5]
    assert entries[0].image == str(tmp_path / "photos" / "a.png")
    (tmp_path / "images.txt").write_text("photos/a.png\nphotos/missing.png\n\nphotos/gone.jpg\n")
    with pytest.raises(InputError) as err:
        mf.read_manifest(man)
    text = err.value.render()
    assert "line 2:" in text and "missing.png" in text and "line 4:" in text and "gone.jpg" in text
    assert "2 manifest entries" in text
    (tmp_path / "images.txt").write_text("photos/a.png\nphotos/a.png\n")
    with pytest.raises(InputError, match="repeats"):
        mf.read_manifest(man)
    with pytest.raises(InputError, match="not found"):
        mf.read_manifest(str(tmp_path / "nope.txt"))


def test_sharding_balanced_exactly_once_deterministic():
    for n_items in range(0, 23):
        items = [f"img{i}" for i in range(n_items)]
        for n in range(1, 8):
            shards = mf.shard(items, n)
            assert len(shards) == n
            flat = [x for s in shards for x in s]
            assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1
            assert mf.shard(list(items), n) == shards
    assert mf.shard(list("abcde"), 2) == [["a", "c", "e"], ["b", "d"]]


def test_manifest_worker_continues_after_a_failed_image_and_summarises(tmp_path, gpu):
    root = fake_threestudio(tmp_path)
    man = write_manifest(tmp_path, ["good1.png", "bad.png", "good2.png"])
    entries = mf.read_manifest(man)
    base = pl.RunOptions(image="", out=str(tmp_path / "out"), threestudio_root=root, python=PY)
    fake = FakeExecutor(*[mf.entry_options(base, e, "1") for e in entries],
                        fail={("bad", "preprocess"): (2, "hifi123: error: bad.png is empty\n", False)})
    lines = []
    status = mf.run_worker(entries, base, "1", execute=fake, say=lines.append)
    assert status == {"good1": "done", "bad": "failed", "good2": "done"}
    assert any("FAILED bad" in line and "bad.png is empty" in line for line in lines)
    summary = mf.collect_summary(entries, base, manifest=man, gpus=["1"], wall_seconds=12.0)
    j, md = mf.write_summary(summary)
    data = json.load(open(j))
    assert data["counts"] == {"done": 2, "failed": 1}
    rows = {r["tag"]: r for r in data["images"]}
    assert rows["bad"]["failed_stage"] == "preprocess" and "bad.png is empty" in rows["bad"]["error"]
    assert rows["good1"]["metrics"]["lpips_ref"] == pytest.approx(0.08)
    assert rows["good1"]["seconds"]["coarse"] is not None and rows["good1"]["gpu"] == "1"
    text = open(md).read()
    assert "| bad | **failed** |" in text and "preprocess: preprocessing" in text
    assert "| good1 | done |" in text and "0.0800" in text
    assert os.path.basename(j) == "summary-hifi123.json"


def test_worker_command_round_trips_through_the_cli(tmp_path, gpu, monkeypatch):
    """What the parent spawns parses back to the same options, and `--worker k` runs shard k."""
    root = fake_threestudio(tmp_path)
    man = write_manifest(tmp_path, ["a.png", "b.png", "c.png"])
    base = pl.RunOptions(image="", method="makeit3d", out=str(tmp_path / "out"), lowvram=True, threestudio_root=root,
                         python=PY, overrides=(pl.parse_override("trainer.max_steps=5"), pl.parse_override("export:a=b c")))
    argv = mf.worker_argv(man, base, ["0", "3"], 1)
    assert argv[:3] == [PY, "-m", "hifi123.run.cli"]
    import argparse

    parser = argparse.ArgumentParser()
    run_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *argv[3:]])
    assert run_cli.options_from_args(args) == base
    assert (args.manifest, args.gpus, args.worker) == (man, "0,3", 1)
    entries = mf.read_manifest(man)
    fake = FakeExecutor(*[mf.entry_options(base, e, "3") for e in entries])
    assert mf.run_manifest(man, base, ["0", "3"], worker=1, execute=fake, say=lambda m: None) == 0
    assert {os.path.basename(os.path.dirname(s.log)) for s in fake.calls} == {"b"}  # shard 1 of [a, b, c]
    assert {s.env.get("CUDA_VISIBLE_DEVICES") for s in fake.calls if s.needs_gpu} == {"3"}


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
    opts = make_opts(tmp_path / "b", threestudio_root=fake_threestudio(tmp_path / "c", configs=False))
    with pytest.raises(Hifi123Error, match="configs/coarse.yaml"):
        rn.check_threestudio(opts)


def test_missing_gpu_error_but_dry_run_works(tmp_path, no_gpu):
    opts = make_opts(tmp_path)
    with pytest.raises(Hifi123Error) as err:
        rn.run_image(opts, execute=FakeExecutor(opts), say=lambda m: None)
    assert "torch.cuda.is_available() is False" in err.value.what and "--dry-run" in err.value.fix
    assert rn.run_image(opts, dry_run=True, say=lambda m: None) == {}
    make_done(opts, *pl.stage_names("hifi123"))
    rn.run_image(opts, execute=FakeExecutor(opts), say=lambda m: None)  # nothing to run: no GPU needed


def test_missing_image_and_bad_options(tmp_path):
    opts = make_opts(tmp_path, image=str(tmp_path / "nope.png"))
    with pytest.raises(InputError, match="nope.png not found"):
        rn.run_image(opts, dry_run=True, say=lambda m: None)
    root = fake_threestudio(tmp_path / "r")
    for argv, needle in [([], "either IMAGE or --manifest"),
                         ([SAMPLE, "--gpus", "0,1"], "--gpus is for --manifest"),
                         (["--manifest", "m.txt", "--gpu", "0"], "--gpu is for one image"),
                         ([SAMPLE, "--gpu", "cuda:0"], "bad --gpu"),
                         ([SAMPLE, "--set", "nokey"], "bad --set")]:
        code, _, errtext = _cli(argv + ["--threestudio-root", root, "--dry-run"])
        assert code == 2 and needle in errtext, (argv, errtext)


# ---------------------------------------------------------------------------------- GLB and PLY


def write_textured_box(folder, size=48):
    """A unit box as threestudio's mesh exporter writes it: model.obj (`mtllib`, `usemtl`, `vt u 1-v`,
    `f v/vt/` corners), model.mtl with map_Kd, texture_kd.jpg (the synthetic sample). Each face has
    its own UV island, so positions are shared and UVs are not (seams)."""
    os.makedirs(folder, exist_ok=True)
    Image.open(SAMPLE).convert("RGB").resize((size, size)).save(os.path.join(folder, "texture_kd.jpg"), quality=90)
    v = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces, uv, ftex = [], [], []
    for q, quad in enumerate(quads):
        u0, v0 = (q % 3) / 3.0, (q // 3) / 2.0
        base = len(uv)
        uv += [[u0 + 0.02, v0 + 0.02], [u0 + 0.31, v0 + 0.02], [u0 + 0.31, v0 + 0.48], [u0 + 0.02, v0 + 0.48]]
        faces += [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
        ftex += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    uv = np.array(uv)
    lines = ["mtllib model.mtl", "g object", "usemtl default"]
    lines += [f"v {a} {b} {c}" for a, b, c in v]
    lines += [f"vt {a} {1.0 - b}" for a, b in uv]
    lines += ["f " + " ".join(f"{p + 1}/{t + 1}/" for p, t in zip(f, ft)) for f, ft in zip(faces, ftex)]
    with open(os.path.join(folder, "model.obj"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "model.mtl"), "w") as f:
        f.write("newmtl default\nKa 0.0 0.0 0.0\nmap_Kd texture_kd.jpg\nKs 0.0 0.0 0.0\n")
    corners_pos = v[np.array(faces)]  # [F, 3, 3]
    corners_uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1)[np.array(ftex)]  # as written in the file
    return os.path.join(folder, "model.obj"), corners_pos, corners_uv


def test_glb_round_trip_keeps_geometry_uvs_and_texture(tmp_path):
    import trimesh

    obj, corners_pos, corners_uv = write_textured_box(str(tmp_path / "export"))
    glb = ex.obj_to_glb(obj)
    assert glb == str(tmp_path / "export" / "model.glb")
    scene = trimesh.load(glb)
    (mesh,) = scene.geometry.values()
    assert len(mesh.faces) == 12
    pos_gltf = np.asarray(mesh.vertices)[mesh.faces]
    # glTF axes: (x, y, z)_gltf = (y, z, x)_threestudio, a rotation
    np.testing.assert_allclose(pos_gltf @ ex.THREESTUDIO_TO_GLTF, corners_pos, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mesh.visual.uv)[mesh.faces], corners_uv, atol=1e-6)
    mat = mesh.visual.material
    tex = np.asarray(mat.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(tex, np.asarray(Image.open(os.path.join(os.path.dirname(obj), "texture_kd.jpg")).convert("RGB")))
    assert mat.metallicFactor == 0.0 and mat.roughnessFactor == 1.0
    assert list(mat.baseColorFactor) == [255, 255, 255, 255]
    # the photographed side (+x in threestudio) faces the glTF viewer (+z); up is +y
    assert np.allclose(ex.THREESTUDIO_TO_GLTF @ [1, 0, 0], [0, 0, 1])
    assert np.allclose(ex.THREESTUDIO_TO_GLTF @ [0, 0, 1], [0, 1, 0])
    assert np.isclose(np.linalg.det(ex.THREESTUDIO_TO_GLTF), 1.0)
    # keep axes; and the trial-folder form of the command
    keep = ex.obj_to_glb(obj, str(tmp_path / "keep.glb"), axes="keep")
    (m2,) = trimesh.load(keep).geometry.values()
    np.testing.assert_allclose(np.asarray(m2.vertices)[m2.faces], corners_pos, atol=1e-6)


def test_glb_errors_name_the_missing_file(tmp_path):
    obj, _, _ = write_textured_box(str(tmp_path / "e"))
    os.remove(os.path.join(os.path.dirname(obj), "texture_kd.jpg"))
    with pytest.raises(InputError, match="texture_kd.jpg is missing"):
        ex.obj_to_glb(obj)
    with pytest.raises(InputError, match="no exported mesh"):
        ex.find_exported_obj(str(tmp_path / "trial"))
    assert ex.main(["glb", str(tmp_path / "trial")]) == 2


def test_find_exported_obj_takes_the_newest_step(tmp_path):
    for step in (900, 5000, 1000):
        touch(str(tmp_path / "save" / f"it{step}-export" / "model.obj"))
    assert ex.find_exported_obj(str(tmp_path)).endswith("it5000-export/model.obj")


def test_ply_round_trip(tmp_path):
    import trimesh

    rng = np.random.default_rng(0)
    pos = rng.normal(size=(257, 3)).astype(np.float32)
    col = rng.integers(0, 256, size=(257, 3), dtype=np.uint8)
    path = ex.write_ply(str(tmp_path / "pc.ply"), pos, col)
    with open(path, "rb") as f:
        head = f.read(200)
    assert head.startswith(b"ply\nformat binary_little_endian 1.0\n") and b"property uchar red" in head
    p2, c2 = ex.read_ply(path)
    np.testing.assert_array_equal(p2, pos)
    np.testing.assert_array_equal(c2, col)
    cloud = trimesh.load(path)  # an independent reader agrees
    np.testing.assert_allclose(np.asarray(cloud.vertices), pos, rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], col)
    # float colours in [0, 1] are rounded; no colours at all
    ex.write_ply(str(tmp_path / "f.ply"), pos[:3], np.array([[0, 0.5, 1.0]] * 3))
    assert ex.read_ply(str(tmp_path / "f.ply"))[1].tolist() == [[0, 128, 255]] * 3
    ex.write_ply(str(tmp_path / "n.ply"), pos[:4])
    p3, c3 = ex.read_ply(str(tmp_path / "n.ply"))
    assert c3 is None and np.array_equal(p3, pos[:4])
    # an ascii PLY from elsewhere
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                                    "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
                                    "end_header\n0 1 2 10 20 30\n3 4 5 40 50 60\n")
    p4, c4 = ex.read_ply(str(tmp_path / "a.ply"))
    assert p4.tolist() == [[0, 1, 2], [3, 4, 5]] and c4.tolist() == [[10, 20, 30], [40, 50, 60]]


def test_point_cloud_from_checkpoint(tmp_path):
    import torch

    g = torch.Generator().manual_seed(0)
    points = torch.randn(50, 3, generator=g)
    desc = torch.cat([torch.rand(50, 3, generator=g), torch.randn(50, 16, generator=g)], 1)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"epoch": 0, "global_step": 10, "state_dict": {
        "geometry.points": points, "geometry.descriptors": desc, "renderer.unet.start.weight": torch.zeros(16, 19)}}, ckpt)
    out = str(tmp_path / "save" / "pointcloud.ply")
    assert ex.main(["ply", str(ckpt), "--out", out]) == 0
    pos, col = ex.read_ply(out)
    np.testing.assert_allclose(pos, points.numpy(), atol=1e-7)
    np.testing.assert_array_equal(col, (desc[:, :3].numpy() * 255 + 0.5).astype(np.uint8))
    torch.save({"state_dict": {"a.points": points, "b.points": points}}, tmp_path / "two.ckpt")
    with pytest.raises(InputError, match="several point positions"):
        ex.load_point_cloud(str(tmp_path / "two.ckpt"))
    pos, col = ex.load_point_cloud(str(tmp_path / "two.ckpt"), position_key="a.points")
    assert col is None and pos.shape == (50, 3)
    # the .npz of hifi123.core.makeit3d.pointcloud.PointCloud.save_npz
    np.savez(tmp_path / "pc.npz", positions=points.numpy(), colors=desc[:, :3].numpy(),
             reference_visible=np.ones(50, bool), source_view=np.zeros(50, np.int64))
    ex.checkpoint_to_ply(str(tmp_path / "pc.npz"), str(tmp_path / "pc.ply"))
    pos, col = ex.read_ply(str(tmp_path / "pc.ply"))
    np.testing.assert_allclose(pos, points.numpy(), atol=1e-7)
    np.testing.assert_array_equal(col, (desc[:, :3].numpy() * 255 + 0.5).astype(np.uint8))
