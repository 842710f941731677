"""User-facing errors.

Every error a user can trigger says three things: *what* is wrong (the file or config field),
*what was expected*, and *the command that fixes it*. The CLI prints these without a traceback.
"""

from __future__ import annotations

from typing import Optional


class Hifi123Error(Exception):
    """An error caused by input or configuration, explained for the user."""

    def __init__(self, what: str, expected: str = "", fix: str = "") -> None:
        self.what = what
        self.expected = expected
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.what]
        if self.expected:
            lines.append(f"  expected: {self.expected}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class InputError(Hifi123Error):
    """A bad input file (image, depth map, mask, config)."""


class ModelNotFoundError(Hifi123Error):
    """A pretrained model could not be found locally or on the hub."""

    def __init__(self, model: str, field: str, reason: str, extra_fix: Optional[str] = None):
        self.model = model
        self.field = field
        self.reason = reason
        fix = (
            f"download it where the hub is reachable (`huggingface-cli download {model} "
            f"--local-dir /path/to/dir`) and point {field} at that directory "
            f"(e.g. `{field}=/path/to/dir`); for an offline smoke run use "
            f"`hifi123 tiny-models --out DIR` and point {field} at the matching sub-directory"
        )
        if extra_fix:
            fix = extra_fix + "; or " + fix
        super().__init__(
            what=f"model '{model}' (config field `{field}`) could not be loaded: {reason}",
            expected="a hub id reachable from this machine or a local directory in the "
            "diffusers/transformers `save_pretrained` layout",
            fix=fix,
        )


def check_config_keys(given, known, path: str, owner: str, foreign_hint: bool = False) -> None:
    """Refuse keys of `given` (a mapping) that `known` lacks, before anything is built.

    One InputError names every unknown key by its full config path with the closest valid key,
    lists the valid keys, and says how to fix it. `foreign_hint`: the block may still carry another
    component's settings (a guidance swapped by `system.guidance_type=...` on the command line keeps
    the old block's keys, since a command-line override merges into a block and cannot delete keys).
    """
    import difflib

    known = list(known)
    unknown = [k for k in given if k not in known]
    if not unknown:
        return
    named = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        named.append(f"{path}.{key}" + (f" (did you mean {path}.{close[0]}?)" if close else ""))
    fix = "remove or rename these keys"
    if foreign_hint:
        fix = (
            f"these look like another component's settings: a command-line override merges into "
            f"`{path}` and cannot remove keys, so copy the YAML and replace the whole `{path}` "
            f"block with {owner}'s keys only, then pass that YAML to --config"
        )
    raise InputError(
        f"{owner} does not know {', '.join(named)}",
        f"only the keys of {owner}: {', '.join(sorted(known))}",
        fix,
    )


def check_config_numbers(given, path: str, owner: str) -> None:
    """Refuse NaN and infinite numbers anywhere in the config block `given` (nested mappings and
    lists included; schedules such as `[0, 0.0, 0.05, 100]` too), naming each by its full path."""
    import math

    bad = []

    def walk(value, where):
        if isinstance(value, bool):
            return
        if isinstance(value, str) and value.strip().lower().lstrip("+-.") in (
            "nan",
            "inf",
            "infinity",
        ):
            # YAML `nan`, which a float field parses
            value = float(value.strip().lower().replace(".", ""))
        if isinstance(value, float):
            if not math.isfinite(value):
                bad.append(f"{where} = {value}")
        elif hasattr(value, "keys"):
            for k in value.keys():
                walk(value[k], f"{where}.{k}")
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    if type(given).__name__ == "DictConfig":  # unresolved: interpolations are not numbers yet
        from omegaconf import OmegaConf

        given = OmegaConf.to_container(given, resolve=False)
    for key in given.keys():
        walk(given[key], f"{path}.{key}")
    if bad:
        raise InputError(
            f"{owner}: {', '.join(bad)}",
            "finite numbers (no nan or inf) in every setting",
            "set a finite value (YAML `.nan` / `.inf` are not settings)",
        )


def check_config_types(config_cls, given, path: str, owner: str) -> None:
    """Parse the config block `given` into the structured `config_cls` as threestudio will: a value
    of the wrong type is one InputError naming its full path, instead of OmegaConf's traceback."""
    import dataclasses

    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    try:
        OmegaConf.merge(OmegaConf.structured(config_cls), given)
    except ValidationError as err:
        key = f"{path}.{err.full_key}" if err.full_key else path
        declared = {f.name: f.type for f in dataclasses.fields(config_cls)}.get(
            str(err.full_key).split(".")[0].split("[")[0]
        )
        kind = getattr(declared, "__name__", None) or str(declared).replace("typing.", "")
        raise InputError(
            f"{owner}: {key} = {getattr(err, 'value', None)!r}: {str(err.msg).splitlines()[0]}",
            f"a value of the type {key} declares ({kind})",
            f"set {key} to such a value",
        ) from None


def settings_error(err: Exception, path: str, owner: str, fields=()) -> InputError:
    """A core settings class's ValueError (`validate()`, which names the field) as the config's
    InputError: the field under its full config path, what is allowed and the fix."""
    text = str(err)
    named = text.split(" ", 1)[0] in set(fields)
    return InputError(
        f"{owner}: {path}.{text}" if named else f"{owner}: {path}: {text}",
        "values in the ranges and choices the settings declare (the field's docstring says them)",
        f"fix that key under {path}",
    )
