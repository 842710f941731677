"""`hifi123 run --manifest`: entries, tags, sharding over GPUs, worker summaries. No GPU, no
threestudio: a fake threestudio root holds a launch.py stub and our config names, and
torch.cuda.is_available is monkeypatched (run_helpers)."""

from __future__ import annotations

import json
import os

import pytest
from hifi123.errors import InputError
from hifi123.run import cli as run_cli
from hifi123.run import manifest as mf
from hifi123.run import plan as pl
from PIL import Image
from run_helpers import (
    BAD_IMAGE,
    PY,
    SAMPLE,
    FakeExecutor,
    fake_threestudio,
    manifest_run,
    write_manifest,
)

# ------------------------------------------------------------------------------------- manifest


def test_manifest_paths_tags_and_missing_entries(tmp_path):
    (tmp_path / "photos" / "x").mkdir(parents=True)
    Image.open(SAMPLE).resize((32, 32)).save(tmp_path / "photos" / "x" / "a.png")
    man = write_manifest(tmp_path, ["a.png", "b.png"], extra="photos/x/a.png\n")
    entries = mf.read_manifest(man)
    assert [e.tag for e in entries] == ["a", "b", "a-2"]
    assert [e.line for e in entries] == [3, 4, 5]
    assert entries[0].image == str(tmp_path / "photos" / "a.png")
    (tmp_path / "images.txt").write_text("photos/a.png\nphotos/missing.png\n\nphotos/gone.jpg\n")
    with pytest.raises(InputError) as err:
        mf.read_manifest(man)
    text = err.value.render()
    assert "line 2:" in text and "missing.png" in text and "line 4:" in text and "gone.jpg" in text
    assert "2 manifest entries" in text
    (tmp_path / "images.txt").write_text("photos/a.png\nphotos/a.png\n")
    with pytest.raises(InputError, match="repeats"):
        mf.read_manifest(man)
    with pytest.raises(InputError, match="not found"):
        mf.read_manifest(str(tmp_path / "nope.txt"))


def test_sharding_balanced_exactly_once_deterministic():
    for n_items in range(0, 23):
        items = [f"img{i}" for i in range(n_items)]
        for n in range(1, 8):
            shards = mf.shard(items, n)
            assert len(shards) == n
            flat = [x for s in shards for x in s]
            assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1
            assert mf.shard(list(items), n) == shards
    assert mf.shard(list("abcde"), 2) == [["a", "c", "e"], ["b", "d"]]


def test_manifest_worker_continues_after_a_failed_image_and_summarises(tmp_path, gpu):
    man, base = manifest_run(tmp_path, ["good1.png", "bad.png", "good2.png"])
    entries = mf.read_manifest(man)
    fake = FakeExecutor(
        *[mf.entry_options(base, e, "1") for e in entries],
        fail=BAD_IMAGE,
    )
    lines = []
    status = mf.run_worker(entries, base, "1", execute=fake, say=lines.append)
    assert status == {"good1": "done", "bad": "failed", "good2": "done"}
    assert any("FAILED bad" in line and "bad.png is empty" in line for line in lines)
    summary = mf.collect_summary(entries, base, manifest=man, gpus=["1"], wall_seconds=12.0)
    j, md = mf.write_summary(summary)
    data = json.load(open(j))
    assert data["counts"] == {"done": 2, "failed": 1}
    rows = {r["tag"]: r for r in data["images"]}
    assert (
        rows["bad"]["failed_stage"] == "preprocess" and "bad.png is empty" in rows["bad"]["error"]
    )
    assert rows["good1"]["metrics"]["lpips_ref"] == pytest.approx(0.08)
    assert rows["good1"]["seconds"]["coarse"] is not None and rows["good1"]["gpu"] == "1"
    text = open(md).read()
    assert "| bad | **failed** |" in text and "preprocess: preprocessing" in text
    assert "| good1 | done |" in text and "0.0800" in text
    assert os.path.basename(j) == "summary-hifi123.json"


def test_worker_command_round_trips_through_the_cli(tmp_path, gpu, monkeypatch):
    """What the parent spawns parses back to the same options, and `--worker k` runs shard k."""
    root = fake_threestudio(tmp_path)
    man = write_manifest(tmp_path, ["a.png", "b.png", "c.png"])
    base = pl.RunOptions(
        image="",
        method="makeit3d",
        out=str(tmp_path / "out"),
        lowvram=True,
        threestudio_root=root,
        python=PY,
        overrides=(pl.parse_override("trainer.max_steps=5"), pl.parse_override("export:a=b c")),
    )
    argv = mf.worker_argv(man, base, ["0", "3"], 1)
    assert argv[:3] == [PY, "-m", "hifi123.run.cli"]
    import argparse

    parser = argparse.ArgumentParser()
    run_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *argv[3:]])
    assert run_cli.options_from_args(args) == base
    assert (args.manifest, args.gpus, args.worker) == (man, "0,3", 1)
    entries = mf.read_manifest(man)
    fake = FakeExecutor(*[mf.entry_options(base, e, "3") for e in entries])
    assert mf.run_manifest(man, base, ["0", "3"], worker=1, execute=fake, say=lambda m: None) == 0
    assert {os.path.basename(os.path.dirname(s.log)) for s in fake.calls} == {
        "b"
    }  # shard 1 of [a, b, c]
    assert {s.env.get("CUDA_VISIBLE_DEVICES") for s in fake.calls if s.needs_gpu} == {"3"}


def test_manifest_encodings_and_an_image_given_as_manifest(tmp_path):
    img = tmp_path / "a.png"
    Image.open(SAMPLE).save(img)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffa.png\n".encode("utf-8"))  # Windows editors start UTF-8 files with a BOM
    assert [e.image for e in mf.read_manifest(str(bom))] == [str(img)]
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9.png\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text") as err:
        mf.read_manifest(str(latin))
    assert "iconv" in err.value.render()
    with pytest.raises(InputError, match="binary file"):
        mf.read_manifest(str(img))
