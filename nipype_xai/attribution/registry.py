"""The method registry: one entry per attribution method, its defaults stated once.

Like zennit's composite registry, a name maps to an implementation. Methods that share forward /
backward passes belong to a *family*; the family function computes any subset of its members
from one set of passes, which is how :func:`nipype_xai.attribution.attribute_many` saves work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

#: ``fn(model, x, target, **params) -> Tensor`` for a single method, where ``target`` is a
#: ``LongTensor`` of shape (B,) (one class per sample) or ``None`` for a single-output model.
MethodFunction = Callable[..., torch.Tensor]
#: ``fn(model, x, target, names, **params) -> dict[name, Tensor]`` for a family of methods.
FamilyFunction = Callable[..., "dict[str, torch.Tensor]"]


@dataclass(frozen=True)
class Method:
    """An attribution method as the registry knows it."""

    name: str
    defaults: Mapping[str, Any]
    description: str
    reference: str
    stochastic: bool = False
    family: Optional[str] = None
    function: Optional[MethodFunction] = field(default=None, repr=False)


_METHODS: dict[str, Method] = {}
_FAMILIES: dict[str, FamilyFunction] = {}


def register_method(
    name: str,
    *,
    defaults: Mapping[str, Any],
    description: str,
    reference: str,
    stochastic: bool = False,
) -> Callable[[MethodFunction], MethodFunction]:
    """Register ``fn(model, x, target, **params) -> Tensor`` under ``name``.

    ``defaults`` lists *every* parameter the method accepts (``seed`` and ``batch_size``
    included where they apply); :func:`attribute` rejects parameters outside it.
    """

    def decorator(fn: MethodFunction) -> MethodFunction:
        _add(Method(name, dict(defaults), description, reference, stochastic, None, fn))
        return fn

    return decorator


def register_family(
    family: str,
    members: Mapping[str, Mapping[str, str]],
    *,
    defaults: Mapping[str, Any],
    stochastic: bool = False,
) -> Callable[[FamilyFunction], FamilyFunction]:
    """Register a family function computing several methods from shared passes.

    ``members`` maps each method name to ``{"description": ..., "reference": ...}``; all members
    share ``defaults``.
    """

    def decorator(fn: FamilyFunction) -> FamilyFunction:
        if family in _FAMILIES:
            raise ValueError(f"attribution family {family!r} registered twice")
        _FAMILIES[family] = fn
        for name, info in members.items():
            _add(
                Method(
                    name,
                    dict(defaults),
                    info["description"],
                    info["reference"],
                    stochastic,
                    family,
                    None,
                )
            )
        return fn

    return decorator


def _add(method: Method) -> None:
    if method.name in _METHODS:
        raise ValueError(f"attribution method {method.name!r} registered twice")
    _METHODS[method.name] = method


def get_method(name: str) -> Method:
    """Return the registry entry of ``name`` or raise a ``ValueError`` listing the known names."""
    _load_implementations()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise ValueError(f"unknown attribution method {name!r}; available: {known}") from None


def get_family(family: str) -> FamilyFunction:
    _load_implementations()
    return _FAMILIES[family]


def registered_methods() -> Sequence[Method]:
    _load_implementations()
    return tuple(_METHODS.values())


def _load_implementations() -> None:
    # Importing the implementation modules fills the registry; done lazily so that
    # ``registry`` itself has no import cycle with them.
    from . import gradient, gradcam, perturbation, propagation  # noqa: F401
