"""The report in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven
by selenium opens a report of a fabricated batch straight from disk. Skips, saying why, when no
browser is installed (.ci/run installs one). The screenshot goes to $HIFI123_REPORT_SCREENSHOT,
else into pytest's tmp folder."""

from __future__ import annotations

import json
import os

import pytest
from hifi123.report import build, template
from hifi123.report.browser import browser_missing, open_chromium, wait_for, wait_viewer_decided
from hifi123.run import plan as pl
from report_helpers import METRICS, fabricated_batch

MISSING = browser_missing()
if MISSING is not None and os.environ.get("HIFI123_REQUIRE_BROWSER") == "1":  # CI installed one
    raise RuntimeError(f"HIFI123_REQUIRE_BROWSER=1 but there is no browser to test in: {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no browser to test in: {MISSING}")

SECTIONS = {
    "a": ["input", "videos", "model", "rgsd", "losses", "eval", "stages"],
    "b": ["failure", "input", "videos", "losses", "stages"],
    "c": ["input", "videos", "model", "rgsd", "losses", "eval", "stages"],
    "d": ["failure", "input"],
}


def console_errors(driver):
    """SEVERE console entries, less the viewer library's own failure to load (no network here)."""
    return [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and template.MODEL_VIEWER_URL not in e["message"]
    ]


def index_order(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#index-table tbody tr'))"
        ".map(function (r) { return r.dataset.key; });"
    )


def check_fallback(driver):
    shown = driver.execute_script(
        "var box = document.querySelector('.viewer');"
        "var v = box.querySelector('video.stand-in');"
        "return [box.classList.contains('fallback'), v.offsetWidth > 0 && v.offsetHeight > 0,"
        "        box.querySelector('.viewer-note').textContent,"
        "        document.querySelectorAll('model-viewer').length];"
    )
    assert shown[0] and shown[1] and shown[3] == 0, shown
    assert "orbit video stands in" in shown[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    out, opts, _ = fabricated_batch(
        tmp, names=("a.png", "b.png", "c.png", "d.png"), run=("a", "b", "c")
    )
    return build.build_report(out, say=lambda m: None), opts


def test_report_in_headless_chromium(report, tmp_path):
    index, opts = report
    driver = open_chromium(1280, 1000)
    try:
        driver.get("file://" + index)
        state = wait_viewer_decided(driver)
        assert state in ("ready", "failed")
        # every section and part, where the data is
        for key, parts in SECTIONS.items():
            found = driver.execute_script(
                "return Array.from(document.querySelectorAll('#' + arguments[0] + ' [data-part]'))"
                ".map(function (p) { return p.dataset.part; });",
                key,
            )
            assert found == parts, (key, found)
        # the videos load from disk (H.264 mp4 as threestudio writes it)
        n_videos = driver.execute_script("return document.querySelectorAll('video').length")
        assert n_videos == 7  # a, c: coarse, refine, stand-in; b: coarse
        wait_for(
            driver,
            "Array.from(document.querySelectorAll('video'))"
            ".every(function (v) { return v.readyState >= 2 && !v.error; })",
            30,
        )
        # the metrics table shows what the evaluation JSON holds
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('#index-table tbody tr'))"
            ".map(function (r) {"
            " return [r.dataset.key, Array.from(r.querySelectorAll('td[data-metric]')).map("
            "  function (td) {"
            "    return [td.dataset.metric, td.dataset.value, td.textContent]; })]; });"
        )
        shown = {
            key: {m: (float(v) if v else None, text) for m, v, text in cells} for key, cells in rows
        }
        for tag in ("a", "b", "c", "d"):
            path = os.path.join(pl.Layout.of(opts[tag]).trial("hifi123-refine"), pl.EVAL_REPORT)
            metrics = json.load(open(path))["metrics"] if os.path.isfile(path) else {}
            assert metrics == METRICS.get(tag, {})
            got = {m: v for m, (v, _) in shown[tag].items() if v is not None}
            assert got == metrics, tag
        assert shown["a"]["clip"][1] == f"{METRICS['a']['clip']:.4f}"
        # sorting: by CLIP up, then down; images without the metric stay last
        assert index_order(driver) == ["a", "b", "c", "d"]
        clip = driver.find_element("css selector", '#index-table th[data-col="clip"]')
        clip.click()
        assert index_order(driver) == ["c", "a", "b", "d"]
        assert clip.get_attribute("aria-sort") == "ascending"
        clip.click()
        assert index_order(driver) == ["a", "c", "b", "d"]
        driver.find_element("css selector", '#index-table th[data-col="tag"]').click()
        assert index_order(driver) == ["a", "b", "c", "d"]
        # a row links to its section
        driver.find_element("css selector", '#index-table a[href="#c"]').click()
        assert driver.execute_script("return location.hash") == "#c"
        if state == "failed":
            check_fallback(driver)
        assert console_errors(driver) == []
        shot = os.environ.get("HIFI123_REPORT_SCREENSHOT") or str(tmp_path / "report.png")
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(shot)
        assert os.path.getsize(shot) > 10000

        # the network off: the page still renders, the orbit video stands in for the 3D view
        driver.set_network_conditions(
            offline=True, latency=0, download_throughput=0, upload_throughput=0
        )
        driver.get("file://" + index + "?offline")
        assert wait_viewer_decided(driver) == "failed"
        check_fallback(driver)
        wait_for(
            driver,
            "Array.from(document.querySelectorAll('video'))"
            ".every(function (v) { return v.readyState >= 2; })",
            30,
        )
        assert (
            driver.execute_script("return document.querySelectorAll('section.image').length") == 4
        )
        assert console_errors(driver) == []
    finally:
        driver.quit()


STUB_VIEWER = b"""
customElements.define("model-viewer", class extends HTMLElement {
  connectedCallback() {
    var self = this;
    fetch(this.getAttribute("src")).then(function (r) { return r.arrayBuffer(); })
    .then(function (b) {
      var head = new Uint8Array(b, 0, 4);
      self.dataset.magic = String.fromCharCode.apply(null, head);
      self.dataset.bytes = String(b.byteLength);
    });
  }
});
"""


def test_the_3d_view_when_the_viewer_library_loads(tmp_path):
    """The page's "library loaded" path, with a stand-in <model-viewer> served on the loopback
    address: each model box gets a <model-viewer> whose src holds the GLB's bytes, and the orbit
    video steps aside."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            self.wfile.write(STUB_VIEWER)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out, opts, _ = fabricated_batch(tmp_path, names=("a.png",), run=("a",), summary=False)
    index = build.build_report(
        out, viewer_url=f"http://127.0.0.1:{server.server_port}/mv.js", say=lambda m: None
    )
    glb = os.path.join(
        pl.Layout.of(opts["a"]).trial("hifi123-refine"), "save", "it600-export", "model.glb"
    )
    driver = open_chromium(1000, 800)
    try:
        driver.get("file://" + index)
        assert wait_viewer_decided(driver) == "ready"
        got = wait_for(
            driver,
            "(function () { var m = document.querySelector('.viewer model-viewer');"
            " return m && m.dataset.bytes ? [m.dataset.magic, m.dataset.bytes,"
            " m.getAttribute('src').slice(0, 5)] : null; })()",
            20,
        )
        assert got == ["glTF", str(os.path.getsize(glb)), "blob:"]
        hidden = driver.execute_script(
            "return document.querySelector('.viewer video.stand-in').offsetHeight === 0"
        )
        assert hidden
        assert console_errors(driver) == []
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
