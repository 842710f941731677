"""`@LAST` that means the newest FINISHED trial, and checkpoints that reload with
weights_only=True."""

from __future__ import annotations

import io
import os
import time

import pytest
import torch
from hifi123.errors import InputError
from hifi123.trials import (
    FINISHED_MARKER,
    RUN_MARKER,
    plain_containers,
    resolve_last,
    write_finished_marker,
)
from omegaconf import OmegaConf


def make_trial(base, name, step=None, max_steps=10, marker=False, run_marker=False, mtime=None):
    trial = base / name
    (trial / "ckpts").mkdir(parents=True)
    (trial / "configs").mkdir()
    (trial / "configs" / "parsed.yaml").write_text(f"trainer:\n  max_steps: {max_steps}\n")
    if step is not None:
        torch.save({"global_step": step, "state_dict": {}}, trial / "ckpts" / "last.ckpt")
        if mtime is not None:
            os.utime(trial / "ckpts" / "last.ckpt", (mtime, mtime))
    if marker:
        write_finished_marker(str(trial), step or max_steps, max_steps)
    if run_marker:
        (trial / RUN_MARKER).write_text("{}")
    return trial


LAST = "sample_rgba.png@LAST/ckpts/last.ckpt"


def test_the_newest_finished_trial_wins_over_a_newer_unfinished_one(tmp_path):
    now = time.time()
    done = make_trial(
        tmp_path, "sample_rgba.png@20260101-000000", step=10, marker=True, mtime=now - 100
    )
    make_trial(tmp_path, "sample_rgba.png@20260102-000000", step=3, mtime=now)  # crashed at step 3
    # another image
    make_trial(tmp_path, "other_rgba.png@20260103-000000", step=10, marker=True, mtime=now + 1)
    assert resolve_last(str(tmp_path / LAST)) == str(done / "ckpts" / "last.ckpt")


def test_a_trial_without_marker_counts_as_finished_when_its_step_reached_max_steps(tmp_path):
    now = time.time()
    old = make_trial(
        tmp_path, "sample_rgba.png@20260101-000000", step=10, marker=True, mtime=now - 50
    )
    legacy = make_trial(tmp_path, "sample_rgba.png@20260102-000000", step=10, mtime=now)
    assert not (legacy / FINISHED_MARKER).exists()
    assert resolve_last(str(tmp_path / LAST)) == str(legacy / "ckpts" / "last.ckpt")
    os.utime(legacy / "ckpts" / "last.ckpt", (now - 100, now - 100))  # newest = latest checkpoint
    assert resolve_last(str(tmp_path / LAST)) == str(old / "ckpts" / "last.ckpt")


def test_untimestamped_trials_of_hifi123_run_are_found(tmp_path):
    trial = make_trial(tmp_path, "sample_rgba.png", step=2, run_marker=True)  # use_timestamp=false
    assert resolve_last(str(tmp_path / LAST)) == str(trial / "ckpts" / "last.ckpt")


def test_no_finished_trial_is_one_clear_error(tmp_path):
    make_trial(tmp_path, "sample_rgba.png@20260101-000000", step=3)
    make_trial(tmp_path, "sample_rgba.png@20260102-000000")  # no checkpoint at all
    with pytest.raises(InputError) as err:
        resolve_last(str(tmp_path / LAST), "system.geometry_convert_from")
    msg = str(err.value)
    assert "system.geometry_convert_from" in msg and "no finished trial among 2" in msg
    assert "step 3 of 10" in msg and "no ckpts/last.ckpt" in msg and "fix:" in msg
    with pytest.raises(InputError, match="no trial folder sample_rgba.png@<time>"):
        resolve_last(str(tmp_path / "missing" / LAST))


def test_paths_without_last_are_returned_unchanged(tmp_path):
    assert resolve_last(None) is None and resolve_last("") == ""
    assert (
        resolve_last("a/b@20260101-000000/ckpts/last.ckpt") == "a/b@20260101-000000/ckpts/last.ckpt"
    )


def test_plain_containers_make_a_checkpoint_loadable_with_weights_only():
    cfg = OmegaConf.create(
        {"betas": [0.98, 0.92, 0.99], "milestones": [100, 200], "sub": {"x": [1]}}
    )
    ckpt = {
        "optimizer_states": [{"param_groups": [{"betas": cfg.betas, "lr": 0.1, "params": [0]}]}],
        "lr_schedulers": [{"milestones": cfg.milestones, "nested": (cfg.sub, 3)}],
        "state_dict": {"w": torch.ones(2)},
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    with pytest.raises(Exception):  # what torch >= 2.6 does by default with OmegaConf inside
        torch.load(buf, weights_only=True)
    out = plain_containers(ckpt)
    assert out is ckpt  # converted in place
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == [0.98, 0.92, 0.99]
    assert back["lr_schedulers"][0]["nested"] == ({"x": [1]}, 3)
    assert torch.equal(back["state_dict"]["w"], torch.ones(2))


def test_a_resumed_trials_newest_last_checkpoint_is_used(tmp_path):
    trial = make_trial(
        tmp_path, "sample_rgba.png@20260101-000000", step=4, max_steps=6, mtime=time.time() - 10
    )
    torch.save({"global_step": 6}, trial / "ckpts" / "last-v1.ckpt")  # Lightning 2.0 after a resume
    write_finished_marker(str(trial), 6, 6)
    assert resolve_last(str(tmp_path / LAST)) == str(trial / "ckpts" / "last-v1.ckpt")
