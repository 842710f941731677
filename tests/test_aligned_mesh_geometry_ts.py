"""`hifi123-custom-mesh` (decision 31): threestudio's `custom-mesh` that keeps an aligned mesh
where `hifi123 align-mesh` put it, refuses what it cannot texture, and fits its texture field to
the mesh's colours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hifi123.errors import InputError

pytestmark = pytest.mark.threestudio

SMALL = {
    "radius": 1.0,
    "texture_init_steps": 150,
    "texture_init_points": 4096,
    "texture_init_lr": 0.02,
    "pos_encoding_config": {
        "otype": "HashGrid",
        "n_levels": 6,
        "n_features_per_level": 2,
        "log2_hashmap_size": 14,
        "base_resolution": 4,
        "per_level_scale": 1.6,
    },
    "mlp_network_config": {
        "otype": "VanillaMLP",
        "activation": "ReLU",
        "output_activation": "none",
        "n_neurons": 32,
        "n_hidden_layers": 1,
    },
}


def colored_mesh(path, offset=(0.1, -0.2, 0.05), radius=0.4):
    """An off-centre sphere, red on +x, blue on -x (an alignment's output as it is written)."""
    import trimesh

    s = trimesh.creation.icosphere(3, radius=radius)
    v = np.asarray(s.vertices)
    col = np.where(v[:, :1] > 0, [230, 20, 20, 255], [20, 20, 230, 255]).astype(np.uint8)
    trimesh.Trimesh(v + offset, s.faces, vertex_colors=col, process=False).export(path)
    return v + offset, col


def build(threestudio_env, path, **kw):
    cfg = {**SMALL, "shape_init": f"mesh:{path}", **kw}
    return threestudio_env.threestudio.find("hifi123-custom-mesh")(cfg)


def test_the_aligned_mesh_stays_where_it_was_put(threestudio_env, tmp_path):
    path = tmp_path / "aligned_mesh.ply"
    v, _ = colored_mesh(path)
    geo = build(threestudio_env, path)
    placed = torch.as_tensor(v, dtype=torch.float32)
    assert torch.allclose(geo.isosurface().v_pos, placed, atol=1e-6)
    assert geo.aligned_camera is None  # no alignment.json beside it
    # threestudio's own custom-mesh would re-centre (and rescale) it: the reason for the subclass
    plain = threestudio_env.threestudio.find("custom-mesh")(
        {k: SMALL[k] for k in ("radius", "pos_encoding_config", "mlp_network_config")}
        | {"shape_init": f"mesh:{path}", "shape_init_params": 0.4}
    )
    assert not torch.allclose(plain.isosurface().v_pos.cpu(), geo.isosurface().v_pos, atol=1e-3)
    # the state dict is custom-mesh's
    assert set(geo.state_dict()) == set(plain.state_dict())
    record = {"reference_camera": {"elevation_deg": 7.0}}
    (tmp_path / "alignment.json").write_text(json.dumps(record))
    assert build(threestudio_env, path).aligned_camera == {"elevation_deg": 7.0}


def test_bad_meshes_are_refused_by_name(threestudio_env, tmp_path):
    far = tmp_path / "far.ply"
    colored_mesh(far, offset=(0.9, 0.0, 0.0))
    with pytest.raises(InputError, match="far.ply reaches .* outside the texture field's box"):
        build(threestudio_env, far)
    with pytest.raises(InputError, match="not found: .*nothing.obj"):
        build(threestudio_env, tmp_path / "nothing.obj")
    with pytest.raises(InputError, match="shape_init"):
        threestudio_env.threestudio.find("hifi123-custom-mesh")({**SMALL, "shape_init": ""})


def test_texture_is_fitted_to_the_mesh_colours(threestudio_env, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "aligned_mesh.ply"
    v, col = colored_mesh(path)
    geo = build(threestudio_env, path)
    probe = torch.as_tensor(v[::7], dtype=torch.float32)
    target = torch.as_tensor(col[::7, :3] / 255.0, dtype=torch.float32)
    before = torch.nn.functional.mse_loss(torch.sigmoid(geo(probe)["features"]), target)
    mse = geo.fit_texture_to_colors(torch.sigmoid)
    after = torch.nn.functional.mse_loss(torch.sigmoid(geo(probe)["features"]), target)
    assert before > 0.1 and mse < 0.02 and after < 0.02, (float(before), mse, float(after))
    # no colours: nothing to fit
    import trimesh

    bare = tmp_path / "bare.obj"
    trimesh.creation.icosphere(2, radius=0.3).export(bare)
    assert build(threestudio_env, bare).fit_texture_to_colors() is None


def test_a_reference_camera_other_than_the_alignments_is_refused():
    import math
    from types import SimpleNamespace

    from hifi123.threestudio_ext.systems.hifi123 import HiFi123System

    aligned = {"elevation_deg": 7.25, "azimuth_deg": 0.0, "distance": 3.8, "fovy_deg": 20.0}
    fake = SimpleNamespace(geometry=SimpleNamespace(aligned_camera=aligned))

    def batch(elevation, fovy=20.0):
        return {
            "elevation": torch.tensor([elevation]),
            "azimuth": torch.tensor([0.0]),
            "camera_distances": torch.tensor([3.8]),
            "fovy": torch.tensor([math.radians(fovy)]),
        }

    HiFi123System.check_aligned_camera(fake, batch(7.25))  # the same camera: accepted
    with pytest.raises(InputError) as err:
        HiFi123System.check_aligned_camera(fake, batch(0.0, fovy=30.0))
    text = str(err.value)
    assert "data.default_elevation_deg=0 but the alignment used 7.25" in text
    assert "data.default_fovy_deg=30" in text
    assert "pass data.default_elevation_deg=7.25 data.default_fovy_deg=20" in text
