"""Reports: figures (nilearn, matplotlib without pyplot) and self-contained HTML pages.

>>> from nipype_xai.reports import subject_report, group_report
>>> subject_report("sub-01.html", subject="01", t1w=t1w, maps=maps)  # doctest: +SKIP

Figures are written as PNG and SVG; pages embed the PNGs (base64), so each page is one file that
opens offline. File names are listed in :mod:`nipype_xai.reports.html`. A page names only
derivatives, linked relatively from its place in the dataset (``derivatives=``, ``location=``):
:mod:`nipype_xai.interfaces.reports` gets their names from :mod:`nipype_xai.bids`.
"""

from __future__ import annotations

from ..attribution.baselines import available_baselines, is_baseline
from .figures import (
    DEFAULT_THRESHOLD,
    SCALE_PERCENTILE,
    plot_anatomy,
    plot_attribution_panel,
    plot_glass_brains,
    plot_method_ranking,
    scale_abs,
)
from .html import (
    RANKING_METRICS,
    REDUNDANT_METRICS,
    figure_name,
    format_value,
    group_report,
    redundant_metrics,
    subject_report,
)

#: The model-free baselines' names, from the attribution registry (SPEC §3); :func:`is_baseline`
#: also knows the maps of a weight-randomised model.
BASELINES: frozenset[str] = frozenset(available_baselines())

__all__ = [
    "BASELINES",
    "DEFAULT_THRESHOLD",
    "RANKING_METRICS",
    "REDUNDANT_METRICS",
    "SCALE_PERCENTILE",
    "figure_name",
    "format_value",
    "group_report",
    "is_baseline",
    "plot_anatomy",
    "plot_attribution_panel",
    "plot_glass_brains",
    "plot_method_ranking",
    "redundant_metrics",
    "scale_abs",
    "subject_report",
]
