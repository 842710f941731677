"""Settings declared once (core/settings.py): the threestudio config derived from a core class
carries every field with its default, reads back into the declared form, and every declared
choice and range is checked."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from typing import Any, List, Literal, Optional, Tuple

import pytest
from hifi123.core.hifi123.rgnv_loss import RGNVLossConfig
from hifi123.core.hifi123.rgsd import RGSDConfig
from hifi123.core.makeit3d.prior import MakeIt3DGuidanceConfig, MakeIt3DPriorConfig
from hifi123.core.settings import (
    check_declared,
    choices,
    derive_config,
    from_config,
    plain_type,
    setting,
)
from omegaconf import OmegaConf

#: every core class an adapter derives its threestudio Config from
ADAPTED = (RGNVLossConfig, RGSDConfig, MakeIt3DGuidanceConfig)


@dataclasses.dataclass
class _Base:
    pass


@dataclasses.dataclass
class _Toy:
    mode: Literal["a", "b"] = "a"
    maybe: Optional[Literal["x", "y"]] = None
    scale: float = setting(1.0, ge=0.0)
    frac: float = setting(0.5, gt=0.0, lt=1.0)
    clip: Optional[float] = setting(None, gt=0.0)
    pairs: Tuple[Tuple[float, float], ...] = ((0.0, 90.0), (1.0, 2.0))
    blocks: Tuple[int, ...] = (1, 2)


def test_plain_types_are_what_omegaconf_accepts():
    assert plain_type(Literal["a", "b"]) is str
    assert plain_type(Optional[Literal[1, 2]]) == Optional[int]
    assert plain_type(Tuple[int, ...]) == List[int]
    assert plain_type(Tuple[Tuple[float, float], ...]) == List[List[Any]]  # read back as floats
    assert plain_type(Optional[float]) == Optional[float]


@pytest.mark.parametrize("core", ADAPTED + (_Toy,), ids=lambda c: c.__name__)
def test_derived_config_round_trips_to_the_core_defaults(core):
    derived = derive_config(core, _Base, "Derived")
    assert issubclass(derived, _Base)
    assert [f.name for f in dataclasses.fields(derived)] == [
        f.name for f in dataclasses.fields(core)
    ]
    cfg = OmegaConf.structured(derived)  # OmegaConf refuses Literal and tuples: derived has neither
    assert from_config(cfg, core) == core()


def test_values_given_as_lists_and_ints_come_back_in_the_declared_form():
    derived = derive_config(_Toy, _Base, "Derived")
    cfg = OmegaConf.merge(
        OmegaConf.structured(derived), {"pairs": [[10, 20]], "blocks": [3], "scale": 2}
    )
    toy = from_config(cfg, _Toy)
    assert toy.pairs == ((10.0, 20.0),) and isinstance(toy.pairs[0][0], float)
    assert toy.blocks == (3,) and isinstance(toy.blocks, tuple)
    assert toy.scale == 2.0 and isinstance(toy.scale, float)
    # a value passed in replaces the config's (a schedule evaluated at this step)
    assert from_config(cfg, _Toy, {"scale": 0.25}).scale == 0.25


def test_derived_defaults_are_not_shared_between_instances():
    derived = derive_config(_Toy, _Base, "Derived")
    a, b = derived(), derived()
    a.pairs[0][0] = 99.0
    assert b.pairs[0][0] == 0.0 and derived().pairs == [[0.0, 90.0], [1.0, 2.0]]


def test_extra_and_type_overrides():
    derived = derive_config(
        _Toy,
        _Base,
        "Derived",
        extra=[("loss_name", str, "rgsd")],
        types={"scale": Any},
        drop=("clip",),
    )
    names = [f.name for f in dataclasses.fields(derived)]
    assert names[-1] == "loss_name" and "clip" not in names
    cfg = OmegaConf.structured(derived)
    cfg.scale = [0, 0.1, 0.9, 100]  # accepted as a schedule because the type is Any
    assert cfg.loss_name == "rgsd"


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("mode", "c", r"mode must be one of \['a', 'b'\]"),
        ("maybe", "z", "maybe must be one of"),
        ("scale", -1.0, "scale must be finite and >= 0.0"),
        ("scale", math.nan, "scale must be finite"),
        ("scale", math.inf, "scale must be finite"),
        ("scale", True, "scale must be a number"),
        ("scale", "2", "scale must be a number"),
        ("frac", 0.0, "frac must be finite and > 0.0 and < 1.0"),
        ("frac", 1.0, "frac must be finite and > 0.0 and < 1.0"),
        ("clip", 0.0, "clip must be finite and > 0.0"),
    ],
)
def test_declared_choices_and_ranges_are_checked(field, value, message):
    check_declared(_Toy())  # the defaults pass, None included for Optional fields
    with pytest.raises(ValueError, match=message):
        check_declared(dataclasses.replace(_Toy(), **{field: value}))
    # the caller's name for the field is the one shown
    with pytest.raises(ValueError, match=f"system.guidance.{field} must"):
        check_declared(
            dataclasses.replace(_Toy(), **{field: value}), {field: f"system.guidance.{field}"}
        )


def test_real_settings_refuse_what_cannot_be_right():
    assert choices(RGSDConfig, "weighting") == ("uniform", "one_minus_alpha")
    for bad in (
        dict(guidance_scale=math.nan),
        dict(guidance_scale=-1.0),
        dict(num_steps=0),
        dict(mask_dilation_px=-2),
        dict(cfg_form="other"),
        dict(depth_type="zz"),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RGSDConfig(**bad).validate(check_files=False)
    for bad in (
        dict(min_step_percent=-0.1),
        dict(max_step_percent=1.5),
        dict(grad_clip=0.0),
        dict(weighting_strategy="sdss"),
        dict(back_threshold_deg=-1.0),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MakeIt3DPriorConfig(**bad).validate()


@pytest.mark.parametrize("core", ADAPTED, ids=lambda c: c.__name__)
def test_every_setting_has_a_docstring(core):
    """A setting is one edit plus its docstring: each field of every class in the hierarchy is
    followed by a string (the field's documentation) in its class body."""
    documented = set()
    for klass in core.__mro__:
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, nxt in zip(body, body[1:] + [None]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                documented.add(stmt.target.id)
    missing = [f.name for f in dataclasses.fields(core) if f.name not in documented]
    assert not missing, f"{core.__name__}: fields without a docstring: {missing}"


def test_a_non_number_inside_a_list_is_named():
    derived = derive_config(_Toy, _Base, "Derived")
    cfg = OmegaConf.merge(OmegaConf.structured(derived), {"pairs": [[10, "up"]]})
    with pytest.raises(ValueError, match="pairs: expected a number, got 'up'"):
        from_config(cfg, _Toy)
