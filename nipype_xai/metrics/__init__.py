"""Scoring attribution maps: ground-truth overlap, baselines, sanity checks (pure cores, no files).

>>> from nipype_xai.metrics import overlap_metrics
>>> scores = overlap_metrics(attribution, ground_truth, brain_mask, score="abs")  # doctest: +SKIP

The overlap metrics need numpy/scipy only; the baselines and the sanity checks need torch and are
imported on first use, so a Nipype node that only scores maps does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .overlap import (
    AFFINE_ATOL_MM,
    EMD_MAX_PAIRS,
    EMD_MAX_POINTS,
    SCORES,
    MetricsError,
    brain_diameter_mm,
    overlap_metrics,
    overlap_metrics_report,
)

_LAZY = {
    "BASELINES": "baselines",
    "laplace": "baselines",
    "parameter_layers": "baselines",
    "random": "baselines",
    "randomize_model": "baselines",
    "sobel": "baselines",
    "cascading_randomization": "sanity",
    "forward_order": "sanity",
    "spearman": "sanity",
    "ssim": "sanity",
}

__all__ = [
    "AFFINE_ATOL_MM",
    "EMD_MAX_PAIRS",
    "EMD_MAX_POINTS",
    "SCORES",
    "MetricsError",
    "brain_diameter_mm",
    "overlap_metrics",
    "overlap_metrics_report",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    # PEP 562: load the torch-based modules only when one of their names is asked for.
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
