"""Idempotent, prefixed registration into threestudio's registry."""
from __future__ import annotations

import threestudio

from .. import REGISTERED_NAMES

PREFIXES = ("hifi123-", "makeit3d-")


def register(name: str):
    """Like `threestudio.register`, but prefixed-only and safe to run twice for the same class."""
    if not name.startswith(PREFIXES):
        raise ValueError(f"registered names must start with one of {PREFIXES}: {name!r}")

    def decorator(cls):
        existing = threestudio.__modules__.get(name)
        if existing is not None:
            same = (existing.__module__.rsplit(".", 1)[-1], existing.__qualname__) == (
                cls.__module__.rsplit(".", 1)[-1],
                cls.__qualname__,
            )
            if not same:
                raise ValueError(
                    f"threestudio name {name!r} is already registered by {existing.__module__}; "
                    "another extension uses our prefix. Disable it by renaming its custom/ folder "
                    "with a `_disabled` suffix."
                )
            threestudio.__modules__[name] = cls
        else:
            threestudio.register(name)(cls)
        if name not in REGISTERED_NAMES:
            REGISTERED_NAMES.append(name)
        return cls

    return decorator
