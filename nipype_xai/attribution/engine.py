"""``attribute`` / ``attribute_many``: one call signature for every method (as captum does), and
:class:`AttributionWarning`, how a method says that a map it returns is not what it promises."""

from __future__ import annotations

import numbers
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

#: The methods whose maps :func:`attribute_many` is computing at the moment (empty outside it).
_COMPUTING: ContextVar[tuple[str, ...]] = ContextVar("computing", default=())


class AttributionWarning(UserWarning):
    """A map does not satisfy its method's own axiom on this model (e.g. DeepLIFT's
    summation-to-delta, which fails where the model has a nonlinearity captum has no rule for).

    A method raises it with :func:`warnings.warn` (``warnings.warn(message,
    AttributionWarning)``) and still returns its map; callers decide what to do with it. Raised
    inside :func:`attribute_many`, it knows the map(s) it concerns: ``methods``, the names of
    the methods computed by the call that raised it (one method, or the members of a family
    sharing their passes). ``samples``: the positions in the batch of the samples whose maps it
    concerns (``None``: every sample), so that a batch of subjects gives each the warnings about
    its own map. The ``Attribution`` interface writes it into those maps' sidecars.
    """

    #: Where a message about one sample says which: ``str()`` puts ``sample <position>`` there,
    #: :meth:`naming` the caller's name for the sample (its file, in a batch of subjects).
    SAMPLE = "{sample}"

    def __init__(self, message: str, samples: Optional[Sequence[int]] = None):
        self.samples: Optional[tuple[int, ...]] = None if samples is None else tuple(samples)
        self.template = message
        super().__init__(self.naming(f"sample {self.samples[0]}") if self._one_sample()
                         else message)
        self.methods: tuple[str, ...] = _COMPUTING.get()

    def _one_sample(self) -> bool:
        return self.samples is not None and len(self.samples) == 1

    def naming(self, name: str) -> str:
        """The message with its sample called ``name`` (a message about one sample that says
        which with :attr:`SAMPLE`); any other message as it is."""
        if not self._one_sample():
            return str(self.template)
        return self.template.replace(self.SAMPLE, name)


@contextmanager
def _computing(methods: Sequence[str]) -> Iterator[None]:
    """Name ``methods`` in every :class:`AttributionWarning` raised inside the block."""
    token = _COMPUTING.set(tuple(methods))
    try:
        yield
    finally:
        _COMPUTING.reset(token)


# The implementations register themselves on import (the registry imports none of them). They
# come after AttributionWarning: they import it from here while this module is being imported.
from . import (  # noqa: E402,F401
    cam_variants, gradcam, gradient, occlusion, path, patterns, propagation, shap_gradients,
    surrogate,
)
from .baselines import available_baselines
from .model_state import TargetLike, model_guard, resolve_target
from .precision import PRECISIONS, autocast, check_precision, method_precision
from .registry import get_family, get_method, registered_methods

#: The canonical method names, in the order of the SPEC §3 table (each method's registry row).
METHOD_NAMES: tuple[str, ...] = tuple(method.name for method in registered_methods())


def available_methods() -> list[str]:
    """Names of every attribution method, in the SPEC §3 order."""
    return list(METHOD_NAMES)


def split_methods(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Requested names -> ``(attribution methods, model-free baselines)``, each in the order
    given, repeats dropped.

    Raises
    ------
    ValueError
        An unknown name (the message lists the valid ones), or no name at all.
    """
    requested = list(dict.fromkeys(names))
    if not requested:
        raise ValueError("no attribution method requested")
    methods, baselines = available_methods(), available_baselines()
    unknown = [name for name in requested if name not in methods and name not in baselines]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; methods: {', '.join(methods)}; "
                         f"baselines: {', '.join(baselines)}")
    return ([n for n in requested if n in methods], [n for n in requested if n in baselines])


def method_defaults(method: str) -> dict[str, Any]:
    """The default parameters of ``method`` (a copy)."""
    return dict(get_method(method).defaults)


def resolve_params(
    methods: Sequence[str],
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    **params: Any,
) -> dict[str, dict[str, Any]]:
    """Every parameter each method runs with: its defaults, then ``params`` where it accepts
    them, then its own ``method_params`` -- what :func:`attribute_many` passes, and what
    sidecars record.

    Raises
    ------
    ValueError
        No method, an unknown method, ``method_params`` for a method not requested, or a
        ``batch_size`` that is not a positive integer (the parameter every method shares; each
        method checks its own others).
    TypeError
        A parameter in ``params`` that no requested method accepts (most likely a typo), or one
        in ``method_params`` that its method does not accept.
    """
    names = list(dict.fromkeys(methods))
    if not names:
        raise ValueError("no attribution method requested")
    defaults = {name: get_method(name).defaults for name in names}
    accepted = set().union(*defaults.values())
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TypeError(
            f"parameter(s) {unknown} not accepted by any of {names}; "
            f"accepted: {sorted(accepted)}"
        )
    method_params = {k: dict(v) for k, v in (method_params or {}).items()}
    for name, overrides in method_params.items():
        if name not in defaults:
            raise ValueError(f"method_params given for {name!r}, which was not requested")
        extra = sorted(set(overrides) - set(defaults[name]))
        if extra:
            raise TypeError(f"{name} does not accept {extra}; accepted: {sorted(defaults[name])}")
    resolved = {}
    for name in names:
        values = dict(defaults[name])
        values.update({k: v for k, v in params.items() if k in values})
        values.update(method_params.get(name, {}))
        size = values.get("batch_size")
        if "batch_size" in values and (isinstance(size, bool)
                                       or not isinstance(size, numbers.Integral) or size < 1):
            raise ValueError(f"{name}: batch_size must be a positive integer, got {size!r}")
        resolved[name] = values
    return resolved


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"x must have shape (B, C, X, Y, Z), got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf values")


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target: TargetLike = None,
    **params: Any,
) -> torch.Tensor:
    """Attribution map of ``method`` for ``model`` at ``x``.

    Parameters
    ----------
    model
        A PyTorch module mapping (B, C, X, Y, Z) to (B, K) (K = 1: regression / single score).
        It is never modified: eval mode during the call, hooks removed, parameters untouched.
    x
        Input batch, float tensor (B, C, X, Y, Z).
    method
        One of :func:`available_methods`.
    target
        ``None``: the predicted class of each sample; an int; or one int per sample. Ignored for a
        single-output model.
    **params
        The method's parameters (see :func:`method_defaults`), e.g. ``seed``, ``batch_size``.

    Returns
    -------
    torch.Tensor
        Signed, raw map of the same shape as ``x`` (no abs, no normalisation), detached, on
        ``x``'s device.

    Warns
    -----
    AttributionWarning
        The map does not satisfy its method's axiom on this model (e.g. DeepLIFT's
        summation-to-delta); the map is still returned.
    """
    return attribute_many(model, x, [method], target, **params)[method]


def _fuse_gradient_into_smoothgrad(groups: dict, resolved, n_inputs: int):
    """The key of the SmoothGrad group that also computes the gradient family's clean pass, as
    ``(smoothgrad_key, gradient_key)`` — or None when there is nothing to fuse (one of the two
    families not requested, different batch sizes, or no room for the inputs in a batch)."""
    smooth = [k for k in groups if len(k) == 2 and k[0] == "smoothgrad"]
    plain = [k for k in groups if len(k) == 2 and k[0] == "gradient"]
    if len(smooth) != 1 or len(plain) != 1:
        return None
    smooth_size = int(resolved(groups[smooth[0]][0])["batch_size"])
    plain_size = int(resolved(groups[plain[0]][0])["batch_size"])
    if smooth_size != plain_size or n_inputs >= smooth_size:
        return None
    return (smooth[0], plain[0])


def attribute_many(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str],
    target: TargetLike = None,
    *,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    precision: str = PRECISIONS[0],
    **params: Any,
) -> dict[str, torch.Tensor]:
    """Several attribution maps at once; methods of one family share their passes.

    gradient, saliency and input_x_gradient come from one backward pass; smoothgrad,
    smoothgrad_sq and vargrad from the same noisy samples.

    Parameters
    ----------
    methods
        Method names; duplicates are computed once.
    method_params
        Per-method parameters, ``{"occlusion": {"window": 4}}``; they override ``params``.
    precision
        One of :data:`~nipype_xai.attribution.precision.PRECISIONS`: ``"fp32"`` (default), or
        ``"bf16"`` / ``"fp16"`` (CUDA only) to run the methods' model passes under
        :func:`torch.autocast` (:mod:`nipype_xai.attribution.precision`); the methods in
        :data:`~nipype_xai.attribution.precision.FP32_ONLY` run in float32 regardless
        (:func:`~nipype_xai.attribution.precision.method_precision`). The target is always
        resolved in float32, and the maps come back in ``x``'s dtype.
    **params
        Parameters applied to every method that accepts them (``seed``, ``batch_size``, ...).
        A parameter no requested method accepts is an error (it is most likely a typo).

    Returns
    -------
    dict
        ``{method: map}`` in the order of ``methods``.

    Raises
    ------
    nipype_xai.attribution.precision.PrecisionError
        An unknown precision, or ``fp16`` on a model that is not on a CUDA device.

    Warns
    -----
    AttributionWarning
        A map that does not satisfy its method's axiom on this model (its ``methods`` name it).
    """
    _check_input(x)
    names = list(dict.fromkeys(methods))
    entries = {name: get_method(name) for name in names}
    all_params = resolve_params(names, method_params, **params)

    def resolved(name: str) -> dict[str, Any]:
        return dict(all_params[name])

    # Group family members whose resolved parameters agree: they share one family call.
    groups: dict[tuple, list[str]] = {}
    for name in names:
        entry = entries[name]
        if entry.family is None:
            groups[(name,)] = [name]
        else:
            key = (entry.family, repr(sorted(resolved(name).items())))
            groups.setdefault(key, []).append(name)

    out_device = x.device
    results: dict[str, torch.Tensor] = {}
    with model_guard(model) as device:
        check_precision(precision, device)
        x_model = x.detach().to(device)
        # The target pass is bounded like the smallest batch any requested method runs with.
        # It runs in float32 whatever the precision: the explained class is the predicted one.
        batch_size = min(int(resolved(name).get("batch_size", 16)) for name in names)
        target_index = resolve_target(model, x_model, target, batch_size=batch_size)

        def passes(members: Sequence[str]):
            # A family's members share their passes, so they share a precision (FP32_ONLY lists
            # whole families: tests/test_precision.py checks it).
            return autocast(method_precision(members[0], precision), device)

        fused = _fuse_gradient_into_smoothgrad(groups, resolved, x_model.shape[0])
        if fused is not None and len({method_precision(groups[key][0], precision)
                                      for key in fused}) > 1:
            fused = None  # one pass cannot run in two precisions
        for key, members in groups.items():
            first = entries[members[0]]
            if fused is not None and key == fused[0]:
                # The clean gradient rides in SmoothGrad's first noisy batch (see
                # smoothgrad_family): the gradient family's maps come from it.
                from .gradient import gradient_maps

                gradient_names = groups[fused[1]]
                with _computing(members + gradient_names), passes(members):
                    maps = get_family(first.family)(
                        model, x_model, target_index, members, with_clean_gradient=True,
                        **resolved(first.name))
                maps.update(gradient_maps(x_model, maps.pop("clean_gradient"), gradient_names))
                members = members + gradient_names
            elif fused is not None and key == fused[1]:
                continue
            elif first.family is None:
                with _computing(members), passes(members):
                    maps = {first.name: first.function(model, x_model, target_index,
                                                       **resolved(first.name))}
            else:
                with _computing(members), passes(members):
                    maps = get_family(first.family)(
                        model, x_model, target_index, members, **resolved(first.name)
                    )
            for name in members:
                result = maps[name]
                if result.shape != x.shape:
                    raise RuntimeError(
                        f"{name} produced a map of shape {tuple(result.shape)} for input "
                        f"{tuple(x.shape)}; this is a bug"
                    )
                if precision == PRECISIONS[0]:
                    results[name] = result.detach().to(out_device)
                else:
                    # Maps built from 16-bit activations (Grad-CAM's) come back in x's dtype.
                    results[name] = result.detach().to(out_device, x.dtype)
    return {name: results[name] for name in names}
