"""hifi123: HiFi-123 and Make-It-3D as a threestudio extension.

`import hifi123` never imports threestudio. When threestudio is already imported (as it is when
threestudio's `launch.py` loads `custom/hifi123`), importing this package registers our components
in threestudio's registry. Call :func:`register_threestudio_components` to do it explicitly.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"

#: oldest threestudio release whose extension API (registry, configs, base classes) we support
MIN_THREESTUDIO_VERSION = "0.2.0"

#: registered names per component module, filled by the adapter modules as they are imported
REGISTERED_NAMES: list = []
#: name -> this copy's class (threestudio keeps the first copy's when the package loads twice)
REGISTERED_CLASSES: dict = {}


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check_threestudio_version(version: str) -> None:
    """Raise a clear error when threestudio is older than the API we are written against."""
    if _version_tuple(version) < _version_tuple(MIN_THREESTUDIO_VERSION):
        raise ImportError(
            f"hifi123 needs threestudio >= {MIN_THREESTUDIO_VERSION}, found {version}. "
            "Update your checkout: `cd $THREESTUDIO_ROOT && git pull`, or let "
            "`bash install.sh` clone the pinned release."
        )


def register_threestudio_components() -> list:
    """Import the threestudio adapters, which registers them. Returns the registered names."""
    import threestudio

    check_threestudio_version(getattr(threestudio, "__version__", "0"))
    from . import threestudio_ext  # noqa: F401  (importing registers)

    return list(REGISTERED_NAMES)


if (
    "threestudio" in sys.modules
):  # loaded by threestudio's launch.py (or after `import threestudio`)
    register_threestudio_components()
