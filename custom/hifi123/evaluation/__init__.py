"""Evaluation: both papers' metrics and protocols (`hifi123 eval`).

* `metrics`   pure metric functions (PSNR, SSIM, LPIPS, CLIP cosine, contextual distance, Chamfer,
              voxel down-sampling, volume IoU)
* `geometry`  CPU mesh rasteriser: depth maps -> Chamfer points, ray-parity occupancy -> IoU
* `models`    loaders for the metric models (CLIP, VGG19, LPIPS) + their tiny offline stand-ins
* `views`     reading threestudio trials / image folders / videos, choosing the reference view
* `protocols` the single-view and GSO protocols (settings and runs)
* `report`    JSON + markdown reports, the papers' numbers
* `cli`       `add_parser(subparsers)` for the `hifi123` command
"""
