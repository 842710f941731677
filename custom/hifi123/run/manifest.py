"""Many images on many GPUs: `hifi123 run --manifest images.txt --gpus 0,1,2,3`.

Manifest: one image path per line; blank lines and lines starting with `#` are ignored; relative
paths are relative to the manifest's folder. Every entry is checked before anything runs. Each image
gets a tag (its name; a repeated name gets `-2`, `-3`, ... in manifest order) and its own folders,
so images never share outputs.

Sharding: round-robin in manifest order (`shard`): worker k gets entries k, k + n, k + 2n, ...
Every image lands in exactly one shard, shard sizes differ by at most one, and the assignment
depends only on the manifest and the number of GPUs. One worker process per GPU runs its share
sequentially (`python -m hifi123.run.cli --manifest M --gpus G --worker k ...`); an image that fails
(preprocessing, a stage) is recorded as failed and the worker goes on with the next one. Re-running
the same command resumes: each image's finished stages are skipped.

Several GPUs for ONE object are threestudio's own data parallelism (Lightning DDP): run that image
alone with `hifi123 run IMAGE --gpu 0,1`.

Summary: `OUT/summary-<variant>.json` and `.md`: per image its status, each stage's time, the
evaluation metrics and the failure, built from the per-image run records
`OUT/runs/TAG.<variant>.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

from ..errors import Hifi123Error, InputError
from .plan import Layout, RunOptions, make_tag, stage_names
from .runner import check_gpu, check_threestudio, fmt_seconds, load_record, run_image

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    line: int  # 1-based line in the manifest
    image: str  # absolute path
    tag: str


def read_manifest(path: str) -> List[Entry]:
    """The manifest's entries; raises InputError naming every missing file (with its line)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise InputError(
            f"manifest {path} not found",
            "a text file with one image path per line",
            "check the --manifest path",
        )
    base = os.path.dirname(path)
    raw: List[tuple] = []
    with open(path, "rb") as f:
        data = f.read()
    if b"\x00" in data[:4096] or data[:8] in (b"\x89PNG\r\n\x1a\n",) or data[:3] == b"\xff\xd8\xff":
        raise InputError(
            f"manifest {path} is a binary file (an image?), not a list of images",
            "a text file with one image path per line",
            f"pass the image itself (hifi123 run {path}) or a text file listing images",
        )
    try:
        text_all = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is not part of the first path
    except UnicodeDecodeError as err:
        raise InputError(
            f"manifest {path} is not UTF-8 text (byte {err.start}: "
            f"{data[err.start : err.start + 1]!r})",
            "a UTF-8 text file with one image path per line",
            "save the manifest as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from err
    for i, line in enumerate(text_all.splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        p = os.path.expanduser(text)
        raw.append((i, os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))))
    if not raw:
        raise InputError(
            f"manifest {path} lists no images",
            "one image path per line (# starts a comment)",
            "add image paths to it",
        )
    missing = [(i, p) for i, p in raw if not os.path.isfile(p)]
    if missing:
        shown = "\n".join(f"  line {i}: {p}" for i, p in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InputError(
            f"{len(missing)} manifest entr{'y' if len(missing) == 1 else 'ies'} of {path} "
            f"not found:\n{shown}{more}",
            "existing image files (relative paths are relative to the manifest's folder)",
            "fix or remove those lines",
        )
    seen: Dict[str, int] = {}
    for i, p in raw:
        real = os.path.realpath(p)
        if real in seen:
            raise InputError(
                f"manifest {path}: line {i} repeats the image of line {seen[real]} ({p})",
                "each image once",
                f"remove line {i}",
            )
        seen[real] = i
    entries, counts = [], {}
    for i, p in raw:
        tag = make_tag(p)
        counts[tag] = counts.get(tag, 0) + 1
        entries.append(Entry(i, p, tag if counts[tag] == 1 else f"{tag}-{counts[tag]}"))
    return entries


def shard(items: Sequence[T], n: int) -> List[List[T]]:
    """Round-robin split into `n` shards: each item exactly once, sizes differ by at most one,
    deterministic (depends only on the order of `items` and on `n`)."""
    if n < 1:
        raise ValueError("need at least one shard")
    return [list(items[k::n]) for k in range(n)]


def entry_options(base: RunOptions, entry: Entry, gpu: str) -> RunOptions:
    return dataclasses.replace(base, image=entry.image, tag=entry.tag, gpu=gpu)


# ------------------------------------------------------------------------------------- worker


def run_worker(
    entries: Sequence[Entry],
    base: RunOptions,
    gpu: str,
    *,
    execute=None,
    say: Callable[[str], None] = print,
) -> Dict[str, str]:
    """Run a shard sequentially on one GPU; a failing image is reported and skipped. Returns
    {tag: "done" | "failed"}."""
    status: Dict[str, str] = {}
    for k, e in enumerate(entries, 1):
        opts = entry_options(base, e, gpu)
        say(f"--- image {k}/{len(entries)}: {e.image} (tag {e.tag})")
        try:
            run_image(opts, echo=False, execute=execute, say=say)
            status[e.tag] = "done"
        except Hifi123Error as err:
            status[e.tag] = "failed"
            say(f"FAILED {e.tag}: {err.render()}")
            # errors before any stage ran leave no record otherwise
            _mark_failed(opts, err.render())
        except Exception as err:  # a bug in one image's run must not stop the others
            status[e.tag] = "failed"
            say(f"FAILED {e.tag}: {type(err).__name__}: {err}")
            _mark_failed(opts, f"{type(err).__name__}: {err}")
    return status


def _mark_failed(opts: RunOptions, error: str) -> None:
    from .runner import save_record

    path = Layout.of(opts).record
    rec = load_record(path) or {
        "image": opts.image,
        "tag": opts.run_tag,
        "method": opts.method,
        "gpu": opts.gpu,
        "stages": {},
    }
    if rec.get("status") != "failed":
        rec.update(status="failed", error=error)
        save_record(path, rec)


def worker_argv(manifest: str, base: RunOptions, gpus: Sequence[str], k: int) -> List[str]:
    argv = [
        base.python,
        "-m",
        "hifi123.run.cli",
        "--manifest",
        manifest,
        "--gpus",
        ",".join(gpus),
        "--worker",
        str(k),
        "--method",
        base.method,
        "--out",
        base.out,
        "--threestudio-root",
        base.threestudio_root,
    ]
    if base.lowvram:
        argv.append("--lowvram")
    for st, kv in base.overrides:
        argv += ["--set", f"{st}:{kv}" if st else kv]
    return argv


# ------------------------------------------------------------------------------------ summary


def collect_summary(
    entries: Sequence[Entry],
    base: RunOptions,
    *,
    manifest: str = "",
    gpus: Sequence[str] = (),
    wall_seconds: Optional[float] = None,
    final: bool = True,
) -> dict:
    """Per image: status, stage seconds, metrics, outputs, error (from the run records)."""
    names = stage_names(base.method)
    rows = []
    for e in entries:
        opts = entry_options(base, e, base.gpu)
        rec = load_record(Layout.of(opts).record) or {}
        status = rec.get("status") or "not run"
        if final and status == "running":
            status = "interrupted"
        stages = rec.get("stages") or {}
        seconds = {n: (stages.get(n) or {}).get("seconds") for n in names}
        err = rec.get("error")
        rows.append(
            {
                "line": e.line,
                "image": e.image,
                "tag": e.tag,
                "status": status,
                "gpu": rec.get("gpu"),
                "failed_stage": rec.get("failed_stage"),
                "error": err,
                "seconds": seconds,
                "total_seconds": sum(v for v in seconds.values() if v),
                "metrics": rec.get("metrics") or {},
                "outputs": rec.get("outputs") or {},
                "record": Layout.of(opts).record,
            }
        )
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "manifest": manifest,
        "method": base.method,
        "variant": base.variant,
        "gpus": list(gpus),
        "out": base.out,
        "created": datetime.now().isoformat(timespec="seconds"),
        "wall_seconds": wall_seconds,
        "counts": counts,
        "stages": list(names),
        "images": rows,
    }


def _metric(v, digits):
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else ("–" if v is None else str(v))


def summary_markdown(summary: dict) -> str:
    names = summary["stages"]
    slurm = summary.get("backend") == "slurm"  # + each image's Slurm task and the log of a failure
    head = (
        ["image", "status"]
        + list(names)
        + ["total", "LPIPS_ref ↓", "contextual ↓", "CLIP ↑", "note"]
    )
    head += ["Slurm task", "log"] if slurm else []
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["counts"].items()))
    lines = [
        f"# hifi123 run: {summary['variant']} — {len(summary['images'])} images ({counts})",
        "",
    ]
    if summary.get("manifest"):
        where = "Slurm" if slurm else f"GPUs {', '.join(summary['gpus']) or '–'}"
        lines.append(
            f"Manifest `{summary['manifest']}`, {where}, "
            f"outputs `{summary['out']}`"
            + (
                f", wall time {fmt_seconds(summary['wall_seconds'])}"
                if summary.get("wall_seconds") is not None
                else ""
            )
            + "."
        )
        lines.append("")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["images"]:
        m = r["metrics"]
        note = ""
        if r["status"] != "done":
            first = (r.get("error") or "").strip().splitlines()
            note = (f"{r['failed_stage']}: " if r.get("failed_stage") else "") + (
                first[0] if first else ""
            )
        cells = [r["tag"], f"**{r['status']}**" if r["status"] != "done" else "done"]
        cells += [fmt_seconds(r["seconds"].get(n)) for n in names]
        cells += [
            fmt_seconds(r["total_seconds"]) if r["total_seconds"] else "–",
            _metric(m.get("lpips_ref"), 4),
            _metric(m.get("contextual"), 3),
            _metric(m.get("clip"), 4),
            note.replace("|", "\\|")[:160],
        ]
        if slurm:
            cells += [r.get("slurm_job") or "–", f"`{r['log']}`" if r.get("log") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Times are h:mm:ss of each stage's last run (a resumed stage includes its interrupted "
        "attempts); per-image details in the run records (`runs/<tag>.<variant>.json`).",
        "",
    ]
    return "\n".join(lines)


def write_summary(summary: dict) -> tuple:
    base = os.path.join(summary["out"], f"summary-{summary['variant']}")
    os.makedirs(summary["out"], exist_ok=True)
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write(summary_markdown(summary))
    return base + ".json", base + ".md"


# ---------------------------------------------------------------------------------------- run


def _pump(stream, prefix: str, sink) -> None:
    for line in iter(stream.readline, b""):
        sink(prefix + line.decode(errors="replace").rstrip("\n"))
    stream.close()


def run_manifest(
    manifest: str,
    base: RunOptions,
    gpus: Sequence[str],
    *,
    dry_run: bool = False,
    worker: Optional[int] = None,
    execute=None,
    say: Callable[[str], None] = print,
) -> int:
    """Parent: check, spawn one worker per GPU, wait, write the summary. With `worker=k`: be
    worker k (run shard k on gpus[k]). Returns the exit code (2 when an image failed)."""
    entries = read_manifest(manifest)
    manifest = os.path.abspath(manifest)
    gpus = list(gpus)
    shards = shard(entries, len(gpus))
    if worker is not None:
        if not 0 <= worker < len(gpus):
            raise Hifi123Error(
                f"--worker {worker} out of range",
                f"0..{len(gpus) - 1}",
                "internal option; do not pass it",
            )
        status = run_worker(shards[worker], base, gpus[worker], execute=execute, say=say)
        return 0 if all(v == "done" for v in status.values()) else 2

    check_threestudio(base)
    say(
        f"hifi123 run: {len(entries)} images from {manifest} on GPU {', '.join(gpus)} "
        f"({base.variant})"
    )
    if dry_run:
        for k, (gpu, part) in enumerate(zip(gpus, shards)):
            say(f"\n### worker {k}, GPU {gpu}: {len(part)} image(s), run one after the other")
            say("    " + shlex.join(worker_argv(manifest, base, gpus, k)))
            for e in part:
                say("")
                run_image(entry_options(base, e, gpu), dry_run=True, say=say)
        return 0
    check_gpu(gpus)
    t0 = time.time()
    lock = threading.Lock()

    def sink(line: str) -> None:
        with lock:
            say(line)

    procs, threads = [], []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for k, (gpu, part) in enumerate(zip(gpus, shards)):
        if not part:
            continue
        say(f"worker {k} on GPU {gpu}: {', '.join(e.tag for e in part)}")
        p = subprocess.Popen(
            worker_argv(manifest, base, gpus, k),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        t = threading.Thread(target=_pump, args=(p.stdout, f"[gpu {gpu}] ", sink), daemon=True)
        t.start()
        procs.append((gpu, p))
        threads.append(t)
    try:
        for gpu, p in procs:
            code = p.wait()
            if code not in (0, 2):
                say(
                    f"[gpu {gpu}] worker exited with code {code}; its remaining images are "
                    "marked not run / interrupted"
                )
    except KeyboardInterrupt:
        for _, p in procs:
            p.send_signal(signal.SIGINT)
        for _, p in procs:
            p.wait()
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
    summary = collect_summary(
        entries, base, manifest=manifest, gpus=gpus, wall_seconds=time.time() - t0
    )
    j, md = write_summary(summary)
    say("\n" + summary_markdown(summary))
    say(f"summary: {md}\n         {j}")
    return 0 if summary["counts"].get("done", 0) == len(entries) else 2


__all__ = [
    "Entry",
    "read_manifest",
    "shard",
    "run_worker",
    "worker_argv",
    "collect_summary",
    "summary_markdown",
    "write_summary",
    "run_manifest",
]
