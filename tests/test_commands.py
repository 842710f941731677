"""The `hifi123` command line: every subcommand on one parser, and every numeric option checked
(finite, in range) by argparse before anything runs: exit 2, the flag named, what was expected."""

from __future__ import annotations

import os

import pytest
from hifi123 import cli
from hifi123.commands import integer, real

SAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "custom", "hifi123", "assets", "sample_rgba.png"
)
RGNV = ["rgnv", "--ref", SAMPLE, "--coarse", SAMPLE, "--out", "OUT"]
PRE = ["preprocess", SAMPLE, "--out", "OUT"]
SINGLE = ["eval", "single-view", "--ref", SAMPLE, "--views", "V"]
GSO = ["eval", "gso", "--pred", "P", "--gt", "G"]

BAD = [
    (RGNV, "--steps", "0"),
    (RGNV, "--steps", "2.5"),
    (RGNV, "--inject-steps", "-1"),
    (RGNV, "--guidance-scale", "nan"),
    (RGNV, "--guidance-scale", "inf"),
    (RGNV, "--guidance-scale", "-1"),
    (RGNV, "--batch-size", "0"),
    (RGNV, "--upscale-steps", "-2"),
    (RGNV, "--upscale-steps", "0"),
    (PRE, "--size", "0"),
    (PRE, "--border-ratio", "nan"),
    (PRE, "--border-ratio", "0.95"),
    (PRE, "--seg-threshold", "1.5"),
    (PRE, "--fovy", "0"),
    (PRE, "--fovy", "180"),
    (PRE, "--elevation", "nan"),
    (PRE, "--elevation", "91"),
    (PRE, "--azimuth", "nan"),
    (PRE, "--azimuth", "inf"),
    (PRE, "--relief", "0"),
    (PRE, "--relief", "-0.5"),
    (SINGLE, "--ref-azimuth", "nan"),
    (SINGLE, "--lpips-size", "0"),
    (SINGLE, "--cx-size", "8"),
    (SINGLE, "--cx-band-width", "0"),
    (GSO, "--size", "-256"),
    (GSO, "--depth-size", "x"),
    (GSO, "--surface-samples", "0"),
    (GSO, "--voxel-size", "0"),
    (GSO, "--voxel-size", "nan"),
    (GSO, "--iou-resolution", "4"),
    (["bench", "rgnv"], "--views", "0"),
    (["bench", "raster"], "--size", "30"),
]


@pytest.mark.parametrize("base, flag, value", BAD, ids=[f"{b[0]}{f}={v}" for b, f, v in BAD])
def test_bad_numbers_stop_before_any_work(base, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*base, flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"argument {flag}" in err and "expected" in err and "Traceback" not in err


def test_every_subcommand_is_on_the_one_parser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert sorted(sub.choices) == [
        "align-mesh",
        "bench",
        "eval",
        "preprocess",
        "report",
        "rgnv",
        "run",
        "tiny-models",
    ]


def test_number_types_accept_the_edges_and_name_the_range():
    assert integer(1)("1") == 1 and real(0.0)("0") == 0.0 and real(0.0, 1.0)("1") == 1.0
    with pytest.raises(Exception, match=r"\(0.0, 1.0\]"):
        real(0.0, 1.0, low_open=True)("0")
    with pytest.raises(Exception, match="multiple of 4"):
        integer(16, multiple=4)("18")


@pytest.mark.parametrize("base", [RGNV, PRE, SINGLE], ids=["rgnv", "preprocess", "eval"])
@pytest.mark.parametrize(
    "value, needle",
    [
        ("cuda", "no CUDA device"),
        ("cuda:3", "no CUDA device"),
        ("bogus", "expected a torch device"),
        ("tpu", "expected"),
    ],
)
def test_a_device_this_machine_lacks_stops_before_any_model(
    base, value, needle, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*base, "--device", value])
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2
        and "argument --device" in err
        and needle in err
        and "Traceback" not in err
    )
