"""Monocular depth with DPT (transformers `DPTForDepthEstimation`, loaded by `load_dpt`).

Follows Make-It-3D's depth prior up to the file (algorithms.md C.1): the recentred image is
composited on WHITE, run through DPT (the checkpoint's own processor: DPT-Hybrid resizes to 384 and
normalises with mean 0.5 / std 0.5), and the prediction is upsampled bicubically with
align_corners=True to the output size. DPT predicts relative inverse depth (disparity, near =
large); the file stores it min-max normalised inside the mask (see `normals.py`). Make-It-3D's
median filter and 1/disparity are for its loss and are left to the consumer.

Default checkpoint: `Intel/dpt-hybrid-midas` (Apache-2.0), `DEFAULT_MODELS["dpt"]`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .estimator import LoadedModel


class DepthEstimator(LoadedModel):
    loader_name = "load_dpt"
    default_field = "--depth-model"

    @torch.no_grad()
    def disparity(self, rgb_on_white: np.ndarray) -> np.ndarray:
        """rgb float [H, W, 3] in [0, 1] (composited on white) -> relative disparity [H, W]."""
        from PIL import Image

        h, w = rgb_on_white.shape[:2]
        pil = Image.fromarray((np.clip(rgb_on_white, 0, 1) * 255.0 + 0.5).astype(np.uint8), "RGB")
        p = next(self.model.parameters())
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"].to(
            p.device, p.dtype
        )
        pred = self.model(pixel_values=pixels).predicted_depth.float()  # [1, h', w']
        up = F.interpolate(pred[:, None], size=(h, w), mode="bicubic", align_corners=True)[0, 0]
        return up.cpu().numpy().astype(np.float64)
