"""threestudio's own, unmodified `launch.py` runs `refine-mesh.yaml` end to end on CPU, with the
harness of `test_launch_e2e_ts.py` (`hifi123.testing.cpu_threestudio`, the smoke overrides, the
tiny models):

    hifi123 align-mesh (the sample's mesh in a y-up frame, with vertex colours)
    -> refine-mesh --train -> --test -> --export (OBJ + MTL + texture, then GLB)
    -> --train resume=<trial>/ckpts/last.ckpt

Asserted: the frozen geometry is the aligned mesh, the reference camera was checked against the
alignment's, the texture field was fitted to the mesh's colours, the RGSD fixed-view targets are
computed once and restored on resume, and the export has the mesh's triangles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hifi123.run.plan import MESH_EXPORT
from launch_helpers import TWO_MORE_STEPS, from_trial, make_threestudio_root, run_launch

# four launch.py processes: ~2.5 min on a 2-core CPU box
pytestmark = [pytest.mark.threestudio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "custom" / "hifi123"
SAMPLE = EXTENSION / "assets" / "sample_rgba.png"


@pytest.fixture(scope="module")
def ts_root(tmp_path_factory, threestudio_env):
    return make_threestudio_root(tmp_path_factory.mktemp("ts-root-mesh"), threestudio_env.root)


def launch(root: Path, *args: str, ok: bool = True) -> str:
    code, out = run_launch(root, *args)
    assert (code == 0) == ok, f"launch.py exited {code}\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """The sample's mesh as a feed-forward model might give it (y up, its own scale and origin,
    coloured by the sample's albedo), aligned by `hifi123 align-mesh`'s code."""
    import trimesh
    from hifi123.commands.align_mesh import align_files
    from hifi123.core.mesh_align import axis_rotation
    from hifi123.sample.make_sample import sample_albedo
    from hifi123.sample.mesh import sample_mesh

    tmp = tmp_path_factory.mktemp("mesh")
    v, f = sample_mesh(detail=12)  # ~2k triangles: the CPU rasteriser stand-in is brute force
    colors = (np.clip(sample_albedo(v), 0, 1) * 255).astype(np.uint8)
    moved = v @ axis_rotation("+y", "+z") * 2.5 + [1.0, 0.0, -3.0]
    trimesh.Trimesh(moved, f, vertex_colors=colors, process=False).export(tmp / "model.glb")
    record = align_files(
        str(tmp / "model.glb"), str(SAMPLE), str(tmp / "aligned"), log=lambda *_: None
    )
    assert record["silhouette_iou"] > 0.95
    return Path(record["paths"]["aligned_mesh.ply"]), len(f), record["pose"]["elevation"]


def test_refine_mesh_train_test_export_resume(ts_root, tiny_models, aligned):
    from hifi123.run.export import obj_to_glb

    mesh_path, n_faces, elevation = aligned
    tiny = str(Path(tiny_models["sd2-base"]).parent)
    smoke = ["--smoke", "refine-mesh.yaml", "--tiny", tiny]
    # the mesh and the elevation the alignment fitted, as `hifi123 run` passes them
    shape = f"system.geometry.shape_init=mesh:{mesh_path}"
    elev = f"data.default_elevation_deg={elevation:.6g}"
    # ---- --train (the camera check itself: test_aligned_mesh_geometry_ts.py)
    out = launch(ts_root, *smoke, "--train", shape, elev)
    assert "the reference camera is the mesh's alignment's" in out
    assert "texture fitted to the mesh's colours" in out
    assert out.count("computed 2 fixed-view RGSD targets") == 1
    (trial,) = [
        p
        for p in (ts_root / "outputs" / "hifi123-refine-mesh").glob("sample_rgba.png@*")
        if (p / "ckpts" / "last.ckpt").is_file()
    ]
    ck = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    import trimesh

    mesh = trimesh.load(mesh_path, process=False)
    state = ck["state_dict"]
    assert torch.allclose(
        state["geometry.v_buffer"], torch.as_tensor(mesh.vertices, dtype=torch.float32)
    )
    assert state["geometry.t_buffer"].shape == (n_faces, 3)  # the geometry stayed frozen
    targets = ck["hifi123_rgsd"]["fixed_targets"]
    assert ck["global_step"] == 4 and targets.shape[0] == 2
    assert (trial / "save" / "it4-test.mp4").is_file()
    # ---- --test and --export from the trial's parsed.yaml
    ckpt = trial / "ckpts" / "last.ckpt"
    (trial / "save" / "it4-test.mp4").unlink()
    launch(ts_root, *from_trial(trial, "--test"))
    assert (trial / "save" / "it4-test.mp4").is_file()
    launch(
        ts_root,
        *from_trial(trial, "--export"),
        *MESH_EXPORT,
    )
    obj = trial / "save" / "it4-export" / "model.obj"
    assert obj.is_file() and list(obj.parent.glob("texture_kd.*"))
    assert sum(1 for ln in obj.read_text().splitlines() if ln.startswith("f ")) == n_faces
    assert Path(obj_to_glb(str(obj))).stat().st_size > 1000
    # ---- resume=: the fixed-view targets come from the checkpoint
    out = launch(
        ts_root,
        *from_trial(trial, "--train"),
        *TWO_MORE_STEPS,
    )
    assert "fixed-view RGSD targets" not in out and "texture fitted" not in out
    from hifi123.trials import latest_last_checkpoint

    ck2 = torch.load(latest_last_checkpoint(str(ckpt)), map_location="cpu", weights_only=True)
    assert ck2["global_step"] == 6 and torch.equal(ck2["hifi123_rgsd"]["fixed_targets"], targets)
