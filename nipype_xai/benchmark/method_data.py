"""What some methods need besides the model and the image, taken from the model's own training
inputs: the background set of ``gradient_shap`` / ``deeplift_shap`` and the signal patterns of
``pattern_net`` / ``pattern_attribution``.

A method takes such data when its registry defaults have a ``background`` or a ``patterns``
parameter (:func:`~nipype_xai.attribution.method_defaults`), so a new method that takes either is
served without a change here.

* **Background**: :data:`BACKGROUND_SIZE` training *controls* on the model grid, drawn with the
  benchmark seed (:func:`~nipype_xai.models.background.choose_background`): SHAP's "typical
  input" is one without the signal, so a map says what makes this subject differ from a control.
* **Patterns**: fitted on every training input of the model (both classes), the two-component
  estimator (:func:`~nipype_xai.attribution.patterns.fit_patterns`), as Kindermans et al. fit
  them on the training set.
* **Randomised models** (the sanity check, the ``random_model_*`` baselines): patterns belong to
  the weights they were fitted for, so every network gets its own, fitted on the same
  :data:`SANITY_FIT_SIZE` training inputs -- for the trained model too within the sanity check,
  so that the maps compared across the cascade differ by the weights alone, not by the data the
  patterns came from. The background stays: it is data, not model.

Everything here is a pure function of tensors (no files); :class:`MethodData` carries the
parameters, a digest that names them in the resume cache, and the record for ``provenance.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["BACKGROUND_SIZE", "SANITY_FIT_SIZE", "MethodData", "NetParams", "merge_params",
           "method_data", "takers"]

#: Training controls in the background set of the SHAP-family methods.
BACKGROUND_SIZE = 32
#: Training inputs each network's patterns are fitted on in the sanity check.
SANITY_FIT_SIZE = 32

NetParams = Callable[[nn.Module], dict[str, dict[str, Any]]]


@dataclasses.dataclass(frozen=True, eq=False)
class MethodData:
    """The data parameters of one model's methods (picklable: the benchmark caches it).

    ``params``: ``{method: {"background": tensor} | {"patterns": Patterns}}`` for the trained
    model's maps; ``digest``: a name of all of it for the resume cache (the tensors themselves
    are not hashed there); ``record``: what was used, for ``provenance.json``; ``fit_set`` and
    ``pattern_methods``: the inputs each network's own patterns are fitted on, and the methods
    that take them (:attr:`for_net`).
    """

    params: dict[str, dict[str, Any]]
    digest: str
    record: dict[str, Any]
    fit_set: Optional[torch.Tensor] = None
    pattern_methods: tuple[str, ...] = ()

    @classmethod
    def none(cls) -> "MethodData":
        return cls({}, "", {})

    @property
    def for_net(self) -> Optional[NetParams]:
        """``net -> params`` for any network (randomised copies; see the module notes), or None
        when no method needs data of its own per network."""
        return self._for_net if self.fit_set is not None else None

    def _for_net(self, net: nn.Module) -> dict[str, dict[str, Any]]:
        from ..attribution.patterns import fit_patterns

        own = fit_patterns(net, self.fit_set, fitted_on="sanity fit set")
        return merge_params({m: dict(p) for m, p in self.params.items()},
                            {m: {"patterns": own} for m in self.pattern_methods})


def takers(methods: Sequence[str], parameter: str) -> list[str]:
    """The methods among ``methods`` whose parameters include ``parameter``."""
    from ..attribution import available_methods, method_defaults

    known = set(available_methods())
    return [m for m in methods if m in known and parameter in method_defaults(m)]


def merge_params(*layers: Optional[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per-method parameters, later layers overriding earlier ones method by method."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for method, params in (layer or {}).items():
            merged.setdefault(method, {}).update(params)
    return merged


def _tensor_digest(tensor: torch.Tensor) -> str:
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()
                          + str(tuple(array.shape)).encode()).hexdigest()


def method_data(
    model: nn.Module,
    methods: Sequence[str],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    source: str,
    control_label: int = 0,
) -> MethodData:
    """The background and patterns the requested ``methods`` take, from the model's training
    inputs.

    Parameters
    ----------
    model
        The trained model (patterns are fitted for it; it is not modified).
    methods
        The methods of the run (and of its randomised-model baselines).
    inputs, labels
        The training inputs on the model grid, (N, C, X, Y, Z), and their classes (N,).
    seed
        Seed of the background draw and of the sanity fit set.
    source
        What ``inputs`` are (the training cohorts), for the record.
    control_label
        The class whose inputs form the background.

    Returns
    -------
    MethodData
        Empty when no requested method takes data.
    """
    from ..attribution.patterns import fit_patterns
    from ..models.background import choose_background

    background_takers = takers(methods, "background")
    pattern_takers = takers(methods, "patterns")
    if not background_takers and not pattern_takers:
        return MethodData.none()
    params: dict[str, dict[str, Any]] = {}
    record: dict[str, Any] = {}
    digest = hashlib.sha256()
    if background_takers:
        chosen = choose_background(len(labels), BACKGROUND_SIZE, seed,
                                   labels=[int(v) for v in labels], keep=int(control_label))
        background = inputs[chosen].detach().clone()
        for method in background_takers:
            params[method] = {"background": background}
        sha = _tensor_digest(background)
        digest.update(b"background" + sha.encode())
        record["background"] = {
            "Methods": background_takers, "Source": source, "N": len(chosen),
            "Selection": f"class {control_label} (controls) only", "Seed": int(seed),
            "Indices": chosen, "SHA256": sha}
    fit_set = None
    if pattern_takers:
        patterns = fit_patterns(model, inputs, fitted_on=f"{source}: all {len(labels)} inputs")
        for method in pattern_takers:
            params[method] = {"patterns": patterns}
        generator = torch.Generator().manual_seed(int(seed) + 1)
        fit_indices = sorted(int(i) for i in torch.randperm(len(labels), generator=generator)
                             [:SANITY_FIT_SIZE])
        fit_set = inputs[fit_indices].detach().clone()
        digest.update(b"patterns" + patterns.sha256().encode()
                      + _tensor_digest(fit_set).encode())
        record["patterns"] = {
            "Methods": pattern_takers, "Estimator": "relu", "Source": source,
            "N": int(len(labels)), "SHA256": patterns.sha256(),
            "RandomisedModels": (f"each network's own patterns, fitted on {len(fit_indices)} "
                                 f"training inputs (seed {int(seed) + 1}), the trained model's "
                                 "too within the sanity check"),
            "SanityFitIndices": fit_indices}

    return MethodData(params, digest.hexdigest(), record, fit_set, tuple(pattern_takers))
