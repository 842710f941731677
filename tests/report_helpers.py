"""Shared by the report tests: a fabricated batch run (the run tests' FakeExecutor for the flow,
plus small real media per stage from `hifi123.report.demo`) and an HTML reader."""

from __future__ import annotations

import os
from html.parser import HTMLParser

import pytest
from hifi123.report import demo
from hifi123.run import manifest as mf
from hifi123.run import plan as pl
from hifi123.run import runner as rn
from run_helpers import FakeExecutor, fake_threestudio, write_manifest

METRICS = {
    "a": {"lpips_ref": 0.0812345, "contextual": 1.6441, "clip": 0.9123},
    "c": {"lpips_ref": 0.1204, "contextual": 1.9872, "clip": 0.8751},
}


class MediaFake(FakeExecutor):
    """The run tests' FakeExecutor (same calls, same failures), then real-kind media per stage."""

    def __call__(self, stage, echo):
        code = super().__call__(stage, echo)
        if code == 0:
            tag = os.path.basename(os.path.dirname(stage.log))
            demo.write_stage(self.opts[tag], stage.name, METRICS.get(tag))
            if stage.name == "refine":
                demo.write_orbit(stage.trial, 600, coarse=False)
        return code


def fabricated_batch(
    tmp_path,
    names=("a.png", "b.png", "c.png"),
    run=None,
    fail_tag="b",
    summary=True,
    method="hifi123",
):
    """A manifest of `names` run through the manifest worker with MediaFake: the image tagged
    `fail_tag` fails at refine with a log; only the tags in `run` (default: all) are run; with
    `summary` the parent's summary is written (images not run show as "not run").
    Returns (out folder, {tag: RunOptions}, manifest entries)."""
    root = fake_threestudio(tmp_path)
    man = write_manifest(tmp_path, list(names))
    base = pl.RunOptions(image="", method=method, out=str(tmp_path / "out"), threestudio_root=root)
    entries = mf.read_manifest(man)
    opts = {e.tag: mf.entry_options(base, e, "0") for e in entries}
    chosen = [e for e in entries if run is None or e.tag in run]
    fake = MediaFake(
        *opts.values(),
        fail={
            (fail_tag, "refine"): (
                1,
                "step 120\nTraceback (most recent call last):\n"
                "RuntimeError: CUDA out of memory <while> rendering & co\n",
                True,
            )
        },
    )
    with pytest.MonkeyPatch.context() as mp:  # stands in for the GPU the stages would need
        mp.setattr(rn, "check_gpu", lambda gpus: None)
        mf.run_worker(chosen, base, "0", execute=fake, say=lambda m: None)
    if summary:
        mf.write_summary(mf.collect_summary(entries, base, manifest=man, gpus=["0"]))
    return str(tmp_path / "out"), opts, entries


class Page(HTMLParser):
    """Elements of a page as (tag, attrs dict); text of elements by id on request."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements = []
        self.scripts = []
        self._in_script = False
        self.text_parts = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text_parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def ids(self):
        return {a["id"] for _, a in self.elements if a.get("id")}

    def find(self, tag=None, **attrs):
        return [
            a
            for t, a in self.elements
            if (tag is None or t == tag)
            and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def links(self):
        return [
            (t, k, v)
            for t, a in self.elements
            for k, v in a.items()
            if k in ("src", "href", "data-glb-js") and v is not None
        ]
