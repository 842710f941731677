"""`hifi123 run`: the stage plan, its exact commands and the resumption decisions from
synthetic output trees. No GPU, no threestudio: a fake threestudio root holds a launch.py stub and
our config names, and torch.cuda.is_available is monkeypatched (run_helpers)."""

from __future__ import annotations

import json
import os

import pytest
from hifi123.run import plan as pl
from run_helpers import (
    PY,
    make_done,
    make_opts,
    plan_now,
    runs,
    touch,
    train_argv,
    trial,
)

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
    common = [
        f"data.image_path={rgba}",
        f"exp_root_dir={out}",
        "tag=cat",
        "use_timestamp=false",
        "checkpoint.save_last=true",
    ]
    assert st["preprocess"].argv == [
        PY,
        "-m",
        "hifi123.cli",
        "preprocess",
        opts.image,
        "--out",
        f"{out}/preprocessed/cat",
    ]
    assert st["coarse"].argv == train_argv(
        "coarse.yaml", common[0], common[1], "name=hifi123-coarse", *common[2:]
    )
    assert st["refine"].argv == train_argv(
        "refine.yaml",
        common[0],
        common[1],
        "name=hifi123-refine",
        *common[2:],
        f"system.geometry_convert_from={coarse_t}/ckpts/last.ckpt",
    )
    assert st["export"].argv == [
        PY,
        "launch.py",
        "--config",
        f"{refine_t}/configs/parsed.yaml",
        "--export",
        "--gpu",
        "0",
        f"resume={refine_t}/ckpts/last.ckpt",
        "system.exporter_type=mesh-exporter",
        "system.exporter.fmt=obj-mtl",
        "system.exporter.context_type=cuda",
    ]
    assert st["glb"].argv == [PY, "-m", "hifi123.run.export", "glb", refine_t]
    assert st["video"].argv == [
        PY,
        "launch.py",
        "--config",
        f"{refine_t}/configs/parsed.yaml",
        "--test",
        "--gpu",
        "0",
        f"resume={refine_t}/ckpts/last.ckpt",
    ]
    assert st["eval"].argv == [
        PY,
        "-m",
        "hifi123.cli",
        "eval",
        "single-view",
        "--ref",
        rgba,
        "--views",
        refine_t,
        "--out",
        f"{refine_t}/save/eval/single_view.json",
    ]
    for name in ("coarse", "refine", "export", "video"):
        assert st[name].cwd == root and st[name].needs_gpu
    assert st["preprocess"].cwd == out and not st["glb"].needs_gpu
    assert st["coarse"].env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}
    assert st["glb"].env == {}


def test_plan_makeit3d_lowvram_prompt_gpus_and_overrides(tmp_path):
    opts = make_opts(
        tmp_path,
        method="makeit3d",
        lowvram=True,
        gpu="2,3",
        prompt="a cat: sitting",
        overrides=(
            pl.parse_override("trainer.max_steps=100"),
            pl.parse_override("refine:system.x=a b"),
            pl.parse_override("export:system.geometry.isosurface_threshold=10."),
        ),
    )
    out = opts.out
    st = plan_now(opts)
    assert list(st) == ["preprocess", "coarse", "refine", "export", "glb", "ply", "video", "eval"]
    coarse_t, refine_t = f"{out}/makeit3d-coarse-lowvram/cat", f"{out}/makeit3d-refine-lowvram/cat"
    assert st["preprocess"].argv[-2:] == ["--caption", "a cat: sitting"]
    assert st["coarse"].argv[:7] == [
        PY,
        "launch.py",
        "--config",
        "custom/hifi123/configs/makeit3d-coarse-lowvram.yaml",
        "--train",
        "--gpu",
        "2,3",
    ]
    # Make-It-3D's guidance reads <name>_caption.txt itself: no prompt override
    assert not any("prompt" in a for a in st["coarse"].argv + st["refine"].argv)
    assert st["coarse"].argv[-1] == "trainer.max_steps=100"
    assert st["refine"].argv[-3:] == [
        f"system.geometry_convert_from={coarse_t}/ckpts/last.ckpt",
        "trainer.max_steps=100",
        "system.x=a b",
    ]
    assert "name=makeit3d-refine-lowvram" in st["refine"].argv
    # the mesh of Make-It-3D is the coarse NeRF's; the point cloud is the refine stage's
    assert st["export"].argv[3] == f"{coarse_t}/configs/parsed.yaml"
    assert st["export"].argv[-1] == "system.geometry.isosurface_threshold=10."
    assert st["glb"].argv[-1] == coarse_t
    assert st["ply"].argv == [
        PY,
        "-m",
        "hifi123.run.export",
        "ply",
        f"{refine_t}/ckpts/last.ckpt",
        "--out",
        f"{refine_t}/save/pointcloud.ply",
    ]
    assert st["coarse"].env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_override_quoting_survives_omegaconf():
    from omegaconf import OmegaConf

    assert pl.override("tag", "cat_01") == "tag=cat_01"
    for text in [
        "a cat: sitting",
        "it's a [red] cup",
        "yes",
        "1.5",
        "# not a comment",
        "{x}",
        "a=b",
        "null",
    ]:
        kv = pl.override("system.prompt_processor.prompt", text)
        cfg = OmegaConf.from_cli([kv])
        OmegaConf.resolve(cfg)  # threestudio resolves, then builds a structured config from it
        again = OmegaConf.create(OmegaConf.to_container(cfg))
        assert again.system.prompt_processor.prompt == text
    # `${` cannot survive threestudio's double resolution
    assert pl.override("p", "a ${x} b") == "p='a {x} b'"
    assert pl.parse_override("coarse:a.b=1") == ("coarse", "a.b=1")
    with pytest.raises(ValueError):
        pl.parse_override("preprocess:a=1")
    with pytest.raises(ValueError):
        pl.parse_override("no-equals")


def test_loss_weights_set_by_hand_must_exist_in_the_stages_they_reach():
    """A `--set system.loss.KEY` is checked against the shipped YAML of each training stage it
    reaches; a stage whose guidance is swapped by `--set` too is left to launch.py."""
    from hifi123.errors import InputError

    ok = [("refine", "system.loss.lambda_rgsd=10"), (None, "system.loss.lambda_rgb=500")]
    pl.check_loss_overrides("hifi123", False, ok)
    pl.check_loss_overrides("hifi123", True, ok)  # the -lowvram configs have the same weights
    with pytest.raises(InputError, match="the coarse stage .coarse.yaml. has no loss weight"):
        pl.check_loss_overrides("hifi123", False, [(None, "system.loss.lambda_rgsd=10")])
    with pytest.raises(InputError, match="makeit3d-coarse-lowvram.yaml"):
        pl.check_loss_overrides("makeit3d", True, [("coarse", "system.loss.lambda_rgb_=1")])
    vsd = [
        ("coarse", "system.guidance_type=stable-diffusion-vsd-guidance"),
        ("coarse", "system.loss.lambda_lora=1"),
    ]
    pl.check_loss_overrides("hifi123", False, vsd)  # its losses are the swapped guidance's
    with pytest.raises(InputError, match="the refine stage"):  # the swap was for coarse only
        pl.check_loss_overrides("hifi123", False, [*vsd, ("refine", "system.loss.lambda_lora=1")])


def test_tags_are_safe_readable_and_unique_for_threestudio():
    import re

    # kept as is
    assert pl.make_tag("/x/cat.png") == "cat" and pl.make_tag("/y/cat_rgba.png") == "cat"
    tags = [
        pl.make_tag(p)
        for p in (
            "/x/my cat (2)_rgba.png",
            "/x/my cat (3).png",
            "/x/???.png",
            "/x/猫.png",
            "/x/犬.png",
            "/x/café.jpg",
            "/x/cafe.jpg",
        )
    ]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", t) for t in tags)
    assert len(set(tags)) == len(tags)  # names that lost characters no longer collide
    assert tags[0].startswith("my_cat_2-") and tags[5].startswith("caf-") and tags[6] == "cafe"
    assert tags[2].startswith("image-") and tags[3].startswith("image-")


def test_an_edited_photo_redoes_every_stage(tmp_path):
    """Same path, different content: preprocessing and everything after it run again, and say why;
    the unchanged photo skips them."""
    from hifi123.preprocess.pipeline import file_sha256

    opts = make_opts(tmp_path)
    make_done(opts, *pl.stage_names("hifi123"))
    lay = pl.Layout.of(opts)
    with open(lay.pre("_preprocess.json"), "w") as f:
        json.dump({"input": {"path": opts.image, "sha256": file_sha256(opts.image)}}, f)
    assert runs(plan_now(opts)) == []
    with open(opts.image, "r+b") as f:  # the user edits the photo in place
        f.seek(100)
        f.write(b"\x00\x01\x02")
    st = plan_now(opts)
    assert runs(st) == ["preprocess", "coarse", "refine", "export", "glb", "eval"]
    assert "changed since it was preprocessed" in st["preprocess"].why
    assert "preprocess runs again" in st["coarse"].why and st["coarse"].move_aside


# -------------------------------------------------------------------------- resumption decisions


def test_resume_nothing_done_runs_everything(tmp_path):
    opts = make_opts(tmp_path, method="makeit3d")
    assert runs(plan_now(opts)) == "preprocess coarse refine export glb ply eval".split()


def test_resume_coarse_done_chains_refine_from_its_checkpoint(tmp_path):
    opts = make_opts(tmp_path)
    make_done(opts, "preprocess", "coarse")
    st = plan_now(opts)
    assert st["preprocess"].skip.startswith("done") and st["coarse"].skip.startswith("done")
    assert runs(st) == ["refine", "export", "glb", "eval"]
    ckpt = os.path.join(trial(opts, "coarse"), "ckpts", "last.ckpt")
    assert f"system.geometry_convert_from={ckpt}" in st["refine"].argv
    assert st["refine"].resume is None and not any(
        a.startswith("resume=") for a in st["refine"].argv
    )
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
    assert (
        runs(st)[:2] == ["preprocess", "coarse"]
        and st["preprocess"].why == "the caption differs from --prompt"
    )
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
