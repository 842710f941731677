"""threestudio's own, unmodified `launch.py`, end to end on CPU, as a user types it.

For both methods, in a throwaway threestudio root (threestudio's files linked, `custom/hifi123`
linked to this package), each step a separate `python launch.py ...` process run through
`hifi123.testing.cpu_threestudio` (GPU-only modules stubbed, pure-torch stand-ins, CPU Trainer)
with the `configs/smoke/` overrides on the tiny models:

    coarse --train  ->  refine --train (chained by the shipped @LAST default)
    -> refine --test  ->  --export  ->  --train resume=<refine>/ckpts/last.ckpt

(--test, --export and resume= use the trial's own configs/parsed.yaml, as users do; it keeps the
trial's timestamp, so threestudio writes into the same trial folder.)

Asserted: exit codes, the `save/` layout a user looks for, checkpoints that load with
`torch.load(weights_only=True)` (torch >= 2.6's default), that `@LAST` passes over a newer
unfinished coarse trial, and that resuming restores the RGSD fixed-view targets (HiFi-123) or the
point cloud (Make-It-3D) instead of recomputing them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from hifi123.run.plan import MESH_EXPORT
from hifi123.trials import latest_last_checkpoint
from launch_helpers import TWO_MORE_STEPS, from_trial, make_threestudio_root, run_launch

pytestmark = pytest.mark.threestudio

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "custom" / "hifi123"
TIMINGS: dict = {}
ROOT_HOLDER: dict = {}


@pytest.fixture(scope="module")
def ts_root(tmp_path_factory, threestudio_env):
    """A threestudio root of our own: threestudio's files linked, custom/hifi123 -> this package."""
    root = make_threestudio_root(tmp_path_factory.mktemp("ts-root"), threestudio_env.root)
    ROOT_HOLDER["root"] = root
    yield root
    for label, seconds in TIMINGS.items():  # shown with pytest -s
        print(f"[launch.py on CPU] {label:28s} {seconds:6.1f} s")


def launch(root: Path, label: str, *args: str) -> str:
    """Run `python launch.py ARGS` in `root` on the CPU; return its output; fail with its tail."""
    start = time.perf_counter()
    code, out = run_launch(root, *args)
    TIMINGS[label] = time.perf_counter() - start
    assert code == 0, f"{label}: launch.py exited {code}\n{out[-6000:]}"
    return out


def smoke(name: str, tiny: str):
    """The launcher's `--smoke NAME --tiny DIR`: the shipped config plus configs/smoke/NAME."""
    return ["--smoke", name, "--tiny", tiny]


def trials(root: Path, name: str):
    """Trial folders of the sample under outputs/<name>, oldest first."""
    base = root / "outputs" / name
    return sorted(p for p in base.glob("sample_rgba.png@*") if p.is_dir()) if base.is_dir() else []


def load_plain(ckpt: Path) -> dict:
    """The checkpoint loads with weights_only=True: plain containers and tensors only."""
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def add_unfinished_decoy(trial: Path) -> Path:
    """A newer trial folder of the same image whose run stopped early (step 1, no marker):
    threestudio's own @LAST would pick it; ours must not."""
    decoy = trial.parent / "sample_rgba.png@29991231-235959"
    shutil.copytree(trial, decoy)
    (decoy / "hifi123_finished.json").unlink()
    ckpt = load_plain(decoy / "ckpts" / "last.ckpt")
    ckpt["global_step"] = 1
    torch.save(ckpt, decoy / "ckpts" / "last.ckpt")
    return decoy


def chained_from(out: str) -> Path:
    """The checkpoint the system says it chained from (its `... -> PATH (newest finished trial)`
    line)."""
    (line,) = [
        ln
        for ln in out.splitlines()
        if "system.geometry_convert_from:" in ln and "newest finished" in ln
    ]
    path = Path(line.split(" -> ", 1)[1].split(" (newest finished trial)")[0].strip())
    return path if path.is_absolute() else (ROOT_HOLDER["root"] / path)


def test_hifi123_coarse_refine_test_export_resume(ts_root, tiny_models):
    from hifi123.run.export import obj_to_glb

    tiny = str(Path(tiny_models["sd2-base"]).parent)
    # ---- coarse --train
    launch(ts_root, "hifi123 coarse --train", *smoke("coarse.yaml", tiny), "--train")
    (coarse,) = trials(ts_root, "hifi123-coarse")
    ck = load_plain(coarse / "ckpts" / "last.ckpt")
    assert ck["global_step"] == 4 and (coarse / "hifi123_finished.json").is_file()
    assert (coarse / "save" / "it4-test.mp4").is_file() and (
        coarse / "save" / "all_training_images.png"
    ).is_file()
    decoy = add_unfinished_decoy(coarse)

    # ---- refine --train: the shipped default geometry_convert_from=...@LAST picks the finished
    # coarse run
    out = launch(ts_root, "hifi123 refine --train", *smoke("refine.yaml", tiny), "--train")
    assert chained_from(out) == coarse / "ckpts" / "last.ckpt" and decoy.name not in out
    assert out.count("computed 2 fixed-view RGSD targets") == 1
    (refine,) = trials(ts_root, "hifi123-refine")
    ck = load_plain(refine / "ckpts" / "last.ckpt")
    targets = ck["hifi123_rgsd"]["fixed_targets"]
    assert ck["global_step"] == 4 and torch.is_tensor(targets) and targets.shape[0] == 2
    assert (refine / "save" / "it4-test.mp4").is_file()

    # ---- --test of the refine trial: its parsed.yaml keeps the trial's timestamp, so threestudio
    # writes into the same folder; the video of the training run's own test pass goes first
    ckpt = refine / "ckpts" / "last.ckpt"
    (refine / "save" / "it4-test.mp4").unlink()
    launch(ts_root, "hifi123 refine --test", *from_trial(refine, "--test"))
    assert (refine / "save" / "it4-test.mp4").is_file()

    # ---- --export: threestudio's mesh exporter (OBJ + MTL + texture), then GLB as `hifi123 run`
    # does
    launch(
        ts_root,
        "hifi123 refine --export",
        *from_trial(refine, "--export"),
        *MESH_EXPORT,
    )
    exported = refine / "save" / "it4-export"
    obj = exported / "model.obj"
    assert (
        obj.is_file() and (exported / "model.mtl").is_file() and list(exported.glob("texture_kd.*"))
    )
    assert sum(1 for ln in obj.read_text().splitlines() if ln.startswith("f ")) > 20
    glb = obj_to_glb(str(obj))
    assert Path(glb).is_file() and Path(glb).stat().st_size > 1000

    # ---- resume=: two more steps; the fixed-view targets come from the checkpoint, bit for bit
    out = launch(
        ts_root,
        "hifi123 refine resume",
        *from_trial(refine, "--train"),
        *TWO_MORE_STEPS,
    )
    assert "fixed-view RGSD targets" not in out
    assert trials(ts_root, "hifi123-refine") == [refine]
    ck2 = load_plain(Path(latest_last_checkpoint(str(ckpt))))  # Lightning 2.0: last-v1.ckpt
    assert ck2["global_step"] == 6
    assert torch.equal(ck2["hifi123_rgsd"]["fixed_targets"], targets)


def test_makeit3d_coarse_refine_test_export_resume(ts_root, tiny_models):
    from hifi123.core.makeit3d.point_export import read_ply

    tiny = str(Path(tiny_models["sd2-base"]).parent)
    # ---- coarse --train, and its mesh export (the export step `hifi123 run --method makeit3d`
    # runs)
    launch(ts_root, "makeit3d coarse --train", *smoke("makeit3d-coarse.yaml", tiny), "--train")
    (coarse,) = trials(ts_root, "makeit3d-coarse")
    ck = load_plain(coarse / "ckpts" / "last.ckpt")  # Adan's betas were an OmegaConf list
    assert ck["global_step"] == 4 and (coarse / "save" / "it4-test.mp4").is_file()
    launch(
        ts_root,
        "makeit3d coarse --export",
        *from_trial(coarse, "--export"),
        *MESH_EXPORT,
    )
    assert (coarse / "save" / "it4-export" / "model.obj").is_file()
    decoy = add_unfinished_decoy(coarse)

    # ---- refine --train, chained by the shipped @LAST default
    out = launch(
        ts_root, "makeit3d refine --train", *smoke("makeit3d-refine.yaml", tiny), "--train"
    )
    assert out.count("reference view:") == 1  # the point cloud is built once, from the coarse model
    assert chained_from(out) == coarse / "ckpts" / "last.ckpt" and decoy.name not in out
    (refine,) = trials(ts_root, "makeit3d-refine")
    save = refine / "save"
    pos0, _ = read_ply(str(save / "it0-point-cloud" / "point_cloud.ply"))
    pos, col = read_ply(str(save / "it4-export" / "point_cloud.ply"))
    assert len(pos) == len(pos0) > 50 and col is not None
    assert (save / "it4-export" / "deferred_renderer.pt").is_file() and (
        save / "it4-orbit.mp4"
    ).is_file()
    assert (save / "it4-test.mp4").is_file()
    ck = load_plain(refine / "ckpts" / "last.ckpt")
    assert ck["global_step"] == 4

    ckpt = refine / "ckpts" / "last.ckpt"
    # ---- --test (same trial folder: parsed.yaml keeps its timestamp)
    (save / "it4-test.mp4").unlink()
    launch(ts_root, "makeit3d refine --test", *from_trial(refine, "--test"))
    assert (save / "it4-test.mp4").is_file()
    # ---- --export: the point cloud and the renderer weights of the checkpoint
    shutil.rmtree(save / "it4-export")
    launch(ts_root, "makeit3d refine --export", *from_trial(refine, "--export"))
    pos_e, _ = read_ply(str(save / "it4-export" / "point_cloud.ply"))
    assert (save / "it4-export" / "deferred_renderer.pt").is_file() and pos_e.shape == pos.shape
    # ---- resume=: the point cloud comes from the checkpoint, not rebuilt from the coarse model
    out = launch(
        ts_root,
        "makeit3d refine resume",
        *from_trial(refine, "--train"),
        *TWO_MORE_STEPS,
    )
    assert "reference view:" not in out  # the cloud builder's first log line
    pos6, _ = read_ply(str(save / "it6-export" / "point_cloud.ply"))
    assert (
        pos6.shape == pos.shape
        and load_plain(Path(latest_last_checkpoint(str(ckpt))))["global_step"] == 6
    )
