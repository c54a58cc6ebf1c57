"""Nipype interfaces around the HTML reports (:mod:`nipype_xai.reports`).

- ``SubjectReport``: one subject's input, maps over the template, prediction and overlap metrics.
- ``GroupReport``: the method ranking with confidence intervals, group mean maps and the list of
  subjects that failed.

Both write a self-contained HTML page (figures embedded) and the same figures as files under
``figures/`` in the node's folder, for the sinks to copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

__all__ = ["GroupReport", "SubjectReport"]


def _optional(value: Any) -> Any:
    return value if isdefined(value) else None


def _figures(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    subject = traits.Str(mandatory=True, desc="subject label (without 'sub-')")
    session = traits.Str(desc="session label")
    t1w = File(exists=True, mandatory=True, desc="the subject's T1w as the model saw it")
    maps = traits.List(File(exists=True), mandatory=True, desc="attribution and baseline maps")
    methods = traits.List(traits.Str, mandatory=True, desc="method of each map")
    background = File(exists=True, desc="template image the maps are drawn over")
    predictions_tsv = File(exists=True, desc="ModelInference's prediction; its input-domain "
                           "columns, when present, are shown apart, with a warning at the top "
                           "of the page when the input is outside the model's training inputs")
    metrics_tsv = File(exists=True, desc="GroundTruthOverlap's table")
    ground_truth = File(exists=True, desc="ground-truth mask on the maps' grid, outlined")
    qc_tsv = File(exists=True, desc="RegistrationQC's table")
    qc_figure = File(exists=True, desc="RegistrationQC's overlay figure (PNG)")


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="self-contained HTML page")
    out_figures = traits.List(File(exists=True), desc="the figures as files")


class SubjectReport(SimpleInterface):
    """One subject's HTML report (:func:`nipype_xai.reports.html.subject_report`)."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.html import subject_report

        inputs = self.inputs
        if len(inputs.maps) != len(inputs.methods):
            raise ValueError(f"{len(inputs.maps)} maps but {len(inputs.methods)} method names")
        label = f"sub-{inputs.subject}" + (
            f"_ses-{inputs.session}" if isdefined(inputs.session) else "")
        out_html = Path(runtime.cwd, f"{label}.html")
        figures_dir = Path(runtime.cwd, "figures")
        subject_report(
            out_html,
            subject=label,
            t1w=inputs.t1w,
            maps=dict(zip(inputs.methods, inputs.maps)),
            background=_optional(inputs.background),
            predictions_tsv=_optional(inputs.predictions_tsv),
            metrics_tsv=_optional(inputs.metrics_tsv),
            ground_truth=_optional(inputs.ground_truth),
            qc_tsv=_optional(inputs.qc_tsv),
            qc_figure=_optional(inputs.qc_figure),
            figures_dir=figures_dir,
        )
        self._results["out_report"] = str(out_html)
        self._results["out_figures"] = _figures(figures_dir)
        return runtime


class _GroupReportInputSpec(BaseInterfaceInputSpec):
    metrics_tsv = File(exists=True, desc="group overlap-metrics table (all subjects x methods)")
    ranking_tsv = File(exists=True, desc="MethodRanking's summary table")
    mean_maps = traits.List(File(exists=True), desc="group mean map per method")
    methods = traits.List(traits.Str, desc="method of each mean map")
    background = File(exists=True, desc="template image the maps are drawn over")
    failures_tsv = File(exists=True, desc="subjects that failed and why (participant level)")
    provenance = traits.Dict(traits.Str, traits.Any, desc="what produced the results")


class _GroupReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="self-contained HTML page")
    out_figures = traits.List(File(exists=True), desc="the figures as files")


class GroupReport(SimpleInterface):
    """The group HTML report (:func:`nipype_xai.reports.html.group_report`)."""

    input_spec = _GroupReportInputSpec
    output_spec = _GroupReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.html import group_report

        inputs = self.inputs
        summary = (
            pd.read_csv(inputs.ranking_tsv, sep="\t", na_values=["n/a"])
            if isdefined(inputs.ranking_tsv) else None
        )
        mean_maps = (dict(zip(inputs.methods, inputs.mean_maps))
                     if isdefined(inputs.mean_maps) else {})
        failures = []
        if isdefined(inputs.failures_tsv):
            table = pd.read_csv(inputs.failures_tsv, sep="\t", dtype=str, keep_default_na=False)
            failures = table.to_dict("records")
        out_html = Path(runtime.cwd, "group.html")
        figures_dir = Path(runtime.cwd, "figures")
        group_report(
            out_html,
            metrics_tsv=_optional(inputs.metrics_tsv),
            summary=summary,
            mean_maps=mean_maps,
            background=_optional(inputs.background),
            failures=failures,
            figures_dir=figures_dir,
            provenance=dict(inputs.provenance) if isdefined(inputs.provenance) else None,
        )
        self._results["out_report"] = str(out_html)
        self._results["out_figures"] = _figures(figures_dir)
        return runtime
