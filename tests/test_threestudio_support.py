"""Our threestudio test support: GPU-module stubs, the launch.py-style loader, and (marked) the
hifi123 extension loading into a real threestudio checkout."""

from __future__ import annotations

import importlib
import sys
import textwrap
from unittest import mock

import pytest
from hifi123.testing import threestudio_stubs as stubs

FAKE = "hifi123_fake_gpu_mod"


def _forget(prefix: str) -> None:
    for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
        del sys.modules[key]


@pytest.fixture
def fake_stub():
    """Stub the made-up module FAKE for one test, then remove every trace of it."""
    yield stubs._install_stubs([FAKE])
    stubs._remove_stubs([FAKE])
    assert FAKE not in sys.modules


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


# ------------------------------------------------------------------------------------------------
# stub finder


def test_stub_finder_serves_fake_module_and_submodules(fake_stub):
    assert fake_stub == [FAKE]
    import hifi123_fake_gpu_mod.sub  # noqa: F401
    from hifi123_fake_gpu_mod.sub.deeper import Thing

    mod = sys.modules[FAKE]
    assert stubs.is_stub(mod) and stubs.is_stub(sys.modules[f"{FAKE}.sub"])
    assert sys.modules[f"{FAKE}.sub"] is mod.sub  # the import bound the submodule on its parent
    assert isinstance(Thing, mock.MagicMock)
    # any attribute works, is cached, and can be called / chained
    assert mod.Encoding is mod.Encoding
    assert isinstance(mod.Encoding(3, {"otype": "HashGrid"}).forward(), mock.MagicMock)
    # dunders stay real: the import machinery must not see a mock
    assert not hasattr(mod, "__all__")
    assert mod.__path__ == []


def test_stub_finder_never_shadows_a_real_module():
    import json

    assert stubs._install_stubs(["json", "colorsys"]) == []
    assert sys.modules["json"] is json and json.dumps([1]) == "[1]"
    assert not stubs.is_stub(importlib.import_module("colorsys"))


def test_stub_install_is_idempotent(fake_stub):
    first = importlib.import_module(FAKE)
    assert stubs._install_stubs([FAKE]) == [FAKE]
    assert stubs._install_stubs([FAKE, "json"]) == [FAKE]
    assert sum(f is stubs._FINDER for f in sys.meta_path) == 1
    assert importlib.import_module(FAKE) is first


def test_installed_but_broken_module_is_stubbed(tmp_path, monkeypatch):
    # like tiny-cuda-nn on a machine without CUDA: installed, but raises on import
    name = "hifi123_broken_gpu_mod"
    _write(tmp_path / name / "__init__.py", "raise OSError('no CUDA device')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert stubs._install_stubs([name]) == [name]
        assert stubs.is_stub(importlib.import_module(name))
    finally:
        stubs._remove_stubs([name])
    assert name not in sys.modules


def test_stub_gpu_only_modules():
    before = set(stubs._FINDER.roots)
    stubbed = stubs.stub_gpu_only_modules()
    try:
        assert set(stubbed) <= set(stubs.GPU_ONLY_MODULES)
        assert stubs.stub_gpu_only_modules() == stubbed
        for name in stubs.GPU_ONLY_MODULES:
            assert stubs.is_stub(importlib.import_module(name)) == (name in stubbed)
        if "nvdiffrast" in stubbed:
            import nvdiffrast.torch as dr

            assert isinstance(dr.RasterizeCudaContext, mock.MagicMock)
    finally:
        stubs._remove_stubs(set(stubbed) - before)


def test_only_top_level_names_can_be_stubbed():
    with pytest.raises(ValueError):
        stubs._install_stubs(["a.b"])


# ------------------------------------------------------------------------------------------------
# locating threestudio


def test_find_threestudio_root_honours_env(tmp_path, monkeypatch):
    _write(tmp_path / "threestudio" / "__init__.py", "")
    monkeypatch.setenv("THREESTUDIO_ROOT", str(tmp_path))
    assert stubs.find_threestudio_root() == str(tmp_path.resolve())
    # an explicit but wrong THREESTUDIO_ROOT never falls back to another checkout
    monkeypatch.setenv("THREESTUDIO_ROOT", str(tmp_path / "nowhere"))
    assert stubs.find_threestudio_root() is None


def test_import_threestudio_absent_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(stubs, "find_threestudio_root", lambda: None)
    with pytest.raises(ImportError, match="THREESTUDIO_ROOT"):
        stubs.import_threestudio()
    with pytest.raises(ImportError, match="no threestudio/ package"):
        stubs.import_threestudio(str(tmp_path))


# ------------------------------------------------------------------------------------------------
# launch.py-style loading


def test_load_extension_like_launch_hyphenated_package(tmp_path):
    ext = tmp_path / "my-ext"
    _write(ext / "__init__.py", "from .models.thing import VALUE\nfrom . import helper\n")
    _write(ext / "helper.py", "NAME = __name__\n")
    _write(ext / "models" / "thing.py", "VALUE = 42\n")  # a subfolder without __init__.py
    try:
        ok, output = stubs.load_extension_like_launch(ext)
        assert ok, output
        assert "(IMPORT FAILED)" not in output
        mod = sys.modules["my-ext"]
        assert mod.VALUE == 42
        assert mod.helper.NAME == "my-ext.helper"
        assert sys.modules["my-ext.models.thing"].VALUE == 42
    finally:
        _forget("my-ext")


def test_load_extension_like_launch_reports_import_failure(tmp_path):
    ext = tmp_path / "bad-ext"
    _write(ext / "__init__.py", "STARTED = True\nraise RuntimeError('boom from bad-ext')\n")
    try:
        ok, output = stubs.load_extension_like_launch(ext)
        assert not ok
        assert "(IMPORT FAILED)" in output
        assert "Traceback" in output and "boom from bad-ext" in output
        assert f"Cannot import {ext} module for custom nodes" in output
        # like launch.py, the half-initialised module stays behind
        assert sys.modules["bad-ext"].STARTED is True
    finally:
        _forget("bad-ext")


def test_load_extension_like_launch_single_file(tmp_path):
    path = tmp_path / "single.py"
    _write(path, "X = 1\n")
    name = str(tmp_path / "single")  # launch.py names a file module by its path minus ".py"
    try:
        ok, output = stubs.load_extension_like_launch(path)
        assert ok, output
        assert sys.modules[name].X == 1
    finally:
        sys.modules.pop(name, None)


def test_isolated_package_restores_original(tmp_path, monkeypatch):
    name = "hifi123_iso_pkg"
    _write(tmp_path / name / "__init__.py", "")
    _write(tmp_path / name / "sub.py", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    original = importlib.import_module(f"{name}.sub")
    try:
        with stubs.isolated_package(name):
            assert name not in sys.modules
            assert importlib.import_module(f"{name}.sub") is not original
        assert sys.modules[f"{name}.sub"] is original
    finally:
        _forget(name)


# ------------------------------------------------------------------------------------------------
# against a real threestudio checkout
