"""Where a prompt comes from: one rule for every guidance and command (decision 30).

An explicit prompt (a non-empty config field or `--prompt`) wins; otherwise the caption file next
to the image: `<name>_rgba.png` -> `<name>_caption.txt` (what `hifi123 preprocess` writes), any
other `<stem>.<ext>` -> `<stem>_caption.txt`. What happens when neither gives one is the caller's
choice: an error (Make-It-3D's SDS prompt), a warning (RGSD), or a default view prompt
(`hifi123 rgnv`).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

from ..errors import InputError

RGBA_SUFFIX = "_rgba.png"
CAPTION_SUFFIX = "_caption.txt"


def caption_path(image_path: str) -> str:
    """The caption file that belongs to `image_path`."""
    if image_path.endswith(RGBA_SUFFIX):
        return image_path[: -len(RGBA_SUFFIX)] + CAPTION_SUFFIX
    return os.path.splitext(image_path)[0] + CAPTION_SUFFIX


def read_caption(image_path: Optional[str]) -> Optional[str]:
    """The caption next to `image_path`, whitespace collapsed; None when there is none."""
    if not image_path:
        return None
    path = caption_path(image_path)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        text = " ".join(f.read().split())
    return text or None


def find_prompt(
    image_path: Optional[str],
    prompt: Optional[str],
    use_caption_file: bool = True,
    prompt_field: str = "prompt",
) -> Tuple[Optional[str], str]:
    """(prompt, where it came from) by the rule above; (None, why not) when neither gives one."""
    if prompt and prompt.strip():
        return " ".join(prompt.split()), f"`{prompt_field}`"
    if use_caption_file:
        caption = read_caption(image_path)
        if caption:
            return caption, f"caption file {caption_path(image_path)}"
    cap = caption_path(image_path) if image_path else "<name>_caption.txt"
    why = (
        f"`{prompt_field}` is empty and there is no caption file {cap}"
        if use_caption_file
        else f"`{prompt_field}` is empty"
    )
    return None, why


def resolve_prompt(
    image_path: Optional[str],
    prompt: Optional[str],
    use_caption_file: bool = True,
    prompt_field: str = "prompt",
) -> Tuple[str, str]:
    """:func:`find_prompt`, with an InputError when neither gives a prompt."""
    text, source = find_prompt(image_path, prompt, use_caption_file, prompt_field)
    if text is None:
        cap = caption_path(image_path) if image_path else "<name>_caption.txt"
        raise InputError(
            f"no prompt: {source}",
            f"a non-empty `{prompt_field}` or a one-line caption in {cap}",
            f'set `{prompt_field}="a photo of ..."`, or run `hifi123 preprocess <image>` (writes '
            "the caption)",
        )
    return text, source
