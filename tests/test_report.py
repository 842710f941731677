"""`hifi123 report`: the HTML builder without a browser. A fabricated batch (the run tests' fake
executor plus small real media) is reported; the page is parsed and checked against the files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from hifi123.errors import InputError
from hifi123.report import build, collect, media, page, plots
from hifi123.run import plan as pl
from hifi123.run import runner as rn
from report_helpers import METRICS, Page, fabricated_batch
from run_helpers import SAMPLE, FakeExecutor, _cli, make_opts

ALL_PARTS = {"input", "videos", "model", "rgsd", "losses", "eval", "stages"}


def parts_of(p: Page, key: str):
    return {
        a["data-part"]
        for _, a in p.elements
        if a.get("data-part")
        and a["id"].startswith(key + "-")
        and a["id"] == f"{key}-{a['data-part']}"
    }


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    out, opts, entries = fabricated_batch(
        tmp, names=("a.png", "b.png", "c.png", "d.png"), run=("a", "b", "c")
    )
    index = build.build_report(out, say=lambda m: None)
    return out, opts, index


def test_sections_present_only_where_data_exists(batch):
    out, opts, index = batch
    p = Page(open(index, encoding="utf-8").read())
    assert {"index", "a", "b", "c", "d"} <= p.ids()
    assert parts_of(p, "a") == ALL_PARTS
    # b failed at refine: its coarse stage ran (input, coarse video, coarse losses), nothing after
    assert parts_of(p, "b") == {"failure", "input", "videos", "losses", "stages"}
    assert p.find("video", **{"aria_label": "coarse orbit"})
    b_videos = [a for t, a in p.elements if t == "video" and "assets/b/" in a.get("src", "")]
    assert [a["src"] for a in b_videos] == ["assets/b/coarse.mp4"]
    # d is in the manifest but never started: its photo, nothing else
    assert parts_of(p, "d") == {"failure", "input"}
    assert [a["src"] for t, a in p.elements if t == "img" and "assets/d/" in a.get("src", "")] == [
        "assets/d/thumb.png",
        "assets/d/input.png",
    ]
    text = p.text
    assert "Failing stage: refine" in text and "CUDA out of memory <while> rendering & co" in text
    assert "Not run yet" in text


def test_metrics_equal_the_eval_json(batch):
    out, opts, index = batch
    p = Page(open(index, encoding="utf-8").read())
    for tag in ("a", "c"):
        rep = json.load(
            open(os.path.join(pl.Layout.of(opts[tag]).trial("hifi123-refine"), pl.EVAL_REPORT))
        )
        assert rep["metrics"] == METRICS[tag]
        row = [a for t, a in p.elements if t == "tr" and a.get("data-key") == tag]
        assert row
        cells = {}
        for t, a in p.elements:
            if t == "td" and a.get("data-metric"):
                cells.setdefault(a["data-metric"], []).append(a["data-value"])
        for k, v in rep["metrics"].items():
            assert repr(v) in cells[k], (k, v)
    # the cell order in the index follows the rows: a, b (no metrics), c, d
    clip_cells = [
        a["data-value"] for t, a in p.elements if t == "td" and a.get("data-metric") == "clip"
    ]
    assert clip_cells[:4] == [repr(METRICS["a"]["clip"]), "", repr(METRICS["c"]["clip"]), ""]
    # the formatted text follows the evaluation's digits (LPIPS 4, contextual 3, CLIP 4)
    html_text = open(index, encoding="utf-8").read()
    assert (
        ">0.0812</td>" in html_text and ">1.644</td>" in html_text and ">0.9123</td>" in html_text
    )
    # the papers' numbers (protocol matched) are in the evaluation table
    assert "HiFi-123 Tab. 2, 400 images: HiFi-123" in p.text


def test_links_are_relative_and_the_folder_moves(batch, tmp_path):
    out, opts, index = batch
    p = Page(open(index, encoding="utf-8").read())
    links = p.links()
    assert len(links) > 20
    moved = tmp_path / "elsewhere" / "report"
    shutil.copytree(os.path.dirname(index), moved)
    for tag, attr, url in links:
        if url.startswith("#"):
            assert url[1:] in p.ids()
            continue
        if url.startswith("https://"):  # only the viewer library's module script
            assert tag == "script" and "model-viewer" in url
            continue
        assert "://" not in url and not url.startswith("/") and ".." not in url, url
        assert (moved / url).is_file(), url
    # the images shown are ours, under assets/, and the input photo is a copy, not a link out
    assert all(a["src"].startswith("assets/") for t, a in p.elements if t in ("img", "video"))


def test_partial_batch_shows_what_exists_so_far(tmp_path):
    out, opts, _ = fabricated_batch(tmp_path, run=("a",), summary=False)
    # a second image that is still running: its record says so and only its preprocess is done
    rec_b = {
        "image": opts["b"].image,
        "tag": "b",
        "method": "hifi123",
        "variant": "hifi123",
        "status": "running",
        "stages": {"preprocess": {"status": "ran", "seconds": 3.0}},
    }
    from hifi123.report import demo

    demo.write_stage(opts["b"], "preprocess")
    rn.save_record(pl.Layout.of(opts["b"]).record, rec_b)
    index = build.build_report(out, say=lambda m: None)
    p = Page(open(index, encoding="utf-8").read())
    assert {"a", "b"} <= p.ids() and "c" not in p.ids()  # no summary yet: c is unknown so far
    assert parts_of(p, "a") == ALL_PARTS
    assert parts_of(p, "b") == {"failure", "input", "stages"}
    assert "Still running" in p.text
    # the batch goes on: c finishes, and the report picks it up
    from hifi123.run import manifest as mf
    from report_helpers import MediaFake

    fake = MediaFake(opts["c"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rn, "check_gpu", lambda gpus: None)
        mf.run_worker(
            [mf.Entry(3, opts["c"].image, "c")], opts["c"], "0", execute=fake, say=lambda m: None
        )
    p2 = Page(open(build.build_report(out, say=lambda m: None), encoding="utf-8").read())
    assert parts_of(p2, "c") == ALL_PARTS


def test_file_names_and_texts_are_escaped(tmp_path, gpu):
    name = 'x"><img src=q onerror=alert(1)>&amp.png'
    image = tmp_path / "photos" / name
    image.parent.mkdir(parents=True)
    shutil.copy(SAMPLE, image)
    opts = make_opts(tmp_path, image=str(image))
    fake = FakeExecutor(opts, fail={"coarse": (1, "</pre><script>alert('log')</script>\n", False)})
    with pytest.raises(rn.StageFailed):
        rn.run_image(opts, execute=fake, echo=False, say=lambda m: None)
    with open(pl.Layout.of(opts).caption, "w") as f:
        f.write('a <b>bold</b> cup & "saucer"\n')
    text = open(build.build_report(opts.out, say=lambda m: None), encoding="utf-8").read()
    p = Page(text)
    assert not [a for _, a in p.elements if any(k.startswith("on") for k in a) and "type" not in a]
    assert not p.find("img", src="q") and "<b>bold" not in text
    assert len(p.find("script")) == 1  # only our own (no model on the page: no viewer library)
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#x27;log&#x27;)" in text
    assert "a &lt;b&gt;bold&lt;/b&gt; cup &amp; &quot;saucer&quot;" in text
    assert name in p.text  # shown as text, intact
    assert html_escape_count(text, name) >= 1


def html_escape_count(text, name):
    import html

    return text.count(html.escape(name, quote=True))


def test_trial_folder_report(tmp_path):
    from hifi123.report import demo

    opts = make_opts(tmp_path, method="makeit3d")
    for st in ("preprocess", "coarse", "refine", "ply"):
        demo.write_stage(opts, st)
    trial = pl.Layout.of(opts).trial(opts.training("refine").name)
    folder = collect.scan(trial)
    assert folder.kind == "trial" and folder.entries[0].method == "makeit3d"
    index = build.build_report(trial, say=lambda m: None)
    assert index == os.path.join(trial, "report", "index.html")
    p = Page(open(index, encoding="utf-8").read())
    key = folder.entries[0].key
    assert parts_of(p, key) == {"input", "videos", "model", "pointcloud", "losses", "stages"}
    views = [a for t, a in p.elements if t == "img" and "pointcloud-view" in a.get("src", "")]
    assert len(views) == build.POINT_CLOUD_VIEWS


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(InputError) as err:
        build.build_report(str(tmp_path / "nope"))
    assert "nope not found" in err.value.what and "hifi123 report OUT" in err.value.fix
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither run records"):
        build.build_report(str(tmp_path / "empty"))
    code, _, errtext = _cli_report([str(tmp_path / "empty")])
    assert code == 2 and "runs/" in errtext


def test_never_writes_into_a_folder_it_did_not_make(batch, tmp_path):
    out, _, _ = batch
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="did not write"):
        build.build_report(out, str(mine))
    assert (mine / "notes.txt").read_text() == "keep me" and not (mine / "index.html").exists()


def _cli_report(argv):
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from hifi123 import cli

    o, e = io.StringIO(), io.StringIO()
    with redirect_stdout(o), redirect_stderr(e):
        code = cli.main(["report", *argv])
    return code, o.getvalue(), e.getvalue()


def test_stale_assets_are_removed_and_fresh_ones_kept(tmp_path):
    out, opts, _ = fabricated_batch(tmp_path, names=("a.png",), run=("a",), summary=False)
    index = build.build_report(out, say=lambda m: None)
    assets = os.path.join(os.path.dirname(index), "assets", "a")
    refine_mp4 = os.path.join(assets, "refine.mp4")
    before = os.stat(refine_mp4).st_mtime_ns
    shutil.rmtree(pl.Layout.of(opts["a"]).trial("hifi123-coarse"))
    build.build_report(out, say=lambda m: None)
    assert not os.path.exists(os.path.join(assets, "coarse.mp4"))
    assert not os.path.exists(os.path.join(assets, "losses-coarse"))
    assert os.stat(refine_mp4).st_mtime_ns == before


def test_run_writes_the_report_and_no_report_turns_it_off(tmp_path, gpu, monkeypatch):
    opts = make_opts(tmp_path)
    monkeypatch.setattr(rn, "execute_subprocess", FakeExecutor(opts))
    base = [opts.image, "--out", opts.out, "--threestudio-root", opts.threestudio_root, "--quiet"]
    code, out, err = _cli(base + ["--no-report"])
    assert code == 0, err
    assert not os.path.exists(os.path.join(opts.out, "report"))
    code, out, err = _cli(base)
    assert code == 0, err
    index = os.path.join(opts.out, "report", "index.html")
    assert os.path.isfile(index) and f"report: {index}" in out
    # a failing run still ends with its report, and keeps its own exit code
    opts2 = make_opts(tmp_path / "two")
    monkeypatch.setattr(
        rn, "execute_subprocess", FakeExecutor(opts2, fail={"coarse": (1, "boom\n", False)})
    )
    code, out, err = _cli(
        [opts2.image, "--out", opts2.out, "--threestudio-root", opts2.threestudio_root, "--quiet"]
    )
    assert code == 2 and "boom" in err
    text = open(os.path.join(opts2.out, "report", "index.html"), encoding="utf-8").read()
    assert "Failing stage: <b>coarse</b>" in text


def test_stage_commands_are_recorded_and_shown(batch):
    out, opts, index = batch
    rec = json.load(open(pl.Layout.of(opts["a"]).record))
    cmd = rec["stages"]["coarse"]["command"]
    assert "launch.py" in cmd and "custom/hifi123/configs/coarse.yaml" in cmd
    import html

    assert html.escape(cmd, quote=True) in open(index, encoding="utf-8").read()


def test_loss_curves_from_csv_logs(tmp_path):
    v0 = tmp_path / "version_0.csv"
    v1 = tmp_path / "version_1.csv"
    v0.write_text(
        "epoch,step,train/loss_rgb,train/loss_sds,lr-Adam\n0,0,1.0,,0.01\n0,10,0.5,2.0,0.01\n"
        "0,20,0.4,,0.01\n"
    )
    v1.write_text("epoch,step,train/loss_rgb,train/loss_rgsd\n0,20,0.3,5\n0,30,0.2,nan\n")
    series = plots.read_losses([str(v0), str(v1)])
    assert series == {
        "train/loss_rgb": [(0.0, 1.0), (10.0, 0.5), (20.0, 0.3), (30.0, 0.2)],
        "train/loss_rgsd": [(20.0, 5.0)],
        "train/loss_sds": [(10.0, 2.0)],
    }
    written = plots.plot_losses(series, str(tmp_path / "png"))
    assert [c for c, _ in written] == list(series)
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for _, p in written)


def test_orbit_frame_at_a_fixed_view(tmp_path):
    from hifi123.report import demo

    parsed = tmp_path / "parsed.yaml"
    parsed.write_text(demo.parsed_yaml("hifi123", "refine", "x_rgba.png"))
    n = demo.ORBIT_FRAMES  # azimuths linspace(0, 360, 12): 0, 32.7, 65.5, 98.2, ...
    assert build.orbit_frame_at(str(parsed), n, (0.0, 90.0)) == 3
    assert build.orbit_frame_at(str(parsed), n, (0.0, -90.0)) == 8  # 270: frame 8 at 261.8
    assert build.orbit_frame_at(str(parsed), n, (20.0, 90.0)) is None  # off the orbit
    assert build.orbit_frame_at(str(parsed), n - 1, (0.0, 90.0)) is None  # not this orbit


def test_rgsd_targets_decode_with_the_vae_and_fall_back_without(tmp_path):
    import torch
    from hifi123.models.tiny import tiny_vae
    from hifi123.report import demo

    model = tmp_path / "sd2-depth"
    torch.manual_seed(0)
    vae = tiny_vae()
    vae.save_pretrained(str(model / "vae"))
    state = demo.rgsd_state(str(model))
    ckpt = demo.write_ckpt(str(tmp_path / "last.ckpt"), state)
    assets = media.Assets(str(tmp_path / "report"))
    got = media.decode_rgsd_targets(ckpt, assets, "x/rgsd-")
    assert got["views"] == [[0.0, 90.0], [0.0, -90.0]] and "decoded with the VAE" in got["note"]
    with torch.no_grad():
        want = vae.decode(state["fixed_targets"] / vae.config.scaling_factor).sample
    want = ((want.clamp(-1, 1) + 1) / 2 * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    from PIL import Image

    for j, url in enumerate(got["targets"]):
        img = np.asarray(Image.open(tmp_path / "report" / url))
        assert img.shape == want[j].shape and np.abs(img.astype(int) - want[j]).max() <= 1
    # cached until the checkpoint changes
    calls = []
    real = media.load_rgsd_state
    try:
        media.load_rgsd_state = lambda p: calls.append(p) or real(p)
        assert media.decode_rgsd_targets(ckpt, assets, "x/rgsd-")["targets"] == got["targets"]
        assert calls == []
    finally:
        media.load_rgsd_state = real
    # without the model: the false-colour preview, and the page says so
    state["config"]["pretrained_model_name_or_path"] = str(tmp_path / "no-such-model")
    ckpt2 = demo.write_ckpt(str(tmp_path / "other.ckpt"), state)
    got2 = media.decode_rgsd_targets(ckpt2, assets, "y/rgsd-")
    assert "not available on this machine" in got2["note"] and "false colour" in got2["note"]
    prev = media.latent_preview(state["fixed_targets"].numpy())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "report" / got2["targets"][0])), prev[0])
    # a checkpoint without targets: no section
    assert (
        media.decode_rgsd_targets(demo.write_ckpt(str(tmp_path / "c.ckpt")), assets, "z/") is None
    )


def test_page_escapes_and_formats_pure():
    e = collect.Entry(key="k", tag="<t>", status="done", metrics={"clip": 0.91234567, "extra": 3})
    v = page.EntryView(entry=e)
    folder = collect.RunFolder(
        out="/x/<o>", kind="run", entries=[e], stages=["coarse"], manifest="m.txt"
    )
    text = page.render(folder, [v], "now")
    assert "&lt;t&gt;" in text and "<t>" not in text and "&lt;o&gt;" in text
    assert 'data-metric="clip" data-value="0.91234567">0.9123<' in text
    # metrics beyond the protocol get a column
    assert 'data-metric="extra" data-value="3">3<' in text
    assert "cdn" not in text and '<script type="module"' not in text  # no model: no viewer library
