"""Every shipped stage config has a CPU smoke version (`configs/smoke/`), and both parse through the
Config of every component they name, with threestudio's own loader (unknown keys raise there)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.threestudio

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (REPO / "custom" / "hifi123" / "configs").glob("*.yaml"))


def test_every_shipped_config_has_a_smoke_file():
    from hifi123.testing.smoke import load_smoke, smoke_file

    assert len(SHIPPED) == 10
    for name in SHIPPED:
        smoke = load_smoke(name)
        assert (REPO / smoke["base"]).is_file(), (name, smoke["base"])
        assert Path(smoke["base"]).name == name.replace("-lowvram", ""), name
        assert smoke_file(name).parent == REPO / "configs" / "smoke"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_and_smoke_configs_parse_with_threestudio(
    name, threestudio_env, tiny_models, tmp_path, monkeypatch
):
    from hifi123.testing.smoke import parse_blocks, smoke_args
    from threestudio.utils.config import load_config

    monkeypatch.chdir(REPO)
    path = str(REPO / "custom" / "hifi123" / "configs" / name)
    shipped = load_config(path, cli_args=[f"exp_root_dir={tmp_path}"])
    named = parse_blocks(shipped)
    tiny = str(Path(tiny_models["sd2-base"]).parent)
    smoke = load_config(path, cli_args=[f"exp_root_dir={tmp_path}", *smoke_args(name, tiny)])
    smoke_named = parse_blocks(smoke)
    # the smoke version runs on CPU: our pure-torch NeRF renderer, tiny local models, toy sizes
    assert smoke.trainer.max_steps <= 6 and smoke.data.device == "cpu"
    assert smoke_named.get("renderer") != "nerf-volume-renderer"
    for part in ("guidance", "prompt_processor"):
        if part in smoke_named:
            assert str(smoke.system[part].pretrained_model_name_or_path).startswith(tiny)
    assert set(smoke_named) <= set(named)  # it drops (guidance_3d), never adds, a component
