"""Never destroy a user's file: the one check every command runs on its output paths.

:func:`check_output_dir` proves an output folder can be written (creating it) before any work.

:func:`check_outputs` is called with every path a command will write and every file it reads,
before any work: an output that is one of the inputs, or that two outputs share, is refused with
both named. :func:`claim_folder` lets a command write into a folder only when the folder is empty
or holds the marker of an earlier run of the same command (so a folder of real models is never
overwritten by tiny ones).
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict, Iterable, Tuple

from .errors import InputError


def check_output_dir(path: str, flag: str = "--out") -> str:
    """Create `path` if needed and prove it is writable (a real write: os.access lies to root)."""
    path = os.path.abspath(os.path.expanduser(path))
    fix = f"pass a writable folder with {flag} DIR"
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(
            f"output folder {path} is a file", "a folder (it is created if missing)", fix
        )
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hifi123-write-test-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise InputError(
            f"cannot write to the output folder {path}: {err.strerror or err}",
            "a writable folder",
            fix,
        ) from err
    return path


def _key(path: str) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(os.path.expanduser(path))))


def check_outputs(
    outputs: Iterable[Tuple[str, str]], inputs: Iterable[Tuple[str, str]], command: str
) -> None:
    """`outputs` / `inputs`: (what, path) pairs. Raises InputError before anything is written."""
    seen: Dict[str, str] = {}
    read = {_key(p): what for what, p in inputs if p}
    for what, path in outputs:
        k = _key(path)
        if k in read:
            raise InputError(
                f"{command}: {what} would be written to {path}, which is an input ({read[k]})",
                "outputs that are none of the inputs",
                f"pass another output location to {command}, or move the input",
            )
        if k in seen:
            raise InputError(
                f"{command}: {seen[k]} and {what} would both be written to {path}",
                "one output file per result",
                "give the inputs distinct file names (their names name the outputs)",
            )
        seen[k] = what


def claim_folder(folder: str, marker: str, command: str) -> None:
    """Allow writing into `folder` when it is new, empty, or carries `marker` (then write it)."""
    folder = os.path.abspath(os.path.expanduser(folder))
    if os.path.isdir(folder):
        entries = sorted(os.listdir(folder))
        if entries and marker not in entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise InputError(
                f"{command}: {folder} already holds files that {command} did not write ({shown})",
                f"an empty folder, or one {command} wrote before (it holds {marker})",
                f"pass a new folder to {command}",
            )
    elif os.path.exists(folder):
        raise InputError(
            f"{command}: {folder} is a file", "a folder", f"pass a folder to {command}"
        )
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, marker), "w", encoding="utf-8") as f:
        f.write(f"written by {command}; the files here may be replaced by the next run\n")
