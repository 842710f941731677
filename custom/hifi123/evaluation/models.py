"""Metric models: CLIP, VGG19 (contextual distance) and LPIPS, through one loader each.

Every model is named by a field (CLI flag / settings field) holding a *reference*. `preflight_*`
checks a reference without loading anything and raises `ModelNotFoundError` naming the field and
the fix; `load_*` loads (and caches per process). Defaults (decisions.md 19):

CLIP (`--clip-model`, default ``open_clip:ViT-B-16-quickgelu/openai``)
    * ``open_clip:NAME/TAG``  open_clip built-in architecture NAME with pretrained tag TAG. The
      OpenAI ViT-B/16 weights need the QuickGELU variant (``ViT-B-16-quickgelu``): open_clip only
      warns when plain ``ViT-B-16`` is combined with the ``openai`` tag and then computes with the
      wrong activation. Weights come from the HF hub repo open_clip names for the tag
      (timm/vit_base_patch16_clip_224.openai), so the HF cache / HF_HUB_OFFLINE rules apply.
    * ``hf-hub:ORG/REPO``     an open_clip repository (open_clip_config.json + weights).
    * a directory with ``open_clip_config.json`` (open_clip's save layout; the tiny model).
    * a transformers CLIP hub id or directory (``config.json``), e.g. openai/clip-vit-base-patch16
      (the same OpenAI weights), loaded by `hifi123.models.loader.load_clip`.
    Images are resized (bicubic, antialiased) to the model's input size (224 for ViT-B/16; they are
    square, so no crop) and normalised with the model's mean/std.

VGG19 for the contextual distance (`--vgg-model`, default ``timm/vgg19.tv_in1k``)
    * a hub id or directory in timm's layout: ``config.json`` (``"architecture": "vgg19"``) +
      ``model.safetensors`` (or ``pytorch_model.bin``) whose ``features.N.*`` tensors follow
      torchvision's VGG19 indexing. timm/vgg19.tv_in1k holds torchvision's ImageNet VGG19 weights,
      the backbone of the contextual-loss libraries (Mechrez et al. used VGG19 too).
    * ``torchvision``: torchvision's own file (vgg19-dcbb9e9d.pth) from the torch hub cache
      ($TORCH_HOME/hub/checkpoints), downloaded there on first use when online.
    The network is cut after the requested layer (relu5_4 = features index 35). Inputs: [0,1] RGB,
    ImageNet mean/std. Our tiny model stores narrow stage widths as ``hifi123_stage_widths``.

LPIPS (`--lpips-model`, default ``torchvision``)
    The `lpips` package's LPIPS v0.1 (its shipped linear heads) on a torchvision backbone (AlexNet
    for the single-view protocol, VGG16 for GSO). ``torchvision`` loads the backbone file
    (alexnet-owt-7be5be79.pth / vgg16-397923af.pth) from the torch hub cache, downloading it on
    first use when online; a directory may hold those same files (copy them from
    ~/.cache/torch/hub/checkpoints on a connected machine). A directory with ``lpips.json``
    ``{"backbone": "random", "seed": S}`` is the tiny offline stand-in: a seeded random backbone
    (the package's `pnet_rand=True`) with the real linear heads.

Tiny models (`--tiny`): `write_tiny_open_clip`, `write_tiny_vgg19`, `write_tiny_lpips` write
seeded, deterministic stand-ins in the layouts above; `ensure_tiny_eval_models()` writes them
once per process into the user cache.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import Hifi123Error, ModelNotFoundError
from ..models.clip_encoder import ClipEncoder, load_clip_encoder, parse_clip_reference
from ..models.clip_encoder import preflight_clip as check_clip
from ..models.loader import is_offline, preflight
from .defaults import DEFAULT_EVAL_MODELS  # noqa: F401 - re-exported

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: torchvision checkpoints (file names in the torch hub cache) and their download URLs
TORCHVISION_FILES = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
}
TORCHVISION_URL = "https://download.pytorch.org/models/{}"
LPIPS_BACKBONES = {"alex": "alexnet", "vgg": "vgg16"}

VGG19_STAGE_LAYERS = (2, 2, 4, 4, 4)
VGG19_WIDTHS = (64, 128, 256, 512, 512)
TINY_SEED = 4321


class WeightsNotFoundError(ModelNotFoundError):
    """A model reference that is not a hub id (torchvision files): its own fix text."""

    def __init__(self, model: str, field: str, reason: str, fix: str):
        self.model = model
        self.field = field
        Hifi123Error.__init__(
            self,
            what=f"model '{model}' (`{field}`) could not be loaded: {reason}",
            expected="a hub id reachable from this machine or cached, a local directory in the "
            "documented layout, or `torchvision` with the checkpoint in the torch hub cache",
            fix=fix,
        )


def _missing(ref: str, field: str, reason: str, tiny_hint: bool = True) -> ModelNotFoundError:
    extra = (
        f"for an offline smoke run pass --tiny (tiny random stand-ins) instead of {field}"
        if tiny_hint
        else None
    )
    return ModelNotFoundError(ref, field, reason, extra_fix=extra)


def _wrap(ref: str, field: str, err: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        ref, field, f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    )


# ------------------------------------------------------------------------------------ caching

_CACHE: Dict[Tuple, Any] = {}


def _cached(key: Tuple, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def clear_cache() -> None:
    _CACHE.clear()


@contextlib.contextmanager
def _skip_init():
    """Make torch.nn.init a no-op while building a network whose weights are overwritten right
    after (torchvision's AlexNet/VGG16 classifiers alone take seconds to initialise on a CPU)."""
    names = [
        "kaiming_uniform_",
        "kaiming_normal_",
        "uniform_",
        "normal_",
        "constant_",
        "zeros_",
        "ones_",
        "xavier_uniform_",
        "xavier_normal_",
        "trunc_normal_",
    ]
    saved = {n: getattr(torch.nn.init, n) for n in names if hasattr(torch.nn.init, n)}
    try:
        for n in saved:
            setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def _seeded_conv_init(module: torch.nn.Module, seed: int) -> None:
    """He-normal conv weights and zero biases from a private generator (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()


def _torchvision_file(arch: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_FILES[arch])


def _preflight_torchvision(ref: str, field: str, arch: str) -> str:
    path = _torchvision_file(arch)
    if not os.path.isfile(path) and is_offline():
        name = {"alexnet": "alexnet", "vgg16": "vgg16", "vgg19": "vgg19"}[arch]
        raise WeightsNotFoundError(
            ref,
            field,
            f"torchvision's {arch} checkpoint is not in the torch hub cache ({path}) and the "
            "machine is offline (HF_HUB_OFFLINE=1)",
            f'on a connected machine run `python -c "import torchvision; torchvision.models.{name}'
            f"(weights='IMAGENET1K_V1')\"` and copy {TORCHVISION_FILES[arch]} to "
            f"{os.path.dirname(path)} (or into a folder you pass as {field}); for an offline "
            "smoke run pass --tiny",
        )
    return path


def _load_torchvision_state(arch: str, path: Optional[str] = None) -> Dict[str, torch.Tensor]:
    path = path or _torchvision_file(arch)
    if os.path.isfile(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    return torch.hub.load_state_dict_from_url(
        TORCHVISION_URL.format(TORCHVISION_FILES[arch]), map_location="cpu"
    )


def _read_weights(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


# ------------------------------------------------------------------------------------ CLIP


def preflight_clip(ref: str, field: str = "--clip-model") -> Tuple[str, str, Optional[str]]:
    """Check a one-string CLIP reference (`models.clip_encoder.parse_clip_reference`) without
    loading it; returns (backend, model, pretrained)."""
    backend, model, pretrained = parse_clip_reference(ref, field)
    try:
        check_clip(backend, model, pretrained, field, field)
    except ModelNotFoundError as err:
        raise _missing(ref, field, err.reason) from err
    return backend, model, pretrained


class ClipEmbedder:
    """Image embeddings for the metrics: the one CLIP wrapper (`models.clip_encoder.ClipEncoder`),
    without gradients, in batches, on the CPU, with the settings the report records."""

    def __init__(self, encoder: ClipEncoder, ref: str):
        self.encoder = encoder
        self.ref = ref

    @property
    def backend(self) -> str:
        return self.encoder.backend

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        out = [
            self.encoder.encode_image(images[i : i + batch_size].float()).cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(out)

    def settings(self) -> Dict[str, Any]:
        e = self.encoder
        return {
            "model": self.ref,
            "backend": e.backend,
            "architecture": e.description,
            "input_size": e.image_size,
            "resize": f"{e.resize}, antialiased (square inputs: no crop)",
            "mean": [round(float(v), 8) for v in e.mean],
            "std": [round(float(v), 8) for v in e.std],
        }


def load_clip_embedder(ref: str, field: str = "--clip-model", device=None) -> ClipEmbedder:
    backend, model, pretrained = preflight_clip(ref, field)
    device = torch.device(device or "cpu")

    def build() -> ClipEmbedder:
        try:
            encoder = load_clip_encoder(
                backend,
                model,
                pretrained,
                field=field,
                pretrained_field=field,
                device=device,
                resize="bicubic",
            )
        except ModelNotFoundError:
            raise
        except (OSError, RuntimeError, ValueError) as err:
            raise _wrap(ref, field, err) from err
        return ClipEmbedder(encoder, ref)

    return _cached(("clip", ref, str(device)), build)


# ------------------------------------------------------------------------------------ VGG19


def vgg19_layer_names() -> List[str]:
    names = []
    for stage, n in enumerate(VGG19_STAGE_LAYERS, 1):
        for k in range(1, n + 1):
            names += [f"conv{stage}_{k}", f"relu{stage}_{k}"]
        names.append(f"pool{stage}")
    return names


class VGG19Features(torch.nn.Module):
    """torchvision-indexed VGG19 `features`, cut after `layer`; input [0,1] RGB (normalised
    here)."""

    def __init__(self, widths: Sequence[int] = VGG19_WIDTHS, layer: str = "relu5_4"):
        super().__init__()
        names = vgg19_layer_names()
        if layer not in names:
            raise ValueError(f"unknown VGG19 layer {layer!r}; one of {', '.join(names)}")
        layers: List[torch.nn.Module] = []
        cin = 3
        for w, n in zip(widths, VGG19_STAGE_LAYERS):
            for _ in range(n):
                layers += [torch.nn.Conv2d(cin, int(w), 3, padding=1), torch.nn.ReLU(inplace=False)]
                cin = int(w)
            layers.append(torch.nn.MaxPool2d(2, 2))
        cut = names.index(layer) + 1
        self.features = torch.nn.Sequential(*layers[:cut])
        self.layer = layer
        self.layer_index = cut - 1
        self.widths = tuple(int(w) for w in widths)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.ref = ""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features((images - self.mean) / self.std)

    def load_features(self, state: Dict[str, torch.Tensor], source: str) -> None:
        own = self.features.state_dict()
        picked = {}
        for k in own:
            for prefix in ("features.", ""):
                if prefix + k in state:
                    picked[k] = state[prefix + k]
                    break
        missing = [k for k in own if k not in picked]
        if missing:
            raise ValueError(
                f"{source} lacks {len(missing)} VGG19 tensors (e.g. features.{missing[0]})"
            )
        bad = [k for k in own if tuple(picked[k].shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(
                f"{source}: features.{bad[0]} has shape {tuple(picked[bad[0]].shape)}, "
                f"expected {tuple(own[bad[0]].shape)} (widths {self.widths})"
            )
        self.features.load_state_dict({k: v.float() for k, v in picked.items()})


_VGG_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class VggRef:
    kind: str  # torchvision | dir | hub
    ref: str
    location: str = ""
    files: Dict[str, str] = field(default_factory=dict)


def preflight_vgg19(ref: str, field: str = "--vgg-model") -> VggRef:
    if not ref:
        raise _missing(str(ref), field, "no model given (empty value)")
    if ref in ("torchvision", "torchvision:vgg19"):
        return VggRef("torchvision", ref, _preflight_torchvision(ref, field, "vgg19"))
    path = os.path.expanduser(ref)
    if os.path.isdir(path):
        cfg = os.path.join(path, "config.json")
        weights = [
            os.path.join(path, f) for f in _VGG_WEIGHTS if os.path.isfile(os.path.join(path, f))
        ]
        weights += [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".pth")]
        if not os.path.isfile(cfg) or not weights:
            raise _missing(
                ref,
                field,
                f"the directory {path} needs config.json and model.safetensors (timm layout)",
            )
        return VggRef("dir", ref, path, {"config": cfg, "weights": weights[0]})
    preflight(ref, field, files=("config.json", "model.safetensors"))
    return VggRef("hub", ref, ref)


def load_vgg19_features(
    ref: str, field: str = "--vgg-model", layer: str = "relu5_4", device=None
) -> VGG19Features:
    r = preflight_vgg19(ref, field)
    device = torch.device(device or "cpu")
    return _cached(("vgg19", ref, layer, str(device)), lambda: _load_vgg(r, field, layer, device))


def _load_vgg(r: VggRef, field: str, layer: str, device) -> VGG19Features:
    try:
        if r.kind == "torchvision":
            widths, state, source = (
                VGG19_WIDTHS,
                _load_torchvision_state("vgg19", r.location),
                r.location,
            )
        else:
            if r.kind == "hub":
                from huggingface_hub import hf_hub_download

                cfg_path = hf_hub_download(r.location, "config.json")
                w_path = hf_hub_download(r.location, "model.safetensors")
            else:
                cfg_path, w_path = r.files["config"], r.files["weights"]
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
            arch = cfg.get("architecture", cfg.get("model_type", ""))
            if arch and arch != "vgg19":
                raise ValueError(f"config.json says architecture {arch!r}, expected 'vgg19'")
            widths = cfg.get("hifi123_stage_widths", VGG19_WIDTHS)
            state, source = _read_weights(w_path), w_path
        with _skip_init():
            net = VGG19Features(widths, layer)
        net.load_features(state, source)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise _wrap(r.ref, field, err) from err
    net.ref = r.ref
    return net.requires_grad_(False).eval().to(device)


# ------------------------------------------------------------------------------------ LPIPS


@dataclass
class LpipsRef:
    kind: str  # torchvision | dir | random
    ref: str
    location: str = ""
    seed: int = 0


def preflight_lpips(ref: str, net: str, field: str = "--lpips-model") -> LpipsRef:
    if net not in LPIPS_BACKBONES:
        raise Hifi123Error(
            f"LPIPS network {net!r} is not supported", "alex or vgg", "use --lpips-net alex|vgg"
        )
    try:
        import lpips  # noqa: F401
    except ImportError as err:
        raise Hifi123Error(
            "LPIPS needs the lpips package", "lpips installed", "pip install lpips"
        ) from err
    arch = LPIPS_BACKBONES[net]
    if not ref:
        raise _missing(str(ref), field, "no model given (empty value)")
    if ref == "torchvision":
        return LpipsRef("torchvision", ref, _preflight_torchvision(ref, field, arch))
    path = os.path.expanduser(ref)
    if not os.path.isdir(path):
        raise _missing(
            ref, field, f"no directory at {path} (LPIPS takes `torchvision` or a directory)"
        )
    marker = os.path.join(path, "lpips.json")
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            cfg = json.load(f)
        if cfg.get("backbone") == "random":
            return LpipsRef("random", ref, path, int(cfg.get("seed", 0)))
    for name in (TORCHVISION_FILES[arch], f"{arch}.pth"):
        if os.path.isfile(os.path.join(path, name)):
            return LpipsRef("dir", ref, os.path.join(path, name))
    raise _missing(
        ref,
        field,
        f"the directory {path} has no {TORCHVISION_FILES[arch]} (torchvision's {arch} checkpoint)",
    )


def load_lpips(ref: str, net: str = "alex", field: str = "--lpips-model", device=None):
    r = preflight_lpips(ref, net, field)
    device = torch.device(device or "cpu")
    return _cached(("lpips", ref, net, str(device)), lambda: _load_lpips(r, net, field, device))


def _load_lpips(r: LpipsRef, net: str, field: str, device):
    import warnings

    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _skip_init():
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    backbone = model.net
    try:
        if r.kind == "random":
            _seeded_conv_init(backbone, r.seed)
        else:
            state = _load_torchvision_state(LPIPS_BACKBONES[net], r.location)
            _load_lpips_backbone(backbone, state, r.location)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise _wrap(r.ref, field, err) from err
    model.requires_grad_(False).eval()
    model.ref = r.ref
    model.backbone_kind = r.kind
    return model.to(device)


def _load_lpips_backbone(
    backbone: torch.nn.Module, state: Dict[str, torch.Tensor], source: str
) -> None:
    """Copy torchvision `features.N.*` tensors into lpips' slices (module names keep N)."""
    target = {}
    for sname, sl in backbone.named_children():
        if not sname.startswith("slice"):
            continue
        for k in sl.state_dict():
            target[f"{sname}.{k}"] = "features." + k
    new = {}
    for tk, sk in target.items():
        if sk not in state:
            raise ValueError(f"{source} lacks {sk}")
        new[tk] = state[sk]
    backbone.load_state_dict(new, strict=True)


# ------------------------------------------------------------------------------------ tiny models


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_tiny_open_clip(out_dir: str) -> None:
    """A tiny seeded open_clip ViT (open_clip_config.json + open_clip_model.safetensors)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    model_cfg = {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 8,
            "heads": 2,
            "layers": 1,
        },
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = CLIP(**model_cfg)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "open_clip_model.safetensors"))
    _write_json(
        os.path.join(out_dir, "open_clip_config.json"),
        {
            "model_cfg": model_cfg,
            "preprocess_cfg": {
                "mean": list(OPENAI_CLIP_MEAN),
                "std": list(OPENAI_CLIP_STD),
                "size": 32,
            },
            "hifi123_note": "tiny seeded random stand-in for open_clip ViT-B-16-quickgelu/openai",
        },
    )


TINY_VGG19_WIDTHS = (4, 8, 16, 16, 16)


def write_tiny_vgg19(out_dir: str) -> None:
    """A tiny seeded VGG19-shaped feature net in timm's layout (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    with _skip_init():
        net = VGG19Features(TINY_VGG19_WIDTHS, layer=vgg19_layer_names()[-1])
    _seeded_conv_init(net, TINY_SEED + 1)
    state = {
        "features." + k: v.detach().contiguous().clone()
        for k, v in net.features.state_dict().items()
    }
    save_file(state, os.path.join(out_dir, "model.safetensors"))
    _write_json(
        os.path.join(out_dir, "config.json"),
        {
            "architecture": "vgg19",
            "hifi123_stage_widths": list(TINY_VGG19_WIDTHS),
            "hifi123_note": "tiny seeded random stand-in for timm/vgg19.tv_in1k (features only)",
        },
    )


def write_tiny_lpips(out_dir: str) -> None:
    """The tiny LPIPS stand-in: a marker for a seeded random backbone + the package's heads."""
    os.makedirs(out_dir, exist_ok=True)
    _write_json(
        os.path.join(out_dir, "lpips.json"),
        {
            "backbone": "random",
            "seed": TINY_SEED + 2,
            "hifi123_note": (
                "lpips v0.1 linear heads (shipped with the package) on a seeded random backbone"
            ),
        },
    )


TINY_EVAL_WRITERS = {
    "open-clip": write_tiny_open_clip,
    "vgg19": write_tiny_vgg19,
    "lpips": write_tiny_lpips,
}


def ensure_tiny_eval_models(out: Optional[str] = None) -> Dict[str, str]:
    """The tiny metric models (written once, into `out` or the shared tiny-model cache of
    `hifi123.models.tiny.ensure_tiny_models`); returns {name: dir}."""
    from ..models.tiny import ensure_tiny_models

    return ensure_tiny_models(out, names=list(TINY_EVAL_WRITERS))


def tiny_model_refs() -> Dict[str, str]:
    d = ensure_tiny_eval_models()
    return {"clip": d["open-clip"], "vgg19": d["vgg19"], "lpips": d["lpips"]}
