"""What the RGNV-based guidances share in threestudio: settings and lazy model loading.

`hifi123-rgnv-guidance` (image loss) and `hifi123-rgsd-guidance` (RGSD) both wrap a core object
built from a `hifi123.core.hifi123.render_guidance.RGNVGuidanceConfig` subclass, which declares
every setting once; their threestudio `Config` is derived from it (`core/settings.py`).
`configure` validates values and files before any model loads, and the model is loaded lazily on
the first call, on the device of the input (threestudio's `get_device` is CUDA-only and is never
used: `self.device` reports the input's device once known). Both are `BaseObject`s, so the
SD2-depth weights never enter the Lightning checkpoint.
"""

from __future__ import annotations

import threestudio
import torch

from ...core.settings import from_config


class LazyRGNVCore:
    """Mixin for a BaseObject guidance: the core settings read from the threestudio config and
    validated in `configure`, and the core object loaded on the first call's device (`core_on`)."""

    core_config_cls: type = None  # a RGNVGuidanceConfig subclass (the Config derives from it)
    core_cls: type = None  # has `from_config(settings, device)`

    def setup_core(self) -> None:
        import dataclasses

        from ...errors import settings_error
        from ...models.loader import preflight

        owner = getattr(type(self), "_hifi123_name", type(self).__name__)
        path = getattr(self, "config_path", "system.guidance")
        try:
            settings = from_config(self.cfg, self.core_config_cls)
            settings.validate(check_files=True)
        except ValueError as err:
            names = [f.name for f in dataclasses.fields(self.core_config_cls)]
            raise settings_error(err, path, owner, names) from None
        # the weights are there (a folder in the diffusers layout, or cached / reachable on the
        # hub): a missing model is an error now, not at the first training step
        subfolders = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
        if settings.load_depth_estimator:
            subfolders += ["depth_estimator", "feature_extractor"]
        preflight(
            settings.pretrained_model_name_or_path,
            f"{path}.pretrained_model_name_or_path",
            subfolders=subfolders,
        )
        self.core_config, no_prompt = settings.with_prompt()
        if no_prompt:
            threestudio.warn(
                f"{getattr(type(self), '_hifi123_name', type(self).__name__)}: no prompt: "
                f"{no_prompt} (next to cond_image_path), so the target branch runs with the "
                "empty prompt (CFG has no "
                'effect). Set `prompt: "a photo of ..."` in this guidance\'s block, or run '
                "`hifi123 preprocess <image>` to write the caption"
            )
        self.core = None
        self.device = None  # set from the first input; threestudio's get_device is CUDA-only

    def core_on(self, device: torch.device):
        if self.core is None:
            threestudio.info(
                f"{type(self).__name__}: loading {self.cfg.pretrained_model_name_or_path} on "
                f"{device}"
            )
            self.core = self.core_cls.from_config(self.core_config, device)
        elif self.core_device() != device:
            self.move_core(device)
        self.device = device
        return self.core

    def core_device(self) -> torch.device:
        raise NotImplementedError

    def move_core(self, device: torch.device) -> None:
        raise NotImplementedError
