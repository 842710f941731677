"""The evaluation protocols as data: `configs/eval/<protocol>.yaml` at the repository root holds
each protocol's default metric models, its settings, the table columns and the papers' numbers.
Kept free of heavy imports so that building the `hifi123` argument parser does not import torch."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict

from ..errors import InputError

#: configs/eval of the checkout this package runs from (install.sh installs it in editable mode)
PROTOCOL_DIR = Path(__file__).resolve().parents[3] / "configs" / "eval"
PROTOCOLS = ("single-view", "gso")


@functools.lru_cache(maxsize=None)
def protocol(name: str) -> Dict[str, Any]:
    """The protocol file `configs/eval/<name>.yaml`, read once."""
    import yaml

    path = PROTOCOL_DIR / f"{name}.yaml"
    if name not in PROTOCOLS or not path.is_file():
        raise InputError(
            f"evaluation protocol {name!r}: {path} not found",
            f"one of {list(PROTOCOLS)}, read from configs/eval/ of the hifi123 checkout",
            "install hifi123 from its repository in editable mode (`bash install.sh`, or "
            "`pip install -e .` in the checkout) so that configs/eval/ is next to the package",
        )
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    for key in ("title", "models", "settings", "columns", "reported"):
        if key not in data:
            raise InputError(
                f"{path}: no `{key}`",
                "title, models, settings, columns, reported",
                f"restore {path.name} from the repository",
            )
    return data


def _default_models() -> Dict[str, str]:
    models: Dict[str, str] = {}
    for name in PROTOCOLS:
        for key, ref in protocol(name)["models"].items():
            if models.setdefault(key, ref) != ref:
                raise InputError(
                    f"configs/eval: two default `{key}` models ({models[key]}, {ref})",
                    "one default per metric model",
                    "make the protocol files agree",
                )
    return models


#: the default metric-model references of both protocols (decision 19)
DEFAULT_EVAL_MODELS: Dict[str, str] = _default_models()
