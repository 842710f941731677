"""CLIP image/text encoders with gradients, from open_clip or transformers, behind one interface.

Used by Make-It-3D's CLIP-D and raw-render CLIP losses (decision 14: open_clip ViT-B-16 with the
OpenAI weights, the official code's CLIP ViT-B/16). Two backends, chosen by a config field:

``open_clip``
    `model` is an open_clip built-in architecture name (``ViT-B-16-quickgelu``), an
    ``hf-hub:ORG/REPO`` id, ``local-dir:/path`` or a plain directory holding
    ``open_clip_config.json`` (+ weights). `pretrained` is a pretrained tag (``openai``) or a local
    checkpoint file, for built-in names only. The OpenAI weights were trained with QuickGELU:
    ``ViT-B-16-quickgelu`` is the right architecture, and with tag ``openai`` QuickGELU is forced
    for plain ``ViT-B-16`` too (open_clip itself only warns and then computes the wrong activation).
``transformers``
    `model` is a hub id or a `save_pretrained` directory of a `CLIPModel`
    (``openai/clip-vit-base-patch16`` holds the same OpenAI weights), loaded through
    :func:`hifi123.models.loader.load_clip`. `pretrained` must be empty.

Images go in as [B,3,H,W] in [0,1]; they are resized (bilinear, antialiased) to the model's input
size WITHOUT cropping (the official code resizes to 224x224; our inputs are square) and normalised
with the model's mean/std. Embeddings come out L2-normalised. Gradients flow through the image
path; the weights are frozen.

`preflight_clip` checks a reference without loading anything and raises `ModelNotFoundError`
naming the config field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import ModelNotFoundError
from . import loader
from .loader import _wrap_load_error, clip_image_embeds, clip_text_embeds, is_offline, preflight

CLIP_BACKENDS = ("open_clip", "transformers")
#: decision 14 (open_clip names)
DEFAULT_OPEN_CLIP = ("ViT-B-16-quickgelu", "openai")
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class ClipEncoder:
    """A frozen CLIP with differentiable `encode_image` and a `encode_text` (both normalised)."""

    backend: str
    model: Any
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    _image_fn: Callable[[torch.Tensor], torch.Tensor]
    _text_fn: Callable[[List[str], torch.device], torch.Tensor]
    resize: str = "bilinear"  # to the input size: bilinear (training losses) or bicubic (metrics)
    description: str = ""  # what was loaded, for reports

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device) -> "ClipEncoder":
        self.model.to(device)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> normalised [B,3,S,S] at the model's input size (differentiable)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP expects [B,3,H,W] images in [0,1], got {tuple(images.shape)}")
        x = images.to(self.device, self.dtype)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode=self.resize,
                align_corners=False,
                antialias=True,
            )
            if self.resize == "bicubic":  # bicubic overshoots; bilinear stays in [0, 1]
                x = x.clamp(0, 1)
        mean = torch.as_tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.as_tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        emb = self._image_fn(self.preprocess(images)).float()
        return F.normalize(emb, dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        emb = self._text_fn(list(texts), self.device).float()
        return F.normalize(emb, dim=-1)


# ------------------------------------------------------------------------------------ open_clip


def _open_clip_location(model: str) -> Optional[str]:
    """The `local-dir:` form of a directory reference, else None."""
    if model.startswith("local-dir:"):
        return model
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return "local-dir:" + os.path.abspath(path)
    return None


def parse_clip_reference(ref: str, field: str) -> Tuple[str, str, Optional[str]]:
    """The one-string form of a CLIP reference (the evaluation's ``--clip-model``) as
    (backend, model, pretrained): ``open_clip:NAME/TAG`` (a built-in architecture and its
    pretrained tag), ``hf-hub:ORG/REPO`` or a directory with ``open_clip_config.json`` (open_clip),
    a directory with ``config.json`` or any other value (a transformers hub id or directory)."""
    if not ref:
        raise ModelNotFoundError(str(ref), field, "no model given (empty value)")
    if ref.startswith("open_clip:"):
        body = ref[len("open_clip:") :]
        if "/" not in body:
            raise ModelNotFoundError(
                ref,
                field,
                "an open_clip reference needs NAME/TAG",
                extra_fix=(
                    f"write it as {field} open_clip:{DEFAULT_OPEN_CLIP[0]}/{DEFAULT_OPEN_CLIP[1]}"
                ),
            )
        name, tag = body.split("/", 1)
        return "open_clip", name, tag
    if ref.startswith("hf-hub:"):
        return "open_clip", ref, None
    path = os.path.expanduser(ref[len("local-dir:") :] if ref.startswith("local-dir:") else ref)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "open_clip_config.json")):
            return "open_clip", path, None
        if os.path.isfile(os.path.join(path, "config.json")):
            return "transformers", path, None
        raise ModelNotFoundError(
            ref, field, f"the directory {path} has neither open_clip_config.json nor config.json"
        )
    return "transformers", ref, None


def preflight_clip(
    backend: str,
    model: str,
    pretrained: Optional[str],
    field: str = "clip_model",
    pretrained_field: str = "clip_pretrained",
) -> None:
    """Validate a CLIP reference without loading it (see the module docstring)."""
    if backend not in CLIP_BACKENDS:
        raise ValueError(
            f"{field.rsplit('_', 1)[0]}_backend must be one of {CLIP_BACKENDS}, got {backend!r}"
        )
    if not model:
        raise ModelNotFoundError(str(model), field, "no model given (empty value)")
    if backend == "transformers":
        if pretrained:
            raise ModelNotFoundError(
                model,
                pretrained_field,
                f"`{pretrained_field}` ({pretrained!r}) is an open_clip setting; the transformers "
                "backend takes the hub id or directory in `" + field + "` alone",
                extra_fix=f"set {pretrained_field}=null (or clip_backend=open_clip)",
            )
        preflight(model, field, files=("config.json",))
        return
    local = _open_clip_location(model)
    if local is not None:
        d = local[len("local-dir:") :]
        if not os.path.isfile(os.path.join(d, "open_clip_config.json")):
            raise ModelNotFoundError(
                model, field, f"{d} has no open_clip_config.json (open_clip's save layout)"
            )
        if not any(os.path.isfile(os.path.join(d, f)) for f in _OPEN_CLIP_WEIGHTS):
            raise ModelNotFoundError(
                model,
                field,
                f"the open_clip directory {d} has no {' or '.join(_OPEN_CLIP_WEIGHTS)}",
                extra_fix=(
                    "copy the weights next to open_clip_config.json (open_clip's save layout)"
                ),
            )
        return
    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:") :]
        if is_offline() and not loader.hub_file_cached(repo, "open_clip_config.json"):
            raise ModelNotFoundError(
                repo, field, "it is not in the local hub cache and the hub is offline"
            )
        return
    if model.startswith((".", "/", "~")):
        raise ModelNotFoundError(model, field, f"no directory at {os.path.expanduser(model)}")
    import open_clip

    name = model.replace("/", "-")
    if name not in open_clip.list_models():
        raise ModelNotFoundError(
            model,
            field,
            "not an open_clip architecture name",
            extra_fix=(
                f"use a built-in name such as {DEFAULT_OPEN_CLIP[0]} (open_clip.list_models())"
            ),
        )
    if not pretrained:
        raise ModelNotFoundError(
            model,
            pretrained_field,
            "no pretrained weights given: a built-in architecture would be randomly initialised",
            extra_fix=f"set {pretrained_field}={DEFAULT_OPEN_CLIP[1]} or a local checkpoint file",
        )
    if os.path.isfile(os.path.expanduser(pretrained)):
        return
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        if pretrained.startswith((".", "/", "~")) or os.sep in pretrained:
            raise ModelNotFoundError(
                pretrained, pretrained_field, "no checkpoint file at that path"
            )
        raise ModelNotFoundError(
            pretrained,
            pretrained_field,
            f"not a pretrained tag of {name} (known: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'})",
        )
    hub = (cfg.get("hf_hub") or "").strip("/")
    if is_offline() and hub and not any(loader.hub_file_cached(hub, f) for f in _OPEN_CLIP_WEIGHTS):
        raise ModelNotFoundError(
            hub,
            pretrained_field,
            f"the weights of {name}/{pretrained} are not in the local hub cache and the hub is "
            "offline (HF_HUB_OFFLINE=1)",
            extra_fix="fill the hub cache where the hub is reachable (`huggingface-cli download "
            f"{hub}`, then copy ~/.cache/huggingface here), or use a transformers CLIP folder with "
            "the same OpenAI weights (openai/clip-vit-base-patch16)",
        )


def _load_open_clip(model: str, pretrained: Optional[str], field: str, pretrained_field: str):
    import open_clip

    local = _open_clip_location(model)
    kw = {}
    if local is not None or model.startswith("hf-hub:"):
        name = local or model
        tok_name = name
    else:
        name = model.replace("/", "-")
        tok_name = name
        pre = os.path.expanduser(pretrained) if pretrained else None
        kw["pretrained"] = pre
        if pretrained == "openai":
            kw["force_quick_gelu"] = True  # the OpenAI weights use QuickGELU (see module docstring)
    try:
        clip = open_clip.create_model(name, **kw)
        tokenizer = open_clip.get_tokenizer(tok_name)
    except (OSError, RuntimeError, ValueError) as err:
        raise _wrap_load_error(
            model, field if "pretrained" not in kw else pretrained_field, err
        ) from err
    pcfg = open_clip.get_model_preprocess_cfg(clip)
    size = pcfg.get("size", getattr(clip.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pcfg.get("std", open_clip.OPENAI_DATASET_STD))

    def text_fn(texts: List[str], device) -> torch.Tensor:
        return clip.encode_text(tokenizer(texts).to(device))

    return clip, size, mean, std, clip.encode_image, text_fn


def _load_transformers_clip(model: str, field: str, dtype):
    from .loader import load_clip

    clip, proc = load_clip(model, field, dtype=dtype)
    size = int(clip.config.vision_config.image_size)
    ip = proc.image_processor
    tok = proc.tokenizer
    max_len = min(
        int(getattr(tok, "model_max_length", 77) or 77),
        int(clip.config.text_config.max_position_embeddings),
    )

    def image_fn(pixels: torch.Tensor) -> torch.Tensor:
        return clip_image_embeds(clip, pixels)

    def text_fn(texts: List[str], device) -> torch.Tensor:
        t = tok(
            texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        )
        return clip_text_embeds(clip, t.input_ids.to(device), t.attention_mask.to(device))

    return clip, size, tuple(ip.image_mean), tuple(ip.image_std), image_fn, text_fn


def load_clip_encoder(
    backend: str,
    model: str,
    pretrained: Optional[str] = None,
    *,
    field: str = "clip_model",
    pretrained_field: str = "clip_pretrained",
    device=None,
    dtype: torch.dtype = torch.float32,
    resize: str = "bilinear",
) -> ClipEncoder:
    """Load a frozen CLIP encoder (see the module docstring for the reference forms)."""
    preflight_clip(backend, model, pretrained, field, pretrained_field)
    if backend == "open_clip":
        clip, size, mean, std, image_fn, text_fn = _load_open_clip(
            model, pretrained, field, pretrained_field
        )
        clip = clip.to(dtype=dtype)
        description = f"open_clip {model}" + (f" / {pretrained}" if pretrained else "")
    else:
        clip, size, mean, std, image_fn, text_fn = _load_transformers_clip(model, field, dtype)
        vision = clip.config.vision_config
        description = (
            f"transformers CLIPModel ({vision.hidden_size}-d vision, patch {vision.patch_size})"
        )
    clip.requires_grad_(False).eval().to(device or "cpu")
    return ClipEncoder(backend, clip, size, mean, std, image_fn, text_fn, resize, description)
