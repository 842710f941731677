"""Test support for running hifi123 inside threestudio on a CPU-only machine.

threestudio imports a handful of GPU-only packages at module level (tiny-cuda-nn, nerfacc,
nvdiffrast, envlight, libigl, controlnet_aux). None of them is needed to check that our extension
loads and registers, so for tests we replace the ones that cannot be imported with permissive stub
modules, import threestudio, and load ``custom/hifi123`` the same way threestudio's ``launch.py``
loads extensions.

Nothing here imports threestudio at module import time.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import os
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple
from unittest import mock

#: top-level modules threestudio imports at module scope that need a GPU or a native build
GPU_ONLY_MODULES = ("tinycudann", "igl", "envlight", "nvdiffrast", "controlnet_aux", "nerfacc")

#: how to get the threestudio-marked tests to run (used in skip reasons and errors)
ENABLE_HINT = (
    "set THREESTUDIO_ROOT to a threestudio checkout (the directory holding the threestudio/ "
    "package) and run `bash install.sh --test`"
)

_REPO_ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------------------
# stub modules


class StubModule(types.ModuleType):
    """A module whose every public attribute is a ``MagicMock`` (created once, then cached)."""

    def __getattr__(self, attr: str):
        # dunders stay real so import machinery, pickling, inspect, `from x import *` behave
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        value = mock.MagicMock(name=f"{self.__name__}.{attr}")
        setattr(self, attr, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves a `StubModule` for a set of top-level names and everything below them."""

    def __init__(self) -> None:
        self.roots: set = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in self.roots:
            return None
        # every stub is a package, so `import a.b.c` resolves at any depth
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return StubModule(spec.name)

    def exec_module(self, module) -> None:
        module.__hifi123_stub__ = True


_FINDER = _StubFinder()


def _module_names(root: str) -> List[str]:
    return [k for k in list(sys.modules) if k == root or k.startswith(root + ".")]


def _forget(root: str) -> None:
    for key in _module_names(root):
        del sys.modules[key]


def is_stub(module) -> bool:
    return isinstance(module, StubModule)


def _really_importable(name: str) -> bool:
    """True when `name` imports for real (an installed package that raises on import, like
    tiny-cuda-nn without CUDA, counts as not importable)."""
    existing = sys.modules.get(name)
    if existing is not None:
        return not is_stub(existing)
    if name in _FINDER.roots:  # stubbed earlier: the real one was not importable then
        return False
    try:
        if importlib.util.find_spec(name) is None:
            return False
    except (ImportError, ValueError):
        return False
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any failure means "use the stub"
        _forget(name)
        return False
    return True


def _install_stubs(names: Iterable[str]) -> List[str]:
    """Stub each top-level name in `names` that cannot be imported for real.

    Returns the names (from `names`) that are stubbed after the call, including ones stubbed by an
    earlier call. Real, importable modules are never shadowed. Idempotent.
    """
    stubbed = []
    for name in names:
        if "." in name:
            raise ValueError(f"only top-level module names can be stubbed: {name!r}")
        if not _really_importable(name):
            _FINDER.roots.add(name)
            stubbed.append(name)
    if _FINDER.roots and _FINDER not in sys.meta_path:
        # first, so an installed-but-broken package (tinycudann without CUDA) is shadowed; the
        # finder only answers for the names in `roots`
        sys.meta_path.insert(0, _FINDER)
    return stubbed


def _remove_stubs(names: Iterable[str]) -> None:
    """Undo `_install_stubs` for `names`: stop serving them and drop their stub modules."""
    for name in names:
        _FINDER.roots.discard(name)
        if any(is_stub(sys.modules[k]) for k in _module_names(name)):
            _forget(name)
    if not _FINDER.roots and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def stub_gpu_only_modules() -> List[str]:
    """Stub those of `GPU_ONLY_MODULES` that cannot be imported for real; return their names."""
    return _install_stubs(GPU_ONLY_MODULES)


# ------------------------------------------------------------------------------------------------
# locating and importing threestudio


def _is_threestudio_root(path) -> bool:
    return bool(path) and Path(path, "threestudio", "__init__.py").is_file()


def find_threestudio_root() -> Optional[str]:
    """The directory that holds the ``threestudio/`` package, or None.

    Looked up in order: the ``THREESTUDIO_ROOT`` environment variable (when set, it alone decides),
    ``./threestudio`` under this repository's root (where ``install.sh`` clones it), then an
    already imported or importable ``threestudio`` package.
    """
    env = os.environ.get("THREESTUDIO_ROOT")
    if env:  # explicit: never silently fall back to another checkout
        return str(Path(env).resolve()) if _is_threestudio_root(env) else None
    local = _REPO_ROOT / "threestudio"
    if _is_threestudio_root(local):
        return str(local)
    loaded = sys.modules.get("threestudio")
    origin = getattr(loaded, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec("threestudio")
        except (ImportError, ValueError):
            spec = None
        # a namespace package (e.g. the checkout directory itself on sys.path) has no origin
        origin = spec.origin if spec is not None else None
    if origin and os.path.basename(origin) == "__init__.py":
        return str(Path(origin).resolve().parent.parent)
    return None


def import_threestudio(root: Optional[str] = None):
    """Stub the GPU-only modules, make `root` importable and import threestudio.

    `root` defaults to :func:`find_threestudio_root`. It goes first on ``sys.path`` because
    threestudio imports ``extern.*`` relative to it, as ``launch.py`` run from the root would.
    """
    root = root or find_threestudio_root()
    if root is None:
        raise ImportError(f"threestudio not found: {ENABLE_HINT}")
    if not _is_threestudio_root(root):
        raise ImportError(f"{root} has no threestudio/ package: {ENABLE_HINT}")
    root = str(Path(root).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    stub_gpu_only_modules()
    try:
        import threestudio
    except ImportError as e:
        # drop the half-imported package (and its extern/ from this root) so a retry starts clean
        _forget("threestudio")
        ext = sys.modules.get("extern")
        if str(getattr(ext, "__file__", "") or "").startswith(root + os.sep):
            _forget("extern")
        raise ImportError(
            f"`import threestudio` from {root} failed: {e}. Install threestudio's CPU-importable "
            f"dependencies with `THREESTUDIO_ROOT={root} bash install.sh --test` "
            "(they are listed in THREESTUDIO_CPU_PINS in install.sh)"
        ) from e
    return threestudio


# ------------------------------------------------------------------------------------------------
# loading an extension the way threestudio's launch.py does


def _load_custom_module(module_path: str) -> bool:
    """One entry of launch.py's custom-module loop, rewritten: a folder is imported as a package
    named after the folder, a single file under its path minus the extension; any exception is
    printed and reported as a failure, leaving the half-initialised module in sys.modules."""
    if os.path.isfile(module_path):
        name = os.path.splitext(module_path)[0]
        location = module_path
    else:
        name = os.path.basename(module_path)
        location = os.path.join(module_path, "__init__.py")
    try:
        spec = importlib.util.spec_from_file_location(name, location)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - launch.py catches everything, so do we
        print(traceback.format_exc())
        print(f"Cannot import {module_path} module for custom nodes:", e)
        return False
    return True


def load_extension_like_launch(ext_dir) -> Tuple[bool, str]:
    """Load `ext_dir` (e.g. ``custom/hifi123``) as threestudio's ``launch.py`` loads ``custom/*``.

    Returns ``(ok, output)`` where `output` is what launch.py would print for this entry: on
    failure the traceback, the "Cannot import" line and an import-times line ending in
    "(IMPORT FAILED)". The module stays in ``sys.modules`` under the folder's name, as it would.
    """
    module_path = os.fspath(ext_dir).rstrip("/" + os.sep) or os.fspath(ext_dir)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        start = time.perf_counter()
        ok = _load_custom_module(module_path)
        elapsed = time.perf_counter() - start
        print("\nImport times for custom modules:")
        print("{:6.1f} seconds{}:".format(elapsed, "" if ok else " (IMPORT FAILED)"), module_path)
        print()
    return ok, buf.getvalue()


@contextlib.contextmanager
def isolated_package(name: str) -> Iterator[None]:
    """Run the body with no ``name`` / ``name.*`` modules imported; afterwards put back the ones
    that were there before (dropping those the body imported), or, if there were none, keep what
    the body imported.

    Lets a test load a fresh copy of a package (as launch.py would in a new process) without
    leaving two copies of it visible to the rest of the session.
    """
    saved = {k: sys.modules[k] for k in _module_names(name)}
    _forget(name)
    try:
        yield
    finally:
        if saved:
            _forget(name)
            sys.modules.update(saved)
