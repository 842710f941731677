"""Never destroy a user's file: every command refuses, before any work, an output path that is one
of its inputs or that two outputs share, and `hifi123 tiny-models` writes only into an empty
folder or one it wrote before. Each case checks the exit code, that the message names the files,
and that every input is byte-identical afterwards."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from hifi123 import cli
from hifi123.models import loader

SAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "custom", "hifi123", "assets", "sample_rgba.png"
)


def _digest(*paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr(loader, "load_diffusion", boom)


def test_tiny_models_never_replace_a_folder_of_real_models(tmp_path, capsys):
    real = tmp_path / "sd2"
    (real / "unet").mkdir(parents=True)
    (real / "unet" / "config.json").write_text('{"real": true}')
    (real / "model_index.json").write_text("{}")
    before = _digest(real / "unet" / "config.json", real / "model_index.json")
    code, err = _run(capsys, "tiny-models", "--out", real)
    assert (
        code == 2
        and "did not write" in err
        and "model_index.json" in err
        and "Traceback" not in err
    )
    assert _digest(real / "unet" / "config.json", real / "model_index.json") == before
    assert sorted(os.listdir(real)) == ["model_index.json", "unet"]


def test_eval_refuses_a_report_path_that_is_an_input(tmp_path, capsys):
    ref = shutil.copy(SAMPLE, tmp_path / "ref_rgba.png")
    views = tmp_path / "views"
    views.mkdir()
    view = shutil.copy(SAMPLE, views / "0.png")
    before = _digest(ref, view)
    for out in (ref, view):
        code, err = _run(
            capsys, "eval", "single-view", "--ref", ref, "--views", views, "--out", out, "--tiny"
        )
        assert code == 2 and "is an input" in err and str(out) in err and "Traceback" not in err
    # the markdown written next to the JSON counts too: report.json would write ref_rgba.md
    md_input = shutil.copy(SAMPLE, tmp_path / "report.md")
    code, err = _run(
        capsys,
        "eval",
        "single-view",
        "--ref",
        md_input,
        "--views",
        views,
        "--out",
        tmp_path / "report.json",
        "--tiny",
    )
    assert code == 2 and "markdown" in err
    assert _digest(ref, view) == before


def test_rgnv_refuses_outputs_over_inputs_and_colliding_names(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    coarse = shutil.copy(SAMPLE, out / "comparison.png")  # an input where the sheet would go
    before = _digest(coarse)
    code, err = _run(
        capsys, "rgnv", "--ref", SAMPLE, "--coarse", coarse, "--out", out, "--model", "x"
    )
    assert code == 2 and "comparison sheet" in err and "is an input" in err
    assert _digest(coarse) == before
    # two views named the same in different folders would overwrite each other's result
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = (
        shutil.copy(SAMPLE, tmp_path / "a" / "v_rgba.png"),
        shutil.copy(SAMPLE, tmp_path / "b" / "v_rgba.png"),
    )
    code, err = _run(
        capsys, "rgnv", "--ref", SAMPLE, "--coarse", a, b, "--out", tmp_path / "o2", "--model", "x"
    )
    assert code == 2 and "both be written" in err and "v_enhanced.png" in err
    assert not (tmp_path / "o2" / "v_enhanced.png").exists()


def test_a_decompression_bomb_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from PIL import Image

    big = tmp_path / "big_rgba.png"
    Image.new("RGBA", (64, 64)).save(big)
    # 64 x 64 > 2 x 1000: Pillow refuses to decode
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    code, err = _run(
        capsys, "rgnv", "--ref", big, "--coarse", SAMPLE, "--out", tmp_path / "o", "--model", "x"
    )
    assert (
        code == 2
        and "too large to decode safely" in err
        and str(big) in err
        and "Traceback" not in err
    )


def test_a_truncated_weights_file_is_named_with_the_fix(tiny_models, tmp_path, monkeypatch):
    from hifi123.errors import ModelNotFoundError

    monkeypatch.undo()  # this test loads a model on purpose
    model = shutil.copytree(tiny_models["sd2-depth"], tmp_path / "sd2-depth")
    weights = os.path.join(model, "unet", "diffusion_pytorch_model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ModelNotFoundError) as err:
        loader.load_diffusion(str(model), "--model")
    text = err.value.render()
    assert "truncated or corrupt" in text and weights in text and "download the model again" in text


def test_a_closed_pipe_ends_a_command_quietly(tmp_path):
    import subprocess
    import sys

    code = (
        "import argparse, sys\nfrom hifi123.commands import dispatch\n"
        "p = argparse.ArgumentParser(); s = p.add_subparsers(dest='c')\n"
        "q = s.add_parser('spam'); q.set_defaults(func=lambda a: [print('x' * 80) for _ in "
        "range(200000)] and 0)\n"
        "sys.exit(dispatch(p, ['spam']))\n"
    )
    proc = subprocess.run(
        f'{sys.executable} -c "{code}" | head -1',
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert (
        proc.stdout.startswith("x")
        and "Traceback" not in proc.stderr
        and "BrokenPipe" not in proc.stderr
    )
