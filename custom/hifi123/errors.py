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
