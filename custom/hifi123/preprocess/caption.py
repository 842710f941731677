"""Captions with BLIP-2 (transformers `Blip2ForConditionalGeneration`, loaded by `load_blip2`).

As Make-It-3D (algorithms.md C.1): greedy `generate` on the image alone (no text prompt), then
post-processing: drop "there is ", replace "close up" with "photo", and "black background" /
"white background" with "ground". We caption the recentred object composited on white and also
collapse whitespace and drop control characters (the caption is one line).

Default checkpoint: `Salesforce/blip2-opt-2.7b` (MIT), `DEFAULT_MODELS["blip2"]`; about 15 GB in
fp32 (use `--fp16` on a GPU). Any BLIP-2 checkpoint in the transformers layout works, e.g. a local
directory.

Where the caption comes from (always printed and stored in the sidecar, never skipped silently):

* `--caption TEXT`: TEXT, as given (no model loads);
* `--no-caption`: no `<name>_caption.txt` is written;
* otherwise BLIP-2 from `--caption-model`. With `--tiny` that is the tiny random BLIP-2 (so the
  captioning code runs offline); its caption is NOISE, and the command says so. If the model's
  output is empty after post-processing, the placeholder "an object" is written and a warning says
  so.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import torch

from .estimator import LoadedModel

PLACEHOLDER_CAPTION = "an object"
MAX_NEW_TOKENS = 30


def postprocess_caption(text: str) -> str:
    """Make-It-3D's rules, then one clean line."""
    text = text.replace("there is ", "")
    text = text.replace("close up", "photo")
    for bg in ("black background", "white background"):
        text = text.replace(bg, "ground")
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = text.replace("\ufffd", " ")
    return re.sub(r"\s+", " ", text).strip()


def clean_user_caption(text: str) -> str:
    """`--caption` text: one line, nothing else changed."""
    return re.sub(r"\s+", " ", text).strip()


class Captioner(LoadedModel):
    loader_name = "load_blip2"
    default_field = "--caption-model"

    @torch.no_grad()
    def raw(self, rgb_on_white: np.ndarray) -> str:
        from PIL import Image

        pil = Image.fromarray((np.clip(rgb_on_white, 0, 1) * 255.0 + 0.5).astype(np.uint8), "RGB")
        p = next(self.model.parameters())
        inputs = self.processor(images=pil, return_tensors="pt")
        pixels = inputs["pixel_values"].to(p.device, p.dtype)
        ids = self.model.generate(
            pixel_values=pixels, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1
        )
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0]

    def __call__(self, rgb_on_white: np.ndarray) -> str:
        return postprocess_caption(self.raw(rgb_on_white))
