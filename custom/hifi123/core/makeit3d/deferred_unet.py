"""The deferred renderer of Make-It-3D's refine stage: a gated-convolution U-Net over the K point
rasterisations (paper §3.3 "deferred rendering"; official `nerf/unet.py`, after NPBG (Aliev et al.
2020); algorithms.md D.5; decision 17).

Gated block: y = ELU(conv3x3(x)) * sigmoid(conv3x3'(x)) (both convolutions zero-padded by 1, done
as one convolution with twice the output channels), followed by BatchNorm2d in the encoder blocks
and no normalisation in the decoder blocks. With widths (16, 32, 64) and 19-channel inputs
(RGB + 16 features per point) at full, 1/2 and 1/4 resolution:

    start  gated(19 -> 16) on I0                                          16 @ H
    down1  avgpool 2 -> gated(16 -> 13) -> concat I1 (19)                 32 @ H/2
    down2  avgpool 2 -> gated(32 -> 45) -> concat I2 (19)                 64 @ H/4
    up2    bilinear x2 -> conv3x3(64 -> 32) -> concat down1 -> gated(64 -> 32, no norm)   32 @ H/2
    up1    bilinear x2 -> conv3x3(32 -> 16) -> concat start -> gated(32 -> 16, no norm)   16 @ H
    final  conv1x1(16 -> 3) -> sigmoid                                     3 @ H

The official U-Net is never switched to eval mode, so its BatchNorm always normalises with the
statistics of the current (batch-1) image, also for the final renders. `batch_stats_always=True`
(default) reproduces that in train AND eval mode (`track_running_stats=False`), so threestudio's
validation/test (which call `.eval()`) render like training does.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

DESCRIPTOR_DIM = 19  # RGB + 16 learned features per point (M3D utils.py:808)
UNET_WIDTHS = (16, 32, 64)  # [64, 128, 256, 512, 1024] / 4, first three (M3D nerf/unet.py)


class GatedBlock(nn.Module):
    """ELU(conv(x)) * sigmoid(conv'(x)), optionally followed by BatchNorm2d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: bool = True,
        batch_stats_always: bool = True,
    ):
        super().__init__()
        self.out_channels = int(out_channels)
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, 3, padding=1)
        self.norm = (
            nn.BatchNorm2d(out_channels, track_running_stats=not batch_stats_always)
            if norm
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, gate = torch.split(self.conv(x), self.out_channels, dim=1)
        return self.norm(F.elu(feat) * torch.sigmoid(gate))


class DeferredUNet(nn.Module):
    """Gated U-Net taking one descriptor image per scale (`len(widths)` scales, full resolution
    first) and returning an RGB image in (0, 1) at full resolution, [B, 3, H, W]."""

    def __init__(
        self,
        in_channels: int = DESCRIPTOR_DIM,
        widths: Sequence[int] = UNET_WIDTHS,
        out_channels: int = 3,
        batch_stats_always: bool = True,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 1:
            raise ValueError("widths needs at least one entry")
        for i, w in enumerate(widths[1:], 1):
            if w <= in_channels:
                raise ValueError(
                    f"widths[{i}] = {w} must exceed in_channels = {in_channels}: level {i} "
                    f"concatenates the {in_channels}-channel input of scale {i} to a gated block "
                    f"of {w - in_channels} channels"
                )
        self.in_channels = int(in_channels)
        self.widths = tuple(widths)
        bs = batch_stats_always
        self.start = GatedBlock(in_channels, widths[0], norm=True, batch_stats_always=bs)
        self.down = nn.ModuleList(
            GatedBlock(widths[i - 1], widths[i] - in_channels, norm=True, batch_stats_always=bs)
            for i in range(1, len(widths))
        )
        self.up_conv = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i - 1], 3, padding=1) for i in range(len(widths) - 1, 0, -1)
        )
        self.up_gated = nn.ModuleList(
            GatedBlock(2 * widths[i - 1], widths[i - 1], norm=False)
            for i in range(len(widths) - 1, 0, -1)
        )
        self.final = nn.Conv2d(widths[0], out_channels, 1)

    @property
    def n_scales(self) -> int:
        return len(self.widths)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != self.n_scales:
            raise ValueError(f"expected {self.n_scales} scale inputs, got {len(inputs)}")
        for i, x in enumerate(inputs):
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"scale {i} input must be [B, {self.in_channels}, h, w], got {tuple(x.shape)}"
                )
        skips = [self.start(inputs[0])]
        for i, block in enumerate(self.down, 1):
            y = block(F.avg_pool2d(skips[-1], 2))
            skips.append(torch.cat([y, inputs[i]], 1))
        x = skips[-1]
        for j, (conv, gated) in enumerate(zip(self.up_conv, self.up_gated)):
            skip = skips[-2 - j]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = gated(torch.cat([conv(x), skip], 1))
        return torch.sigmoid(self.final(x))
