"""The CPU smoke configs (`configs/smoke/*.yaml`) as threestudio command-line overrides.

Each smoke file names the shipped stage config it shrinks (`base`) and holds nested `overrides`;
:func:`smoke_args` turns them into the `key=value` arguments that threestudio's `launch.py` (and
`load_config(..., cli_args=...)`) merge over the shipped YAML, with "{tiny}" replaced by the folder
of the tiny offline models. A shipped `-lowvram` variant uses the smoke file of its full version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[3]
SMOKE_DIR = REPO_ROOT / "configs" / "smoke"
SHIPPED_DIR = REPO_ROOT / "custom" / "hifi123" / "configs"


def smoke_file(config_name: str) -> Path:
    """The smoke file for a shipped config name (`coarse.yaml`, `refine-lowvram.yaml`, ...)."""
    stem = Path(config_name).name.replace("-lowvram", "")
    path = SMOKE_DIR / stem
    if not path.is_file():
        raise FileNotFoundError(f"no smoke config for {config_name}: expected {path}")
    return path


def _flatten(tree: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, path + "."))
        else:
            out.append((path, value))
    return out


def _fill(value: Any, tiny: str) -> Any:
    if isinstance(value, str):
        return value.replace("{tiny}", tiny)
    if isinstance(value, list):
        return [_fill(v, tiny) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, tiny) for k, v in value.items()}
    return value


def load_smoke(config_name: str) -> Dict[str, Any]:
    import yaml

    with open(smoke_file(config_name), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if set(data) != {"base", "overrides"}:
        raise ValueError(f"{smoke_file(config_name)}: expected exactly the keys base, overrides")
    return data


def smoke_args(config_name: str, tiny_root: str) -> List[str]:
    """`key=value` overrides (JSON values, which OmegaConf's dotlist parser reads as YAML)."""
    tiny = os.path.abspath(tiny_root)
    data = load_smoke(config_name)
    return [f"{k}={json.dumps(_fill(v, tiny))}" for k, v in _flatten(data["overrides"])]


def base_config(config_name: str) -> str:
    """The shipped config a smoke file shrinks, relative to a threestudio root."""
    return load_smoke(config_name)["base"]


def parse_blocks(cfg) -> Dict[str, str]:
    """Parse a loaded config's data block and every component block of its system through the
    registered classes' Configs, as threestudio does when it builds them (an unknown key raises
    TypeError); returns {part: registered name} of the components the system names."""
    import threestudio
    from threestudio.utils.config import parse_structured

    from ..threestudio_ext.systems.base import COMPONENT_PARTS

    parse_structured(threestudio.find(cfg.data_type).Config, cfg.data)
    sys_cfg = parse_structured(threestudio.find(cfg.system_type).Config, cfg.system)
    named = {}
    for part in COMPONENT_PARTS:
        kind = getattr(sys_cfg, f"{part}_type", "")
        if kind:
            parse_structured(threestudio.find(kind).Config, getattr(sys_cfg, part))
            named[part] = kind
    return named
