"""The report page's own style sheet and script (ours; inlined into index.html).

The script does two things:

* sorting: a click on the header of a `table.sortable` column sorts its rows by the cells'
  `data-value` (numbers numerically, missing values last), a second click reverses;
* the 3D view: the page loads Google's <model-viewer> web component (its npm package through a
  CDN URL). When it defines `model-viewer`, each `.viewer` box loads its model file (a script
  that carries the GLB as base64, since a page opened from disk may not fetch files next to it)
  and shows it in place of the orbit video. When the library cannot load (offline, blocked,
  or slower than `VIEWER_TIMEOUT_MS`), the orbit video stays and the box says why.
  `document.body.dataset.viewer` ends as "ready" or "failed" (the browser test reads it).
"""

from __future__ import annotations

#: Google's <model-viewer>, from its npm package (@google/model-viewer) through a CDN
MODEL_VIEWER_VERSION = "4.4.0"
MODEL_VIEWER_URL = (
    f"https://cdn.jsdelivr.net/npm/@google/model-viewer@{MODEL_VIEWER_VERSION}"
    "/dist/model-viewer.min.js"
)
VIEWER_TIMEOUT_MS = 8000

CSS = """
:root { --fg: #1d2430; --muted: #5b6575; --line: #d8dde5; --bad: #b3261e; --ok: #1e6b35;
        --bg2: #f4f6f9; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
body { margin: 0 auto; max-width: 1280px; padding: 16px 24px 48px; color: var(--fg); }
h1 { font-size: 1.5em; margin: 0.2em 0; } h2 { margin-top: 0; } h3 { margin: 1.2em 0 0.4em; }
header p, .note, .muted { color: var(--muted); font-size: 0.92em; }
section.image { border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
                margin: 24px 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
         vertical-align: middle; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 0.7em; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 0.7em; }
tr.ours td { font-weight: 600; background: var(--bg2); }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.85em;
          background: var(--bg2); }
.status.done { color: var(--ok); } .status.failed, .status.interrupted { color: var(--bad); }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: var(--muted); margin-top: 4px; }
img.photo { max-width: 240px; max-height: 240px; background: #fff; border: 1px solid var(--line); }
img.sheet { max-width: 100%; max-height: 240px; border: 1px solid var(--line); }
img.thumb { width: 64px; height: 64px; object-fit: contain; background: #fff; }
img.view { width: 160px; height: 160px; object-fit: contain; background: #fff;
           border: 1px solid var(--line); }
img.plot { width: 240px; border: 1px solid var(--line); }
video { width: 260px; max-width: 100%; background: #fff; border: 1px solid var(--line); }
.parts { display: flex; flex-wrap: wrap; gap: 0 36px; align-items: flex-start; }
.part { flex: 0 1 auto; max-width: 100%; } .part.wide { flex-basis: 100%; }
.viewer { width: 360px; max-width: 100%; }
.viewer video { width: 300px; }
.viewer model-viewer { width: 360px; height: 320px; background: var(--bg2); }
.viewer .stand-in { display: block; }
.viewer.ready .stand-in { display: none; }
.failure { border-left: 4px solid var(--bad); background: #fdf3f2; padding: 8px 12px; }
pre { background: var(--bg2); padding: 8px; overflow-x: auto; font-size: 0.82em;
      white-space: pre-wrap; word-break: break-all; }
details summary { cursor: pointer; color: var(--muted); }
"""

JS = """
(function () {
  "use strict";
  function cellValue(row, col) {
    var cell = row.cells[col];
    if (!cell) { return null; }
    var v = cell.hasAttribute("data-value") ? cell.getAttribute("data-value")
                                            : cell.textContent.trim();
    return v === "" ? null : v;
  }
  function sortTable(table, col, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var numeric = rows.every(function (r) {
      var v = cellValue(r, col); return v === null || !isNaN(Number(v));
    });
    rows.sort(function (a, b) {
      var x = cellValue(a, col), y = cellValue(b, col);
      if (x === null || y === null) { return (x === null) - (y === null); }
      if (numeric) { return dir * (Number(x) - Number(y)); }
      return dir * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var head = table.tHead.rows[0];
    Array.prototype.forEach.call(head.cells, function (th, col) {
      th.addEventListener("click", function () { sortTable(table, col, th); });
    });
  });

  var decided = false;
  function say(box, text) {
    var n = box.querySelector(".viewer-note");
    if (n) { n.textContent = text; }
  }
  function failed(why) {
    if (decided) { return; }
    decided = true;
    document.body.dataset.viewer = "failed";
    document.querySelectorAll(".viewer").forEach(function (box) {
      box.classList.add("fallback");
      say(box, "The interactive 3D view needs the <model-viewer> library from the network (" +
          why + "), so the orbit video stands in for it. The model file is linked below.");
    });
  }
  function show(box) {
    var key = box.getAttribute("data-key");
    var s = document.createElement("script");
    s.src = box.getAttribute("data-glb-js");
    s.onload = function () {
      var b64 = (window.HIFI123_GLB || {})[key];
      if (!b64) { say(box, "The model data did not load; the orbit video stands in."); return; }
      var raw = atob(b64), bytes = new Uint8Array(raw.length);
      for (var i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
      var url = URL.createObjectURL(new Blob([bytes], {type: "model/gltf-binary"}));
      var mv = document.createElement("model-viewer");
      mv.setAttribute("src", url);
      mv.setAttribute("camera-controls", "");
      mv.setAttribute("auto-rotate", "");
      mv.setAttribute("alt", box.getAttribute("data-alt") || "3D model");
      box.insertBefore(mv, box.firstChild);
      box.classList.add("ready");
      say(box, "Drag to orbit, scroll to zoom.");
    };
    s.onerror = function () {
      say(box, "The model data did not load; the orbit video stands in.");
    };
    document.body.appendChild(s);
  }
  function ready() {
    if (decided) { return; }
    decided = true;
    document.body.dataset.viewer = "ready";
    document.querySelectorAll(".viewer").forEach(show);
  }
  window.hifi123ViewerFailed = function () { failed("it could not be loaded: offline?"); };
  if (!document.querySelector(".viewer")) { document.body.dataset.viewer = "none"; return; }
  if (window.customElements && customElements.get("model-viewer")) { ready(); return; }
  if (window.customElements) { customElements.whenDefined("model-viewer").then(ready); }
  if (window.HIFI123_VIEWER_FAILED) { window.hifi123ViewerFailed(); }
  setTimeout(function () { failed("it did not load in time"); }, %(timeout)d);
})();
"""


def script(timeout_ms: int = VIEWER_TIMEOUT_MS) -> str:
    return JS % {"timeout": int(timeout_ms)}
