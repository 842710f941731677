"""`makeit3d-system` with `stage: refine` on CPU: a Lightning fit builds the point cloud from a
coarse checkpoint, trains descriptors and the deferred U-Net, and writes the PLY, weights and orbit
video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hifi123.testing.cpu_threestudio import quiet_cpu_trainer

pytestmark = pytest.mark.threestudio

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "custom" / "hifi123" / "configs"
SAMPLE = ROOT / "custom" / "hifi123" / "assets" / "sample_rgba.png"


def test_refine_stage_fits_and_exports_on_cpu(threestudio_env, tiny_models, tmp_path):
    from hifi123.core.makeit3d.point_export import read_ply
    from hifi123.testing.torch_renderer import register_torch_volume_renderer
    from threestudio.utils.config import load_config

    torch.set_num_threads(2)
    find = threestudio_env.threestudio.find
    from hifi123.testing.coarse_trial import write_coarse_trial

    ckpt = write_coarse_trial(tmp_path)
    cfg = load_config(
        str(CONFIGS / "makeit3d-refine.yaml"),
        cli_args=[
            f"exp_root_dir={tmp_path}",
            f"system.geometry_convert_from={ckpt}",
            f"data.image_path={SAMPLE}",
            "trainer.max_steps=2",
        ],
    )
    size = 32
    cfg.data.update(device="cpu", height=size, width=size)
    cfg.data.random_camera.update(
        height=size, width=size, eval_height=size, eval_width=size, n_val_views=1
    )
    s = cfg.system
    s.refine.update(
        reference_image_path=str(SAMPLE),
        coarse_renderer_type=register_torch_volume_renderer(),
        coarse_renderer={"radius": 1.0, "num_samples_per_ray": 16},
        video_frames=3,
        export_every_n_steps=0,
        contextual_model=tiny_models["vgg19"],
    )
    s.refine.point_cloud.update(
        resolution=size, n_azimuths=3, elevations_deg=[0.0], max_points=20000
    )
    s.renderer.point_radius_px = 1.0
    s.guidance.update(
        pretrained_model_name_or_path=tiny_models["sd2-base"],
        clip_backend="transformers",
        clip_model=tiny_models["clip"],
        clip_pretrained=None,
    )
    dm = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system)
    system.set_save_dir(str(tmp_path / "save"))
    assert system.geometry.n_points == 0  # built in on_fit_start, from the whole coarse model
    trainer = quiet_cpu_trainer(2)
    trainer.fit(system, datamodule=dm)
    n = system.geometry.n_points
    assert trainer.global_step == 2 and n > 50
    save = tmp_path / "save"
    pos0, _ = read_ply(str(save / "it0-point-cloud" / "point_cloud.ply"))
    pos, col = read_ply(str(save / "it2-export" / "point_cloud.ply"))
    assert len(pos0) == len(pos) == n and np.allclose(
        pos, system.geometry.positions.numpy(), atol=1e-6
    )
    assert col.dtype == np.uint8 and (save / "it2-export" / "deferred_renderer.pt").is_file()
    assert (save / "it2-orbit.mp4").is_file() or list(save.glob("it2-orbit.*"))
