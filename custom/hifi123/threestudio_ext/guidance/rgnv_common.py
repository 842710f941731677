"""What the RGNV-based guidances share in threestudio: config fields and lazy model loading.

`hifi123-rgnv-guidance` (image loss) and `hifi123-rgsd-guidance` (RGSD) both wrap a core object
built from a `hifi123.core.hifi123.render_guidance.RGNVGuidanceConfig` subclass. Their threestudio `Config`
mirrors those fields (threestudio naming for the reference: `cond_image_path`, `cond_depth_path`),
`configure` validates values and files before any model loads, and the model is loaded lazily on
the first call, on the device of the input (threestudio's `get_device` is CUDA-only and is never
used: `self.device` reports the input's device once known). Both are `BaseObject`s, so the
SD2-depth weights never enter the Lightning checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

import threestudio
import torch
from threestudio.utils.base import BaseObject

from ...core.prompts import find_prompt
from ...models.loader import DEFAULT_MODELS

#: adapter field -> core field, where threestudio's naming differs from ours
RENAMED = {"cond_image_path": "reference_image_path", "cond_depth_path": "reference_depth_path"}
#: core field -> adapter field, for error messages
FIELD_NAMES = {core: ours for ours, core in RENAMED.items()}


@dataclass
class RGNVGuidanceFields(BaseObject.Config):
    """The threestudio mirror of `RGNVGuidanceConfig` (see there for each field's source)."""

    pretrained_model_name_or_path: str = DEFAULT_MODELS["sd2_depth"]  # hub id or local dir
    half_precision_weights: bool = True  # fp16 on CUDA; ignored on CPU
    load_depth_estimator: bool = True  # DPT, for renders/reference without depth
    cond_image_path: str = ""  # reference RGBA (threestudio's zero123 field name); required
    cond_depth_path: Optional[str] = None  # reference disparity map (near bright); else DPT
    num_steps: int = 20  # T (decision 7)
    steps_offset: Optional[int] = 0  # official grid (decision 21; T=20: 950..0); None: the model's
    inject_steps: int = 12  # S (decision 7)
    guidance_scale: float = 7.5  # CFG on the target branch (paper §4.1)
    cfg_form: str = "textbook"  # eps_u + s (eps_c - eps_u) (official RGNV code)
    prompt: str = ""  # target prompt; empty + caption file next to cond_image_path -> the caption
    use_caption_file: bool = True  # read <name>_caption.txt (hifi123 preprocess) when prompt is ""
    negative_prompt: str = ""
    reference_prompt: str = ""  # reference branch unguided (decision 2)
    inject_blocks: List[int] = field(default_factory=lambda: [12, 13, 14, 15])  # decision 2
    mask_reference_depth: bool = True  # paper (decision 4)
    reference_background: str = "texture"  # decision 5
    coarse_background: str = "grey"  # official constant grey
    texture_seed: int = 0
    cache_device: Optional[str] = None  # "cpu" keeps the reference K/V off the GPU
    depth_type: str = "z"  # the depth passed in is "z" (distance) or "disparity"
    depth_weighted_by_opacity: bool = True  # NeRF renderers return sum w_i t_i


class LazyRGNVCore:
    """Mixin for a BaseObject guidance: `core_config()` from the threestudio config, validation in
    `configure`, and the core object loaded on the first call's device (`core_on`)."""

    core_config_cls: type = None  # a RGNVGuidanceConfig subclass
    core_cls: type = None  # has `from_config(cfg, device, field_names)`
    skip_fields = ("use_caption_file",)

    def setup_core(self) -> None:
        self.core_config = self.to_core_config()
        self.core_config.validate(check_files=True, field_names=FIELD_NAMES)
        self.core = None
        self.device = None  # set from the first input; threestudio's get_device is CUDA-only

    def to_core_config(self):
        core_fields = {f.name for f in fields(self.core_config_cls)}
        kw: Dict[str, Any] = {}
        for name in self.Config.__dataclass_fields__:
            if name == "weights" or name in self.skip_fields:
                continue
            value = getattr(self.cfg, name)
            if name == "inject_blocks":
                value = tuple(int(b) for b in value)
            elif name == "fixed_views":
                value = tuple(tuple(float(x) for x in v) for v in value)
            key = RENAMED.get(name, name)
            if key in core_fields:
                kw[key] = value
        prompt, why = find_prompt(kw.get("reference_image_path"), kw.get("prompt"),
                                  getattr(self.cfg, "use_caption_file", False))
        kw["prompt"] = prompt or ""
        if prompt is None:
            threestudio.warn(
                f"{getattr(type(self), '_hifi123_name', type(self).__name__)}: no prompt: {why} (next to "
                "cond_image_path), so the target branch runs with the empty prompt (CFG has no effect). "
                "Set `prompt: \"a photo of ...\"` in this guidance's block, or run "
                "`hifi123 preprocess <image>` to write the caption"
            )
        return self.core_config_cls(**kw)

    def core_on(self, device: torch.device):
        if self.core is None:
            threestudio.info(f"{type(self).__name__}: loading {self.cfg.pretrained_model_name_or_path} on {device}")
            self.core = self.core_cls.from_config(self.core_config, device, FIELD_NAMES)
        elif self.core_device() != device:
            self.move_core(device)
        self.device = device
        return self.core

    def core_device(self) -> torch.device:
        raise NotImplementedError

    def move_core(self, device: torch.device) -> None:
        raise NotImplementedError
