"""Path and reference methods through captum: integrated gradients and DeepLIFT.

DeepLift runs on a private deep copy of the model prepared for captum's module hooks (see
:func:`_deeplift_copy`); the user's model is never touched. Batching and targets as in
:mod:`._captum`.

Both methods promise an axiom: the map of a sample sums to y_t(x) - y_t(0) (completeness for
integrated gradients, up to its quadrature; summation-to-delta for DeepLIFT, exactly). Each call
checks it with captum's convergence delta and raises an
:class:`~nipype_xai.attribution.engine.AttributionWarning` where it fails (see
:func:`_check_sums`), rather than return a quietly wrong map.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from functools import partial
from typing import Any, Callable, Optional, Sequence

from captum.attr import DeepLift, IntegratedGradients
# The exact set of module types captum's DeepLift hooks (its rescale / maxpool / softmax rules);
# private, but it is the set whose reuse breaks DeepLift, so we must look at the same list.
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
import torch
from torch import nn
import torch.nn.functional as F

from ._captum import (
    _attribute_in_chunks,
    _captum_target,
    _chunks,
    _forward_function,
    _positive_int,
)
from .engine import AttributionWarning
from .model_state import forward
from .registry import register_method

#: Largest |sum of the map - (y_t(x) - y_t(0))|, relative to |y_t(x) - y_t(0)|, that DeepLIFT's
#: summation-to-delta tolerates: float32 rounding only (1e-5 or less on the reference nets).
SUMMATION_TO_DELTA_RTOL = 1e-3
#: The same for integrated gradients' completeness: its quadrature error, which shrinks as
#: ``n_steps`` grows. 5% is Sundararajan et al.'s own check ("within 5%" of the score
#: difference, which they found 20 to 300 steps to reach); above it the map is a poor
#: approximation of the integral it stands for.
COMPLETENESS_RTOL = 0.05
#: Below this share of the map's absolute mass sum|a|, a difference is float32 rounding of the
#: sums, whatever y_t(x) - y_t(0) is (a difference near 0 makes any relative tolerance moot).
_ROUNDING = 1e-5


def _check_sums(
    explainer: Any,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    maps: torch.Tensor,
    chunk: int,
    *,
    rtol: float,
    axiom: str,
    cause: str,
) -> None:
    """Warn (:class:`AttributionWarning`) for every sample whose map does not sum to
    y_t(x) - y_t(0) within ``rtol`` of it.

    The difference is captum's convergence delta (``compute_convergence_delta``: sum of the
    map minus (y_t(x) - y_t(0))), computed ``chunk`` samples per call: two forward passes of
    ``chunk`` rows, without gradients. ``cause`` says in the message why the sum can be off.
    """
    failures = []
    for rows in _chunks(x.shape[0], chunk):
        delta = explainer.compute_convergence_delta(
            maps[rows], start_point=0.0, end_point=x[rows], target=_captum_target(target, rows)
        ).double()
        sums = maps[rows].double().sum(dim=tuple(range(1, maps.ndim)))
        mass = maps[rows].double().abs().sum(dim=tuple(range(1, maps.ndim)))
        difference = sums - delta  # y_t(x) - y_t(0)
        for i in range(len(delta)):
            if abs(delta[i]) > rtol * abs(difference[i]) + _ROUNDING * mass[i]:
                failures.append((rows.start + i,
                                 f"sum {float(sums[i]):.6g} vs y_t(x) - y_t(0) = "
                                 f"{float(difference[i]):.6g}"))
    # One warning per sample, naming it: in a batch of subjects each map's sidecar gets its own.
    for sample, failure in failures:
        warnings.warn(AttributionWarning(
            f"{axiom} does not hold within {rtol:g} of y_t(x) - y_t(0) "
            f"({AttributionWarning.SAMPLE}: {failure}): {cause}", samples=(sample,)),
            stacklevel=3)


@register_method(
    "integrated_gradients",
    row=7,
    description=(
        "(x - 0) times the mean gradient along the straight path from a zero baseline to x, "
        "n_steps quadrature points (captum IntegratedGradients)"
    ),
    reference="Sundararajan, Taly & Yan (2017). Axiomatic attribution for deep networks. ICML.",
)
def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    n_steps: int = 50,
    integration_method: str = "gausslegendre",
    batch_size: int = 16,
) -> torch.Tensor:
    """Integrated gradients with a zero baseline (Sundararajan et al., 2017).

    Parameters
    ----------
    model, x, target
        As every registered method (see :mod:`nipype_xai.attribution.registry`).
    n_steps
        Number of points on the path x' = a x, a in [0, 1].
    integration_method
        captum's ``method``, the quadrature: ``"gausslegendre"`` (captum's default) or
        ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``, ``"riemann_trapezoid"``.
        Renamed because ``attribute(model, x, method, ...)`` already takes ``method``.
    batch_size
        Largest number of scaled copies per forward pass. captum evaluates at least two path
        points per sample at once, so ``batch_size=1`` still runs two copies.

    Returns
    -------
    torch.Tensor
        Map of x's shape; its sum per sample approximates y_t(x) - y_t(0) (completeness).

    Warns
    -----
    AttributionWarning
        A sample whose map's sum misses y_t(x) - y_t(0) by more than
        :data:`COMPLETENESS_RTOL` of it: ``n_steps`` too few for this model.
    """
    n_steps = _positive_int(n_steps, "n_steps")
    batch_size = _positive_int(batch_size, "batch_size")
    # captum's internal_batch_size puts (internal_batch_size // n_chunk_samples) path points of
    # every sample in one forward, and never fewer than 2: chunks of batch_size // 2 samples keep
    # each forward within batch_size rows.
    explainer = IntegratedGradients(_forward_function(model))
    chunk = max(1, batch_size // 2)
    maps = _attribute_in_chunks(
        explainer, x, target, chunk,
        lambda rows: {"n_steps": n_steps, "method": integration_method,
                      "internal_batch_size": batch_size},
        inputs=torch.Tensor.clone,
    )
    _check_sums(explainer, x, target, maps, chunk, rtol=COMPLETENESS_RTOL,
                axiom=f"completeness with n_steps={n_steps}",
                cause="the path integral is not resolved by its quadrature points; raise n_steps")
    return maps


# --------------------------------------------------------------------------------------------
# DeepLIFT
# --------------------------------------------------------------------------------------------


#: Max pooling, fixed-window and adaptive: computed in the copy by :class:`_DeepLiftMaxPool`,
#: through the functional form that also returns the argmax positions.
_MAX_POOLS: dict[type[nn.Module], Callable[..., Any]] = {
    nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d,
    nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d,
    nn.AdaptiveMaxPool3d: F.adaptive_max_pool3d,
}
#: |x - reference| below which a neuron counts as unchanged (captum's DeepLift ``eps``).
_EPS = 1e-10


class _MaxPoolRescale(torch.autograd.Function):
    """DeepLIFT's multipliers through a max pooling, as the gradient of the pooling, on captum's
    doubled batch (the inputs, then their references).

    The rule is captum's (``captum.attr._core.deep_lift.maxpool``): a window's difference
    max(x) - max(r) is split into top - max(r), sent to x's argmax, and max(x) - top, sent to
    r's argmax (top = the larger maximum); a neuron's multiplier is its share over its own
    difference, the plain gradient where that is 0. Written here because captum's
    implementation of it breaks summation-to-delta in the common Conv-BN-ReLU-MaxPool block:
    with a ReLU module right before the pooling, the ReLU does not receive the multipliers the
    pooling's hook returns (sums off by 0.26 and -0.38 on a 4³ ReLU-pool-linear net where ours
    and captum agree exactly without the ReLU; -9.65 vs y_t(x) - y_t(0) = -9.74 on the bundled
    model with its adaptive pooling already handled, in float64 too); and where a difference is
    0 it takes the first sample's gradient for every sample (``grad_input[0]``). Here both parts
    of the split use the input half's incoming multipliers, so a window's contributions sum to
    its multiplier times max(x) - max(r) exactly, and they are scattered with ``scatter_add``,
    which adds the shares of overlapping windows at a shared argmax (MONAI's 3-wide, stride-2
    stem pooling).
    """

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, pool: Callable[..., Any]) -> torch.Tensor:
        values, indices = pool(inputs)  # pool returns the argmax positions too
        ctx.save_for_backward(inputs)
        ctx.values, ctx.indices = values.detach(), indices
        return values

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inputs,) = ctx.saved_tensors
        if inputs.shape[0] % 2:
            raise RuntimeError("deeplift: max pooling got an odd batch, not captum's pairs of "
                               "input and reference; this is a bug")
        x, reference = inputs.chunk(2)
        out, out_reference = ctx.values.chunk(2)
        at, at_reference = ctx.indices.chunk(2)
        multiplier_out = grad_output.chunk(2)[0]

        def scatter(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            # Indices of max pooling are flat positions in each (sample, channel) plane.
            plane = torch.zeros_like(x).flatten(2)
            return plane.scatter_add_(2, indices.flatten(2), values.flatten(2)).view_as(x)

        top = torch.maximum(out, out_reference)
        # top - max(r) goes to x's argmax, max(x) - top (<= 0) to r's; they sum to max(x) - max(r).
        contribution = (scatter(multiplier_out * (top - out_reference), at)
                        + scatter(multiplier_out * (out - top), at_reference))
        delta = x - reference
        unchanged = delta.abs() < _EPS
        # An unchanged neuron contributes nothing whatever its multiplier (it multiplies a zero
        # difference), but earlier layers read it: the plain gradient, as captum's rules use.
        multiplier = torch.where(
            unchanged, scatter(multiplier_out, at),
            contribution / torch.where(unchanged, torch.ones_like(delta), delta),
        )
        return torch.cat([multiplier, multiplier]), None


class _DeepLiftMaxPool(nn.Module):
    """A max pooling module (a key of :data:`_MAX_POOLS`) whose gradient is DeepLIFT's
    multiplier (:class:`_MaxPoolRescale`); the same values as the module.

    Fixed and adaptive pooling alike: captum has no rule for adaptive max pooling and treats it
    as linear (14.57 vs y_t(x) - y_t(0) = 14.86 on the bundled model, whose global pooling is
    adaptive). The pooling is held as a function, not a submodule, which captum would hook
    with its own rule. It keeps no state between calls, so a pooling module the network calls
    twice needs no per-call copies.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        function = _MAX_POOLS[type(module)]
        if hasattr(module, "output_size"):  # adaptive
            self.pool = partial(function, output_size=module.output_size, return_indices=True)
        else:
            self.pool = partial(function, kernel_size=module.kernel_size, stride=module.stride,
                                padding=module.padding, dilation=module.dilation,
                                ceil_mode=module.ceil_mode, return_indices=True)
        self.replaces = repr(module)

    def extra_repr(self) -> str:
        return self.replaces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.pool(x)[0]  # the probe and the convergence check: values only
        return _MaxPoolRescale.apply(x, self.pool)


class _PerCallCopies(nn.Module):
    """Stand-in for a nonlinearity the network calls several times per forward pass.

    captum's DeepLift stores each nonlinearity's input and output on the module itself, so a
    module called twice (MONAI's ``ResNetBlock`` applies ``self.act`` after ``conv1`` *and* after
    the residual sum) overwrites its first call and captum raises. The k-th call of a forward
    pass goes to the k-th of its own copies instead, each hooked once by captum.
    """

    def __init__(self, module: nn.Module, n_calls: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(n_calls))
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.calls >= len(self.copies):
            raise RuntimeError(
                "deeplift: a nonlinearity was called more often than in the probe forward pass; "
                "models whose control flow depends on the input are not supported"
            )
        module = self.copies[self.calls]
        self.calls += 1
        return module(*args, **kwargs)


class _DeepLiftRoot(nn.Module):
    """Root module handed to captum: resets the per-call copies and returns a (B, K) tensor.

    captum's DeepLift hooks the root to run input and baseline in one batch and splits the output
    in halves, which needs a plain tensor (``forward`` unwraps tuple outputs). ``unsupported``
    names the nonlinear modules of the copy that no rule covers (for messages).
    """

    def __init__(self, model: nn.Module, unsupported: Sequence[str] = ()):
        super().__init__()
        self.model = model
        self.unsupported = tuple(unsupported)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.model.modules():
            if isinstance(module, _PerCallCopies):
                module.calls = 0
        return forward(self.model, x)


def _replace_modules(network: nn.Module, replacement: Callable[[nn.Module], Optional[nn.Module]]
                     ) -> None:
    """Put ``replacement(child)`` in place of every child for which it is not None; a module
    found under several names gets one replacement."""
    done: dict[int, nn.Module] = {}
    for parent in list(network.modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in done:
                new = replacement(child)
                if new is None:
                    continue
                done[id(child)] = new
            setattr(parent, name, done[id(child)])


def _deeplift_copy(model: nn.Module, probe: torch.Tensor) -> _DeepLiftRoot:
    """A deep copy of ``model`` on which captum's DeepLift computes the rescale rule correctly.

    Three things are changed on the copy, never on the user's model:

    - ``inplace`` is switched off on every module that has it. captum 0.9 clones a hooked
      module's input in a forward pre-hook, so in-place ReLUs (MONAI's default) give the same
      numbers on the networks we checked (MONAI DenseNet with and without); switching them off
      keeps the stored input and output distinct tensors whatever a later captum does.
    - Max pooling modules, fixed-window and adaptive, become :class:`_DeepLiftMaxPool` (our
      rule; captum has none for adaptive pooling and a leaking one for the others).
    - Nonlinearities called more than once per forward pass (module reuse, MONAI ResNet) are
      replaced by :class:`_PerCallCopies`. Calls are counted on one forward pass of ``probe``.

    Nonlinearities applied functionally (``F.relu`` inside ``forward``), or activations captum
    has no rule for (GELU, SiLU, PReLU, ...), are treated as linear (plain gradient);
    summation-to-delta then no longer holds, which :func:`deeplift` reports.
    """
    network = copy.deepcopy(model)
    for module in network.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    _replace_modules(network, lambda module: _DeepLiftMaxPool(module)
                     if type(module) in _MAX_POOLS and not module.return_indices else None)

    calls: Counter[int] = Counter()
    handles = [
        module.register_forward_pre_hook(lambda module, inputs: calls.update([id(module)]))
        for module in network.modules()
        if type(module) in SUPPORTED_NON_LINEAR
    ]
    try:
        with torch.no_grad():
            forward(network, probe)
    finally:
        for handle in handles:
            handle.remove()
    _replace_modules(network, lambda module: _PerCallCopies(module, calls[id(module)])
                     if calls[id(module)] > 1 else None)

    # Every activation of torch.nn lives in torch.nn.modules.activation: those without a captum
    # rule, and max pooling that returns its indices (left as it was), pass as linear.
    unsupported = [
        f"{name} ({type(module).__name__})"
        for name, module in network.named_modules()
        if (type(module).__module__ == nn.modules.activation.__name__
            and type(module) not in SUPPORTED_NON_LINEAR)
        or type(module) in _MAX_POOLS
    ]
    return _DeepLiftRoot(network, unsupported).eval()


@register_method(
    "deeplift",
    row=18,
    description=(
        "DeepLIFT rescale rule against a zero baseline (captum DeepLift; max pooling, fixed "
        "and adaptive, through our implementation of captum's max rule, which keeps "
        "summation-to-delta)"
    ),
    reference=(
        "Shrikumar, Greenside & Kundaje (2017). Learning important features through propagating "
        "activation differences. ICML."
    ),
)
def deeplift(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """DeepLIFT, rescale rule, zero baseline (Shrikumar et al., 2017), via captum.

    captum's DeepLift needs nonlinearities as modules it has a rule for, each used once per
    forward pass; it runs here on a prepared deep copy of the model (see
    :func:`_deeplift_copy`), which is what makes MONAI's ResNet (one ReLU module applied twice
    per block) and adaptive max pooling (the bundled model) work. The copy costs one extra
    parameter set in memory and one probe forward pass; the summation-to-delta check two more
    forward passes per sample, without gradients.

    Parameters
    ----------
    model, x, target
        As every registered method.
    batch_size
        Largest number of rows per forward pass; captum runs each sample together with its
        baseline, so chunks hold ``batch_size // 2`` samples (at least one).

    Returns
    -------
    torch.Tensor
        Map of x's shape; its sum per sample equals y_t(x) - y_t(0) (summation-to-delta) when
        every nonlinearity is a module captum has a rule for.

    Warns
    -----
    AttributionWarning
        A sample whose map's sum misses y_t(x) - y_t(0) by more than
        :data:`SUMMATION_TO_DELTA_RTOL` of it; the message names the nonlinear modules captum
        has no rule for, if any.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    explainer = deeplift_explainer(model, x[:1])
    chunk = max(1, batch_size // 2)
    maps = deeplift_attribute(explainer, x, target, chunk)
    _check_sums(
        explainer, x, target, maps, chunk, rtol=SUMMATION_TO_DELTA_RTOL,
        axiom="summation-to-delta", cause=deeplift_failure_cause(explainer),
    )
    return maps


def deeplift_explainer(model: nn.Module, probe: torch.Tensor) -> DeepLift:
    """captum's DeepLift on the prepared copy of ``model`` (:func:`_deeplift_copy`, probed with
    ``probe``, one sample of the input): what :func:`deeplift` and DeepLIFT-SHAP
    (:mod:`.shap_gradients`) run."""
    return DeepLift(_deeplift_copy(model, probe))


def deeplift_attribute(
    explainer: DeepLift,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    chunk: int,
    baselines: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DeepLIFT maps of ``x``, ``chunk`` samples per captum call (each runs with its reference,
    2 x chunk rows), against ``baselines`` (a tensor of x's shape, row i the reference of sample
    i) or 0."""
    with warnings.catch_warnings():
        # captum announces that it sets hooks; they are on our private copy.
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        return _attribute_in_chunks(
            explainer, x, target, chunk,
            # A fresh leaf requiring grad: captum would otherwise set the flag itself and warn.
            inputs=lambda chunk_x: chunk_x.clone().requires_grad_(True),
            baselines=baselines,
        )


def deeplift_failure_cause(explainer: DeepLift) -> str:
    """Why summation-to-delta can fail on the explainer's model, for warning messages."""
    unsupported = ", ".join(explainer.model.unsupported) or "none as modules"
    return (f"the model has nonlinearities captum's DeepLift treats as linear ({unsupported}; "
            "or functional ones such as F.relu in forward)")
