"""`hifi123 run` exports: GLB from threestudio's OBJ, PLY of the point cloud."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hifi123.errors import InputError
from hifi123.run import export as ex
from PIL import Image
from run_helpers import (
    touch,
    write_textured_box,
)

# ---------------------------------------------------------------------------------- GLB and PLY


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
    np.testing.assert_array_equal(
        tex,
        np.asarray(Image.open(os.path.join(os.path.dirname(obj), "texture_kd.jpg")).convert("RGB")),
    )
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
    assert (
        head.startswith(b"ply\nformat binary_little_endian 1.0\n") and b"property uchar red" in head
    )
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
    (tmp_path / "a.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
        "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n0 1 2 10 20 30\n3 4 5 40 50 60\n"
    )
    p4, c4 = ex.read_ply(str(tmp_path / "a.ply"))
    assert p4.tolist() == [[0, 1, 2], [3, 4, 5]] and c4.tolist() == [[10, 20, 30], [40, 50, 60]]


def test_point_cloud_from_checkpoint(tmp_path):
    import torch

    g = torch.Generator().manual_seed(0)
    points = torch.randn(50, 3, generator=g)
    desc = torch.cat([torch.rand(50, 3, generator=g), torch.randn(50, 16, generator=g)], 1)
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "epoch": 0,
            "global_step": 10,
            "state_dict": {
                "geometry.points": points,
                "geometry.descriptors": desc,
                "renderer.unet.start.weight": torch.zeros(16, 19),
            },
        },
        ckpt,
    )
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
    np.savez(
        tmp_path / "pc.npz",
        positions=points.numpy(),
        colors=desc[:, :3].numpy(),
        reference_visible=np.ones(50, bool),
        source_view=np.zeros(50, np.int64),
    )
    ex.checkpoint_to_ply(str(tmp_path / "pc.npz"), str(tmp_path / "pc.ply"))
    pos, col = ex.read_ply(str(tmp_path / "pc.ply"))
    np.testing.assert_allclose(pos, points.numpy(), atol=1e-7)
    np.testing.assert_array_equal(col, (desc[:, :3].numpy() * 255 + 0.5).astype(np.uint8))
