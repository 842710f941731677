"""The threestudio-marked half of `test_hifi123_configs.py` (skipped without a threestudio
checkout)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "custom" / "hifi123" / "configs"
STAGES = ["coarse.yaml", "coarse-lowvram.yaml", "refine.yaml", "refine-lowvram.yaml"]

pytestmark = pytest.mark.threestudio


@pytest.mark.parametrize("name", STAGES)
def test_stage_config_parses_with_no_unknown_keys_and_every_lambda(threestudio_env, name, tmp_path):
    import threestudio
    from hifi123.testing.smoke import parse_blocks
    from hifi123.threestudio_ext.systems.hifi123 import HiFi123System
    from threestudio.utils.config import load_config, parse_structured

    cfg = load_config(str(CONFIGS / name), cli_args=[f"exp_root_dir={tmp_path}"])
    assert (
        cfg.system_type == "hifi123-system" and threestudio.find(cfg.system_type) is HiFi123System
    )
    parse_blocks(cfg)  # every block through its component's Config: unknown keys raise TypeError
    sys_cfg = parse_structured(HiFi123System.Config, cfg.system)
    terms = {f"lambda_{t}" for t in HiFi123System.loss_terms_for(sys_cfg.refinement)}
    assert set(cfg.system.loss.keys()) == terms  # every lambda read, none ignored
    if sys_cfg.refinement:
        assert sys_cfg.guidance_type == "hifi123-rgsd-guidance"
        assert sys_cfg.renderer_type == "hifi123-nvdiff-rasterizer"
        assert cfg.system.geometry.fix_geometry is True
        assert "@LAST" in sys_cfg.geometry_convert_from
    else:
        assert (
            sys_cfg.guidance_type == "deep-floyd-guidance"
            and sys_cfg.guidance_3d_type == "zero123-guidance"
        )
    assert cfg.data.image_path == "custom/hifi123/assets/sample_rgba.png"
