"""The page itself: `render(folder, views)` -> the HTML text of index.html.

Pure (no file access): `build.py` gathers what exists into `EntryView`s whose links are relative to
the report folder. Every text from the run (file names, captions, commands, logs, settings) is
HTML-escaped, every link is relative and URL-quoted, and a section appears only when there is
something to show in it.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

from . import template
from .collect import Entry, RunFolder

#: the index's metric columns: key, header, digits (the single-view protocol's: evaluation/)
INDEX_METRICS: Tuple[Tuple[str, str, int], ...] = (
    ("lpips_ref", "LPIPS_ref ↓", 4),
    ("contextual", "Contextual ↓", 3),
    ("clip", "CLIP ↑", 4),
)
STAGE_LABELS = {"coarse": "coarse", "refine": "refine", "trial": "trial"}


@dataclass
class EntryView:
    entry: Entry
    thumb: Optional[str] = None
    photo: Optional[str] = None
    rgba: Optional[str] = None
    sheet: Optional[str] = None
    videos: Dict[str, str] = field(default_factory=dict)  # coarse / refine -> mp4 link
    glb: Optional[str] = None
    glb_js: Optional[str] = None
    ply: Optional[str] = None
    obj_note: str = ""
    rgsd: Optional[Dict[str, Any]] = None  # {"pairs": [(label, render or None, target)], "note"}
    pc_views: List[str] = field(default_factory=list)
    plots: Dict[str, List[Tuple[str, str]]] = field(default_factory=dict)  # stage -> [(term, png)]
    plots_note: str = ""
    settings: Dict[str, str] = field(default_factory=dict)  # stage -> parsed.yaml text
    eval_md: Optional[str] = None  # link to the eval markdown


def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def href(url: str) -> str:
    """A relative link, URL-quoted and attribute-escaped (never absolute, never a scheme)."""
    return esc(quote(url, safe="/"))


def fmt_number(v: Any, digits: int) -> str:
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    if isinstance(v, int):
        return str(v)
    return str(v)


def data_value(v: Any) -> str:
    """The exact value for sorting and checks: repr of a number, the text otherwise."""
    if isinstance(v, bool) or v is None:
        return ""
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _status(status: str) -> str:
    return f'<span class="status {esc(status)}">{esc(status)}</span>'


# -------------------------------------------------------------------------------------- index


def metric_columns(entries: Sequence[Entry]) -> List[Tuple[str, str, int]]:
    known = [c for c in INDEX_METRICS]
    keys = {c[0] for c in known}
    for e in entries:
        for k, v in e.metrics.items():
            if k not in keys and isinstance(v, (int, float)):
                known.append((k, k, 4))
                keys.add(k)
    return known


def render_index(folder: RunFolder, views: Sequence[EntryView]) -> str:
    cols = metric_columns([v.entry for v in views])
    head = [
        '<th data-col="thumb">image</th>',
        '<th data-col="tag">tag</th>',
        '<th data-col="status">status</th>',
    ]
    head += [f'<th class="num" data-col="{esc(k)}">{esc(label)}</th>' for k, label, _ in cols]
    head += [f'<th class="num" data-col="time-{esc(s)}">{esc(s)}</th>' for s in folder.stages]
    head += ['<th class="num" data-col="time-total">total</th>']
    rows = []
    for v in views:
        e = v.entry
        thumb = f'<img class="thumb" src="{href(v.thumb)}" alt="">' if v.thumb else ""
        status = _status(e.status) + (
            f' <span class="muted">{esc(e.failed_stage)}</span>'
            if e.failed_stage and e.status != "done"
            else ""
        )
        cells = [
            f'<td data-value="{esc(e.line if e.line is not None else "")}">{thumb}</td>',
            f'<td data-value="{esc(e.tag)}"><a href="#{esc(e.key)}">{esc(e.tag)}</a>'
            + (f' <span class="muted">{esc(e.variant)}</span>' if len(folder.variants) > 1 else "")
            + "</td>",
            f'<td data-value="{esc(e.status)}">{status}</td>',
        ]
        for k, _, digits in cols:
            val = e.metrics.get(k)
            cells.append(
                f'<td class="num" data-metric="{esc(k)}" data-value="{esc(data_value(val))}">'
                f"{esc(fmt_number(val, digits))}</td>"
            )
        for s in folder.stages:
            sec = e.seconds(s)
            cells.append(
                f'<td class="num" data-value="{esc(data_value(sec))}">{fmt_seconds(sec)}</td>'
            )
        tot = e.total_seconds
        cells.append(f'<td class="num" data-value="{esc(data_value(tot))}">{fmt_seconds(tot)}</td>')
        rows.append(
            f'<tr id="row-{esc(e.key)}" data-key="{esc(e.key)}">' + "".join(cells) + "</tr>"
        )
    counts: Dict[str, int] = {}
    for v in views:
        counts[v.entry.status] = counts.get(v.entry.status, 0) + 1
    summary = ", ".join(f"{n} {esc(s)}" for s, n in sorted(counts.items()))
    return (
        '<section id="index"><h2>All images</h2>'
        f'<p class="note">{len(views)} image(s): {summary}. Click a column header to sort.</p>'
        '<table class="sortable" id="index-table"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


# ------------------------------------------------------------------------------------ sections


def _figure(inner: str, caption: str) -> str:
    return f"<figure>{inner}<figcaption>{caption}</figcaption></figure>"


def _video(url: str, label: str) -> str:
    return (
        f'<video src="{href(url)}" controls muted loop playsinline preload="auto" '
        f'aria-label="{esc(label)}"></video>'
    )


WIDE_PARTS = ("failure", "losses", "eval", "stages")


def _sub(v: EntryView, name: str, title: str, body: str) -> str:
    wide = " wide" if name in WIDE_PARTS else ""
    return (
        f'<div class="part{wide}" id="{esc(v.entry.key)}-{name}" data-part="{name}">'
        f"<h3>{esc(title)}</h3>{body}</div>"
    )


def section_failure(v: EntryView) -> str:
    e = v.entry
    if e.status in ("done", "trial"):
        return ""
    if e.status == "not run":
        return _sub(
            v,
            "failure",
            "Not run yet",
            '<p class="note">This image has no run record yet (the batch has not reached it).</p>',
        )
    parts = []
    if e.failed_stage:
        parts.append(f"<p>Failing stage: <b>{esc(e.failed_stage)}</b></p>")
    elif e.status == "running":
        parts.append(
            "<p>Still running (or stopped without a word): what exists so far is below.</p>"
        )
    if e.error:
        parts.append(f'<pre class="error">{esc(e.error)}</pre>')
    if e.log_tail:
        parts.append(
            '<p>Last lines of its log:</p><pre class="log-tail">'
            + esc("\n".join(e.log_tail))
            + "</pre>"
        )
    if not parts:
        return ""
    return _sub(
        v, "failure", f"Status: {e.status}", '<div class="failure">' + "".join(parts) + "</div>"
    )


def section_input(v: EntryView) -> str:
    figs = []
    if v.photo:
        figs.append(
            _figure(
                f'<img class="photo" src="{href(v.photo)}" alt="input photo">',
                "input photo" + (f": {esc(_basename(v.entry.image))}" if v.entry.image else ""),
            )
        )
    if v.sheet:
        figs.append(
            _figure(
                f'<img class="sheet" src="{href(v.sheet)}" alt="preprocessing contact sheet">',
                "preprocessing: cut-out | depth | normals",
            )
        )
    elif v.rgba:
        figs.append(
            _figure(f'<img class="photo" src="{href(v.rgba)}" alt="cut-out">', "cut-out (RGBA)")
        )
    if not figs:
        return ""
    cap = (
        f'<p>Caption: <q class="caption">{esc(v.entry.caption)}</q></p>' if v.entry.caption else ""
    )
    return _sub(
        v, "input", "Input and preprocessing", '<div class="row">' + "".join(figs) + "</div>" + cap
    )


def section_videos(v: EntryView) -> str:
    if not v.videos:
        return ""
    figs = [
        _figure(_video(url, f"{stage} orbit"), f"{esc(STAGE_LABELS.get(stage, stage))} orbit")
        for stage, url in v.videos.items()
    ]
    return _sub(v, "videos", "Orbit videos", '<div class="row">' + "".join(figs) + "</div>")


def section_model(v: EntryView) -> str:
    if not (v.glb or v.ply):
        return ""
    links = []
    if v.glb:
        links.append(f'<a href="{href(v.glb)}" download>model.glb</a>')
    if v.ply:
        links.append(f'<a href="{href(v.ply)}" download>pointcloud.ply</a>')
    body = ""
    if v.glb and v.glb_js:
        stand_in = next(iter(reversed(list(v.videos.values()))), None)
        inner = (
            _video(stand_in, "orbit video (stands in for the 3D view)").replace(
                "<video ", '<video class="stand-in" ', 1
            )
            if stand_in
            else '<p class="stand-in note">(no orbit video to stand in)</p>'
        )
        body += (
            f'<div class="viewer" data-key="{esc(v.entry.key)}" data-glb-js="{href(v.glb_js)}" '
            f'data-alt="{esc(v.entry.tag)} 3D model">{inner}'
            '<p class="viewer-note note">Loading the 3D viewer ...</p></div>'
        )
    body += '<p class="files">Files: ' + " · ".join(links) + "</p>"
    if v.obj_note:
        body += f'<p class="note">{esc(v.obj_note)}</p>'
    return _sub(v, "model", "3D model", body)


def section_rgsd(v: EntryView) -> str:
    if not v.rgsd or not v.rgsd.get("pairs"):
        return ""
    figs = []
    for label, render, target in v.rgsd["pairs"]:
        pair = ""
        if render:
            pair += _figure(
                f'<img class="view" src="{href(render)}" alt="refined model">', "refined model"
            )
        pair += _figure(
            f'<img class="view" src="{href(target)}" alt="RGNV target">', "RGNV-enhanced target"
        )
        figs.append(
            f'<div class="pair"><p><b>{esc(label)}</b></p><div class="row">{pair}</div></div>'
        )
    note = f'<p class="note">{esc(v.rgsd.get("note", ""))}</p>' if v.rgsd.get("note") else ""
    return _sub(
        v, "rgsd", "RGSD fixed views", '<div class="row">' + "".join(figs) + "</div>" + note
    )


def section_pointcloud(v: EntryView) -> str:
    if not v.pc_views:
        return ""
    imgs = "".join(
        f'<img class="view" src="{href(u)}" alt="point cloud view {i}">'
        for i, u in enumerate(v.pc_views)
    )
    return _sub(
        v, "pointcloud", "Point cloud views (refine stage)", f'<div class="row">{imgs}</div>'
    )


def section_losses(v: EntryView) -> str:
    if not v.plots and not v.plots_note:
        return ""
    body = ""
    for stage, plots in v.plots.items():
        imgs = "".join(
            _figure(f'<img class="plot" src="{href(png)}" alt="{esc(term)}">', esc(term))
            for term, png in plots
        )
        body += f'<h4>{esc(STAGE_LABELS.get(stage, stage))}</h4><div class="row">{imgs}</div>'
    if v.plots_note:
        body += f'<p class="note">{esc(v.plots_note)}</p>'
    return _sub(v, "losses", "Loss curves", body)


def section_eval(v: EntryView) -> str:
    rep = v.entry.eval
    if not rep or not isinstance(rep.get("metrics"), dict):
        return ""
    from ..evaluation.defaults import PROTOCOLS, protocol
    from ..evaluation.report import LOST, attach_papers, columns

    proto = rep.get("protocol") if rep.get("protocol") in PROTOCOLS else "single-view"
    if rep.get("protocol_matches") and "papers" not in rep:
        rep = attach_papers(dict(rep))
    cols = columns(proto)
    m = rep["metrics"]
    head = (
        "<tr><th></th>"
        + "".join(f'<th class="num">{esc(label)}</th>' for _, label, _ in cols)
        + "</tr>"
    )
    ours = "".join(
        f'<td class="num" data-metric="{esc(k)}" data-value="{esc(data_value(m.get(k)))}">'
        f"{esc(fmt_number(m.get(k), d))}</td>"
        for k, _, d in cols
    )
    rows = [f'<tr class="ours"><td>this run</td>{ours}</tr>']
    for row in rep.get("papers") or []:
        cells = []
        for k, _, d in cols:
            val = row.get(k)
            lost = (
                val is None
                and row.get("method") == "HiFi-123"
                and proto == "gso"
                and k in ("psnr", "ssim", "lpips")
            )
            cells.append(f'<td class="num">{LOST if lost else esc(fmt_number(val, d))}</td>')
        rows.append(
            f'<tr class="paper"><td>{esc(row.get("source"))}: {esc(row.get("method"))}</td>'
            + "".join(cells)
            + "</tr>"
        )
    body = (
        f'<p class="note">{esc(protocol(proto)["title"])}</p><table class="eval">'
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    )
    if rep.get("papers"):
        body += f'<p class="note">Papers\' numbers: {esc(rep.get("papers_note", ""))}.</p>'
    else:
        diffs = rep.get("protocol_differences") or []
        body += (
            '<p class="note">Papers\' numbers not shown: this run does not follow the protocol'
            + (
                ":</p><ul>" + "".join(f"<li>{esc(d)}</li>" for d in diffs) + "</ul>"
                if diffs
                else ".</p>"
            )
        )
    if rep.get("notes"):
        body += '<ul class="note">' + "".join(f"<li>{esc(n)}</li>" for n in rep["notes"]) + "</ul>"
    if v.eval_md:
        body += f'<p class="files">Full report: <a href="{href(v.eval_md)}">markdown</a></p>'
    return _sub(v, "eval", "Evaluation", body)


def section_stages(v: EntryView) -> str:
    e = v.entry
    if not e.stages and not v.settings:
        return ""
    rows = []
    for s in e.stages:
        cmd = (
            f'<pre class="command">{esc(s.command)}</pre>'
            if s.command
            else '<span class="muted">–</span>'
        )
        note = f'<div class="muted">{esc(s.note)}</div>' if s.note else ""
        rows.append(
            f'<tr data-stage="{esc(s.name)}"><td>{esc(s.name)}</td><td>{_status(s.status)}</td>'
            f'<td class="num">{fmt_seconds(s.seconds)}</td><td>{cmd}{note}</td></tr>'
        )
    body = (
        '<table class="stages"><thead><tr><th>stage</th><th>status</th><th class="num">time</th>'
        "<th>exact command</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    for stage, text in v.settings.items():
        body += (
            f"<details><summary>settings of the {esc(stage)} stage (configs/parsed.yaml)</summary>"
            f'<pre class="settings">{esc(text)}</pre></details>'
        )
    return _sub(v, "stages", "Stages, commands and settings", body)


def _basename(path: Optional[str]) -> str:
    import os

    return os.path.basename(path or "")


def render_entry(v: EntryView) -> str:
    e = v.entry
    title = esc(e.tag) + (f' <span class="muted">{esc(e.variant)}</span>' if e.variant else "")
    parts = [
        section_failure(v),
        section_input(v),
        section_videos(v),
        section_model(v),
        section_rgsd(v),
        section_pointcloud(v),
        section_losses(v),
        section_eval(v),
        section_stages(v),
    ]
    body = "".join(p for p in parts if p)
    if not body:
        body = '<p class="note">Nothing written for this image yet.</p>'
    return (
        f'<section class="image" id="{esc(e.key)}" data-status="{esc(e.status)}">'
        f'<h2>{title} {_status(e.status)}</h2><div class="parts">{body}</div></section>'
    )


def render(
    folder: RunFolder,
    views: Sequence[EntryView],
    generated: str,
    viewer_url: str = template.MODEL_VIEWER_URL,
    timeout_ms: int = template.VIEWER_TIMEOUT_MS,
) -> str:
    any_viewer = any(v.glb_js for v in views)
    what = (
        "threestudio trial"
        if folder.kind == "trial"
        else f"{len(views)} image(s)"
        + (f" from the manifest {_basename(folder.manifest)}" if folder.manifest else "")
    )
    head = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>hifi123 report: {esc(_basename(folder.out))}</title>",
        f"<style>{template.CSS}</style>",
    ]
    if any_viewer:
        head.append("<script>window.HIFI123_VIEWER_FAILED = false;</script>")
        head.append(
            f'<script type="module" src="{esc(viewer_url)}" '
            'onerror="window.HIFI123_VIEWER_FAILED = '
            'true; if (window.hifi123ViewerFailed) { window.hifi123ViewerFailed(); }"></script>'
        )
    head.append("</head><body>")
    body = [
        f"<header><h1>hifi123 report: {esc(_basename(folder.out))}</h1>"
        f"<p>{esc(what)}; made {esc(generated)} from <code>{esc(folder.out)}</code>. "
        "Sections appear "
        "where the run has written something.</p></header>"
    ]
    if len(views) > 1 or folder.manifest:
        body.append(render_index(folder, views))
    body += [render_entry(v) for v in views]
    if not views:
        body.append('<p class="note">No image has a run record yet.</p>')
    body.append(f"<script>{template.script(timeout_ms)}</script></body></html>")
    return "\n".join(head + body) + "\n"
