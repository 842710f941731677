"""Settings declared once: the core dataclass is the only declaration of a component's settings.

A core settings class (`RGSDConfig`, `RGNVLossConfig`, `MakeIt3DGuidanceConfig`, ...) declares
each field once, with its type, default, range and a docstring below it:

* a choice is a ``Literal[...]`` (the allowed values live in the annotation, nowhere else);
* a number that has a range declares it with :func:`setting` (``ge``/``gt``/``le``/``lt``);
* :func:`check_declared` checks every choice and range of an instance (one call per validation).

threestudio's structured configs (OmegaConf) know neither ``Literal`` nor tuples, so the
threestudio ``Config`` of an adapter is *derived* from the core class by :func:`derive_config`
(``Literal`` -> ``str``, ``Tuple[X, ...]`` -> ``List[X]``, defaults copied) and read back with
:func:`from_config` (lists -> tuples as declared). Nothing here imports threestudio.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

_RANGE_KEYS = ("ge", "gt", "le", "lt")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Optional[Callable[[], Any]] = None,
    ge: Optional[float] = None,
    gt: Optional[float] = None,
    le: Optional[float] = None,
    lt: Optional[float] = None,
    hint: str = "",
) -> Any:
    """A dataclass field with a declared numeric range (checked by :func:`check_declared` and
    :func:`check_ranges`); `hint` is added to the fix of an out-of-range value."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"range": bounds, "hint": hint}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def hints(cls: type) -> Dict[str, Any]:
    """The resolved annotations of a dataclass (string annotations evaluated)."""
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def choices(cls: type, name: str) -> Optional[Tuple[Any, ...]]:
    """The allowed values of a ``Literal`` field (through ``Optional``), else None."""
    tp, _ = _strip_optional(hints(cls)[name])
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def literal_values(tp: Any) -> Tuple[Any, ...]:
    """``Literal["a", "b"]`` -> ("a", "b")."""
    return typing.get_args(tp)


def _range_text(bounds: Mapping[str, float]) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{signs[k]} {bounds[k]}" for k in _RANGE_KEYS if k in bounds)


def _in_range(value: float, bounds: Mapping[str, float]) -> bool:
    ops = {
        "ge": value >= bounds.get("ge", -math.inf),
        "gt": value > bounds.get("gt", -math.inf),
        "le": value <= bounds.get("le", math.inf),
        "lt": value < bounds.get("lt", math.inf),
    }
    return all(ops[k] for k in bounds)


def check_declared(
    obj: Any, name_of: Optional[Mapping[str, str]] = None, skip: Iterable[str] = ()
) -> None:
    """Every ``Literal`` field holds one of its values and every ranged number is finite and in
    its range; ValueError naming the field (as the caller calls it: `name_of`) otherwise."""
    names = name_of or {}
    skipped = set(skip)
    for f in dataclasses.fields(obj):
        if f.name in skipped:
            continue
        value = getattr(obj, f.name)
        allowed = choices(type(obj), f.name)
        shown = names.get(f.name, f.name)
        if allowed is not None:
            if value is None and _strip_optional(hints(type(obj))[f.name])[1]:
                continue
            if value not in allowed:
                raise ValueError(f"{shown} must be one of {list(allowed)}, got {value!r}")
        bounds = f.metadata.get("range")
        if bounds and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{shown} must be a number ({_range_text(bounds)}), got {value!r}")
            if not math.isfinite(float(value)) or not _in_range(float(value), bounds):
                raise ValueError(f"{shown} must be finite and {_range_text(bounds)}, got {value!r}")


# ------------------------------------------------------------------ structured-config derivation
def plain_type(tp: Any) -> Any:
    """The OmegaConf-compatible form of an annotation: Literal -> its value type,
    tuples -> lists."""
    inner, optional = _strip_optional(tp)
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        kinds = {type(v) for v in typing.get_args(inner)}
        out: Any = kinds.pop() if len(kinds) == 1 else Any
    elif origin in (tuple, Tuple):
        args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        elem = plain_type(args[0]) if args and all(a == args[0] for a in args) else Any
        if typing.get_origin(elem) in (list, List):
            elem = List[Any]  # OmegaConf 2.3 refuses 90 for a float inside nested lists: read back
        out = List[elem]  # type: ignore[valid-type]
    elif origin in (list, List):
        args = typing.get_args(inner)
        out = List[plain_type(args[0])] if args else List[Any]  # type: ignore[misc]
    else:
        out = inner
    return Optional[out] if optional else out


def _plain_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain_value(v) for v in value]
    return value


def derive_config(
    core_cls: type,
    base: type,
    name: str,
    *,
    extra: Sequence[Tuple[str, Any, Any]] = (),
    types: Optional[Mapping[str, Any]] = None,
    drop: Iterable[str] = (),
) -> type:
    """A dataclass subclass of `base` with every field of `core_cls` (plain types, same defaults),
    minus `drop`, plus `extra` ((name, type, default) of settings only the adapter has).
    `types` overrides a field's type (e.g. ``Any`` where threestudio accepts a schedule)."""
    overrides = dict(types or {})
    dropped = set(drop)
    declared = hints(core_cls)
    specs: List[Tuple[str, Any, Any]] = []
    for f in dataclasses.fields(core_cls):
        if f.name in dropped:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            raise TypeError(f"{core_cls.__name__}.{f.name} has no default")
        specs.append((f.name, overrides.get(f.name, plain_type(declared[f.name])), default))
    specs.extend(extra)
    fields_ = []
    for fname, tp, default in specs:
        plain = _plain_value(default)
        if isinstance(plain, (list, dict)):
            fields_.append(
                (fname, tp, dataclasses.field(default_factory=lambda v=plain: copy.deepcopy(v)))
            )
        else:
            fields_.append((fname, tp, dataclasses.field(default=plain)))
    derived = dataclasses.make_dataclass(name, fields_, bases=(base,))
    derived.__doc__ = (
        f"threestudio form of `{core_cls.__module__}.{core_cls.__qualname__}` "
        "(see there for each field)"
    )
    derived.core_settings = core_cls
    return derived


def as_declared(value: Any, tp: Any) -> Any:
    """A config value (lists, OmegaConf containers) in the declared form (tuples where declared)."""
    inner, _ = _strip_optional(tp)
    origin = typing.get_origin(inner)
    if value is None:
        return None
    if origin in (tuple, Tuple):
        args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        elem = args[0] if args else Any
        return tuple(as_declared(v, elem) for v in value)
    if origin in (list, List):
        args = typing.get_args(inner)
        return [as_declared(v, args[0] if args else Any) for v in value]
    if inner in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"expected a number, got {value!r}")
    if inner is float:
        return float(value)
    return value


def from_config(cfg: Any, core_cls: type, values: Optional[Mapping[str, Any]] = None) -> Any:
    """The core settings from a (derived) config object: every field of `core_cls` read by name,
    converted to its declared form; `values` replaces some (e.g. a schedule evaluated now)."""
    declared = hints(core_cls)
    kw = {}
    for f in dataclasses.fields(core_cls):
        value = values[f.name] if values and f.name in values else getattr(cfg, f.name)
        try:
            kw[f.name] = as_declared(value, declared[f.name])
        except TypeError as err:
            raise ValueError(f"{f.name}: {err} (declared {declared[f.name]})") from None
    return core_cls(**kw)


def check_ranges(values: Any, config_cls: type, path: str) -> None:
    """The declared ranges of `config_cls`'s fields (:func:`setting`) checked on `values` (any
    object or mapping with those attributes, e.g. a parsed threestudio config); an InputError
    naming `path.field`, the range and the default otherwise."""
    for f in dataclasses.fields(config_cls):
        bounds = f.metadata.get("range")
        if not bounds:
            continue
        value = values[f.name] if isinstance(values, Mapping) else getattr(values, f.name, None)
        if value is None:
            continue
        shown = f"{path}.{f.name}"
        wrong_type = isinstance(value, bool) or not isinstance(value, (int, float))
        if wrong_type or not math.isfinite(float(value)) or not _in_range(float(value), bounds):
            from ..errors import InputError

            hint = f.metadata.get("hint")
            raise InputError(
                f"{shown} = {value!r}",
                f"a finite number {_range_text(bounds)}",
                f"set {shown} to a value {_range_text(bounds)} (default: {f.default!r})"
                + (f"; {hint}" if hint else ""),
            )
