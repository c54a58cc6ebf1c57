"""The method registry: one entry per attribution method or baseline, its defaults stated once.

Like zennit's composite registry, a name maps to an implementation. Methods that share forward /
backward passes belong to a *family*; the family function computes any subset of its members
from one set of passes, which is how :func:`nipype_xai.attribution.attribute_many` saves work.

Each entry has a *kind*: ``"method"`` (an attribution method, ``fn(model, x, target, **params)``)
or ``"baseline"`` (a model-free map a method must beat, ``fn(x, **params)``; SPEC §3). Every
list of methods or baselines in the package is read from here.

This module imports no implementation (no cycle): the implementation modules import it and
register themselves, and :mod:`nipype_xai.attribution.engine` imports them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

#: ``fn(model, x, target, **params) -> Tensor`` for a single method, where ``target`` is a
#: ``LongTensor`` of shape (B,) (one class per sample) or ``None`` for a single-output model.
MethodFunction = Callable[..., torch.Tensor]
#: ``fn(model, x, target, names, **params) -> dict[name, Tensor]`` for a family of methods.
FamilyFunction = Callable[..., "dict[str, torch.Tensor]"]
#: ``fn(x, **params) -> Tensor``: a baseline map of the input alone, the shape of ``x``.
BaselineFunction = Callable[..., torch.Tensor]

#: The kinds of registry entry.
KINDS: tuple[str, ...] = ("method", "baseline")
_LABELS = {"method": "attribution method", "baseline": "baseline"}


@dataclass(frozen=True)
class Method:
    """An attribution method (or a baseline, ``kind="baseline"``) as the registry knows it.

    ``row`` is the method's row in the SPEC §3 table: the order every list of methods follows
    (baselines are numbered among themselves, in the order SPEC §3 lists them).
    ``defaults`` are read from the implementing function's signature (its keyword-only
    parameters), so each default is stated once, where the function is.
    """

    name: str
    row: int
    defaults: Mapping[str, Any]
    description: str
    reference: str
    stochastic: bool = False
    family: Optional[str] = None
    function: Optional[MethodFunction] = field(default=None, repr=False)
    kind: str = "method"


_METHODS: dict[str, Method] = {}
_FAMILIES: dict[str, FamilyFunction] = {}


def signature_defaults(fn: Callable[..., Any], internal: Sequence[str] = ()) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` and their defaults, less ``internal`` ones.

    Raises
    ------
    TypeError
        A keyword-only parameter has no default: the registry could not say what it is.
    """
    defaults = {}
    for name, parameter in inspect.signature(fn).parameters.items():
        if parameter.kind is not parameter.KEYWORD_ONLY or name in internal:
            continue
        if parameter.default is parameter.empty:
            raise TypeError(f"{fn.__qualname__}: keyword-only parameter {name!r} needs a default "
                            "(the registry reads every method's defaults from its signature)")
        defaults[name] = parameter.default
    return defaults


def register_method(
    name: str,
    *,
    row: int,
    description: str,
    reference: str,
    stochastic: bool = False,
) -> Callable[[MethodFunction], MethodFunction]:
    """Register ``fn(model, x, target, *, **params) -> Tensor`` under ``name``.

    Its keyword-only parameters, each with its default (``seed`` and ``batch_size`` included
    where they apply), are the parameters :func:`attribute` accepts; others are rejected.
    """

    def decorator(fn: MethodFunction) -> MethodFunction:
        _add(Method(name, row, signature_defaults(fn), description, reference, stochastic, None,
                    fn))
        return fn

    return decorator


def register_baseline(
    name: str,
    *,
    row: int,
    description: str,
    reference: str,
) -> Callable[[BaselineFunction], BaselineFunction]:
    """Register the model-free baseline ``fn(x, *, **params) -> Tensor`` under ``name``.

    Its keyword-only parameters and their defaults are the baseline's parameters, as for a method.
    """

    def decorator(fn: BaselineFunction) -> BaselineFunction:
        _add(Method(name, row, signature_defaults(fn), description, reference, function=fn,
                    kind="baseline"))
        return fn

    return decorator


def register_family(
    family: str,
    members: Mapping[str, Mapping[str, Any]],
    *,
    stochastic: bool = False,
    internal: Sequence[str] = (),
) -> Callable[[FamilyFunction], FamilyFunction]:
    """Register ``fn(model, x, target, names, *, **params) -> dict`` computing several methods
    from shared passes.

    ``members`` maps each method name to ``{"row": ..., "description": ..., "reference": ...}``;
    all members share the function's keyword-only parameters and defaults, less the
    ``internal`` ones (engine-only switches, not method parameters).
    """

    def decorator(fn: FamilyFunction) -> FamilyFunction:
        if family in _FAMILIES:
            raise ValueError(f"attribution family {family!r} registered twice")
        _FAMILIES[family] = fn
        defaults = signature_defaults(fn, internal)
        for name, info in members.items():
            _add(Method(name, int(info["row"]), dict(defaults), info["description"],
                        info["reference"], stochastic, family, None))
        return fn

    return decorator


def _add(method: Method) -> None:
    if method.kind not in KINDS:
        raise ValueError(f"{method.name!r}: kind {method.kind!r} is not one of {KINDS}")
    if method.name in _METHODS:
        raise ValueError(f"{_LABELS[method.kind]} {method.name!r} registered twice")
    for other in registered_methods(method.kind):
        if other.row == method.row:
            raise ValueError(f"{_LABELS[method.kind]}s {other.name!r} and {method.name!r} share "
                             f"row {method.row}")
    _METHODS[method.name] = method


def get_method(name: str, kind: str = "method") -> Method:
    """Return the registry entry of ``name``, of ``kind``, or raise a ``ValueError`` listing the
    known names of that kind."""
    method = _METHODS.get(name)
    if method is None or method.kind != kind:
        known = ", ".join(sorted(m.name for m in registered_methods(kind)))
        raise ValueError(f"unknown {_LABELS[kind]} {name!r}; available: {known}")
    return method


def get_family(family: str) -> FamilyFunction:
    return _FAMILIES[family]


def registered_methods(kind: str = "method") -> Sequence[Method]:
    """Every registered entry of ``kind`` (attribution methods by default), in the SPEC §3 order
    (``row``)."""
    return tuple(sorted((m for m in _METHODS.values() if m.kind == kind),
                        key=lambda method: method.row))
