"""What a run left in its output folder, read without writing anything.

Two kinds of folder are understood:

* the `--out` folder of `hifi123 run` (one image or a manifest): every run record
  `runs/TAG.VARIANT.json` is one entry; its files are found through the run's own layout
  (`hifi123.run.plan.Layout`) under the folder given here, not under the paths the record holds,
  so a moved folder still reports. `summary-VARIANT.json` (a finished manifest run) adds its
  order and the images that never started. A batch still running shows what exists so far.
* one threestudio trial folder of our systems (`configs/parsed.yaml`, `ckpts/`, `save/`).

Everything optional stays `None` / empty when it is not there; the page shows only what exists.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import InputError

#: the stages of `hifi123 run` in order (plan.STAGE_ORDER; repeated to keep this import-light)
STAGE_ORDER = ("preprocess", "align", "coarse", "refine", "export", "glb", "ply", "video", "eval")
TRIAL_STAGES = ("coarse", "refine")
EVAL_JSON = os.path.join("save", "eval", "single_view.json")


@dataclass
class StageRow:
    name: str
    status: str
    seconds: Optional[float] = None
    command: Optional[str] = None
    log: Optional[str] = None
    note: str = ""


@dataclass
class Trial:
    """One threestudio trial folder and the files of it the page uses."""

    stage: str  # coarse, refine, or "trial" (a folder given directly)
    path: str
    video: Optional[str] = None  # newest save/it<N>-test.mp4
    frames: List[str] = field(default_factory=list)  # its frames save/it<N>-test/<i>.png
    csv: List[str] = field(default_factory=list)  # csv_logs/version_*/metrics.csv, oldest first
    parsed: Optional[str] = None  # configs/parsed.yaml
    command: Optional[str] = None  # the launch.py command (cmd.txt or our stage marker)
    ckpt: Optional[str] = None
    glb: Optional[str] = None
    obj: Optional[str] = None
    ply: Optional[str] = None
    eval_json: Optional[str] = None
    system_type: str = ""
    refinement: Optional[bool] = None


@dataclass
class Entry:
    """One image (one run record), or the trial folder given directly."""

    key: str  # unique, safe as an HTML id
    tag: str
    method: Optional[str] = None  # hifi123 | makeit3d | None (unknown)
    variant: Optional[str] = None
    status: str = "unknown"
    image: Optional[str] = None  # the photo the run started from
    line: Optional[int] = None  # manifest line
    failed_stage: Optional[str] = None
    error: Optional[str] = None
    log_tail: List[str] = field(default_factory=list)
    stages: List[StageRow] = field(default_factory=list)
    rgba: Optional[str] = None
    sheet: Optional[str] = None
    caption: Optional[str] = None
    trials: Dict[str, Trial] = field(default_factory=dict)
    mesh_from: Optional[str] = None  # the trial stage whose mesh was exported
    eval: Optional[Dict[str, Any]] = None
    eval_path: Optional[str] = None
    metrics: Dict[str, Any] = field(default_factory=dict)

    def trial(self, stage: str) -> Optional[Trial]:
        return self.trials.get(stage)

    @property
    def mesh_trial(self) -> Optional[Trial]:
        if self.mesh_from and self.mesh_from in self.trials:
            return self.trials[self.mesh_from]
        found = [t for t in self.trials.values() if t.glb]
        return found[-1] if found else None

    @property
    def glb(self) -> Optional[str]:
        t = self.mesh_trial
        return t.glb if t else None

    @property
    def ply(self) -> Optional[str]:
        for t in self.trials.values():
            if t.ply:
                return t.ply
        return None

    def seconds(self, stage: str) -> Optional[float]:
        for s in self.stages:
            if s.name == stage:
                return s.seconds
        return None

    @property
    def total_seconds(self) -> Optional[float]:
        vals = [s.seconds for s in self.stages if s.seconds]
        return sum(vals) if vals else None


@dataclass
class RunFolder:
    out: str
    kind: str  # "run" or "trial"
    entries: List[Entry]
    stages: List[str]  # stage columns of the index
    manifest: Optional[str] = None
    variants: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ helpers


def _step(path: str) -> int:
    m = re.findall(r"it(\d+)-", path)
    return int(m[-1]) if m else -1


def _newest(paths) -> Optional[str]:
    paths = [p for p in paths if os.path.exists(p)]
    return max(paths, key=lambda p: (_step(p), p)) if paths else None


def _natural(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def read_json(path: Optional[str]) -> Optional[dict]:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tail(path: Optional[str], n: int = 20) -> List[str]:
    if not path:
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().replace("\r", "\n").splitlines()[-n:]
    except OSError:
        return []


def logged_command(log: Optional[str]) -> Optional[str]:
    """The last command `hifi123 run` wrote into a stage log (`# <time>  <command>`)."""
    found = None
    for line in tail(log, 100000):
        m = re.match(r"^# \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d  (.+)$", line)
        if m:
            found = m.group(1)
    return found


def _parsed_system(parsed: Optional[str]):
    """(system_type, refinement) from a trial's configs/parsed.yaml."""
    if not parsed:
        return "", None
    try:
        import yaml

        with open(parsed, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except Exception:  # a config we cannot read still gets its trial reported
        return "", None
    if not isinstance(cfg, dict):
        return "", None
    system = cfg.get("system") if isinstance(cfg.get("system"), dict) else {}
    ref = system.get("refinement")
    return str(cfg.get("system_type") or ""), (bool(ref) if ref is not None else None)


def scan_trial(path: str, stage: str) -> Trial:
    t = Trial(stage=stage, path=path)
    esc = glob.escape(path)
    t.video = _newest(glob.glob(os.path.join(esc, "save", "it*-test.mp4")))
    if t.video:
        frames_dir = t.video[: -len(".mp4")]
        t.frames = sorted(glob.glob(os.path.join(glob.escape(frames_dir), "*.png")), key=_natural)
    t.csv = sorted(
        glob.glob(os.path.join(esc, "csv_logs", "version_*", "metrics.csv")), key=_natural
    )
    parsed = os.path.join(path, "configs", "parsed.yaml")
    t.parsed = parsed if os.path.isfile(parsed) else None
    t.system_type, t.refinement = _parsed_system(t.parsed)
    marker = read_json(os.path.join(path, "hifi123_stage.json"))
    if marker and isinstance(marker.get("argv"), list):
        import shlex

        t.command = shlex.join(str(a) for a in marker["argv"])
    else:
        cmd = tail(os.path.join(path, "cmd.txt"), 2)
        t.command = cmd[0] if cmd else None
    ckpt = os.path.join(path, "ckpts", "last.ckpt")
    t.ckpt = ckpt if os.path.isfile(ckpt) else None
    t.glb = _newest(glob.glob(os.path.join(esc, "save", "it*-export", "model.glb")))
    t.obj = _newest(glob.glob(os.path.join(esc, "save", "it*-export", "model.obj")))
    ply = os.path.join(path, "save", "pointcloud.ply")
    t.ply = ply if os.path.isfile(ply) else None
    ev = os.path.join(path, EVAL_JSON)
    t.eval_json = ev if os.path.isfile(ev) else None
    return t


def is_trial(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "configs", "parsed.yaml")) or (
        os.path.isdir(os.path.join(path, "ckpts")) and os.path.isdir(os.path.join(path, "save"))
    )


def _slug(text: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "image"
    key, k = base, 2
    while key in taken:
        key, k = f"{base}-{k}", k + 1
    taken.add(key)
    return key


def _attach_eval(e: Entry, record_metrics: Optional[dict] = None) -> None:
    refine = e.trials.get("refine") or e.trials.get("trial")
    if refine and refine.eval_json:
        e.eval_path = refine.eval_json
        e.eval = read_json(refine.eval_json)
    metrics = (e.eval or {}).get("metrics") if e.eval else None
    if not isinstance(metrics, dict):
        metrics = record_metrics if isinstance(record_metrics, dict) else {}
    e.metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


# ------------------------------------------------------------------------------------ run mode


def _entry_from_record(
    out: str, rec: dict, record_path: str, taken: set, multi_variant: bool
) -> Entry:
    from ..run.plan import METHODS, Layout, RunOptions, stage_names

    name = os.path.basename(record_path)[: -len(".json")]
    tag = str(rec.get("tag") or name.split(".")[0])
    method = rec.get("method") if rec.get("method") in METHODS else None
    lowvram = bool(rec.get("lowvram")) or str(rec.get("variant") or "").endswith("-lowvram")
    variant = rec.get("variant") or (name.split(".", 1)[1] if "." in name else None)
    e = Entry(
        key=_slug(f"{tag}-{variant}" if multi_variant else tag, taken),
        tag=tag,
        method=method,
        variant=variant,
        status=str(rec.get("status") or "unknown"),
        image=rec.get("image"),
        failed_stage=rec.get("failed_stage"),
        error=rec.get("error"),
    )
    stages = rec.get("stages") if isinstance(rec.get("stages"), dict) else {}
    lay = None
    if method and e.image:
        opts = RunOptions(image=str(e.image), method=method, out=out, lowvram=lowvram, tag=tag)
        lay = Layout.of(opts)
        e.mesh_from = opts.spec.mesh_from
        for st in (t for t in TRIAL_STAGES if t in opts.training_stages):
            path = lay.trial(opts.training(st).name)
            if os.path.isdir(path):
                e.trials[st] = scan_trial(path, st)
        rgba, sheet, cap = lay.rgba, lay.pre("_sheet.png"), lay.caption
        e.rgba = rgba if os.path.isfile(rgba) else None
        e.sheet = sheet if os.path.isfile(sheet) else None
        if os.path.isfile(cap):
            e.caption = " ".join(tail(cap, 50)).strip() or None
    names = [n for n in STAGE_ORDER if n in stages or (method and n in stage_names(method))]
    for n in names:
        info = stages.get(n) if isinstance(stages.get(n), dict) else {}
        log = lay.log(n) if lay else None
        if log and not os.path.isfile(log):
            log = (
                info.get("log")
                if info.get("log") and os.path.isfile(str(info.get("log")))
                else None
            )
        cmd = info.get("command") or logged_command(log)
        if not cmd and n in e.trials:
            cmd = e.trials[n].command
        sec = info.get("seconds")
        e.stages.append(
            StageRow(
                n,
                str(info.get("status") or "not run"),
                float(sec) if isinstance(sec, (int, float)) else None,
                cmd,
                log,
                str(info.get("note") or ""),
            )
        )
    if e.status != "done":
        failed = e.failed_stage or next((s.name for s in e.stages if s.status == "failed"), None)
        e.failed_stage = failed
        row = next((s for s in e.stages if s.name == failed), None)
        e.log_tail = tail(row.log if row else None, 20)
    _attach_eval(e, rec.get("metrics"))
    return e


def _scan_run(out: str) -> RunFolder:
    records = sorted(glob.glob(os.path.join(glob.escape(out), "runs", "*.json")))
    recs = [(p, read_json(p)) for p in records]
    recs = [(p, r) for p, r in recs if r is not None]
    variants = sorted(
        {str(r.get("variant") or os.path.basename(p).split(".", 1)[-1][:-5]) for p, r in recs}
    )
    taken: set = set()
    entries = [_entry_from_record(out, r, p, taken, len(variants) > 1) for p, r in recs]
    order: Dict[tuple, int] = {}
    manifest = None
    for variant in variants:
        summary = read_json(os.path.join(out, f"summary-{variant}.json"))
        if not summary:
            continue
        manifest = manifest or summary.get("manifest")
        known = {(e.tag, e.variant) for e in entries}
        for row in summary.get("images") or []:
            if not isinstance(row, dict):
                continue
            tag = str(row.get("tag") or "")
            order[(tag, variant)] = int(row.get("line") or 0)
            if tag and (tag, variant) not in known:  # listed in the manifest, never started
                entries.append(
                    Entry(
                        key=_slug(f"{tag}-{variant}" if len(variants) > 1 else tag, taken),
                        tag=tag,
                        variant=variant,
                        method=summary.get("method"),
                        status="not run",
                        image=row.get("image"),
                        line=row.get("line"),
                    )
                )
    for e in entries:
        e.line = order.get((e.tag, e.variant), e.line)
    entries.sort(key=lambda e: (e.line is None, e.line or 0, e.tag, e.variant or ""))
    stages = [n for n in STAGE_ORDER if any(s.name == n for e in entries for s in e.stages)]
    return RunFolder(out, "run", entries, stages, manifest, variants)


# ------------------------------------------------------------------------------------ trial mode


def _scan_single_trial(path: str) -> RunFolder:
    t = scan_trial(path, "trial")
    method = (
        "makeit3d"
        if "makeit3d" in t.system_type
        else ("hifi123" if "hifi123" in t.system_type else None)
    )
    stage = "refine" if t.refinement else ("coarse" if t.refinement is False else "trial")
    t.stage = stage
    tag = os.path.basename(os.path.normpath(path))
    e = Entry(key=_slug(tag, set()), tag=tag, method=method, status="trial", trials={stage: t})
    e.mesh_from = stage
    e.stages = [StageRow(stage, "trial", None, t.command)]
    image = None
    try:
        import yaml

        with open(t.parsed or "", encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
        image = ((cfg.get("data") or {}).get("image_path")) if isinstance(cfg, dict) else None
    except Exception:  # no or unreadable config: no input image shown
        image = None
    if image and os.path.isfile(str(image)):
        e.rgba = str(image)
        sheet = str(image).replace("_rgba.png", "_sheet.png")
        e.sheet = sheet if sheet != image and os.path.isfile(sheet) else None
    _attach_eval(e)
    return RunFolder(os.path.abspath(path), "trial", [e], [stage])


def scan(out: str) -> RunFolder:
    """The run folder `out` as a model for the page; InputError when it is none of the kinds."""
    out = os.path.abspath(os.path.expanduser(out))
    if not os.path.isdir(out):
        raise InputError(
            f"{out} is not a folder" if os.path.exists(out) else f"{out} not found",
            "the --out folder of `hifi123 run` (default ./outputs) or a threestudio "
            "trial folder (OUT/<name>/<tag>)",
            "pass that folder: hifi123 report OUT",
        )
    if os.path.isdir(os.path.join(out, "runs")) and glob.glob(
        os.path.join(glob.escape(out), "runs", "*.json")
    ):
        return _scan_run(out)
    if is_trial(out):
        return _scan_single_trial(out)
    raise InputError(
        f"{out} holds neither run records (runs/*.json) nor a threestudio trial "
        "(configs/parsed.yaml, ckpts/, save/)",
        "the --out folder of `hifi123 run` or one trial folder OUT/<name>/<tag>",
        "pass the folder `hifi123 run --out` wrote (it has runs/), or a trial folder",
    )
