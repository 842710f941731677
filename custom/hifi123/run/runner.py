"""Executing a stage plan: checks, subprocesses with logs, completion markers, resume, run records.

`run_image(opts)` loops: scan the outputs tree -> plan (plan.py) -> run the first pending stage ->
repeat, so every decision is made by the pure planner on the real state. A stage runs as a
subprocess; its output goes to `OUT/logs/TAG/<variant>-<stage>.log` (and to the terminal unless
quiet). After exit code 0 the runner checks the stage's expected outputs, writes the training
stages' completion marker `<trial>/hifi123_stage.json`, and records timings in
`OUT/runs/TAG.<variant>.json`. A failure raises `StageFailed` (what failed, the log's tail, how to
resume); re-running the same command skips finished stages and resumes an interrupted training
stage from `<trial>/ckpts/last.ckpt`.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import Hifi123Error, InputError
from .plan import (
    ALIGNMENT_PLACEHOLDER,
    CAPTION_PLACEHOLDER,
    CONFIG_DIR,
    EVAL_REPORT,
    MARKER,
    POINTCLOUD,
    TRAINING_STAGES,
    Layout,
    RunOptions,
    Stage,
    newest,
    pending_stages,
    plan_stages,
    scan_state,
    trial_outputs,
)

_HERE = Path(__file__).resolve()
#: the repository root when running from a checkout (custom/hifi123/run/runner.py), else None
REPO_ROOT: Optional[Path] = _HERE.parents[3] if _HERE.parents[2].name == "custom" else None

INSTALL_FIX = (
    "bash install.sh (clones threestudio into ./threestudio and links hifi123 into it), "
    "or point --threestudio-root / THREESTUDIO_ROOT at your checkout"
)


class StageFailed(Hifi123Error):
    """A stage's command failed or did not write what it should."""

    def __init__(
        self, what: str, stage: str = "", expected: str = "", fix: str = "", log: str = ""
    ):
        self.stage = stage
        self.log = log
        super().__init__(what, expected, fix)


class PreprocessFailed(StageFailed):
    """`hifi123 preprocess` rejected the image."""


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------- checks


def _has_launch(path) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "launch.py"))


def find_threestudio_root(
    explicit: Optional[str] = None,
    environ: Optional[Dict[str, str]] = None,
    cwd: Optional[str] = None,
    repo_root: Optional[Path] = REPO_ROOT,
) -> str:
    """The threestudio checkout (the folder holding launch.py): `--threestudio-root`, else
    `$THREESTUDIO_ROOT`, else `./threestudio`, else `<this repository>/threestudio` (install.sh's
    clone). An explicit choice that is wrong is an error, never silently replaced."""
    environ = os.environ if environ is None else environ
    cwd = cwd or os.getcwd()
    expected = (
        "a threestudio checkout: the folder with launch.py, with hifi123 linked into custom/hifi123"
    )
    for flag, value in (
        ("--threestudio-root", explicit),
        ("THREESTUDIO_ROOT", environ.get("THREESTUDIO_ROOT")),
    ):
        if value:
            root = os.path.abspath(os.path.expanduser(value))
            if not _has_launch(root):
                raise Hifi123Error(
                    f"{flag} {value} has no launch.py ("
                    f"{'not a folder' if not os.path.isdir(root) else 'not a threestudio checkout'}"
                    ")",
                    expected,
                    INSTALL_FIX,
                )
            return root
    looked = [os.path.join(cwd, "threestudio")] + (
        [str(repo_root / "threestudio")] if repo_root else []
    )
    for cand in looked:
        if _has_launch(cand):
            return os.path.abspath(cand)
    raise Hifi123Error(
        (
            "threestudio not found: no --threestudio-root, THREESTUDIO_ROOT is not set, and "
            "there is no launch.py in "
        )
        + " or ".join(dict.fromkeys(looked)),
        expected,
        INSTALL_FIX,
    )


def check_threestudio(opts: RunOptions) -> None:
    """hifi123 is linked into the checkout and this method's configs are there."""
    root = opts.threestudio_root
    link = os.path.join(root, "custom", "hifi123")
    if not os.path.isdir(link):
        raise Hifi123Error(
            f"hifi123 is not installed in threestudio: {link} does not exist",
            "custom/hifi123 in the threestudio root (a link to this repository's custom/hifi123)",
            "bash install.sh (it makes the link), or: ln -s "
            f"{REPO_ROOT / 'custom' / 'hifi123' if REPO_ROOT else '<hifi123>/custom/hifi123'} "
            f"{link}",
        )
    for st in opts.training_stages:
        cfg = os.path.join(root, CONFIG_DIR, opts.training(st).config)
        if not os.path.isfile(cfg):
            raise Hifi123Error(
                f"config {CONFIG_DIR}/{opts.training(st).config} ({opts.variant} {st} stage) not "
                f"found in {root}",
                f"the {opts.method} configs in {os.path.join(root, CONFIG_DIR)}",
                "update hifi123 (git pull) and re-run bash install.sh; the stage table is "
                "METHODS in custom/hifi123/run/plan.py",
            )


def gpu_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_gpu(gpus: Sequence[str]) -> None:
    """Training needs CUDA; fail before anything runs."""
    if not gpu_available():
        raise Hifi123Error(
            "no CUDA GPU: torch.cuda.is_available() is False",
            "an NVIDIA GPU and a CUDA build of torch (threestudio trains on GPU only)",
            "run on a GPU machine, or add --dry-run to print the commands without running them",
        )
    if not os.environ.get("CUDA_VISIBLE_DEVICES"):
        import torch

        n = torch.cuda.device_count()
        bad = [g for g in gpus if int(g) >= n]
        if bad:
            raise Hifi123Error(
                f"GPU {', '.join(bad)} requested but this machine has {n} (ids 0..{n - 1})",
                "GPU ids that exist (PCI bus order, as launch.py --gpu)",
                "pass other ids with --gpu / --gpus",
            )


def check_image(path: str, flag: str = "IMAGE") -> None:
    """The photo exists and decodes (a dry run says so too, not only the preprocess stage)."""
    if not os.path.isfile(path):
        raise InputError(
            f"image {path} not found ({flag})",
            "an image file (PNG/JPEG/...) of the object",
            "check the path",
        )
    from ..core.images import open_image

    open_image(
        path,
        f"{flag} image",
        formats="a PNG, JPEG, WebP, BMP, TIFF or GIF file",
        format_fix="re-export the photo as PNG or JPEG",
    ).close()


def check_mesh(opts: RunOptions) -> None:
    """refine-mesh: --mesh is given and is a readable triangle mesh, before any stage runs."""
    if not opts.spec.aligns_mesh:
        return
    if not opts.mesh:
        raise InputError(
            f"--method {opts.method} refines a mesh you have, but no --mesh was given",
            "--mesh MESH (OBJ, GLB, PLY, ... from TripoSR, SF3D, InstantMesh, TRELLIS, Hunyuan3D)",
            f"hifi123 run {opts.image} --method {opts.method} --mesh MESH",
        )
    from ..core.mesh_align import load_mesh

    load_mesh(opts.mesh)


# ---------------------------------------------------------------------------------- execution


def execute_subprocess(
    stage: Stage, echo: bool = True, environ: Optional[Dict[str, str]] = None
) -> int:
    """Run `stage.argv` in `stage.cwd` with `stage.env` over `environ` (default: this process's);
    append its output to `stage.log` (and the terminal when `echo`). Returns the exit code."""
    env = dict(os.environ if environ is None else environ)
    env.update(stage.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    os.makedirs(os.path.dirname(stage.log), exist_ok=True)
    with open(stage.log, "ab") as log:
        log.write(f"\n# {_now()}  {stage.command()}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                stage.argv, cwd=stage.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except OSError as err:
            log.write(f"cannot start: {err}\n".encode())
            return 127
        out = getattr(sys.stdout, "buffer", None)
        try:
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if echo:
                    if out is not None:
                        out.write(chunk)
                        out.flush()
                    else:
                        sys.stdout.write(chunk.decode(errors="replace"))
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


Executor = Callable[[Stage, bool], int]


def _tail(path: str, n: int = 20) -> List[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().replace("\r", "\n").splitlines()[-n:]
    except OSError:
        return []


def _preprocess_message(path: str) -> str:
    """The `hifi123: error: ...` block the preprocessor printed (its what / expected / fix)."""
    lines = _tail(path, 200)
    starts = [i for i, line in enumerate(lines) if "hifi123: error:" in line]
    if starts:
        block = lines[starts[-1] :]
        block[0] = block[0].split("hifi123: error:", 1)[1].strip()
        return "\n".join(block[:12]).strip()
    return "\n".join(lines[-12:]).strip() or "(no output)"


# ------------------------------------------------------------------------------------- record


def load_record(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_record(path: str, record: dict) -> None:
    record["updated"] = _now()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def outputs_of(opts: RunOptions) -> Dict[str, Optional[str]]:
    """Where every output of one image is (None: not written yet)."""
    lay = Layout.of(opts)
    spec = opts.spec
    trials = {st: lay.trial(opts.training(st).name) for st in opts.training_stages}
    mesh = trial_outputs(trials[spec.mesh_from])
    ref = trial_outputs(trials["refine"])

    def find(pattern):
        return newest(glob.glob(pattern))

    out = {
        "inputs (RGBA, depth, normal, caption)": lay.rgba if os.path.isfile(lay.rgba) else None,
        **(
            {
                "aligned mesh (+ alignment.json, overlay)": lay.aligned()
                if os.path.isfile(lay.aligned())
                else None
            }
            if spec.aligns_mesh
            else {}
        ),
        **(
            {"coarse trial": trials["coarse"] if os.path.isdir(trials["coarse"]) else None}
            if "coarse" in trials
            else {}
        ),
        "refine trial": trials["refine"] if os.path.isdir(trials["refine"]) else None,
        "mesh (OBJ/MTL + texture)": find(mesh["obj"]),
        "mesh (GLB)": find(mesh["glb"]),
    }
    if spec.pointcloud:
        ply = os.path.join(trials["refine"], POINTCLOUD)
        out["point cloud (PLY)"] = ply if os.path.isfile(ply) else None
    out["360° video"] = find(ref["video"])
    report = os.path.join(trials["refine"], EVAL_REPORT)
    out["evaluation report (JSON, .md beside)"] = report if os.path.isfile(report) else None
    out["logs"] = lay.logs_dir if os.path.isdir(lay.logs_dir) else None
    out["run record"] = lay.record
    return out


def read_metrics(opts: RunOptions) -> Dict[str, float]:
    lay = Layout.of(opts)
    rep = load_record(os.path.join(lay.trial(opts.training("refine").name), EVAL_REPORT)) or {}
    return {k: v for k, v in (rep.get("metrics") or {}).items() if isinstance(v, (int, float, str))}


# ---------------------------------------------------------------------------------- run image


def print_plan(stages: Sequence[Stage], say: Callable[[str], None] = print) -> None:
    n = len(stages)
    for i, s in enumerate(stages, 1):
        if s.runs:
            extra = f"; moves {s.move_aside} aside first" if s.move_aside else ""
            say(f"[{i}/{n}] {s.name}: run ({s.why}{extra})")
            say(f"    {s.command()}")
        else:
            say(f"[{i}/{n}] {s.name}: skip ({s.skip})")


def _move_aside(trial: str) -> str:
    k = 1
    while os.path.exists(f"{trial}.old-{k}"):
        k += 1
    dst = f"{trial}.old-{k}"
    os.rename(trial, dst)
    return dst


def fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_image(
    opts: RunOptions,
    *,
    dry_run: bool = False,
    echo: bool = True,
    execute: Optional[Executor] = None,
    say: Callable[[str], None] = print,
) -> dict:
    """Run (or with `dry_run`, print) every pending stage for one image. Returns the run record.

    Raises `StageFailed` / `PreprocessFailed` / `Hifi123Error`; the record on disk says which
    stage failed. `echo`: stream the stages' output to the terminal (else only to the logs)."""
    execute = execute or execute_subprocess
    check_image(opts.image)
    check_mesh(opts)
    check_threestudio(opts)
    lay = Layout.of(opts)
    stages = plan_stages(opts, scan_state(opts))
    say(
        f"hifi123 run: {opts.image} -> {opts.method}{' (low VRAM)' if opts.lowvram else ''}, tag "
        f"{lay.tag}, GPU {opts.gpu}\n  threestudio: {opts.threestudio_root}\n"
        f"  outputs:     {opts.out}"
    )
    if dry_run:
        print_plan(stages, say)
        return {}
    todo = pending_stages(stages)
    if any(s.needs_gpu for s in todo):
        check_gpu(opts.gpu.split(","))

    record = load_record(lay.record) or {}
    record.update(
        image=opts.image,
        tag=lay.tag,
        method=opts.method,
        lowvram=opts.lowvram,
        variant=opts.variant,
        gpu=opts.gpu,
        status="running",
        failed_stage=None,
        error=None,
    )
    record.setdefault("stages", {})
    record.setdefault("started", _now())
    os.makedirs(opts.out, exist_ok=True)
    save_record(lay.record, record)

    ran: List[str] = []
    try:
        while True:
            stages = plan_stages(opts, scan_state(opts), ran)
            for s in stages:
                if not s.runs and s.name not in ran:
                    entry = record["stages"].setdefault(s.name, {})
                    entry["status"] = "done" if s.skip.startswith("done") else "skipped"
                    entry["note"] = s.skip
            todo = pending_stages(stages)
            if not todo:
                break
            stage = todo[0]
            if stage.name in ran:  # a stage that succeeded must be done on the next scan
                raise StageFailed(
                    f"stage {stage.name} ran but is still pending",
                    stage.name,
                    "its outputs: " + ", ".join(stage.outputs),
                    "report this as a bug",
                )
            if any(CAPTION_PLACEHOLDER.split("{")[0] in a for a in stage.argv):
                raise StageFailed(
                    f"stage {stage.name}: the caption {lay.caption} is missing",
                    stage.name,
                    "the preprocess stage writes it",
                    "pass --prompt TEXT, or re-run the preprocess stage",
                )
            if any(ALIGNMENT_PLACEHOLDER.split("{")[0] in a for a in stage.argv):
                raise StageFailed(
                    f"stage {stage.name}: {lay.aligned('alignment.json')} has no "
                    "fitted reference camera",
                    stage.name,
                    "the align stage writes it",
                    "re-run the same command (the align stage runs again)",
                )
            _run_stage(opts, stage, record, execute, echo, say)
            ran.append(stage.name)
    except Hifi123Error as err:
        record.update(
            status="failed", failed_stage=getattr(err, "stage", None) or None, error=err.render()
        )
        save_record(lay.record, record)
        raise
    except BaseException as err:
        record.update(
            status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
            error=f"{type(err).__name__}: {err}",
        )
        save_record(lay.record, record)
        raise
    record.update(
        status="done", outputs=outputs_of(opts), metrics=read_metrics(opts), finished=_now()
    )
    record["seconds"] = sum(e.get("seconds") or 0 for e in record["stages"].values())
    save_record(lay.record, record)
    say(f"\n{lay.tag}: all stages done ({fmt_seconds(record['seconds'])} of stage time). Outputs:")
    for label, path in record["outputs"].items():
        say(f"  {label:38s} {path or '(not written)'}")
    return record


def _run_stage(
    opts: RunOptions,
    stage: Stage,
    record: dict,
    execute: Executor,
    echo: bool,
    say: Callable[[str], None],
) -> None:
    if stage.move_aside and os.path.isdir(stage.move_aside):
        dst = _move_aside(stage.move_aside)
        say(f"moved the stale trial {stage.move_aside} to {dst}")
    if stage.trial and stage.name in TRAINING_STAGES:
        marker = os.path.join(stage.trial, MARKER)
        if os.path.exists(marker):
            os.remove(marker)
    os.makedirs(stage.cwd, exist_ok=True)
    say(
        f"\n== {Layout.of(opts).tag}: {stage.name} ({stage.why})\n   {stage.command()}\n"
        f"   log: {stage.log}"
    )
    prev = record["stages"].get(stage.name) or {}
    entry = {
        "status": "running",
        "started": _now(),
        "log": stage.log,
        "resumed_from": stage.resume,
        "command": stage.command(),
    }
    record["stages"][stage.name] = entry
    save_record(Layout.of(opts).record, record)
    t0 = time.time()
    code = execute(stage, echo)
    seconds = time.time() - t0
    # a resumed training stage accumulates the time of its interrupted attempts
    earlier = (
        (prev.get("seconds") or 0)
        if stage.resume and prev.get("status") in ("failed", "running", "interrupted")
        else 0
    )
    entry.update(seconds=earlier + seconds, finished=_now(), exit_code=code)

    missing = [p for p in stage.outputs if not glob.glob(p)]
    if code != 0 or missing:
        entry["status"] = "failed"
        if stage.name == "preprocess" and code != 0:
            message = "\n".join(
                "    " + line for line in _preprocess_message(stage.log).splitlines()
            )
            raise PreprocessFailed(
                f"preprocessing {opts.image} failed:\n{message}",
                stage.name,
                "",
                "do what the preprocess error says, then re-run the same command (log: "
                f"{stage.log})",
                stage.log,
            )
        tail = "\n".join("    " + line for line in _tail(stage.log, 15))
        what = (
            f"stage {stage.name} failed (exit code {code})"
            if code != 0
            else f"stage {stage.name} exited 0 but did not write {', '.join(missing)}"
        )
        raise StageFailed(
            f"{what} for {opts.image}\n  last lines of {stage.log}:\n{tail}",
            stage.name,
            "",
            "fix the cause shown in the log, then re-run the same command: finished stages are "
            "skipped and an interrupted training stage resumes from its ckpts/last.ckpt",
            stage.log,
        )
    entry["status"] = "ran"
    if stage.trial and stage.name in TRAINING_STAGES:
        marker = {
            "stage": stage.name,
            "method": opts.method,
            "variant": opts.variant,
            "image": opts.image,
            "argv": stage.argv,
            "cwd": stage.cwd,
            "resumed_from": stage.resume,
            "started": entry["started"],
            "finished": entry["finished"],
            "seconds": seconds,
            "identity": stage.identity,
        }
        with open(os.path.join(stage.trial, MARKER), "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=2)
            f.write("\n")
    save_record(Layout.of(opts).record, record)
    say(f"== {Layout.of(opts).tag}: {stage.name} done in {fmt_seconds(seconds)}")


__all__ = [
    "StageFailed",
    "PreprocessFailed",
    "find_threestudio_root",
    "check_threestudio",
    "check_gpu",
    "check_image",
    "execute_subprocess",
    "run_image",
    "print_plan",
    "outputs_of",
    "read_metrics",
    "load_record",
    "save_record",
]
