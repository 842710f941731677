"""Many images on a Slurm cluster: `hifi123 run --manifest images.txt --backend slurm`.

One submission is one Slurm array job with one task per image, submitted through submitit
(docs/slurm.md says why an array job and why submitit). Each task runs its image's stages with
the stage runner of the local backend (`manifest.run_worker` on one entry), on the GPU(s) Slurm
gave it (`CUDA_VISIBLE_DEVICES`). The guarantees are the local backend's:

- each image runs once: an image with nothing left to do is not submitted, nor one whose task of
  an earlier submission is still queued or running;
- a re-submission resumes: finished stages are skipped, an interrupted training stage resumes
  from its `ckpts/last.ckpt`. A task that reaches its time limit, or is preempted, gets Slurm's
  warning signal (USR2, submitit's `--signal`); submitit then calls `ImageTask.checkpoint` and
  requeues the task, which starts over through the same stage runner;
- a failing image fails its own task only;
- the summary (`OUT/summary-<variant>.md|json`) is the local one, plus each image's Slurm task id
  and, for an image that did not finish, the log to read.

Files: `OUT/slurm/<variant>/` holds submitit's pickles and one log per task
(`<job>_<task>_0_log.out`, stdout and stderr together) and `jobs.json`: per image tag, its last
task id, log and submission time. `hifi123 run --manifest FILE --status` reads them (and squeue).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..errors import Hifi123Error
from .manifest import (
    Entry,
    collect_summary,
    entry_options,
    read_manifest,
    run_worker,
    summary_markdown,
    write_summary,
)
from .plan import Layout, RunOptions, pending_stages, plan_stages, scan_state
from .runner import (
    check_threestudio,
    execute_subprocess,
    fmt_seconds,
    load_record,
    run_image,
    save_record,
)

INSTALL_FIX = "pip install 'hifi123[slurm]'   (or: pip install submitit)"
DEFAULT_TIME = "24:00:00"
#: sbatch options this backend sets itself, refused in --slurm-opt: what to do instead
OWN_OPTIONS = {
    "partition": "use --partition P",
    "time": "use --time HH:MM:SS",
    "gres": "use --gpus-per-job N (for a GPU model: --slurm-opt constraint=MODEL)",
    "gpus": "use --gpus-per-job N",
    "gpus-per-node": "use --gpus-per-job N",
    "gpus-per-task": "use --gpus-per-job N",
    "array": "use --max-parallel N (the array has one task per image)",
    "output": "drop it: each task logs to OUT/slurm/<variant>/<task>_0_log.out",
    "error": "drop it: each task logs to OUT/slurm/<variant>/<task>_0_log.out",
    "open-mode": "drop it: the task logs are appended to",
    "signal": "drop it: the requeue relies on submitit's USR2 warning",
    "wrap": "drop it: the job runs submitit's command",
    "job-name": "drop it: the job is named hifi123-<variant>",
}
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d+):(\d+)$")
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]+$")
_STATE_FILE = "jobs.json"


@dataclass(frozen=True)
class SlurmOptions:
    partition: Optional[str] = None
    time_min: int = 24 * 60  # per task; Slurm counts whole minutes
    time_text: str = DEFAULT_TIME
    gpus_per_job: int = 1
    max_parallel: Optional[int] = None
    extra: Tuple[Tuple[str, object], ...] = ()  # sbatch long option -> value (True: a bare flag)

    def parameters(self, variant: str) -> dict:
        """submitit's `update_parameters` for these options."""
        params = {
            "job_name": f"hifi123-{variant}",
            "time": self.time_min,
            "gres": f"gpu:{self.gpus_per_job}",
            "stderr_to_stdout": True,
        }
        if self.partition:
            params["partition"] = self.partition
        if self.max_parallel:
            params["array_parallelism"] = self.max_parallel
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params

    def describe(self) -> str:
        extra = "".join(f" --{k}" + ("" if v is True else f"={v}") for k, v in self.extra)
        rounded = self.time_min * 60 != _seconds(self.time_text)
        return (
            f"--partition={self.partition or '(the default partition)'} --time={self.time_min} "
            f"(minutes: {self.time_text}{', rounded up' if rounded else ''}) "
            f"--gres=gpu:{self.gpus_per_job}"
            + (f" (at most {self.max_parallel} at once)" if self.max_parallel else "")
            + extra
        )


# ------------------------------------------------------------------------------------ options


def _bad(what: str, expected: str, fix: str) -> Hifi123Error:
    return Hifi123Error(what, expected, fix)


def _seconds(text: str) -> int:
    days, hours, minutes, seconds = (int(g or 0) for g in _TIME.match(text.strip()).groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_time(text: str) -> int:
    """`[D-]HH:MM:SS` -> whole minutes, rounded up (Slurm counts minutes)."""
    m = _TIME.match(text.strip())
    expected = "a time limit per image as HH:MM:SS or D-HH:MM:SS, e.g. 04:00:00 or 1-12:00:00"
    if not m:
        raise _bad(f"bad --time {text!r}", expected, "e.g. --time 04:00:00")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    if minutes > 59 or seconds > 59 or (days and hours > 23):
        raise _bad(
            f"bad --time {text!r}: minutes and seconds go up to 59"
            + (", hours up to 23 after a day count" if days else ""),
            expected,
            "e.g. --time 04:00:00",
        )
    total = _seconds(text)
    if total <= 0:
        raise _bad(f"bad --time {text!r}: zero", expected, "e.g. --time 04:00:00")
    return -(-total // 60)


def parse_slurm_opt(text: str) -> Tuple[str, object]:
    """`KEY=VALUE` (an sbatch long option without its dashes) -> (key, value); `KEY=` is a flag
    without a value (e.g. `exclusive=`)."""
    expected = (
        "KEY=VALUE with an sbatch long option as KEY, e.g. account=myproj, mem=32G, constraint=a100"
    )
    if "=" not in text:
        raise _bad(
            f"bad --slurm-opt {text!r}: no '='",
            expected,
            f"--slurm-opt {text.lstrip('-')}=VALUE "
            f"(or {text.lstrip('-')}= for a flag without a value)",
        )
    key, value = text.split("=", 1)
    key = key.strip().lstrip("-").replace("_", "-")
    if not _KEY.match(key):
        raise _bad(
            f"bad --slurm-opt {text!r}: {key!r} is not an sbatch long option name",
            expected,
            "use the long name (account=..., not A=...)",
        )
    if key in OWN_OPTIONS:
        raise _bad(
            f"--slurm-opt {text!r}: hifi123 sets --{key} itself",
            "options hifi123 does not set",
            OWN_OPTIONS[key],
        )
    return key, (value if value != "" else True)


def options_from_args(args) -> Optional[SlurmOptions]:
    """Check `--backend` and its options (before anything else runs); None for the local backend."""
    slurm_flags = [
        (f, v)
        for f, v in (
            ("--partition", args.partition),
            ("--time", args.time),
            ("--gpus-per-job", args.gpus_per_job),
            ("--max-parallel", args.max_parallel),
            ("--slurm-opt", args.slurm_opts or None),
        )
        if v is not None
    ]
    if args.status:
        if args.image or not args.manifest:
            raise _bad(
                "--status is for --manifest",
                "hifi123 run --manifest FILE --status",
                "add --manifest FILE (and the --out / --method / --lowvram of the run)",
            )
        extra = [f for f, _ in slurm_flags] + [
            f for f, v in (("--gpus", args.gpus), ("--dry-run", args.dry_run)) if v
        ]
        if extra:
            raise _bad(
                f"--status only reads the outputs; {', '.join(extra)} would be ignored",
                "--status with --manifest, --out, --method, --lowvram",
                f"drop {', '.join(extra)}",
            )
        return None
    if args.backend != "slurm":
        if slurm_flags:
            names = ", ".join(f for f, _ in slurm_flags)
            raise _bad(
                f"{names} {'is' if len(slurm_flags) == 1 else 'are'} for --backend slurm",
                "--backend slurm with --manifest",
                f"add --backend slurm, or drop {names}",
            )
        return None
    if not args.manifest:
        raise _bad(
            "--backend slurm is for --manifest",
            "hifi123 run --manifest images.txt --backend slurm",
            "put the image in a manifest (one path per line), or drop --backend slurm",
        )
    if args.gpus:
        raise _bad(
            "--gpus is for --backend local: Slurm picks the GPUs",
            "--gpus-per-job N with --backend slurm",
            f"drop --gpus {args.gpus} (and pass --gpus-per-job N for N GPUs per image)",
        )
    time_text = args.time or DEFAULT_TIME
    extra: Dict[str, object] = {}
    for text in args.slurm_opts or []:
        key, value = parse_slurm_opt(text)
        if key in extra and extra[key] != value:
            raise _bad(
                f"--slurm-opt {key} given twice ({extra[key]!r} and {value!r})",
                "each option once",
                f"keep one --slurm-opt {key}=...",
            )
        extra[key] = value
    partition = args.partition
    if partition is not None and not re.match(r"^[A-Za-z0-9_.,-]+$", partition):
        raise _bad(
            f"bad --partition {partition!r}",
            "a partition name (sinfo lists them), e.g. gpu",
            "sinfo --summarize",
        )
    return SlurmOptions(
        partition=partition,
        time_min=parse_time(time_text),
        time_text=time_text,
        gpus_per_job=args.gpus_per_job or 1,
        max_parallel=args.max_parallel,
        extra=tuple(extra.items()),
    )


def add_arguments(p) -> None:
    """The `hifi123 run` flags of the Slurm backend and of --status."""
    from ..commands import integer

    g = p.add_argument_group("many images on a Slurm cluster (--manifest; docs/slurm.md)")
    g.add_argument(
        "--backend",
        choices=("local", "slurm"),
        default="local",
        help="local (default): one worker per --gpus id on this machine; slurm: one Slurm "
        "array job, one task per image (needs submitit: pip install 'hifi123[slurm]')",
    )
    g.add_argument(
        "--partition", default=None, help="Slurm partition (default: the cluster's default)"
    )
    g.add_argument(
        "--time",
        default=None,
        metavar="HH:MM:SS",
        help=f"time limit per image (default {DEFAULT_TIME}); a task stopped by it is requeued "
        "and resumes from its last checkpoint",
    )
    g.add_argument(
        "--gpus-per-job",
        type=integer(low=1),
        default=None,
        metavar="N",
        help="GPUs per image (default 1; more: Lightning DDP on one object)",
    )
    g.add_argument(
        "--max-parallel",
        type=integer(low=1),
        default=None,
        metavar="N",
        help="at most N images running at once (default: as many as Slurm allows)",
    )
    g.add_argument(
        "--slurm-opt",
        dest="slurm_opts",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. account=proj, mem=32G, cpus-per-task=8, "
        "constraint=a100, qos=high (KEY= for a flag without a value); repeatable",
    )
    g.add_argument(
        "--status",
        action="store_true",
        help="with --manifest: print the summary table now (both backends), run nothing",
    )


def require_submitit():
    try:
        import submitit
    except ImportError as err:
        raise Hifi123Error(
            f"--backend slurm needs the submitit package, which is not installed ({err})",
            "submitit (the optional `slurm` extra of hifi123)",
            INSTALL_FIX,
        ) from err
    return submitit


# --------------------------------------------------------------------------------- the task


def _stage_environ() -> Dict[str, str]:
    """The task's environment without Slurm's and submitit's variables: a stage (launch.py) is a
    plain process on the GPUs of the task, so Lightning does not take the task for a multi-process
    Slurm launch nor requeue it itself (docs/slurm.md)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}


def run_stage_in_task(stage, echo: bool) -> int:
    return execute_subprocess(stage, echo, environ=_stage_environ())


def task_id() -> str:
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID", "?")


class ImageTask:
    """One array task: run one image's pending stages. Callable by submitit; `checkpoint` is
    submitit's requeue hook (a callable with a `checkpoint` method is requeued on USR2), and the
    state to resume from is on disk, so requeueing the same call is enough."""

    def __init__(self, base: RunOptions, execute=None):
        self.base = base
        self.execute = execute  # None: the stage subprocesses (tests pass a fake)

    def __call__(self, entry: Entry) -> str:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES") or "0"
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        print(
            f"hifi123: Slurm task {task_id()} on {os.uname().nodename}, GPU {gpu}"
            + (f", restart {restarts}" if restarts else "")
            + f": {entry.image} (tag {entry.tag})",
            flush=True,
        )
        say = _flushing_print
        try:
            status = run_worker(
                [entry], self.base, gpu, execute=self.execute or run_stage_in_task, say=say
            )
        except SystemExit:  # submitit's USR2 handler: checkpointed and requeued (or told to stop)
            _mark(
                entry_options(self.base, entry, gpu),
                "requeued",
                f"stopped by Slurm (time limit or preemption) in task {task_id()}: requeued; the "
                "requeued task resumes from the last checkpoint",
            )
            raise
        if status.get(entry.tag) != "done":
            raise Hifi123Error(
                f"image {entry.image} (tag {entry.tag}) failed; see above and the summary"
            )
        return "done"

    def checkpoint(self, entry: Entry):
        from submitit.helpers import DelayedSubmission

        print(
            f"hifi123: Slurm task {task_id()}: time limit or preemption; requeueing {entry.tag}",
            flush=True,
        )
        return DelayedSubmission(self, entry)


def _flushing_print(line: str) -> None:
    print(line, flush=True)


def _mark(opts: RunOptions, status: str, error: str) -> None:
    path = Layout.of(opts).record
    rec = load_record(path) or {
        "image": opts.image,
        "tag": opts.run_tag,
        "method": opts.method,
        "stages": {},
    }
    rec.update(status=status, error=error)
    save_record(path, rec)


# ------------------------------------------------------------------------------ Slurm state


def slurm_folder(base: RunOptions) -> str:
    return os.path.join(base.out, "slurm", base.variant)


def load_jobs(base: RunOptions) -> Dict[str, dict]:
    path = os.path.join(slurm_folder(base), _STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_jobs(base: RunOptions, jobs: Dict[str, dict]) -> None:
    folder = slurm_folder(base)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, _STATE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(jobs, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(folder, _STATE_FILE))


def queue_states(runner: Callable = subprocess.run) -> Optional[Dict[str, Tuple[str, str]]]:
    """{task id (`123_4`, or `123` for a plain job): (state, reason)} of this user's jobs still in
    Slurm's queue; None when squeue cannot answer."""
    if shutil.which("squeue") is None:
        return None
    try:
        proc = runner(
            ["squeue", "--noheader", "--array", f"--user={os.getuid()}", "--format=%i|%T|%r"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def finished(opts: RunOptions) -> bool:
    """Nothing left to run for this image (what the stage runner would skip entirely)."""
    try:
        return not pending_stages(plan_stages(opts, scan_state(opts)))
    except Exception:  # an unreadable state is for the task to report
        return False


# ------------------------------------------------------------------------------- summaries


def slurm_summary(
    entries: Sequence[Entry],
    base: RunOptions,
    jobs: Dict[str, dict],
    live: Optional[Dict[str, Tuple[str, str]]],
    *,
    manifest: str = "",
    wall_seconds: Optional[float] = None,
    final: bool = True,
) -> dict:
    """The local backend's summary, each image with its Slurm task (`slurm_job`, `slurm_state`,
    `slurm_log`) and, when it did not finish, the log to read (`log`)."""
    summary = collect_summary(
        entries, base, manifest=manifest, gpus=[], wall_seconds=wall_seconds, final=False
    )
    summary["backend"] = "slurm"
    for row in summary["images"]:
        job = jobs.get(row["tag"]) or {}
        state = (live or {}).get(job.get("job", ""), (None, None))[0] if job else None
        row.update(slurm_job=job.get("job"), slurm_state=state, slurm_log=job.get("log"))
        if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING"):
            row["status"] = "queued"
        elif state:
            row["status"] = "running"
        elif row["status"] == "running" and (final or live is not None):
            row["status"] = "interrupted"  # its task has left the queue without a word
        if row["status"] != "done":
            rec = load_record(row["record"]) or {}
            failed = (rec.get("stages") or {}).get(row.get("failed_stage") or "") or {}
            stage_log = failed.get("log")
            row["log"] = stage_log if stage_log and os.path.isfile(stage_log) else job.get("log")
    counts: Dict[str, int] = {}
    for r in summary["images"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary["counts"] = counts
    return summary


def print_status(manifest: str, base: RunOptions, say: Callable[[str], None] = print) -> int:
    """`hifi123 run --manifest FILE --status`: the summary table now, for either backend."""
    entries = read_manifest(manifest)
    jobs = load_jobs(base)
    tags = {e.tag for e in entries}
    if any(t in jobs for t in tags):
        live = queue_states()
        if live is None:
            say("(squeue did not answer: queued and running tasks are shown by their run records)")
        summary = slurm_summary(
            entries, base, jobs, live, manifest=os.path.abspath(manifest), final=False
        )
    else:
        summary = collect_summary(entries, base, manifest=os.path.abspath(manifest), final=False)
    say(summary_markdown(summary))
    return 0 if summary["counts"].get("done", 0) == len(entries) else 2


# ------------------------------------------------------------------------------ submission


def status_command(manifest: str, base: RunOptions) -> str:
    return (
        f"hifi123 run --manifest {manifest} --status --out {base.out}"
        + (f" --method {base.method}" if base.method != "hifi123" else "")
        + (" --lowvram" if base.lowvram else "")
    )


def submit_manifest(
    manifest: str,
    base: RunOptions,
    sopts: SlurmOptions,
    *,
    dry_run: bool = False,
    execute=None,
    poll_seconds: float = 30.0,
    say: Callable[[str], None] = print,
) -> int:
    """Check, submit one array job for the images that need it, wait for it, write the summary.
    Returns the exit code (2 when an image did not finish)."""
    entries = read_manifest(manifest)
    manifest = os.path.abspath(manifest)
    check_threestudio(base)
    submitit = require_submitit()
    if not dry_run and shutil.which("sbatch") is None:
        raise Hifi123Error(
            "sbatch not found: --backend slurm submits from a machine of the Slurm cluster",
            "Slurm's client commands (sbatch, squeue) on PATH",
            "run this on the cluster's login node, or use --backend local --gpus 0,1,... on a "
            "GPU machine",
        )
    jobs = load_jobs(base)
    live = queue_states() if not dry_run else {}
    if live is None:
        raise Hifi123Error(
            "squeue failed: cannot tell which images are still queued or running",
            "a reachable Slurm controller",
            "check `squeue`, then re-run the same command",
        )
    active = {
        e.tag: jobs[e.tag]["job"]
        for e in entries
        if e.tag in jobs and jobs[e.tag].get("job") in live
    }
    done = [
        e for e in entries if e.tag not in active and finished(entry_options(base, e, base.gpu))
    ]
    todo = [e for e in entries if e.tag not in active and e not in done]
    say(
        f"hifi123 run: {len(entries)} images from {manifest} on Slurm ({base.variant}): "
        f"{len(todo)} to submit, {len(done)} done already, {len(active)} still queued or running"
    )
    for e in done:
        say(f"  {e.tag}: done already (delete its outputs to run it again)")
    for tag, job in active.items():
        state = live[job][0].lower()
        say(f"  {tag}: task {job} of an earlier submission is still {state}: not submitted again")
    say(f"  each task: {sopts.describe()}")
    say(
        f"  each task inherits this environment (threestudio {base.threestudio_root}, "
        f"HF_HOME={os.environ.get('HF_HOME', '(default ~/.cache/huggingface)')}, "
        f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '(unset)')})"
    )
    if dry_run:
        for k, e in enumerate(todo):
            say(f"\n### array task {k}: {e.image} (tag {e.tag}), GPU(s) from Slurm")
            run_image(entry_options(base, e, "0"), dry_run=True, say=say)
        return 0
    t0 = time.time()
    if todo:
        folder = slurm_folder(base)
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**sopts.parameters(base.variant))
        try:
            submitted = executor.map_array(ImageTask(base, execute), todo)
        except Exception as err:  # sbatch said no: its message names the option
            raise Hifi123Error(
                f"sbatch refused the array job: {err}",
                "options the cluster accepts (partition, time limit, GPUs, --slurm-opt)",
                "fix the option sbatch names (sinfo --summarize lists the partitions and "
                "their time limits), then re-run the same command",
            ) from err
        now = datetime.now().isoformat(timespec="seconds")
        for e, job in zip(todo, submitted):
            jobs[e.tag] = {
                "job": job.job_id,
                "log": str(job.paths.stdout),
                "image": e.image,
                "submitted": now,
            }
            active[e.tag] = job.job_id
        save_jobs(base, jobs)
        array = submitted[0].job_id.split("_")[0]
        say(
            f"submitted Slurm job {array}: "
            + ", ".join(f"{e.tag} = {jobs[e.tag]['job']}" for e in todo)
        )
        say(f"  logs: {folder}/<task>_0_log.out\n  progress: {status_command(manifest, base)}")
    try:
        wait_for(active, poll_seconds, say)
    except KeyboardInterrupt:
        say(
            "\nstopped waiting; the Slurm tasks go on (scancel "
            + " ".join(sorted({j.split("_")[0] for j in active.values()}))
            + f" to stop them). Progress: {status_command(manifest, base)}"
        )
        return 130
    summary = slurm_summary(
        entries, base, jobs, queue_states() or {}, manifest=manifest, wall_seconds=time.time() - t0
    )
    j, md = write_summary(summary)
    say("\n" + summary_markdown(summary))
    say(f"summary: {md}\n         {j}")
    return 0 if summary["counts"].get("done", 0) == len(entries) else 2


def wait_for(active: Dict[str, str], poll_seconds: float, say: Callable[[str], None]) -> None:
    """Until none of the tasks `active` ({tag: task id}) is in Slurm's queue; says each change of
    state (with squeue's reason while pending)."""
    seen: Dict[str, Tuple[str, str]] = {}
    failures = 0
    t0 = time.time()
    while active:
        live = queue_states()
        if live is None:
            failures += 1
            if failures in (1, 10) or failures % 60 == 0:
                say("squeue did not answer; trying again (the tasks are not affected)")
            time.sleep(poll_seconds)
            continue
        failures = 0
        left = {}
        for tag, job in active.items():
            now = live.get(job)
            if now is None:
                say(f"[{fmt_seconds(time.time() - t0)}] {tag} ({job}): left the queue")
                continue
            left[tag] = job
            if seen.get(tag) != now:
                seen[tag] = now
                reason = (
                    f" ({now[1]})" if now[0] == "PENDING" and now[1] not in ("None", "") else ""
                )
                say(f"[{fmt_seconds(time.time() - t0)}] {tag} ({job}): {now[0].lower()}{reason}")
        active = left
        if active:
            time.sleep(poll_seconds)


__all__ = [
    "SlurmOptions",
    "ImageTask",
    "parse_time",
    "parse_slurm_opt",
    "options_from_args",
    "add_arguments",
    "require_submitit",
    "submit_manifest",
    "print_status",
    "slurm_summary",
    "queue_states",
    "wait_for",
]
