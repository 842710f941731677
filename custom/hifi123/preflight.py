"""Checks of the weights and files a stage's config names, before anything is built or loaded.

Each failure is an InputError / ModelNotFoundError naming the config field, what is missing and
the command that fixes it. Used by our threestudio systems (`configure` for the geometry's files and
the chained checkpoint, before the guidances are built for the models); threestudio-free.

What threestudio stages need beyond pip packages (README "Install" lists them):

* `load/tets/<N>_tets.npz` for DMTet (`tetrahedra-sdf-grid`) and for marching-tets mesh export of
  an implicit volume, N = `isosurface_resolution`, relative to the threestudio root (32, 64 and 128
  ship with threestudio's repository);
* Zero-1-to-3 checkpoints under `load/zero123/` (`zero123-guidance`, `stable-zero123-guidance`);
* hub models (DeepFloyd IF is gated: accept its licence and log in), or local folders.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

from .errors import InputError, ModelNotFoundError

TETS = "load/tets/{res}_tets.npz"
SHIPPED_TETS = (32, 64, 128)
ZERO123_DOWNLOAD = {
    "zero123-guidance": (
        "cd load/zero123 && wget https://zero123.cs.columbia.edu/assets/zero123-xl.ckpt"
    ),
    "stable-zero123-guidance": (
        "accept the licence of stabilityai/stable-zero123 on the hub, then "
        "`huggingface-cli download stabilityai/stable-zero123 stable_zero123.ckpt --local-dir "
        "load/zero123`"
    ),
}
GATED = {
    "DeepFloyd/IF-I-XL-v1.0": "https://huggingface.co/DeepFloyd/IF-I-XL-v1.0",
    "DeepFloyd/IF-I-L-v1.0": "https://huggingface.co/DeepFloyd/IF-I-L-v1.0",
    "DeepFloyd/IF-I-M-v1.0": "https://huggingface.co/DeepFloyd/IF-I-M-v1.0",
}
#: threestudio components that load a diffusers pipeline from `pretrained_model_name_or_path`
HUB_COMPONENTS = (
    "stable-diffusion-guidance",
    "stable-diffusion-unified-guidance",
    "stable-diffusion-vsd-guidance",
    "stable-diffusion-prompt-processor",
    "deep-floyd-guidance",
    "deep-floyd-prompt-processor",
)


def check_tets(resolution: Any, field: str) -> str:
    """`load/tets/<resolution>_tets.npz` exists relative to the working directory."""
    path = TETS.format(res=int(resolution))
    if os.path.isfile(path):
        return path
    if int(resolution) in SHIPPED_TETS:
        fix = (
            "run launch.py from the threestudio root (the folder holding load/); the file ships "
            f"with threestudio's repository: restore it with `git checkout -- {path}` there"
        )
    else:
        fix = (
            f"set {field} to one of {SHIPPED_TETS}, or generate the grid with threestudio's "
            "load/tets/generate_tets.py (needs the quartet tool)"
        )
    raise InputError(
        f"{field}={resolution} needs {os.path.abspath(path)}, which does not exist",
        "a tetrahedral grid file in load/tets/ of the threestudio root",
        fix,
    )


def check_chained_checkpoint(path: str, field: str) -> None:
    """An earlier stage's checkpoint inside its intact trial folder (threestudio reads
    `<ckpt dir>/../configs/parsed.yaml` next to it)."""
    parsed = os.path.join(os.path.dirname(path), "..", "configs", "parsed.yaml")
    if not os.path.isfile(path):
        raise InputError(
            f"{field}={path}: no such checkpoint",
            "the ckpts/last.ckpt of the earlier stage's trial",
            "run the earlier stage first, or pass its <trial>/ckpts/last.ckpt "
            "(or <dir>/<tag>@LAST/ckpts/last.ckpt for the newest finished one)",
        )
    if not os.path.isfile(parsed):
        raise InputError(
            f"{field}={path}: the trial folder lacks {os.path.normpath(parsed)}",
            "the checkpoint inside its trial folder (ckpts/ next to configs/parsed.yaml)",
            "point at the checkpoint inside the untouched trial folder",
        )


def check_component(kind: str, cfg: Mapping, path: str) -> None:
    """The weights a threestudio component of type `kind` will load (ours check themselves)."""
    model = cfg.get("pretrained_model_name_or_path") if hasattr(cfg, "get") else None
    if kind in ZERO123_DOWNLOAD:
        ckpt = model or ""
        if not os.path.isfile(ckpt):
            raise InputError(
                f"{path}.pretrained_model_name_or_path={ckpt!r}: no such checkpoint",
                f"the {kind} weights (relative to the threestudio root)",
                ZERO123_DOWNLOAD[kind],
            )
        conf = cfg.get("pretrained_config")
        if conf and not os.path.isfile(conf):
            raise InputError(
                f"{path}.pretrained_config={conf!r}: no such file",
                "threestudio's load/zero123/sd-objaverse-finetune-c_concat-256.yaml",
                "run launch.py from the threestudio root",
            )
    elif kind in HUB_COMPONENTS and model:
        from .models.loader import preflight

        extra = None
        if model in GATED:
            extra = (
                f"accept the licence at {GATED[model]} and log in with `huggingface-cli login` "
                "on this machine"
            )
        try:
            preflight(
                str(model), f"{path}.pretrained_model_name_or_path", files=("model_index.json",)
            )
        except ModelNotFoundError as err:
            if extra:
                raise ModelNotFoundError(
                    str(model),
                    f"{path}.pretrained_model_name_or_path",
                    err.what.split(": ", 1)[-1],
                    extra_fix=extra,
                ) from None
            raise


@contextlib.contextmanager
def building(kind: str, path: str) -> Iterator[None]:
    """Turn a hub refusal while threestudio builds `kind` into our error (gated or missing repo)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - only hub access errors are translated
        name = type(err).__name__
        text = str(err)
        if (
            name in ("GatedRepoError", "RepositoryNotFoundError")
            or "401" in text
            or "gated" in text.lower()
        ):
            raise InputError(
                f"{path} ({kind}): the model hub refused access: {text.splitlines()[0][:200]}",
                "a model this machine may download (gated models need an accepted licence and a "
                "login)",
                "accept the model's licence on its hub page and run `huggingface-cli login`, or "
                f"point {path}.pretrained_model_name_or_path at a local folder",
            ) from err
        raise
