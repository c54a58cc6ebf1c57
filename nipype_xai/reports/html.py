"""Self-contained HTML reports, one per subject (:mod:`~nipype_xai.reports.subject`) and one for the
group (:mod:`~nipype_xai.reports.group`), built from :mod:`~nipype_xai.reports.page`.

A page is one file: figures are embedded as base64 PNG, the stylesheet is inline, and nothing is
fetched (no CSS, JS, fonts or CDN), so a report can be mailed, archived or opened on an offline
cluster node. Every figure is also written as PNG and SVG under ``figures_dir`` (a temporary folder,
discarded, when none is given). Names (alphanumeric BIDS-like labels, ``-`` and ``_`` only):

==========================================================  ===========================================
``sub-<label>_desc-input_T1w.{png,svg}``                    the input T1w (subject page)
``sub-<label>_desc-attribution_panel.{png,svg}``            every method's map over the background
``desc-ranking_metric-<metricLabel>_plot.{png,svg}``        ranking with CIs, one per metric (group)
``desc-groupMean_panel.{png,svg}``                          group mean maps over the background
``desc-groupMean_glassbrain.{png,svg}``                     group mean maps, glass brains
==========================================================  ===========================================

``sub-<label>`` is ``sub-<label>_ses-<label>`` for a session; ``<metricLabel>`` is the metric's name in
lowerCamelCase (``precision_at_k`` -> ``precisionAtK``), as method names become ``desc`` labels
(:func:`nipype_xai.bids.method_to_desc`). Pages are written atomically.

A page names files only by relative links into the derivatives dataset it belongs to: the caller
gives the dataset-relative names of the derivatives (``derivatives``) and of the page itself
(``location``); the files the page was made from (in a Nipype work directory) are never named.
The pages use no JavaScript: the ranking charts are tabs made of radio buttons and CSS.
"""

from __future__ import annotations

from .group import RANKING_METRICS, group_report
from .page import REDUNDANT_METRICS, figure_name, format_value, redundant_metrics, report_time
from .subject import DOMAIN_COLUMNS, subject_report

__all__ = [
    "DOMAIN_COLUMNS",
    "RANKING_METRICS",
    "REDUNDANT_METRICS",
    "figure_name",
    "format_value",
    "group_report",
    "redundant_metrics",
    "report_time",
    "subject_report",
]
