"""Path and reference methods through captum: integrated gradients and DeepLIFT.

DeepLift runs on a private deep copy of the model prepared for captum's module hooks (see
:func:`_deeplift_copy`); the user's model is never touched. Batching and targets as in
:mod:`._captum`.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from typing import Any, Optional

from captum.attr import DeepLift, IntegratedGradients
# The exact set of module types captum's DeepLift hooks (its rescale / maxpool / softmax rules);
# private, but it is the set whose reuse breaks DeepLift, so we must look at the same list.
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
import torch
from torch import nn

from ._captum import _attribute_in_chunks, _forward_function, _positive_int
from .model_state import forward
from .registry import register_method


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
    """
    n_steps = _positive_int(n_steps, "n_steps")
    batch_size = _positive_int(batch_size, "batch_size")
    # captum's internal_batch_size puts (internal_batch_size // n_chunk_samples) path points of
    # every sample in one forward, and never fewer than 2: chunks of batch_size // 2 samples keep
    # each forward within batch_size rows.
    return _attribute_in_chunks(
        IntegratedGradients(_forward_function(model)), x, target, max(1, batch_size // 2),
        lambda rows: {"n_steps": n_steps, "method": integration_method,
                      "internal_batch_size": batch_size},
        inputs=torch.Tensor.clone,
    )


# --------------------------------------------------------------------------------------------
# DeepLIFT
# --------------------------------------------------------------------------------------------


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
    in halves, which needs a plain tensor (``forward`` unwraps tuple outputs).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.model.modules():
            if isinstance(module, _PerCallCopies):
                module.calls = 0
        return forward(self.model, x)


def _deeplift_copy(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` on which captum's DeepLift computes the rescale rule correctly.

    Two things are changed on the copy, never on the user's model:

    - ``inplace`` is switched off on every module that has it. captum 0.9 clones a hooked
      module's input in a forward pre-hook, so in-place ReLUs (MONAI's default) give the same
      numbers on the networks we checked (MONAI DenseNet with and without); switching them off
      keeps the stored input and output distinct tensors whatever a later captum does.
    - Nonlinearities called more than once per forward pass (module reuse, MONAI ResNet) are
      replaced by :class:`_PerCallCopies`. Calls are counted on one forward pass of ``probe``.

    Nonlinearities applied functionally (``F.relu`` inside ``forward``) are invisible to captum
    and treated as linear (plain gradient); summation-to-delta then no longer holds.
    """
    network = copy.deepcopy(model)
    for module in network.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False

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

    reused = {key for key, count in calls.items() if count > 1}
    slots = [
        (parent, name, child)
        for parent in network.modules()
        for name, child in parent._modules.items()
        if child is not None and id(child) in reused
    ]
    replacements: dict[int, _PerCallCopies] = {}
    for parent, name, child in slots:
        if id(child) not in replacements:
            replacements[id(child)] = _PerCallCopies(child, calls[id(child)])
        setattr(parent, name, replacements[id(child)])
    return _DeepLiftRoot(network).eval()


@register_method(
    "deeplift",
    row=18,
    description="DeepLIFT rescale rule against a zero baseline (captum DeepLift)",
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

    captum's DeepLift needs nonlinearities as modules, each used once per forward pass; it runs
    here on a prepared deep copy of the model (see :func:`_deeplift_copy`), which is what makes
    MONAI's ResNet (one ReLU module applied twice per block) work. The copy costs one extra
    parameter set in memory and one probe forward pass.

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
        every nonlinearity is a supported module.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    explainer = DeepLift(_deeplift_copy(model, x[:1]))
    with warnings.catch_warnings():
        # captum announces that it sets hooks; they are on our private copy.
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        return _attribute_in_chunks(
            explainer, x, target, max(1, batch_size // 2),
            # A fresh leaf requiring grad: captum would otherwise set the flag itself and warn.
            inputs=lambda chunk_x: chunk_x.clone().requires_grad_(True),
        )
