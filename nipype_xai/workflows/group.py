"""The group level: every subject's derivatives -> group table, method ranking, mean maps, report.

A Nipype graph rather than a plain function, although it is small: its nodes are interfaces a lab
can reuse in its own group analyses, the mean maps of the methods run beside the bootstrap, the
group sinks wait for every group result exactly like the subject sinks (no partial group
output), and the work directory caches the bootstrap and the mean maps when only the report
changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids import FAILURES_FILE, bids_uri, figures_dir, group_metrics_path, report_path
from ..bids import template_spatial_reference
from ..bids.query import GroupInputs, collect_group_inputs
from ..interfaces.bids import DerivativesDataSink, ReportsSink
from ..interfaces.metrics import GroupMeanMaps, GroupOverlapTable, MethodRanking
from ..interfaces.registration import TemplateFlowSelect
from ..interfaces.reports import GroupReport
from .outputs import gated_sink, results_gate

__all__ = ["FAILURES_FILE", "GroupInputs", "collect_group_inputs", "init_group_wf"]

PathLike = Union[str, os.PathLike]


def init_group_wf(
    *,
    inputs: GroupInputs,
    output_dir: PathLike,
    reports: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    provenance: Optional[Mapping[str, Any]] = None,
    name: str = "group_wf",
) -> pe.Workflow:
    """Summarise the participant level over subjects.

    Writes, under ``group/`` (:data:`nipype_xai.bids.GROUP_DIR`; names from
    :mod:`nipype_xai.bids`): ``desc-overlap_metrics.tsv`` (every subject x method, with ground
    truth), ``desc-overlap_ranking.tsv`` (each method's mean, SD, 95% bootstrap CI over subjects and
    rank for each metric), ``space-<tpl>[_res-<r>]_desc-<method>Mean_attribution.nii.gz`` and
    ``..._desc-<method>Sd_attribution.nii.gz`` per method, each with a sidecar whose ``Sources``
    are the subjects' files (``bids::sub-XX/...``); and ``group.html`` at the root with its
    figures in ``group/figures/``. Every sink waits for every group result.

    Parameters
    ----------
    inputs
        From :func:`collect_group_inputs`.
    output_dir
        The derivatives dataset (the participant level's output).
    reports
        Make the group HTML report.
    n_boot, seed
        Bootstrap replicates and seed of the ranking's confidence intervals.
    provenance
        What produced the results (version, model, methods, ...), shown in the report.
    name
        Workflow name.

    Inputs
    ------
    metrics_tsvs, maps, methods, failures_tsv
        Set from ``inputs``.

    Outputs
    -------
    metrics, ranking
        Group table and ranking TSVs (with ground truth).
    mean_maps, sd_maps, methods
        Mean and SD map per method, and the method of each.
    report
        The group HTML report.
    """
    has_metrics = bool(inputs.metrics_tsvs)
    workflow = pe.Workflow(name=name)
    workflow.config["execution"] = {"hash_method": "timestamp"}
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["metrics_tsvs", "maps", "methods", "failures_tsv"]),
        name="inputnode",
    )
    inputnode.inputs.maps = [str(p) for p in inputs.maps]
    inputnode.inputs.methods = list(inputs.methods)
    if has_metrics:
        inputnode.inputs.metrics_tsvs = [str(p) for p in inputs.metrics_tsvs]
    if inputs.failures_tsv is not None:
        inputnode.inputs.failures_tsv = str(inputs.failures_tsv)
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["metrics", "ranking", "mean_maps", "sd_maps", "methods",
                                      "report"]),
        name="outputnode",
    )

    mean_maps = pe.Node(GroupMeanMaps(), name="mean_maps")
    connections = [
        (inputnode, mean_maps, [("maps", "in_maps"), ("methods", "methods")]),
        (mean_maps, outputnode, [("out_mean", "mean_maps"), ("out_sd", "sd_maps"),
                                 ("methods", "methods")]),
    ]
    gate_fields = [(mean_maps, "out_mean"), (mean_maps, "out_sd")]
    if has_metrics:
        group_table = pe.Node(GroupOverlapTable(), name="group_table")
        ranking = pe.Node(MethodRanking(n_boot=n_boot, seed=seed), name="ranking")
        connections += [
            (inputnode, group_table, [("metrics_tsvs", "in_tsvs")]),
            (group_table, ranking, [("out_tsv", "in_tsv")]),
            (group_table, outputnode, [("out_tsv", "metrics")]),
            (ranking, outputnode, [("out_tsv", "ranking")]),
        ]
        gate_fields += [(group_table, "out_tsv"), (ranking, "out_tsv")]
    if reports:
        # 2 mm: plenty under model-grid maps, and quick to plot.
        background = pe.Node(
            TemplateFlowSelect(template=inputs.template, resolution=2, t1w_desc="brain"),
            name="background",
        )
        # Subjects as "sub-01" or "sub-01_ses-2": the page links each one's report.
        report = pe.Node(GroupReport(space=inputs.template,
                                     subjects=list(inputs.labels or inputs.subjects)),
                         name="report")
        if inputs.res:
            report.inputs.res = inputs.res
        if inputs.outside_domain:
            report.inputs.outside_domain = [list(item) for item in inputs.outside_domain]
        if provenance:
            report.inputs.provenance = dict(provenance)
        connections += [
            (background, report, [("t1w_file", "background"), ("brain_mask", "brain_mask")]),
            (mean_maps, report, [("out_mean", "mean_maps"), ("methods", "methods")]),
            (inputnode, report, [("failures_tsv", "failures_tsv")]),
            (report, outputnode, [("out_report", "report")]),
        ]
        if has_metrics:
            connections.append((group_table, report, [("out_tsv", "metrics_tsv")]))
            connections.append((ranking, report, [("out_tsv", "ranking_tsv")]))
        gate_fields += [(report, "out_report"), (report, "out_figures")]

    gate = results_gate(gate_fields, connections)

    # Group-level derivatives go to nipype_xai.bids.GROUP_DIR (why: see there); their Sources are
    # the subjects' files of this same dataset (bids::sub-XX/...).
    root = Path(output_dir).absolute()
    grid = {"space": inputs.template}
    if inputs.res:
        grid["res"] = inputs.res
    spatial = {"SpatialReference": template_spatial_reference(inputs.template)}
    if inputs.res:
        spatial["Resolution"] = {inputs.res: f"the participant-level maps' grid (res-{inputs.res})"}
    # GroupMeanMaps returns the methods in order of first appearance: one Sources list each.
    map_sources = [
        {"Sources": [bids_uri(path, root) for path, m in zip(inputs.maps, inputs.methods)
                     if m == method]}
        for method in dict.fromkeys(inputs.methods)
    ]
    participants = [f"sub-{s}" for s in inputs.subjects]

    def sink(name: str, **fields: Any) -> pe.Node:
        return gated_sink(DerivativesDataSink(base_directory=str(root), **fields), name=name,
                          gate=gate, connections=connections)

    statistics = {"mean": "Voxel-wise mean over subjects of the signed, raw maps",
                  "sd": "Voxel-wise sample SD (ddof=1) over subjects of the signed, raw maps"}
    for statistic, description in statistics.items():
        ds_maps = sink(f"ds_{statistic}_maps", suffix="attribution", **grid,
                       meta_dict={"Description": description, "Participants": participants,
                                  **spatial},
                       meta_per_file=map_sources)
        connections.append((mean_maps, ds_maps, [
            (f"out_{statistic}", "in_file"),
            (("methods", _mean_descs if statistic == "mean" else _sd_descs), "desc")]))
    if has_metrics:
        ds_metrics = sink(
            "ds_metrics", desc="overlap", suffix="metrics",
            meta_dict={"Description": "Every subject's overlap metrics, one row per subject x "
                       "map", "Sources": [bids_uri(path, root) for path in inputs.metrics_tsvs]})
        ds_ranking = sink(
            "ds_ranking", desc="overlap", suffix="ranking",
            meta_dict={"Description": "Methods ranked by each overlap metric: mean over "
                       "subjects, SD, percentile-bootstrap CI (paired over subjects), "
                       "n, rank (1 = best)", "BootstrapReplicates": n_boot,
                       "BootstrapSeed": seed, "ConfidenceLevel": 0.95,
                       "Sources": [bids_uri(group_metrics_path(root), root)]})
        connections += [
            (group_table, ds_metrics, [("out_tsv", "in_file")]),
            (ranking, ds_ranking, [("out_tsv", "in_file")]),
        ]
    if reports:
        ds_report = gated_sink(
            ReportsSink(base_directory=str(root), report_name=report_path().as_posix(),
                        figures_dir=figures_dir().as_posix()),
            name="ds_report", gate=gate, connections=connections)
        connections.append(
            (report, ds_report, [("out_report", "in_report"), ("out_figures", "in_figures")]))
    workflow.connect(connections)
    return workflow


def _mean_descs(methods):
    from nipype_xai.bids import group_map_desc

    return [group_map_desc(m, "mean") for m in methods]


def _sd_descs(methods):
    from nipype_xai.bids import group_map_desc

    return [group_map_desc(m, "sd") for m in methods]
