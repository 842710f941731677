"""The common shape of the preprocessing models: a transformers model with its processor, loaded
(hub id or local directory, with the loader's early, field-naming errors) by one function of
`hifi123.models.loader`."""

from __future__ import annotations

import torch


class LoadedModel:
    #: the `hifi123.models.loader` function that loads (model, processor) for this kind
    loader_name = ""
    #: the CLI flag / config field named in errors when none is given
    default_field = ""

    def __init__(self, model, processor, ref: str = "") -> None:
        self.model = model
        self.processor = processor
        self.ref = ref

    @classmethod
    def load(cls, ref: str, field: str = "", *, device=None, dtype=torch.float32, **kw):
        from ..models import loader

        model, proc = getattr(loader, cls.loader_name)(
            ref, field or cls.default_field, dtype=dtype, device=device
        )
        return cls(model, proc, ref=ref, **kw)
