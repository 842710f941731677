"""Build `OUT/report/index.html` and its assets from what exists in OUT (see `collect`)."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Callable, Optional

from ..errors import Hifi123Error, InputError
from . import template
from .collect import Entry, RunFolder, scan
from .media import Assets, decode_rgsd_targets, pick_frames
from .page import EntryView, render

REPORT_DIR = "report"
#: marks a folder `hifi123 report` wrote: it may write there again (and nowhere else)
REPORT_MARKER = ".hifi123-report"
PHOTO_PX = 640
THUMB_PX = 128
VIEW_PX = 256
POINT_CLOUD_VIEWS = 6


def _photo(assets: Assets, e: Entry, base: str, v: EntryView) -> None:
    if e.image and os.path.isfile(e.image):
        v.photo = assets.image(e.image, base + "input.png", PHOTO_PX)
    if e.rgba:
        v.rgba = assets.image(e.rgba, base + "rgba.png", PHOTO_PX)
    if e.sheet:
        v.sheet = assets.image(e.sheet, base + "sheet.png", 1200)
    src = e.rgba or e.image
    if src and os.path.isfile(src):
        v.thumb = assets.image(src, base + "thumb.png", THUMB_PX)


def _losses(assets: Assets, e: Entry, base: str, v: EntryView) -> None:
    from .plots import plot_losses, read_losses

    todo = {st: t.csv for st, t in e.trials.items() if t.csv}
    if not todo:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        v.plots_note = (
            "matplotlib is not installed here, so the loss curves are not plotted "
            "(pip install matplotlib, then run hifi123 report again)"
        )
        return
    for st, paths in todo.items():
        series = read_losses(paths)
        if not series:
            continue
        written = plot_losses(series, os.path.join(assets.root, f"{base}losses-{st}"))
        for _, png in written:
            assets.used.add(os.path.normpath(png))
        v.plots[st] = [(col, assets.url(png)) for col, png in written]
    if todo and not v.plots:
        v.plots_note = "the CSV logs hold no loss values yet"


def _rgsd(assets: Assets, e: Entry, base: str, v: EntryView, say: Callable[[str], None]) -> None:
    refine = e.trials.get("refine")
    if refine is None or not refine.ckpt:
        return
    if e.method != "hifi123" and "hifi123" not in refine.system_type:
        return
    try:
        got = decode_rgsd_targets(refine.ckpt, assets, base + "rgsd-")
    except Exception as err:  # noqa: BLE001 - an unreadable checkpoint must not stop the report
        say(f"hifi123 report: {e.tag}: could not read the RGSD targets of {refine.ckpt}: {err}")
        return
    if not got:
        return
    pairs = []
    found_any = False
    for j, target in enumerate(got["targets"]):
        view = got["views"][j] if j < len(got["views"]) else None
        label = (
            f"fixed view {j}: elevation {view[0]:+g}°, azimuth {view[1]:+g}° from the reference"
            if view and len(view) == 2
            else f"fixed view {j}"
        )
        k = (
            orbit_frame_at(refine.parsed, len(refine.frames), view)
            if view and len(view) == 2
            else None
        )
        render_url = None
        if k is not None:
            render_url = assets.image(refine.frames[k], f"{base}rgsd-render-{j}.png", VIEW_PX)
            label += f" (refine orbit frame {k})"
            found_any = True
        pairs.append((label, render_url, target))
    note = f"Targets from ckpts/last.ckpt, {got.get('note') or ''}."
    if found_any:
        note += (
            " Beside each: the refined model at that view, the orbit frame at its angle (the "
            "targets "
            "were made from the model at the start of refinement, which the trial does not keep)."
        )
    else:
        note += " No orbit frame lies at these views: compare with the refine orbit video."
    v.rgsd = {"pairs": pairs, "note": note}


def orbit_frame_at(parsed: Optional[str], n_frames: int, view) -> Optional[int]:
    """The test-orbit frame at a fixed view (elevation, azimuth relative to the reference), or
    None. threestudio's test orbit has `n_test_views` frames at azimuths linspace(0, 360, n) and
    elevation `eval_elevation_deg`; the reference is at `default_elevation_deg` /
    `default_azimuth_deg`. A view off the orbit's elevation has no frame."""
    try:
        import yaml

        with open(parsed or "", encoding="utf-8") as f:
            data = (yaml.safe_load(f) or {}).get("data") or {}
        rc = data.get("random_camera") or {}
        ref_e, ref_a = float(data["default_elevation_deg"]), float(data["default_azimuth_deg"])
        eval_e, n = float(rc["eval_elevation_deg"]), int(rc["n_test_views"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError):
        return None
    if n != n_frames or n < 2 or abs(ref_e + float(view[0]) - eval_e) > 1e-3:
        return None
    want = (ref_a + float(view[1])) % 360.0
    dist = [abs(((360.0 * k / (n - 1)) - want + 180.0) % 360.0 - 180.0) for k in range(n)]
    k = min(range(n), key=dist.__getitem__)
    return k if dist[k] <= 360.0 / (n - 1) else None


def entry_view(assets: Assets, e: Entry, say: Callable[[str], None]) -> EntryView:
    base = e.key + "/"
    v = EntryView(entry=e)
    _photo(assets, e, base, v)
    for st in ("coarse", "refine", "trial"):
        t = e.trials.get(st)
        if t and t.video:
            v.videos[st] = assets.link(t.video, f"{base}{st}.mp4")
        if t and t.parsed:
            try:
                with open(t.parsed, encoding="utf-8", errors="replace") as f:
                    v.settings[st] = f.read()
            except OSError:
                pass
    if e.glb:
        v.glb = assets.link(e.glb, base + "model.glb")
        v.glb_js = assets.glb_script(e.glb, base + "model.glb.js", e.key)
    if e.ply:
        v.ply = assets.link(e.ply, base + "pointcloud.ply")
    if e.method == "makeit3d" or (e.ply and "refine" in e.trials):
        t = e.trials.get("refine")
        if t and t.frames:
            v.pc_views = [
                u
                for u in (
                    assets.image(f, f"{base}pointcloud-view-{i}.png", VIEW_PX)
                    for i, f in enumerate(pick_frames(t.frames, POINT_CLOUD_VIEWS))
                )
                if u
            ]
    _rgsd(assets, e, base, v, say)
    _losses(assets, e, base, v)
    if e.eval_path:
        md = os.path.splitext(e.eval_path)[0] + ".md"
        if os.path.isfile(md):
            v.eval_md = assets.link(md, base + "eval.md")
    return v


def report_dir_for(out: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(out)), REPORT_DIR)


def build_report(
    out: str,
    dest: Optional[str] = None,
    *,
    viewer_url: str = template.MODEL_VIEWER_URL,
    say: Callable[[str], None] = print,
) -> str:
    """Write the report of the run folder `out` into `dest` (default OUT/report); returns the path
    of index.html. Raises InputError for a folder that is no run output, or a `dest` that holds
    files this command did not write."""
    from ..outputs import claim_folder

    folder: RunFolder = scan(out)
    dest = (
        os.path.abspath(os.path.expanduser(dest)) if dest else os.path.join(folder.out, REPORT_DIR)
    )
    claim_folder(dest, REPORT_MARKER, "hifi123 report")
    assets = Assets(dest)
    views = [entry_view(assets, e, say) for e in folder.entries]
    text = render(
        folder, views, datetime.now().isoformat(timespec="seconds"), viewer_url=viewer_url
    )
    index = os.path.join(dest, "index.html")
    tmp = index + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, index)
    assets.finish()
    return index


def report_after_run(out: str, say: Callable[[str], None] = print) -> Optional[str]:
    """`hifi123 run`'s last step: write the report, but never turn a run's result into a report
    error (a failure is said and the run's own exit code stands)."""
    if not os.path.isdir(os.path.join(out, "runs")):
        return None  # the run stopped before any image started: nothing to report
    try:
        path = build_report(out, say=say)
    except (Hifi123Error, InputError, OSError, ValueError) as err:
        text = err.render() if isinstance(err, Hifi123Error) else f"{type(err).__name__}: {err}"
        say(f"hifi123 run: the report was not written: {text}")
        return None
    say(f"report: {path}")
    return path
