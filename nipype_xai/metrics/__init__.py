"""Scoring attribution maps: ground-truth overlap, model randomisation, sanity checks (pure cores,
no files).

>>> from nipype_xai.metrics import overlap_metrics
>>> scores = overlap_metrics(attribution, ground_truth, brain_mask, score="abs")  # doctest: +SKIP

The overlap metrics need numpy/scipy only; model randomisation and the sanity checks need torch and
are imported on first use, so a Nipype node that only scores maps does not pay for importing torch.
The model-free baselines (sobel, laplace, random) are maps, not metrics: they live in
:mod:`nipype_xai.attribution.baselines`.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import overlap
from .overlap import *  # noqa: F401,F403 -- the overlap metrics' public names
from .scoring import score_maps

_LAZY = {
    "parameter_layers": "baselines",
    "randomize_model": "baselines",
    "cascade_steps": "sanity",
    "cascading_randomization": "sanity",
    "forward_order": "sanity",
    "predicted_target": "sanity",
    "randomization_similarities": "sanity",
    "spearman": "sanity",
    "ssim": "sanity",
}

__all__ = [*overlap.__all__, "score_maps", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    # PEP 562: load the torch-based modules only when one of their names is asked for.
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
