"""threestudio trial folders: which ones finished, and what `@LAST` means for a refine stage.

threestudio writes each run to `<exp_root_dir>/<name>/<tag>@<YYYYmmdd-HHMMSS>` (or `<name>/<tag>`
with `use_timestamp=false`, as `hifi123 run` does) holding `ckpts/`, `configs/parsed.yaml` and
`save/`. Its own `@LAST` (`find_last_path`) takes the newest folder by name, even one whose run
crashed at step 3, and finds nothing for untimestamped trials. A refine stage must start from a
coarse model that finished, so our systems expand `@LAST` here first:

* a trial is *finished* when it holds our completion marker :data:`FINISHED_MARKER` (written by
  our systems at the end of a training run that reached `trainer.max_steps`, and by `hifi123 run`
  as :data:`RUN_MARKER`) or, for trials made without it, when its checkpoint's `global_step`
  equals the `trainer.max_steps` of its `configs/parsed.yaml`;
* `<dir>/<tag>@LAST/<rest>` means the newest finished trial among `<dir>/<tag>@*` and `<dir>/<tag>`
  (newest = latest modified checkpoint), with `<rest>` appended; for `ckpts/last.ckpt`, the newest
  `ckpts/last*.ckpt` (Lightning 2.0 writes `last-v1.ckpt` beside the old one when a run resumes);
* when none qualifies, :class:`~hifi123.errors.InputError` lists what was found and why each trial
  was passed over, and says how to fix it — before threestudio looks anything up.

Checkpoints must reload where our users run: torch >= 2.6 loads with `weights_only=True`, which
refuses OmegaConf containers (threestudio passes optimizer and scheduler settings from the YAML
as such); :func:`plain_containers` turns them into plain lists and dicts before saving.

Nothing here imports threestudio.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from .errors import InputError

#: written by our systems into the trial folder when training reaches max_steps
FINISHED_MARKER = "hifi123_finished.json"
#: written by `hifi123 run` after launch.py exits 0 (see hifi123.run.plan)
RUN_MARKER = "hifi123_stage.json"
LAST = "@LAST"


def write_finished_marker(trial_dir: str, global_step: int, max_steps: int, **extra: Any) -> str:
    """Record that the training run in `trial_dir` finished (global_step >= max_steps)."""
    path = os.path.join(trial_dir, FINISHED_MARKER)
    data = {"global_step": int(global_step), "max_steps": int(max_steps), **extra}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return path


def latest_last_checkpoint(path: str) -> str:
    """`<dir>/last.ckpt` or, when Lightning wrote a newer `last-v<N>.ckpt` beside it (Lightning 2.0
    does so when a resumed run finds the old last.ckpt), the newest of them."""
    import glob

    directory, name = os.path.split(path)
    if name != "last.ckpt":
        return path
    found = [
        p
        for p in glob.glob(os.path.join(glob.escape(directory), "last*.ckpt"))
        if os.path.isfile(p)
    ]
    return max(found, key=os.path.getmtime) if found else path


def _checkpoint_step(ckpt: str) -> Optional[int]:
    import torch

    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable or not plain: cannot prove it finished
        return None
    step = data.get("global_step") if isinstance(data, dict) else None
    return int(step) if step is not None else None


def _max_steps(trial: str) -> Optional[int]:
    path = os.path.join(trial, "configs", "parsed.yaml")
    if not os.path.isfile(path):
        return None
    try:
        from omegaconf import OmegaConf

        value = OmegaConf.load(path).get("trainer", {}).get("max_steps")
    except Exception:  # noqa: BLE001
        return None
    return int(value) if isinstance(value, int) else None


def trial_status(trial: str, rest: str = os.path.join("ckpts", "last.ckpt")) -> Tuple[bool, str]:
    """(finished, why) for the trial folder `trial`; `rest` is the file the caller needs in it."""
    target = latest_last_checkpoint(os.path.join(trial, rest))
    if not os.path.exists(target):
        return False, f"no {rest}"
    if os.path.isfile(os.path.join(trial, FINISHED_MARKER)) or os.path.isfile(
        os.path.join(trial, RUN_MARKER)
    ):
        return True, "finished (completion marker)"
    max_steps = _max_steps(trial)
    ckpt = target if target.endswith(".ckpt") else os.path.join(trial, "ckpts", "last.ckpt")
    step = _checkpoint_step(ckpt) if os.path.isfile(ckpt) else None
    if max_steps is not None and step is not None and step >= max_steps:
        return True, f"finished (step {step} of {max_steps})"
    if step is not None and max_steps is not None:
        return False, f"unfinished: checkpoint at step {step} of {max_steps}, no completion marker"
    return False, "no completion marker and no readable step / max_steps to prove it finished"


def split_last(path: str) -> Tuple[str, str, str]:
    """`<dir>/<tag>@LAST/<rest>` -> (dir, tag, rest)."""
    head, rest = path.split(LAST, 1)
    rest = rest.lstrip("/" + os.sep)
    directory, tag = os.path.split(head)
    return directory or ".", tag, rest


def candidates(directory: str, tag: str) -> List[str]:
    """Trial folders of `tag` in `directory`: `<tag>@<anything>` and the untimestamped `<tag>`."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if os.path.isdir(full) and (name == tag or name.startswith(tag + "@")):
            out.append(full)
    return out


def resolve_last(path: Optional[str], field: str = "system.geometry_convert_from") -> Optional[str]:
    """Expand `@LAST` in `path` to the newest finished trial; other paths come back unchanged.

    Raises InputError (naming `field`) when no finished trial exists."""
    if not path or LAST not in str(path):
        return path
    path = str(path).replace(" ", "_")  # as threestudio does: tags never contain spaces
    directory, tag, rest = split_last(path)
    found = candidates(directory, tag)
    checked: List[Tuple[str, str]] = []
    finished: List[str] = []
    for trial in found:
        ok, why = trial_status(trial, rest)
        checked.append((trial, why))
        if ok:
            finished.append(trial)
    if finished:

        def mtime(t: str) -> float:
            target = latest_last_checkpoint(os.path.join(t, rest))
            return os.path.getmtime(target) if os.path.exists(target) else 0.0

        return latest_last_checkpoint(os.path.join(max(finished, key=mtime), rest))
    if not found:
        what = (
            f"{field}={path}: no trial folder {tag}@<time> (or {tag}) in "
            f"{os.path.abspath(directory)}"
        )
    else:
        listed = "; ".join(f"{os.path.basename(t)}: {why}" for t, why in sorted(checked))
        what = f"{field}={path}: no finished trial among {len(found)} found ({listed})"
    raise InputError(
        what,
        f"a finished earlier stage of the same image (same exp_root_dir, name and tag `{tag}`)",
        "run (or finish) the earlier stage first, e.g. `python launch.py --config "
        "custom/hifi123/configs/coarse.yaml --train data.image_path=...`, or pass "
        f"{field}=<trial>/ckpts/last.ckpt explicitly",
    )


def plain_containers(obj: Any) -> Any:
    """Replace every OmegaConf container inside `obj` (dicts, lists, tuples; in place where
    mutable) by plain Python containers; returns the converted object."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            new = plain_containers(v)
            if new is not v:
                obj[k] = new
        return obj
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            new = plain_containers(v)
            if new is not v:
                obj[i] = new
        return obj
    if isinstance(obj, tuple):
        items = [plain_containers(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def finished_summary(trial: str) -> Dict[str, Any]:
    """The content of a trial's completion marker ({} when it has none)."""
    path = os.path.join(trial, FINISHED_MARKER)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
