"""Make-It-3D, threestudio-free (Tang et al., ICCV 2023; algorithms.md C and D).

Coarse stage:

* `prior`     SDS at large t + CLIP-D at small t on novel views (paper §3.2 Eq. 3-4), and the
              official raw-render CLIP terms.
* `depth`     the depth prior: 1 - Pearson inside the eroded mask (Eq. 5).
* `cameras`   progressive azimuth ranges, back views, the official azimuth mixture, the 25%
              reference-view schedule (§3.2 "progressive training", §4.1 "camera setting").
* `reference` the caption file and the reference image as CLIP sees it.

Refine stage:

* `pointcloud`    the textured point cloud built from the coarse model's views (§3.3).
* `point_raster`  the multi-scale point rasteriser with front-to-back compositing.
* `deferred_unet` the gated-convolution U-Net that renders the rasterised descriptors.
* `point_refine`  the refine losses (reference L1, texture regulariser, background, contextual).
* `point_export`  PLY, renderer weights and the save layout.

The threestudio adapters live in `hifi123.threestudio_ext` (`makeit3d-guidance`,
`makeit3d-system`, `makeit3d-single-image-datamodule`).
"""

from .cameras import (  # noqa: F401
    ReferenceSchedule,
    azimuth_range,
    is_back_view,
    mixture_components,
    progressive_half_range,
    relative_azimuth,
    sample_relative_azimuth,
)
from .depth import pearson_correlation, pearson_depth_loss  # noqa: F401
from .prior import (  # noqa: F401
    TERMS,
    MakeIt3DPrior,
    MakeIt3DPriorConfig,
    build_prior_from_models,
    select_clip_d,
)
from .reference import (  # noqa: F401
    composite_reference,
    reference_on_white,
    reference_rgba,
)
