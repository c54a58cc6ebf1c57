"""Nipype interfaces around the HTML reports (:mod:`nipype_xai.reports`).

- ``SubjectReport``: one subject's input, maps over the template, prediction and overlap metrics.
- ``GroupReport``: the method ranking with confidence intervals, group mean maps and the list of
  subjects that failed.

Both write a self-contained HTML page (figures embedded) and the same figures as files under
``figures/`` in the node's folder, for the sinks to copy.

A page runs in the work directory but names only derivatives, by their names in the dataset,
linked relatively from the page's own place there. The names come from
:func:`nipype_xai.bids.derivative_path` with the entities the workflow gives its sinks (``space``,
``res``, the model's ``desc`` label...): the workflow passes those entities here, and a derivative
the interface cannot name (an entity not given) is not named at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..tables import read_tsv

__all__ = ["GroupReport", "SubjectReport", "group_derivatives", "subject_derivatives"]


def _optional(value: Any) -> Any:
    return value if isdefined(value) else None


# ---- where reports and derivatives are in the dataset ------------------------------------------
#
# Every name comes from nipype_xai.bids: derivative_path with the entities the workflows give their
# sinks, and bids' own functions for the reports and the group-level files where it has them
# (report_path, group_metrics_path, group_ranking_path, group_map_path). The fallbacks below are
# what those functions return; they go once bids.py has them in every installation.


def _bids_function(name: str):
    from .. import bids

    return getattr(bids, name, None)


def subject_report_name(subject: str, session: Optional[str] = None) -> str:
    """The dataset-relative name of a subject's report: ``sub-01.html``, ``sub-01_ses-2.html``."""
    report_path = _bids_function("report_path")
    if report_path is not None:
        return report_path(subject, session).as_posix()
    return f"sub-{subject}" + (f"_ses-{session}" if session else "") + ".html"


def group_report_name() -> str:
    """The dataset-relative name of the group report (``group.html``)."""
    report_path = _bids_function("report_path")
    return report_path().as_posix() if report_path is not None else "group.html"


def _relative(entities: dict[str, Any]) -> str:
    from ..bids import derivative_path

    return derivative_path(entities).as_posix()


def _group_table(suffix: str) -> str:
    function = _bids_function(f"group_{suffix}_path")
    if function is not None:
        return function().as_posix()
    return _relative({"desc": "overlap", "suffix": suffix, "extension": ".tsv"})


def _group_mean_map(method: str, space: str, res: Optional[str]) -> str:
    function = _bids_function("group_map_path")
    if function is not None:
        return function(method, "mean", space, res).as_posix()
    from ..bids import method_to_desc

    return _relative({"space": space, "res": res, "desc": method_to_desc(method) + "Mean",
                      "suffix": "attribution", "extension": ".nii.gz"})


def subject_derivatives(
    *,
    subject: str,
    methods: list[str],
    session: Optional[str] = None,
    space: Optional[str] = None,
    res: Optional[str] = None,
    model_desc: Optional[str] = None,
    metrics: bool = False,
    qc: bool = False,
) -> dict[str, Any]:
    """Dataset-relative names of the derivatives a subject's report shows.

    As :func:`nipype_xai.workflows.init_xai_wf`'s sinks name them, from the same entities:
    without ``space`` the template-space files (the maps shown, the model input) are not named,
    without ``model_desc`` the predictions table is not.
    """
    from ..bids import method_to_desc

    base = {"subject": subject, "session": session}
    names: dict[str, Any] = {
        "native_maps": {m: _relative({**base, "desc": method_to_desc(m), "suffix": "attribution",
                                      "extension": ".nii.gz"}) for m in methods},
        "group_report": group_report_name(),
    }
    if space:
        grid = {**base, "space": space, "res": res}
        names["maps"] = {m: _relative({**grid, "desc": method_to_desc(m),
                                       "suffix": "attribution", "extension": ".nii.gz"})
                         for m in methods}
        names["t1w"] = _relative({**grid, "desc": "preproc", "suffix": "T1w",
                                  "extension": ".nii.gz"})
    if model_desc:
        names["predictions"] = _relative({**base, "desc": model_desc, "suffix": "predictions",
                                          "extension": ".tsv"})
    if metrics:
        names["metrics"] = _relative({**base, "desc": "overlap", "suffix": "metrics",
                                      "extension": ".tsv"})
    if qc:
        names["qc"] = _relative({**base, "desc": "registration", "suffix": "metrics",
                                 "extension": ".tsv"})
    return names


def group_derivatives(
    *,
    methods: list[str],
    space: Optional[str] = None,
    res: Optional[str] = None,
    subjects: list[str] = (),
    metrics: bool = False,
    ranking: bool = False,
    failures: bool = False,
) -> dict[str, Any]:
    """Dataset-relative names of the files the group report links, as the group workflow's sinks
    (and the participant level, for the reports and ``failures.tsv``) name them."""
    from ..bids import FAILURES_FILE

    names: dict[str, Any] = {}
    if space:
        names["mean_maps"] = {m: _group_mean_map(m, space, res) for m in methods}
    if metrics:
        names["metrics"] = _group_table("metrics")
    if ranking:
        names["ranking"] = _group_table("ranking")
    if failures:
        names["failures"] = FAILURES_FILE
    reports = {}
    for label in subjects:
        text = label.removeprefix("sub-")
        subject, _, session = text.partition("_ses-")
        reports[f"sub-{text}"] = subject_report_name(subject, session or None)
    if reports:
        names["participant_reports"] = reports
    return names


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
    space = traits.Str(desc="space- of the template-space derivatives (the maps shown and the "
                       "model input): names them on the page; without it they are not named")
    res = traits.Str(desc="res- of the template-space derivatives (the model grid)")
    model_desc = traits.Str(desc="desc- of the predictions table (the model's label): names it")
    report_name = traits.Str(desc="the report's dataset-relative name, where its links start "
                             "(default: sub-<label>[_ses-<label>].html at the root)")


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="self-contained HTML page")
    out_figures = traits.List(File(exists=True), desc="the figures as files")


class SubjectReport(SimpleInterface):
    """One subject's HTML report (:func:`nipype_xai.reports.subject.subject_report`)."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.subject import subject_report

        inputs = self.inputs
        if len(inputs.maps) != len(inputs.methods):
            raise ValueError(f"{len(inputs.maps)} maps but {len(inputs.methods)} method names")
        session = _optional(inputs.session)
        label = f"sub-{inputs.subject}" + (f"_ses-{session}" if session else "")
        out_html = Path(runtime.cwd, f"{label}.html")
        figures_dir = Path(runtime.cwd, "figures")
        names = subject_derivatives(
            subject=inputs.subject, session=session, methods=list(inputs.methods),
            space=_optional(inputs.space), res=_optional(inputs.res),
            model_desc=_optional(inputs.model_desc),
            metrics=isdefined(inputs.metrics_tsv), qc=isdefined(inputs.qc_tsv),
        )
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
            derivatives=names,
            location=(inputs.report_name if isdefined(inputs.report_name)
                      else subject_report_name(inputs.subject, session)),
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
    brain_mask = File(exists=True, desc="the template's brain mask: the mean maps are shown "
                      "inside it (default: the background's nonzero voxels)")
    space = traits.Str(desc="space- of the mean maps: names their files on the page")
    res = traits.Str(desc="res- of the mean maps")
    subjects = traits.List(traits.Str, desc="participants whose reports the page links: labels "
                           "'01', 'sub-01' or 'sub-01_ses-2'")
    report_name = traits.Str(desc="the report's dataset-relative name, where its links start "
                             "(default: nipype_xai.bids' group report, group.html)")
    outside_domain = traits.List(
        traits.List(traits.Str, minlen=2, maxlen=2),
        desc="(sub-X[_ses-Y], why) of the subjects whose input lies outside the model's training "
        "inputs (GroupInputs.outside_domain): listed in a warning")


class _GroupReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="self-contained HTML page")
    out_figures = traits.List(File(exists=True), desc="the figures as files")


class GroupReport(SimpleInterface):
    """The group HTML report (:func:`nipype_xai.reports.group.group_report`)."""

    input_spec = _GroupReportInputSpec
    output_spec = _GroupReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.group import group_report

        inputs = self.inputs
        summary = (
            read_tsv(inputs.ranking_tsv)
            if isdefined(inputs.ranking_tsv) else None
        )
        mean_maps = (dict(zip(inputs.methods, inputs.mean_maps))
                     if isdefined(inputs.mean_maps) else {})
        failures = []
        if isdefined(inputs.failures_tsv):
            table = read_tsv(inputs.failures_tsv, all_text=True)
            failures = table.to_dict("records")
        location = (inputs.report_name if isdefined(inputs.report_name)
                    else group_report_name())
        out_html = Path(runtime.cwd, Path(location).name)
        figures_dir = Path(runtime.cwd, "figures")
        names = group_derivatives(
            methods=list(mean_maps), space=_optional(inputs.space), res=_optional(inputs.res),
            subjects=list(inputs.subjects) if isdefined(inputs.subjects) else [],
            metrics=isdefined(inputs.metrics_tsv), ranking=isdefined(inputs.ranking_tsv),
            failures=bool(failures),
        )
        group_report(
            out_html,
            metrics_tsv=_optional(inputs.metrics_tsv),
            summary=summary,
            mean_maps=mean_maps,
            background=_optional(inputs.background),
            failures=failures,
            figures_dir=figures_dir,
            provenance=dict(inputs.provenance) if isdefined(inputs.provenance) else None,
            brain_mask=_optional(inputs.brain_mask),
            derivatives=names,
            location=location,
            outside_domain=([tuple(item) for item in inputs.outside_domain]
                            if isdefined(inputs.outside_domain) else ()),
        )
        self._results["out_report"] = str(out_html)
        self._results["out_figures"] = _figures(figures_dir)
        return runtime
