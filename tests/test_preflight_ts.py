"""The threestudio-marked half of `test_preflight.py` (skipped without a threestudio checkout)."""

from __future__ import annotations

import pytest
from hifi123.errors import InputError

pytestmark = pytest.mark.threestudio


def test_refine_system_stops_on_missing_tets_before_building_the_geometry(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    from pathlib import Path

    from hifi123.testing.smoke import smoke_args
    from threestudio.utils.config import load_config

    repo = Path(__file__).resolve().parents[1]
    sample = repo / "custom" / "hifi123" / "assets" / "sample_rgba.png"
    cfg = load_config(
        str(repo / "custom" / "hifi123" / "configs" / "refine.yaml"),
        cli_args=[
            f"exp_root_dir={tmp_path}",
            f"data.image_path={sample}",
            *smoke_args("refine.yaml", str(Path(tiny_models["sd2-base"]).parent)),
            "system.geometry_convert_from=null",
        ],
    )
    monkeypatch.chdir(tmp_path)  # launched outside the threestudio root: no load/tets here
    with pytest.raises(
        InputError, match=r"system.geometry.isosurface_resolution=32 needs .*load/tets/32_tets.npz"
    ):
        threestudio_env.threestudio.find(cfg.system_type)(cfg.system)
