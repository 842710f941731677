"""Background removal for photos without a meaningful alpha channel (a transformers model).

Why transformers and not rembg: rembg (PyPI `rembg`, 2.0.x) runs ONNX models through onnxruntime
and downloads them on first use; a local file works (`new_session("u2net_custom",
model_path=...)`), but it would add onnxruntime + an ONNX export path to test offline and a second
model-loading mechanism. Every model here goes through the project's one loader instead
(`hifi123.models.loader.load_segmenter`: hub id or local `save_pretrained` directory), and the tiny
offline models are saved in the same layout.

Two kinds of model are supported, told apart by `config.model_type`:

* **CLIPSeg** (`CLIPSegForImageSegmentation`, in transformers 4.28.1 and 5.x): text-prompted.
  The foreground probability is `sigmoid(logits)` for the prompt (`--seg-prompt`, default
  "an object"). Default checkpoint: `CIDAS/clipseg-rd64-refined` (Apache-2.0). It is the only
  generic foreground model with a native transformers class in both versions we support; its masks
  are coarse (352x352 logits, upsampled) and soft-edged. SAM (`SamModel`) needs transformers
  >= 4.29 and BiRefNet / RMBG need `trust_remote_code`, so neither is used.
* **Semantic segmentation heads** (`AutoModelForSemanticSegmentation`: Segformer, DPT, BEiT,
  MobileViT, UperNet), e.g. a checkpoint fine-tuned with labels {0: background, 1: foreground}.
  The foreground probability is the softmax mass of the foreground labels: `--foreground-labels`
  (names or ids), or by default every label not called "background". The labels are checked
  against `config.id2label` before any weights load.

Mask = probability > `--seg-threshold` (default 0.5), binary (resampling in the recentring step
gives anti-aliased edges). No matting (edge pixels keep the photo's colours, background included)
and no hole filling or speckle removal (a speckle far from the object widens the bounding box).
**For best results cut the object out yourself** (SAM, rembg, BiRefNet, an editor) and pass the
RGBA: preprocess keeps a meaningful input alpha and runs no segmenter.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Hifi123Error
from .estimator import LoadedModel

BACKGROUND_NAMES = ("background", "bg", "__background__")


def _read_config(ref: str) -> dict:
    """config.json of a local directory or a cached hub repo (no download); {} when unknown."""
    path = os.path.join(os.path.expanduser(ref), "config.json")
    if not os.path.isfile(path):
        try:
            from huggingface_hub import try_to_load_from_cache

            got = try_to_load_from_cache(ref, "config.json")
            path = got if isinstance(got, str) else ""
        except Exception:  # noqa: BLE001
            path = ""
    if not path or not os.path.isfile(path):
        return {}
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def foreground_ids(
    id2label: dict, wanted: Sequence[str], ref: str, field: str = "--foreground-labels"
) -> List[int]:
    """Label ids that count as foreground. `wanted`: names (case-insensitive) or ids; empty means
    every label not named background."""
    labels = {int(k): str(v) for k, v in id2label.items()}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    if not wanted:
        ids = [k for k, v in labels.items() if v.strip().lower() not in BACKGROUND_NAMES]
        if len(ids) == len(labels):
            raise Hifi123Error(
                f"segmentation model {ref} has no label called 'background' (labels: {shown})",
                "a model with a background label, or the foreground labels named explicitly",
                f"pass {field} with the labels that make up the object, e.g. {field} "
                f"{labels[min(labels)]}",
            )
        return sorted(ids)
    by_name = {v.strip().lower(): k for k, v in labels.items()}
    ids = []
    for w in wanted:
        w = str(w).strip()
        if w.lstrip("-").isdigit() and int(w) in labels:
            ids.append(int(w))
        elif w.lower() in by_name:
            ids.append(by_name[w.lower()])
        else:
            raise Hifi123Error(
                f"{field}: segmentation model {ref} has no label {w!r} (labels: {shown})",
                "label names or ids from the model's config.json id2label",
                f"pass {field} with labels from that list",
            )
    return sorted(set(ids))


def check_segmenter(ref: str, wanted: Sequence[str], field: str = "--seg-model") -> None:
    """Validate the label selection from config.json alone (before any weights load)."""
    cfg = _read_config(ref)
    if cfg.get("model_type") == "clipseg" and wanted:
        raise Hifi123Error(
            f"--foreground-labels {' '.join(map(str, wanted))} given, but {ref} is a CLIPSeg "
            "model (text-prompted)",
            "--foreground-labels only with a semantic-segmentation model (labels in config.json)",
            "describe the object with --seg-prompt TEXT instead",
        )
    if not cfg or cfg.get("model_type") == "clipseg":
        return
    if wanted or cfg.get("id2label"):
        foreground_ids(cfg.get("id2label") or {}, wanted, ref)


class Segmenter(LoadedModel):
    """Foreground probability of an RGB photo, from a loaded transformers model."""

    loader_name = "load_segmenter"
    default_field = "--seg-model"

    def __init__(
        self,
        model,
        processor,
        *,
        ref: str = "",
        prompt: str = "an object",
        foreground_labels: Sequence[str] = (),
    ) -> None:
        super().__init__(model, processor, ref)
        self.prompt = prompt
        self.is_clipseg = getattr(model.config, "model_type", "") == "clipseg"
        self.fg_ids: Optional[List[int]] = None
        if not self.is_clipseg:
            self.fg_ids = foreground_ids(model.config.id2label, foreground_labels, ref)

    @property
    def description(self) -> str:
        if self.is_clipseg:
            return f"CLIPSeg {self.ref} (prompt {self.prompt!r})"
        return f"semantic segmentation {self.ref} (foreground label ids {self.fg_ids})"

    @torch.no_grad()
    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """rgb float [H, W, 3] in [0, 1] -> foreground probability float32 [H, W]."""
        from PIL import Image

        h, w = rgb.shape[:2]
        pil = Image.fromarray((np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8), "RGB")
        p = next(self.model.parameters())
        if self.is_clipseg:
            inputs = self.processor(
                text=[self.prompt], images=[pil], padding=True, return_tensors="pt"
            )
        else:
            inputs = self.processor(images=pil, return_tensors="pt")
        inputs = {
            k: (v.to(p.device, p.dtype) if v.is_floating_point() else v.to(p.device))
            for k, v in inputs.items()
        }
        logits = self.model(**inputs).logits.float()
        if self.is_clipseg:  # [h, w] (transformers 4.x squeezes) or [1, h, w]
            lg = logits.reshape(-1, 1, *logits.shape[-2:])[:1]
            prob = torch.sigmoid(
                F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)
            )[0, 0]
        else:  # [1, C, h, w]
            lg = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            prob = lg.softmax(dim=1)[0, self.fg_ids].sum(0)
        return prob.clamp(0, 1).cpu().numpy().astype(np.float32)

    def mask(self, rgb: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        return self.probability(rgb) > threshold
