"""A throwaway one-node Slurm cluster on localhost, for the `--backend slurm` tests.

`start(folder)` writes a munge key, a slurm.conf and a gres.conf (two GPUs backed by /dev/null and
/dev/zero: Slurm hands them out and sets CUDA_VISIBLE_DEVICES; nothing uses them) in `folder`,
starts munged (its own socket, key, pid and log files in `folder`), slurmctld and slurmd in the
foreground as child processes, and waits for the node to be idle. It raises `Unavailable`, saying
why, when that cannot be done (not root, Slurm or munge not installed, a daemon that fails), after
stopping whatever it started. `Cluster.stop()` cancels every job, stops the daemons and ends the
job processes still left (found by the cluster's slurm.conf in their environment).

Client commands and jobs find the cluster through `SLURM_CONF` (`Cluster.env`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
INSTALL = "apt-get install -y --no-install-recommends slurm-wlm munge"


class Unavailable(Exception):
    """Slurm cannot run here; the message says why."""


def missing_binaries() -> List[str]:
    return [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]


def _free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = str(folder / "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.procs: Dict[str, subprocess.Popen] = {}

    # -------------------------------------------------------------------------------- commands

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        proc = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc.stdout

    def queue(self) -> Dict[str, tuple]:
        """{job or array task id: (state, reason)} of every job in the queue."""
        out = self.run("squeue", "--noheader", "--array", "--format=%i|%T|%r", check=False)
        return {
            p[0]: (p[1], p[2])
            for p in (line.split("|") for line in out.splitlines())
            if len(p) == 3
        }

    def release_held(self, time_limit: Optional[int] = None) -> List[str]:
        """Start requeued jobs now: Slurm holds a requeued batch job for two minutes (reason
        BeginTime), too long for a test. `time_limit`: give them that many minutes as well."""
        held = [
            job
            for job, (state, reason) in self.queue().items()
            if state == "PENDING" and reason == "BeginTime"
        ]
        extra = [f"TimeLimit={time_limit}"] if time_limit else []
        for job in held:
            self.run("scontrol", "update", f"JobId={job}", "StartTime=now", *extra, check=False)
        return held

    # ----------------------------------------------------------------------------- lifecycle

    def _write_config(self) -> None:
        f = self.folder
        for d in ("munge", "state", "spool", "log"):
            (f / d).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o755)  # the socket's folder: searchable by the job's users
        (f / "munge-key").mkdir(mode=0o700, exist_ok=True)
        ctld_port, slurmd_port = _free_ports(2)
        host = socket.gethostname()
        (f / "slurm.conf").write_text(f"""\
ClusterName=hifi123test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={f / "munge" / "munge.sock"}
StateSaveLocation={f / "state"}
SlurmdSpoolDir={f / "spool"}
SlurmctldPidFile={f / "slurmctld.pid"}
SlurmdPidFile={f / "slurmd.pid"}
SlurmctldLogFile={f / "log" / "slurmctld.log"}
SlurmdLogFile={f / "log" / "slurmd.log"}
PlugStackConfig={f / "plugstack.conf"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
GresTypes=gpu
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=localnode NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 Gres=gpu:2 \
State=UNKNOWN
PartitionName=debug Nodes=localnode Default=YES MaxTime=INFINITE State=UP
""")
        (f / "gres.conf").write_text(
            "AutoDetect=off\nNodeName=localnode Name=gpu File=/dev/null\n"
            "NodeName=localnode Name=gpu File=/dev/zero\n"
        )
        (f / "plugstack.conf").write_text("")

    def _spawn(self, name: str, argv: List[str]) -> None:
        log = open(self.folder / "log" / f"{name}.console", "ab")
        self.procs[name] = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def start(self, timeout: float = 40) -> None:
        self._write_config()
        f = self.folder
        key = f / "munge-key" / "munge.key"
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={key}", "--bits=1024"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={f / 'munge' / 'munge.sock'}",
                f"--pid-file={f / 'munge' / 'munged.pid'}",
                f"--log-file={f / 'log' / 'munged.log'}",
                f"--seed-file={f / 'munge' / 'seed'}",
            ],
        )
        self._wait(
            lambda: (f / "munge" / "munge.sock").exists(), 10, "munged", f / "log" / "munged.log"
        )
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", self.conf])
        self._spawn("slurmd", ["slurmd", "-D", "-f", self.conf, "-N", "localnode"])

        def idle():
            out = self.run(
                "sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=10
            ).split()
            return out[:1] == ["idle"]

        self._wait(idle, timeout, "the node", f / "log" / "slurmd.log", f / "log" / "slurmctld.log")

    def _wait(self, ready, timeout: float, what: str, *logs: Path) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                break
            if ready():
                return
            time.sleep(0.5)
        dead = [
            f"{n} exited with code {p.returncode}"
            for n, p in self.procs.items()
            if p.poll() is not None
        ]
        consoles = [self.folder / "log" / f"{n}.console" for n in self.procs]
        shown = [log for log in [*logs, *consoles] if log.is_file() and log.stat().st_size]
        tails = "\n".join(f"--- {log.name}:\n{_tail(log)}" for log in shown)
        raise Unavailable(
            f"{what} did not come up "
            + (f"({'; '.join(dead)})" if dead else f"in {timeout:.0f} s")
            + f"\n{tails}"
        )

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            jobs = sorted({j.split("_")[0] for j in self.queue()})
            if jobs:
                self.run("scancel", *jobs, check=False)
            deadline = time.time() + 20
            while self.queue() and time.time() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def leftover_pids(self) -> List[int]:
        """Processes of this cluster still alive: those with its slurm.conf in their environment
        (job steps and the job's own processes), other than this process."""
        mine = f"SLURM_CONF={self.conf}".encode()
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if mine in fh.read().split(b"\0"):
                        out.append(int(entry))
            except OSError:
                continue
        return out


def start(folder: Path, timeout: float = 40) -> Cluster:
    """A running cluster in `folder`, or `Unavailable` saying why (nothing left running)."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise Unavailable(
            "not root: slurmd must run as root to start jobs as their users (CI runs as root)"
        )
    missing = missing_binaries()
    if missing:
        raise Unavailable(
            f"Slurm / munge not installed (no {', '.join(missing)} on PATH): {INSTALL}"
        )
    cluster = Cluster(Path(folder))
    try:
        cluster.start(timeout)
    except Unavailable:
        cluster.stop()
        raise
    except (OSError, subprocess.SubprocessError, RuntimeError) as err:
        cluster.stop()
        raise Unavailable(f"could not start Slurm: {type(err).__name__}: {err}") from err
    return cluster
