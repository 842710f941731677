"""Single-image datamodules that extend threestudio's (`threestudio/data/image.py`, `uncond.py`).

* :class:`DeviceSafeSingleImageDataModule` (not registered): threestudio's single-image datamodule
  with one change, the device of the reference tensors is the `device` field (None: `cuda:<rank>`
  when CUDA is available, else CPU) instead of a hard-wired `.to(rank)`. Lightning moves batches
  to the model's device anyway, so CPU tensors are correct everywhere.
* `makeit3d-single-image-datamodule`: adds Make-It-3D's progressive cameras to the random views
  (decision 16; algorithms.md C.3). The pure schedule math is in `hifi123.core.makeit3d.cameras`:

  - relative azimuth in +-`phase1_azimuth_half_range` (45) around the reference azimuth
    (`default_azimuth_deg`) for the first `progressive_fraction` (0.4) of `max_steps`, then
    +-`phase2_azimuth_half_range` (180, i.e. 360 deg);
  - `azimuth_sampling`: "uniform" over that range, or "makeit3d" for the official mixture (one
    component per batch; with batch size 1, as Make-It-3D, exactly the official sampler);
  - the FOV jitter (15-25 deg), elevation and distance ranges are threestudio's own
    `random_camera` fields (`fovy_range`, `elevation_range`, `camera_distance_range`);
    `random_camera.azimuth_range` is replaced by the schedule, and threestudio's
    `progressive_until` interpolation is not used.

  The 25% reference iterations are the system's business (`reference_schedule` of
  `hifi123.threestudio_ext.systems.base.ImageConditionedSystem`): every training batch carries the
  reference view AND a random view, as in threestudio.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from threestudio.data.image import (
    SingleImageDataModule,
    SingleImageDataModuleConfig,
    SingleImageDataset,
    SingleImageIterableDataset,
)
from threestudio.data.uncond import RandomCameraDataModuleConfig, RandomCameraIterableDataset
from threestudio.utils.config import parse_structured

from ...core.makeit3d.cameras import (
    AZIMUTH_SAMPLING,
    mixture_components,
    pick_component,
    progressive_half_range,
)
from ...core.settings import check_ranges, setting
from ..registry import register


def resolve_data_device(device: Optional[str], rank: int) -> str:
    if device:
        return device
    return f"cuda:{rank}" if torch.cuda.is_available() else "cpu"


class _DeviceFromConfig:
    """Mixin for threestudio's `SingleImageDataBase`: load the images onto the configured device.

    threestudio's `load_images` ends with `.to(self.rank)`; we run it with `self.rank` temporarily
    set to the resolved device (a string `.to()` accepts)."""

    def load_images(self):
        rank = self.rank
        self.rank = resolve_data_device(getattr(self.cfg, "device", None), rank)
        try:
            super().load_images()
        finally:
            self.rank = rank


@dataclass
class DeviceSafeSingleImageDataModuleConfig(SingleImageDataModuleConfig):
    device: Optional[str] = None  # None: cuda:<rank> if available, else cpu


class DeviceSafeSingleImageIterableDataset(_DeviceFromConfig, SingleImageIterableDataset):
    pass


class DeviceSafeSingleImageDataset(_DeviceFromConfig, SingleImageDataset):
    pass


class DeviceSafeSingleImageDataModule(SingleImageDataModule):
    """threestudio's single-image datamodule with a configurable data device. Subclasses set
    `Config` and may override `make_train_dataset`."""

    Config = DeviceSafeSingleImageDataModuleConfig
    train_dataset_cls = DeviceSafeSingleImageIterableDataset
    eval_dataset_cls = DeviceSafeSingleImageDataset

    def __init__(self, cfg: Optional[Any] = None) -> None:
        # the parent would parse with its own (smaller) config
        pl.LightningDataModule.__init__(self)
        if cfg is not None and hasattr(cfg, "keys"):  # one clear error before threestudio's parse
            from ...errors import check_config_keys, check_config_numbers, check_config_types

            owner = getattr(type(self), "_hifi123_name", type(self).__name__)
            check_config_keys(cfg, self.Config.__dataclass_fields__, "data", owner)
            check_config_numbers(cfg, "data", owner)
            check_config_types(self.Config, cfg, "data", owner)
            camera = cfg.get("random_camera") or {}
            check_config_keys(
                camera,
                RandomCameraDataModuleConfig.__dataclass_fields__,
                "data.random_camera",
                "threestudio's random-camera views",
            )
            check_config_types(
                RandomCameraDataModuleConfig,
                camera,
                "data.random_camera",
                "threestudio's random-camera views",
            )
        self.cfg = parse_structured(self.Config, cfg)
        self.validate()

    def validate(self) -> None:
        """The reference image (and the depth / normal maps the config asks for) are checked before
        anything loads: RGBA with an alpha that cuts the object out, square, single-channel
        depth."""
        from ...core.images import load_depth, load_rgba
        from ...errors import InputError

        c = self.cfg
        rgba = load_rgba(c.image_path, role="data.image_path")
        for wanted, suffix in (
            (c.requires_depth, "_depth.png"),
            (c.requires_normal, "_normal.png"),
        ):
            if not wanted:
                continue
            path = c.image_path.replace("_rgba.png", suffix)
            if not os.path.isfile(path):
                raise InputError(
                    f"data.requires_{suffix[1:-4]} is true but {path} does not exist",
                    f"{suffix[1:]} next to data.image_path (threestudio replaces _rgba.png by "
                    f"{suffix})",
                    "run `hifi123 preprocess <photo>` (writes it), or set "
                    f"data.requires_{suffix[1:-4]}=false and its loss weight to 0",
                )
            if suffix == "_depth.png":
                load_depth(path, rgba.shape[:2], role="the depth map of data.image_path")

    def setup(self, stage=None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = self.train_dataset_cls(self.cfg, "train")
        if stage in (None, "fit", "validate"):
            self.val_dataset = self.eval_dataset_cls(self.cfg, "val")
        if stage in (None, "test", "predict"):
            self.test_dataset = self.eval_dataset_cls(self.cfg, "test")


@register("hifi123-single-image-datamodule")
class HiFi123SingleImageDataModule(DeviceSafeSingleImageDataModule):
    """threestudio's `single-image-datamodule`, same fields plus `device` (None: cuda:<rank> when
    available, else cpu), so the HiFi-123 stages also run on CPU in tests."""


# ------------------------------------------------------------------------------- Make-It-3D


@dataclass
class MakeIt3DSingleImageDataModuleConfig(DeviceSafeSingleImageDataModuleConfig):
    # the run length the progressive fraction refers to (${trainer.max_steps})
    max_steps: int = setting(5000, ge=1, hint="the shipped configs set it to ${trainer.max_steps}")
    # official: 2000 of 5000 iterations in phase 1
    progressive_fraction: float = setting(0.4, ge=0.0, le=1.0)
    # official phase 1: phi in [135, 225]
    phase1_azimuth_half_range: float = setting(45.0, ge=0.0, le=180.0)
    # official phase 2: phi in [0, 360]
    phase2_azimuth_half_range: float = setting(180.0, ge=0.0, le=180.0)
    azimuth_sampling: str = "uniform"  # uniform | makeit3d (official mixture)


class MakeIt3DRandomCameraIterableDataset(RandomCameraIterableDataset):
    """threestudio's random-view generator with the progressive azimuth schedule."""

    def __init__(self, cfg: Any, schedule: MakeIt3DSingleImageDataModuleConfig) -> None:
        self.schedule = schedule
        self.reference_azimuth = float(schedule.default_azimuth_deg)
        self.half_range = 0.0
        super().__init__(cfg)
        self.progressive_view(0)

    def progressive_view(self, global_step: int) -> None:  # called by threestudio's update_step
        s = self.schedule
        self.half_range = progressive_half_range(
            global_step,
            s.max_steps,
            s.progressive_fraction,
            s.phase1_azimuth_half_range,
            s.phase2_azimuth_half_range,
        )
        self.elevation_range = self.cfg.elevation_range
        self.azimuth_range = [
            self.reference_azimuth - self.half_range,
            self.reference_azimuth + self.half_range,
        ]

    def collate(self, batch) -> dict:
        lo, hi = pick_component(
            mixture_components(self.half_range, self.schedule.azimuth_sampling), random.random()
        )
        self.azimuth_range = [self.reference_azimuth + lo, self.reference_azimuth + hi]
        return super().collate(batch)


class _MakeIt3DTrainDataset(DeviceSafeSingleImageIterableDataset):
    def setup(self, cfg, split):
        super().setup(cfg, split)
        if self.cfg.use_random_camera and split == "train":
            rc = parse_structured(RandomCameraDataModuleConfig, self.cfg.get("random_camera", {}))
            self.random_pose_generator = MakeIt3DRandomCameraIterableDataset(rc, self.cfg)


@register("makeit3d-single-image-datamodule")
class MakeIt3DSingleImageDataModule(DeviceSafeSingleImageDataModule):
    Config = MakeIt3DSingleImageDataModuleConfig
    train_dataset_cls = _MakeIt3DTrainDataset

    def validate(self) -> None:
        super().validate()
        from ...errors import InputError

        c = self.cfg
        if c.azimuth_sampling not in AZIMUTH_SAMPLING:
            raise InputError(
                f"data.azimuth_sampling={c.azimuth_sampling!r}",
                f"one of {list(AZIMUTH_SAMPLING)}",
                f"set data.azimuth_sampling to one of {list(AZIMUTH_SAMPLING)}",
            )
        # max_steps: ${trainer.max_steps}
        check_ranges(c, MakeIt3DSingleImageDataModuleConfig, "data")
