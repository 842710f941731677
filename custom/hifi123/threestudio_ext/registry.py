"""Prefixed registration through threestudio's public `threestudio.register`.

The package can be imported twice in one process (once as the installed `hifi123`, once by
threestudio's `launch.py` from `custom/hifi123`); the second copy's classes have the same module
path and name as the first's. threestudio refuses a name twice, so a twin leaves the first
registration in place (both copies run the same code) instead of touching threestudio's registry
dict. A different class under one of our names (another extension using our prefix) is an error.
"""

from __future__ import annotations

import threestudio

from .. import REGISTERED_CLASSES, REGISTERED_NAMES

PREFIXES = ("hifi123-", "makeit3d-")


def _qualified(cls) -> tuple:
    # the last module component: "hifi123.x.y" and a copy loaded as "<folder>.x.y" compare equal
    return cls.__module__.rsplit(".", 1)[-1], cls.__qualname__


def register(name: str):
    """Like `threestudio.register`, but prefixed-only and safe to run twice for the same class."""
    if not name.startswith(PREFIXES):
        raise ValueError(f"registered names must start with one of {PREFIXES}: {name!r}")

    def decorator(cls):
        existing = (
            threestudio.__modules__.get(name) if hasattr(threestudio, "__modules__") else None
        )
        if existing is None:
            threestudio.register(name)(cls)
        elif existing is not cls and _qualified(existing) != _qualified(cls):
            raise ValueError(
                f"threestudio name {name!r} is already registered by {existing.__module__}; "
                "another extension uses our prefix. Disable it by renaming its custom/ folder "
                "with a `_disabled` suffix."
            )
        cls._hifi123_name = name
        REGISTERED_CLASSES[name] = cls  # this copy's class (tests point the registry at it)
        if name not in REGISTERED_NAMES:
            REGISTERED_NAMES.append(name)
        return cls

    return decorator


class StrictConfig:
    """Mixin for our registered BaseObject / BaseModule components: config keys their `Config`
    does not declare are one clear error (`hifi123.errors.check_config_keys`) instead of
    threestudio's bare `TypeError: unexpected keyword argument`. `config_path` names the block."""

    config_path = "system.guidance"
    foreign_hint = True  # a swapped component's block may still carry the old one's keys

    def __init__(self, cfg=None, *args, **kwargs):
        if cfg is not None and hasattr(cfg, "keys"):
            from ..errors import check_config_keys, check_config_numbers, check_config_types

            owner = getattr(type(self), "_hifi123_name", type(self).__name__)
            check_config_keys(
                cfg, self.Config.__dataclass_fields__, self.config_path, owner, self.foreign_hint
            )
            check_config_numbers(cfg, self.config_path, owner)
            check_config_types(self.Config, cfg, self.config_path, owner)
            check_declared_ranges(cfg, self.Config, self.config_path)
        super().__init__(cfg, *args, **kwargs)


def check_declared_ranges(cfg, config_cls, path: str) -> None:
    """The ranges a threestudio `Config` declares (`core.settings.setting`), checked on the
    config block as threestudio will parse it; wrong types are left to threestudio's parser."""
    from threestudio.utils.config import parse_structured

    from ..core.settings import check_ranges

    try:
        parsed = parse_structured(config_cls, cfg)
    except Exception:  # noqa: BLE001 - a type error: threestudio's own parse reports it next
        return
    check_ranges(parsed, config_cls, path)


def check_guidance_call(name: str, args: tuple, rgb_as_latents: bool, latents_ok: bool) -> None:
    """threestudio calls a guidance as `guidance(rgb, [prompt_utils,] **batch)`: refuse more
    positional arguments (cameras passed by position would be misread), and latents where the
    guidance encodes the render itself (`latents_ok=False`)."""
    if rgb_as_latents and not latents_ok:
        raise ValueError(
            f"{name} takes the rendered image, not latents: call it with rgb_as_latents=False"
        )
    if len(args) > 1:
        raise TypeError(
            f"{name} takes rgb and at most one positional argument (prompt_utils); "
            "pass elevation/azimuth/camera_distances by keyword (**batch)"
        )
