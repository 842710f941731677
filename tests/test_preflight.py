"""Weights and files a stage names are checked before anything is built, with the fix."""

from __future__ import annotations

import os

import pytest
from hifi123.errors import InputError, ModelNotFoundError
from hifi123.preflight import building, check_chained_checkpoint, check_component, check_tets


def test_tets_missing_names_the_field_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a threestudio root
    with pytest.raises(InputError) as err:
        check_tets(128, "system.geometry.isosurface_resolution")
    msg = str(err.value)
    assert (
        "system.geometry.isosurface_resolution=128" in msg
        and str(tmp_path / "load/tets/128_tets.npz") in msg
    )
    assert "threestudio root" in msg and "git checkout -- load/tets/128_tets.npz" in msg
    with pytest.raises(InputError, match="generate_tets.py"):
        check_tets(96, "f")  # a size threestudio does not ship
    (tmp_path / "load" / "tets").mkdir(parents=True)
    (tmp_path / "load" / "tets" / "128_tets.npz").write_bytes(b"x")
    assert check_tets(128, "f") == "load/tets/128_tets.npz"


def test_zero123_checkpoint_and_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {
        "pretrained_model_name_or_path": "./load/zero123/zero123-xl.ckpt",
        "pretrained_config": "./load/zero123/sd-objaverse-finetune-c_concat-256.yaml",
    }
    with pytest.raises(InputError) as err:
        check_component("zero123-guidance", cfg, "system.guidance_3d")
    assert "system.guidance_3d.pretrained_model_name_or_path" in str(err.value)
    assert "wget https://zero123.cs.columbia.edu/assets/zero123-xl.ckpt" in str(err.value)
    os.makedirs("load/zero123")
    open("load/zero123/zero123-xl.ckpt", "wb").close()
    with pytest.raises(InputError, match="system.guidance_3d.pretrained_config"):
        check_component("zero123-guidance", cfg, "system.guidance_3d")
    open(cfg["pretrained_config"], "w").close()
    check_component("zero123-guidance", cfg, "system.guidance_3d")
    with pytest.raises(InputError, match="stabilityai/stable-zero123"):
        check_component(
            "stable-zero123-guidance",
            {"pretrained_model_name_or_path": "x.ckpt"},
            "system.guidance_3d",
        )


def test_gated_deepfloyd_offline_and_uncached_says_licence_and_login(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import hifi123.models.loader as loader

    monkeypatch.setattr(loader, "hub_file_cached", lambda repo, path: False)
    with pytest.raises(ModelNotFoundError) as err:
        check_component(
            "deep-floyd-guidance",
            {"pretrained_model_name_or_path": "DeepFloyd/IF-I-XL-v1.0"},
            "system.guidance",
        )
    msg = str(err.value)
    assert "system.guidance.pretrained_model_name_or_path" in msg
    assert "https://huggingface.co/DeepFloyd/IF-I-XL-v1.0" in msg and "huggingface-cli login" in msg
    # a local folder that is not a pipeline
    (tmp_path / "if").mkdir()
    with pytest.raises(ModelNotFoundError, match="lacks model_index.json"):
        check_component(
            "deep-floyd-prompt-processor",
            {"pretrained_model_name_or_path": str(tmp_path / "if")},
            "system.prompt_processor",
        )


def test_chained_checkpoint_must_sit_in_its_trial(tmp_path):
    ckpt = tmp_path / "trial" / "ckpts" / "last.ckpt"
    with pytest.raises(InputError, match="no such checkpoint"):
        check_chained_checkpoint(str(ckpt), "system.geometry_convert_from")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    with pytest.raises(InputError, match="configs/parsed.yaml"):
        check_chained_checkpoint(str(ckpt), "system.geometry_convert_from")
    (tmp_path / "trial" / "configs").mkdir()
    (tmp_path / "trial" / "configs" / "parsed.yaml").write_text("{}")
    check_chained_checkpoint(str(ckpt), "system.geometry_convert_from")


def test_a_hub_refusal_while_building_becomes_our_error():
    class GatedRepoError(Exception):
        pass

    with pytest.raises(InputError, match="huggingface-cli login"):
        with building("deep-floyd-guidance", "system.guidance"):
            raise GatedRepoError(
                "401 Client Error: access to model DeepFloyd/IF-I-XL-v1.0 is restricted"
            )
    with pytest.raises(ZeroDivisionError):  # anything else passes through untouched
        with building("deep-floyd-guidance", "system.guidance"):
            1 / 0


def test_an_unreachable_hub_is_named_as_the_cause(tmp_path):
    """A hub id with no network: the error says the network is the cause and how to work
    offline, instead of a library's "is this a valid model id?" guess."""
    import subprocess
    import sys

    from hifi123.models.loader import _network_cause, _wrap_load_error

    try:
        try:
            raise OSError("Max retries exceeded with url: /org/m/resolve/main/config.json")
        except OSError as inner:
            raise OSError("Can't load the model for 'org/m'. If you were trying ...") from inner
    except OSError as err:
        chained = err
    assert "Max retries exceeded" in _network_cause(chained)
    assert _network_cause(ValueError("config.json is not valid JSON")) is None
    assert "network is the cause" in str(_wrap_load_error("org/m", "field", chained))
    assert "network" not in str(_wrap_load_error("org/m", "field", ValueError("bad json")))
    # for real: a hub endpoint nobody listens on, an empty cache
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hub"),
    )
    code = (
        "from hifi123.models.loader import load_diffusion\n"
        "load_diffusion('someorg/somemodel', 'system.guidance.pretrained_model_name_or_path')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode != 0
    assert "ModelNotFoundError" in run.stderr and "network is the cause" in run.stderr, run.stderr[
        -2000:
    ]
    assert (
        "HF_HUB_OFFLINE=1" in run.stderr
        and "system.guidance.pretrained_model_name_or_path" in run.stderr
    )
