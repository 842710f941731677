"""Default metric-model references (decisions.md 19). Kept free of heavy imports so that building
the `hifi123` argument parser does not import torch."""
from typing import Dict

DEFAULT_EVAL_MODELS: Dict[str, str] = {
    # open_clip ViT-B/16 with OpenAI's weights; the QuickGELU variant is the one those weights need
    "clip": "open_clip:ViT-B-16-quickgelu/openai",
    # torchvision's ImageNet VGG19 weights in timm's hub layout (features.N.* as torchvision)
    "vgg19": "timm/vgg19.tv_in1k",
    # lpips v0.1 heads (shipped with the package) on torchvision's AlexNet / VGG16 backbone
    "lpips": "torchvision",
}
