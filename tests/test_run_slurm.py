"""`hifi123 run --manifest --backend slurm`: option checks, the submission logic and the task (no
Slurm needed), then the whole thing against a real one-node Slurm started for the test
(tests/slurm_cluster.py; skipped, saying why, where Slurm cannot start).

The stages are faked as in the other run tests (run_helpers.CountingExecutor: the same outputs as
the real commands, each call logged to OUT/calls.jsonl across processes)."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
import slurm_cluster
from hifi123.errors import Hifi123Error
from hifi123.run import manifest as mf
from hifi123.run import plan as pl
from hifi123.run import runner as rn
from hifi123.run import slurm
from run_helpers import (
    BAD_IMAGE,
    PY,
    CountingExecutor,
    _cli,
    fake_threestudio,
    make_done,
    manifest_run,
    write_manifest,
)

TESTS = str(Path(__file__).resolve().parent)
#: the stages the fake executor is called for (the refine stage's test pass writes the video)
EXECUTED = [n for n in pl.stage_names("hifi123") if n != "video"]


@pytest.fixture
def fake_slurm_bin(tmp_path, monkeypatch):
    """sbatch / squeue / srun on PATH that only record that they were called (in CALLS)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    calls = tmp_path / "slurm-calls.txt"
    for name in ("sbatch", "squeue", "srun", "scancel"):
        script = bindir / name
        script.write_text(f'#!/bin/sh\necho {name} "$@" >> {calls}\nexit 1\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return calls


def _args(tmp_path, *extra):
    root = fake_threestudio(tmp_path)
    man = write_manifest(tmp_path, ["a.png", "b.png"])
    return ["--manifest", man, "--threestudio-root", root, "--out", str(tmp_path / "out"), *extra]


# ------------------------------------------------------------------------- option checks


@pytest.mark.parametrize(
    "text, minutes",
    [("04:00:00", 240), ("1-12:00:00", 2160), ("0:00:30", 1), ("00:01:01", 2), ("100:00:00", 6000)],
)
def test_time_limits_in_minutes(text, minutes):
    assert slurm.parse_time(text) == minutes


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--time", "4h"], ["--time '4h'", "HH:MM:SS", "--time 04:00:00"]),
        (["--time", "01:60:00"], ["--time '01:60:00'", "up to 59"]),
        (["--time", "00:00:00"], ["--time '00:00:00'", "zero"]),
        (
            ["--slurm-opt", "exclusive"],
            ["--slurm-opt 'exclusive'", "no '='", "KEY=VALUE", "exclusive=VALUE"],
        ),
        (["--slurm-opt", "A=proj"], ["not an sbatch long option", "account=..."]),
        (["--slurm-opt", "time=01:00:00"], ["sets --time itself", "--time HH:MM:SS"]),
        (["--slurm-opt", "gres=gpu:a100:1"], ["sets --gres itself", "--gpus-per-job N"]),
        (["--slurm-opt", "mem=8G", "--slurm-opt", "mem=16G"], ["mem given twice"]),
        (
            ["--gpus", "0,1"],
            ["--gpus is for --backend local", "--gpus-per-job N", "drop --gpus 0,1"],
        ),
        (["--partition", "gpu;rm"], ["bad --partition", "sinfo"]),
    ],
)
def test_bad_slurm_options_are_refused_before_any_submission(
    tmp_path, fake_slurm_bin, monkeypatch, extra, names
):
    submitted = []
    monkeypatch.setattr(slurm, "submit_manifest", lambda *a, **k: submitted.append(a) or 0)
    code, _, err = _cli(_args(tmp_path, "--backend", "slurm", *extra))
    assert code == 2 and submitted == [] and not fake_slurm_bin.exists()
    for name in names:
        assert name in err
    assert "expected:" in err and "fix:" in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--time", "01:00:00"],
        ["--partition", "gpu"],
        ["--slurm-opt", "mem=8G"],
        ["--max-parallel", "2"],
        ["--gpus-per-job", "2"],
    ],
)
def test_slurm_options_without_the_slurm_backend_are_an_error(tmp_path, fake_slurm_bin, extra):
    code, out, err = _cli(_args(tmp_path, *extra))
    assert (
        code == 2 and f"{extra[0]} is for --backend slurm" in err and "add --backend slurm" in err
    )
    assert not (tmp_path / "out").exists()


def test_slurm_backend_needs_a_manifest_and_status_only_reads(tmp_path, fake_slurm_bin):
    code, _, err = _cli([str(tmp_path / "a.png"), "--backend", "slurm"])
    assert code == 2 and "--backend slurm is for --manifest" in err
    code, _, err = _cli(_args(tmp_path, "--status", "--time", "01:00:00"))
    assert code == 2 and "--status only reads" in err and "drop --time" in err


def test_missing_submitit_names_the_install_command(tmp_path, fake_slurm_bin, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    code, out, err = _cli(_args(tmp_path, "--backend", "slurm", "--time", "01:00:00"))
    assert code == 2
    assert "needs the submitit package" in err
    assert "pip install 'hifi123[slurm]'" in err and "pip install submitit" in err
    assert not fake_slurm_bin.exists() and not (tmp_path / "out" / "slurm").exists()


def test_sbatch_script_from_the_options(tmp_path):
    """What submitit writes for our options: the array, its limit, the time, GPUs, extra options
    and the USR2 warning its requeue relies on."""
    submitit_slurm = pytest.importorskip("submitit.slurm.slurm")
    import argparse

    from hifi123.run import cli as run_cli

    parser = argparse.ArgumentParser()
    run_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "run",
            "--manifest",
            "m.txt",
            "--backend",
            "slurm",
            "--partition",
            "gpu",
            "--time",
            "1-02:03:30",
            "--gpus-per-job",
            "2",
            "--max-parallel",
            "2",
            "--slurm-opt",
            "account=proj",
            "--slurm-opt",
            "cpus_per_task=8",
            "--slurm-opt",
            "exclusive=",
        ]
    )
    sopts = slurm.options_from_args(args)
    text = submitit_slurm._make_sbatch_string(
        command="true", folder=str(tmp_path), map_count=5, **sopts.parameters("hifi123")
    )
    lines = set(text.splitlines())
    for line in [
        "#SBATCH --partition=gpu",
        f"#SBATCH --time={26 * 60 + 4}",  # 1-02:03:30, rounded up
        "#SBATCH --gres=gpu:2",
        "#SBATCH --array=0-4%2",
        "#SBATCH --account=proj",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --exclusive",
        "#SBATCH --job-name=hifi123-hifi123",
    ]:
        assert line in lines, (line, text)
    assert any(x.startswith("#SBATCH --signal=USR2@") for x in lines)
    assert not any(x.startswith("#SBATCH --error") for x in lines)  # one log per task


# ------------------------------------------------------------------ submission, without Slurm


class _FakeJob:
    def __init__(self, folder, job_id):
        self.job_id = job_id
        self.paths = type("P", (), {"stdout": Path(folder) / f"{job_id}_0_log.out"})()


class _FakeSubmitit:
    """Stands in for submitit: records what would be submitted, runs nothing."""

    def __init__(self, array_id="77"):
        self.submitted, self.params, self.array_id = [], {}, array_id
        outer = self

        class SlurmExecutor:
            def __init__(self, folder):
                self.folder = folder

            def update_parameters(self, **params):
                outer.params.update(params)

            def map_array(self, fn, items):
                outer.submitted.append((fn, list(items)))
                return [_FakeJob(self.folder, f"{outer.array_id}_{k}") for k in range(len(items))]

        self.SlurmExecutor = SlurmExecutor


def test_submission_skips_finished_and_queued_images_and_summarises(tmp_path, monkeypatch):
    man, base = manifest_run(tmp_path, ["done.png", "queued.png", "new.png", "failed.png"])
    entries = {e.tag: e for e in mf.read_manifest(man)}
    done = mf.entry_options(base, entries["done"], "0")
    make_done(done, *pl.stage_names(base.method))
    rn.save_record(pl.Layout.of(done).record, {"status": "done", "stages": {}})
    slurm.save_jobs(base, {"queued": {"job": "5_1", "log": "/logs/5_1_0_log.out"}})
    failed = mf.entry_options(base, entries["failed"], "0")
    rn.save_record(
        pl.Layout.of(failed).record,
        {"status": "failed", "failed_stage": "coarse", "error": "boom", "stages": {}},
    )
    fake = _FakeSubmitit()
    monkeypatch.setattr(slurm, "require_submitit", lambda: fake)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: "/usr/bin/" + name)
    queue = iter(
        [
            {"5_1": ("RUNNING", "None")},  # at submission
            {
                "5_1": ("RUNNING", "None"),
                "77_0": ("PENDING", "Resources"),
                "77_1": ("RUNNING", "None"),
            },
            {},
            {},
        ]
    )
    monkeypatch.setattr(slurm, "queue_states", lambda: next(queue))
    monkeypatch.setattr(slurm.time, "sleep", lambda s: None)
    lines = []
    sopts = slurm.SlurmOptions(partition="gpu", time_min=60, time_text="01:00:00")
    code = slurm.submit_manifest(man, base, sopts, say=lines.append)
    assert len(fake.submitted) == 1  # one array job
    task, items = fake.submitted[0]
    # done and still-queued images are not submitted
    assert [e.tag for e in items] == ["new", "failed"]
    assert isinstance(task, slurm.ImageTask) and task.base == base
    assert (
        fake.params["partition"] == "gpu"
        and fake.params["time"] == 60
        and fake.params["gres"] == "gpu:1"
    )
    text = "\n".join(lines)
    assert (
        "done: done already" in text
        and "queued: task 5_1 of an earlier submission is still running" in text
    )
    assert "new (77_0): pending (Resources)" in text and "failed (77_1): left the queue" in text
    jobs = slurm.load_jobs(base)
    assert (
        jobs["new"]["job"] == "77_0"
        and jobs["failed"]["job"] == "77_1"
        and jobs["queued"]["job"] == "5_1"
    )
    summary = json.load(open(tmp_path / "out" / "summary-hifi123.json"))
    rows = {r["tag"]: r for r in summary["images"]}
    assert rows["done"]["status"] == "done" and rows["failed"]["status"] == "failed"
    assert rows["new"]["status"] == "not run" and rows["new"]["log"] == jobs["new"]["log"]
    assert rows["failed"]["slurm_job"] == "77_1"
    assert code == 2
    md = open(tmp_path / "out" / "summary-hifi123.md").read()
    assert "Slurm task" in md.splitlines()[4] and "| failed | **failed** |" in md and "77_1" in md


def test_status_reads_records_and_the_queue(tmp_path, monkeypatch):
    man, base = manifest_run(tmp_path, ["a.png", "b.png", "c.png"])
    entries = {e.tag: e for e in mf.read_manifest(man)}
    make_done(mf.entry_options(base, entries["a"], "0"), *pl.stage_names(base.method))
    rn.save_record(
        pl.Layout.of(mf.entry_options(base, entries["a"], "0")).record,
        {"status": "done", "stages": {}},
    )
    for tag in "bc":
        rn.save_record(
            pl.Layout.of(mf.entry_options(base, entries[tag], "0")).record,
            {"status": "running", "stages": {}},
        )
    slurm.save_jobs(
        base, {t: {"job": f"9_{k}", "log": f"/l/9_{k}_0_log.out"} for k, t in enumerate("abc")}
    )
    monkeypatch.setattr(slurm, "queue_states", lambda: {"9_1": ("PENDING", "BeginTime")})
    monkeypatch.delenv("THREESTUDIO_ROOT", raising=False)
    # needs no threestudio
    code, out, err = _cli(["--manifest", man, "--status", "--out", base.out])
    assert code == 2, err
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "**queued**" in rows["b"] and "9_1" in rows["b"]  # requeued: waiting for its turn
    assert "**interrupted**" in rows["c"] and "/l/9_2_0_log.out" in rows["c"]  # gone without a word
    assert "| done |" in rows["a"] and "9_0" in rows["a"]
    assert not (tmp_path / "out" / "summary-hifi123.md").exists()  # --status only reads


def test_dry_run_prints_the_submission_and_submits_nothing(tmp_path, fake_slurm_bin):
    pytest.importorskip("submitit")
    argv = _args(tmp_path, "--backend", "slurm", "--time", "01:59:30", "--slurm-opt", "qos=high")
    code, out, err = _cli(argv + ["--dry-run"])
    assert code == 0, err
    assert (
        "2 to submit" in out
        and "--time=120 (minutes: 01:59:30, rounded up) --gres=gpu:1 --qos=high" in out
    )
    assert "### array task 0:" in out and "### array task 1:" in out and "launch.py" in out
    assert not fake_slurm_bin.exists() and not (tmp_path / "out" / "slurm").exists()


# ------------------------------------------------------------------------- the task itself


def test_task_runs_on_slurms_gpu_and_requeues_itself(tmp_path, monkeypatch):
    submitit_helpers = pytest.importorskip("submitit.helpers")
    import cloudpickle

    man, base = manifest_run(tmp_path, ["a.png"])
    (entry,) = mf.read_manifest(man)
    task = slurm.ImageTask(base, CountingExecutor(mf.entry_options(base, entry, "0")))
    # unpickling patches it: undo after the test
    monkeypatch.setattr(rn, "gpu_available", rn.gpu_available)
    task = cloudpickle.loads(cloudpickle.dumps(task))  # as submitit hands it to the task
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    assert task(entry) == "done"
    rec = rn.load_record(pl.Layout.of(mf.entry_options(base, entry, "3")).record)
    assert rec["status"] == "done" and rec["gpu"] == "3"
    assert [c["stage"] for c in CountingExecutor.calls_of(base.out)] == EXECUTED
    again = submitit_helpers.DelayedSubmission(
        task, entry
    )._checkpoint_function()  # submitit on USR2
    assert again.function is task and again.args == (entry,)


def test_task_failure_fails_the_task_and_a_requeue_is_recorded(tmp_path, monkeypatch):
    man, base = manifest_run(tmp_path, ["a.png"])
    (entry,) = mf.read_manifest(man)
    opts = mf.entry_options(base, entry, "0")
    monkeypatch.setattr(rn, "gpu_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    bad = slurm.ImageTask(
        base, CountingExecutor(opts, fail={"coarse": (1, "CUDA out of memory\n", True)})
    )
    with pytest.raises(Hifi123Error, match="failed"):
        bad(entry)
    assert rn.load_record(pl.Layout.of(opts).record)["failed_stage"] == "coarse"

    def stopped(stage, echo):  # what submitit's USR2 handler does after requeueing: sys.exit
        raise SystemExit(-1)

    with pytest.raises(SystemExit):
        slurm.ImageTask(base, stopped)(entry)
    rec = rn.load_record(pl.Layout.of(opts).record)
    assert rec["status"] == "requeued" and "resumes from the last checkpoint" in rec["error"]


def test_stages_in_a_task_do_not_see_slurms_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("HIFI123_KEEP", "yes")
    log = tmp_path / "stage.log"
    code = (
        "import os; print(sorted(k for k in os.environ "
        "if k.startswith(('SLURM', 'SUBMITIT', 'HIFI123_KEEP'))))"
    )
    stage = pl.Stage(
        "x", [PY, "-c", code], str(tmp_path), env={"CUDA_VISIBLE_DEVICES": "1"}, log=str(log)
    )
    assert slurm.run_stage_in_task(stage, False) == 0
    assert "['HIFI123_KEEP']" in log.read_text()  # and Lightning sees no Slurm launch to join
    assert rn.execute_subprocess(stage, False) == 0
    # the local backend's stages keep the caller's environment
    assert "'SLURM_JOB_ID'" in log.read_text()


# ---------------------------------------------------------------------------- a real Slurm


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip(
        "submitit", reason="submitit is not installed (pip install 'hifi123[slurm]')"
    )
    try:
        c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.Unavailable as err:
        if os.environ.get("HIFI123_REQUIRE_SLURM") == "1":  # CI installed Slurm: it must run
            pytest.fail(f"HIFI123_REQUIRE_SLURM=1 but Slurm cannot start: {err}")
        pytest.skip(f"no Slurm cluster: {err}")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """Client commands and jobs use the test cluster; the jobs import run_helpers from here."""
    monkeypatch.setenv("SLURM_CONF", cluster.conf)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    )
    yield cluster
    assert not cluster.queue(), "a test left jobs in the queue"


class _Chaos(threading.Thread):
    """While a submission runs: once the task of `tag` hangs in `stage`, send it USR2 (what Slurm
    sends before a time limit or a preemption) or, with `shorten`, cut its time limit to one
    minute so that Slurm sends it; start requeued tasks without Slurm's two-minute hold."""

    def __init__(self, cluster, base, hang=None, requeue_time_limit=None, shorten=False):
        super().__init__(daemon=True)
        self.cluster, self.base, self.hang = cluster, base, hang
        self.requeue_time_limit, self.shorten = requeue_time_limit, shorten
        self.stop, self.signalled, self.released = threading.Event(), None, []

    def run(self):
        while not self.stop.is_set():
            if self.hang and self.signalled is None:
                tag, stage = self.hang
                if os.path.exists(os.path.join(self.base.out, f"hanging-{tag}-{stage}")):
                    job = slurm.load_jobs(self.base)[tag]["job"]
                    if self.shorten:  # Slurm itself warns it: the time limit is near
                        self.cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=1")
                    else:  # what Slurm sends at a time limit or a preemption
                        self.cluster.run("scancel", "--signal=USR2", job)
                    self.signalled = job
            self.released += self.cluster.release_held(self.requeue_time_limit)
            self.stop.wait(0.5)


def _calls(out):
    counts = {}
    for c in CountingExecutor.calls_of(out):
        counts.setdefault((c["tag"], c["stage"]), []).append(c)
    return counts


def _submit_under(man, base, execute, chaos):
    """Submit the manifest (ten-minute tasks) while `chaos` interferes; (exit code, lines said)."""
    chaos.start()
    lines = []
    try:
        code = slurm.submit_manifest(
            man,
            base,
            slurm.SlurmOptions(time_min=10, time_text="00:10:00"),
            execute=execute,
            poll_seconds=0.5,
            say=lines.append,
        )
    finally:
        chaos.stop.set()
        chaos.join()
    return code, lines


def test_array_job_on_a_real_slurm(tmp_path, on_cluster):
    t0 = time.time()
    man, base = manifest_run(tmp_path, ["good.png", "bad.png", "slow.png"])
    entries = mf.read_manifest(man)
    fake = CountingExecutor(
        *[mf.entry_options(base, e, "0") for e in entries],
        fail=BAD_IMAGE,
        hang={("slow", "coarse")},
        hang_seconds=90,
    )
    chaos = _Chaos(on_cluster, base, hang=("slow", "coarse"))
    code, lines = _submit_under(man, base, fake, chaos)
    text = "\n".join(lines)
    jobs = slurm.load_jobs(base)
    assert code == 2, text
    assert chaos.signalled == jobs["slow"]["job"] and chaos.signalled in chaos.released, text

    # one array job, one task per image
    ids = {t: jobs[t]["job"] for t in ("good", "bad", "slow")}
    assert len({i.split("_")[0] for i in ids.values()}) == 1 and len(set(ids.values())) == 3

    # each stage ran once; the preempted training stage once more, resuming from its checkpoint
    names = EXECUTED
    calls = _calls(base.out)
    assert {s for (t, s) in calls if t == "good"} == set(names)
    assert set(calls) - {("good", s) for s in names} - {("slow", s) for s in names} == {
        ("bad", "preprocess")
    }
    for key, got in calls.items():
        assert len(got) == (2 if key == ("slow", "coarse") else 1), (key, got)
    first, second = calls[("slow", "coarse")]
    slow_trial = pl.Layout.of(mf.entry_options(base, entries[2], "0")).trial(
        base.training("coarse").name
    )
    assert first["resume"] is None and second["resume"] == os.path.join(
        slow_trial, "ckpts", "last.ckpt"
    )
    assert first["pid"] != second["pid"]  # the requeued task is a new process
    slow_log = open(jobs["slow"]["log"]).read()
    assert "requeueing slow" in slow_log and "restart 1" in slow_log

    # the summary: statuses, Slurm task ids, the failure's log
    summary = json.load(open(os.path.join(base.out, "summary-hifi123.json")))
    rows = {r["tag"]: r for r in summary["images"]}
    assert {t: r["status"] for t, r in rows.items()} == {
        "good": "done",
        "bad": "failed",
        "slow": "done",
    }
    assert {t: r["slurm_job"] for t, r in rows.items()} == ids
    assert (
        rows["bad"]["failed_stage"] == "preprocess" and "bad.png is empty" in rows["bad"]["error"]
    )
    assert (
        os.path.isfile(rows["bad"]["log"]) and "bad.png is empty" in open(rows["bad"]["log"]).read()
    )
    assert rows["slow"]["seconds"]["coarse"] is not None
    md = open(os.path.join(base.out, "summary-hifi123.md")).read()
    assert "| bad | **failed** |" in md and ids["bad"] in md and rows["bad"]["log"] in md
    assert text.count("| good | done |") == 1 and ids["slow"] in text

    # outputs of the finished images
    for tag in ("good", "slow"):
        rec = rn.load_record(rows[tag]["record"])
        assert rec["status"] == "done" and rec["gpu"] in ("0", "1")  # a GPU Slurm handed out
        assert rec["outputs"]["mesh (GLB)"] and os.path.isfile(rec["outputs"]["mesh (GLB)"])
        assert rows[tag]["metrics"]["lpips_ref"] == pytest.approx(0.08)

    # re-submission: the finished images are skipped, the failed one runs again (fixed now)
    fixed = CountingExecutor(*[mf.entry_options(base, e, "0") for e in entries])
    chaos = _Chaos(on_cluster, base)
    code, lines = _submit_under(man, base, fixed, chaos)
    assert code == 0, "\n".join(lines)
    again = _calls(base.out)
    assert {k: len(v) for k, v in again.items() if k[0] != "bad"} == {
        k: len(v) for k, v in calls.items() if k[0] != "bad"
    }
    assert {s for (t, s) in again if t == "bad"} == set(names)
    assert len(again[("bad", "preprocess")]) == 2 and all(
        len(again[("bad", s)]) == 1 for s in names[1:]
    )
    assert slurm.load_jobs(base)["good"] == jobs["good"]  # not submitted again
    assert slurm.load_jobs(base)["bad"]["job"].split("_")[0] != ids["bad"].split("_")[0]
    assert "good: done already" in "\n".join(lines)
    assert time.time() - t0 < 180


def test_time_limit_requeues_and_resumes_on_a_real_slurm(tmp_path, on_cluster):
    """No signal from the test: once the task hangs in its coarse stage, the test shortens its
    time limit to one minute, and Slurm's own warning (USR2, 90 s before the limit, sent at
    slurmctld's next check) stops it; it is requeued (back to ten minutes, so that Slurm does not
    warn it again mid-run) and resumes from the checkpoint."""
    man, base = manifest_run(tmp_path, ["long.png"])
    (entry,) = mf.read_manifest(man)
    fake = CountingExecutor(
        mf.entry_options(base, entry, "0"), hang={("long", "coarse")}, hang_seconds=100
    )
    chaos = _Chaos(on_cluster, base, hang=("long", "coarse"), requeue_time_limit=10, shorten=True)
    code, lines = _submit_under(man, base, fake, chaos)
    assert code == 0, "\n".join(lines)
    job = slurm.load_jobs(base)["long"]["job"]
    assert chaos.signalled == job and chaos.released == [job]  # requeued once
    calls = _calls(base.out)
    assert {k: len(v) for k, v in calls.items()} == {
        ("long", s): (2 if s == "coarse" else 1) for s in EXECUTED
    }
    assert calls[("long", "coarse")][1]["resume"].endswith(os.path.join("ckpts", "last.ckpt"))
    log = open(slurm.load_jobs(base)["long"]["log"]).read()
    assert "Caught signal SIGUSR2" in log and "requeueing long" in log and "restart 1" in log


def _tree(out):
    """Every output file (path relative to `out`, content with `out` replaced) that the stages
    write; logs, run records, the summary and Slurm's files are the backends' own."""
    skip = ("logs", "runs", "slurm", "calls.jsonl")
    files = {}
    for dirpath, _, names in os.walk(out):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, out)
            if rel.split(os.sep)[0] in skip or rel.startswith("summary-"):
                continue
            data = open(path, "rb").read().replace(out.encode(), b"OUT")
            if name == pl.MARKER:  # the completion marker: its timings and GPU are the run's own
                marker = json.loads(data)
                data = {
                    k: marker[k]
                    for k in ("stage", "method", "variant", "image", "cwd", "resumed_from")
                }
            files[rel] = data
    return files


def test_local_and_slurm_backends_give_the_same_outputs(tmp_path, on_cluster, gpu):
    root = fake_threestudio(tmp_path)
    man = write_manifest(tmp_path, ["cup.png", "owl.png"])
    entries = mf.read_manifest(man)
    outs = {}
    for backend in ("local", "slurm"):
        base = pl.RunOptions(
            image="", out=str(tmp_path / f"out-{backend}"), threestudio_root=root, python=PY
        )
        fake = CountingExecutor(*[mf.entry_options(base, e, "0") for e in entries])
        if backend == "local":  # the worker of the local backend, in this process
            assert (
                mf.run_manifest(man, base, ["0"], worker=0, execute=fake, say=lambda m: None) == 0
            )
        else:
            chaos = _Chaos(on_cluster, base)
            chaos.start()
            try:
                assert (
                    slurm.submit_manifest(
                        man,
                        base,
                        slurm.SlurmOptions(time_min=10, time_text="00:10:00"),
                        execute=fake,
                        poll_seconds=0.5,
                        say=lambda m: None,
                    )
                    == 0
                )
            finally:
                chaos.stop.set()
                chaos.join()
        outs[backend] = base.out
        summary = mf.collect_summary(entries, base)
        assert summary["counts"] == {"done": 2}
    local, remote = _tree(outs["local"]), _tree(outs["slurm"])
    assert len(local) >= 2 * len(EXECUTED) and local == remote
    calls = {
        b: sorted(
            (c["tag"], c["stage"], (c["resume"] or "").replace(o, "OUT"))
            for c in CountingExecutor.calls_of(o)
        )
        for b, o in outs.items()
    }
    assert calls["local"] == calls["slurm"]
