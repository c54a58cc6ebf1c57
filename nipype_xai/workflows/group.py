"""The group level: every subject's derivatives -> group table, method ranking, mean maps, report.

A Nipype graph rather than a plain function, although it is small: its nodes are interfaces a lab
can reuse in its own group analyses, the mean maps of the methods run beside the bootstrap, the
group sinks wait for every group result exactly like the subject sinks (no partial group
output), and the work directory caches the bootstrap and the mean maps when only the report
changes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids import (
    bids_uri,
    desc_to_method,
    figures_dir,
    group_metrics_path,
    recorded_files,
    report_path,
    subject_status,
    template_spatial_reference,
)
from ..interfaces.baselines import BASELINE_DESCRIPTIONS
from ..interfaces.bids import DerivativesDataSink, ReportsSink
from ..interfaces.metrics import GroupMeanMaps, GroupOverlapTable, MethodRanking
from ..interfaces.registration import TemplateFlowSelect
from ..interfaces.reports import GroupReport
from .base import BIDSInputError

__all__ = ["FAILURES_FILE", "GroupInputs", "collect_group_inputs", "init_group_wf"]

PathLike = Union[str, os.PathLike]

#: Written by the participant level at the output root: subjects that failed and why.
FAILURES_FILE = "failures.tsv"


@dataclass(frozen=True)
class GroupInputs:
    """The participant-level derivatives the group level summarises.

    Attributes
    ----------
    metrics_tsvs
        Every subject's ``desc-overlap_metrics.tsv`` (empty without ground truth).
    maps, methods
        Every subject's template-space map, and the method of each.
    template, res
        ``space-`` and ``res-`` of those maps (one grid).
    subjects
        Subjects with maps.
    failures_tsv
        The participant level's ``failures.tsv``, if any.
    incomplete
        ``(sub-X[_ses-Y], why)`` of the subjects left out because their derivatives are not
        complete (a run killed while it wrote them, or files changed since).
    """

    metrics_tsvs: list[Path]
    maps: list[Path]
    methods: list[str]
    template: str
    res: Optional[str]
    subjects: list[str] = field(default_factory=list)
    failures_tsv: Optional[Path] = None
    incomplete: list[tuple[str, str]] = field(default_factory=list)


def _method_of(path: Path, desc: str) -> str:
    """The method of a map: its sidecar's ``Method``, else the ``desc`` label read back."""
    sidecar = path.with_name(path.name[: -len(".nii.gz")] + ".json")
    try:
        method = json.loads(sidecar.read_text()).get("Method")
    except (OSError, ValueError):
        method = None
    if isinstance(method, str) and method:
        return method
    from ..attribution import available_methods

    return desc_to_method(desc, known=[*available_methods(), *BASELINE_DESCRIPTIONS])


def collect_group_inputs(output_dir: PathLike, template: Optional[str] = None) -> GroupInputs:
    """Find the participant-level derivatives in ``output_dir`` with pybids.

    Parameters
    ----------
    output_dir
        The derivatives dataset the participant level wrote.
    template
        ``space-`` of the maps to average; default: the one space the maps are in.

    Raises
    ------
    BIDSInputError
        ``output_dir`` holds no participant-level maps, or maps on several grids.
    """
    from bids import BIDSLayout
    from bids.layout import Query

    root = Path(output_dir).absolute()
    if not (root / "dataset_description.json").is_file():
        raise BIDSInputError(
            f"{root}: no participant-level results (no dataset_description.json); run the "
            "participant level first"
        )
    layout = BIDSLayout(str(root), validate=False)
    query: dict[str, Any] = {"subject": Query.ANY, "suffix": "attribution",
                             "extension": ".nii.gz", "space": template or Query.ANY}
    files, incomplete = _complete_only(root, layout.get(**query))
    if not files:
        raise BIDSInputError(
            f"{root}: no template-space attribution maps of any subject "
            f"(sub-*/anat/*_space-{template or '<tpl>'}_*_attribution.nii.gz); run the "
            "participant level first"
        )
    grids = Counter((f.entities.get("space"), f.entities.get("res")) for f in files)
    if len(grids) > 1:
        listed = ", ".join(f"space-{s}" + (f"_res-{r}" if r else "") for s, r in grids)
        raise BIDSInputError(f"{root}: maps on several grids ({listed}); choose one with "
                             "--template")
    (space, res), = grids
    maps, methods, subjects = [], [], []
    for f in sorted(files, key=lambda f: f.path):
        path = Path(f.path)
        maps.append(path)
        methods.append(_method_of(path, f.entities.get("desc", "")))
        subjects.append(f.entities["subject"])
    metrics, _ = _complete_only(root, layout.get(
        subject=Query.ANY, desc="overlap", suffix="metrics", extension=".tsv"))
    failures = root / FAILURES_FILE
    return GroupInputs(
        metrics_tsvs=sorted(Path(f.path) for f in metrics), maps=maps, methods=methods,
        template=space, res=res, subjects=sorted(set(subjects)),
        failures_tsv=failures if failures.is_file() else None, incomplete=incomplete,
    )


def _complete_only(root: Path, files: list) -> tuple[list, list[tuple[str, str]]]:
    """The files of subjects whose derivatives are complete and listed in their record.

    A subject is complete when its completion record lists every file it wrote, unchanged
    (:func:`nipype_xai.bids.subject_status`); a run killed while it wrote a subject leaves no
    record, and that subject is left out (and named) rather than summarised from part of it.
    """
    status: dict[str, Optional[str]] = {}
    listed: dict[str, set[Path]] = {}
    kept, incomplete = [], []
    for f in files:
        entities = f.entities
        label = f"sub-{entities['subject']}" + (
            f"_ses-{entities['session']}" if entities.get("session") else "")
        if label not in status:
            status[label] = subject_status(root, label)
            listed[label] = {p.absolute() for p in recorded_files(root, label)}
            if status[label] is not None:
                incomplete.append((label, status[label]))
        if status[label] is None and Path(f.path).absolute() in listed[label]:
            kept.append(f)
    return kept, incomplete


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
        report = pe.Node(GroupReport(space=inputs.template, subjects=list(inputs.subjects)),
                         name="report")
        if inputs.res:
            report.inputs.res = inputs.res
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

    gate = pe.Node(niu.Merge(len(gate_fields)), name="all_results")
    for index, (node, field_name) in enumerate(gate_fields, start=1):
        connections.append((node, gate, [(field_name, f"in{index}")]))

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
    ds_mean = pe.Node(
        DerivativesDataSink(base_directory=str(root), suffix="attribution", **grid,
                            meta_dict={"Description": "Voxel-wise mean over subjects of the "
                                       "signed, raw maps", "Participants": participants,
                                       **spatial},
                            meta_per_file=map_sources),
        name="ds_mean_maps", run_without_submitting=True,
    )
    ds_sd = pe.Node(
        DerivativesDataSink(base_directory=str(root), suffix="attribution", **grid,
                            meta_dict={"Description": "Voxel-wise sample SD (ddof=1) over "
                                       "subjects of the signed, raw maps",
                                       "Participants": participants, **spatial},
                            meta_per_file=map_sources),
        name="ds_sd_maps", run_without_submitting=True,
    )
    connections += [
        (gate, ds_mean, [("out", "wait_for")]),
        (gate, ds_sd, [("out", "wait_for")]),
        (mean_maps, ds_mean, [("out_mean", "in_file"), (("methods", _mean_descs), "desc")]),
        (mean_maps, ds_sd, [("out_sd", "in_file"), (("methods", _sd_descs), "desc")]),
    ]
    if has_metrics:
        ds_metrics = pe.Node(
            DerivativesDataSink(
                base_directory=str(root), desc="overlap", suffix="metrics",
                meta_dict={"Description": "Every subject's overlap metrics, one row per "
                           "subject x map", "Sources": [bids_uri(path, root)
                                                        for path in inputs.metrics_tsvs]}),
            name="ds_metrics", run_without_submitting=True,
        )
        ds_ranking = pe.Node(
            DerivativesDataSink(
                base_directory=str(root), desc="overlap", suffix="ranking",
                meta_dict={"Description": "Methods ranked by each overlap metric: mean over "
                           "subjects, SD, percentile-bootstrap CI (paired over subjects), "
                           "n, rank (1 = best)", "BootstrapReplicates": n_boot,
                           "BootstrapSeed": seed, "ConfidenceLevel": 0.95,
                           "Sources": [bids_uri(group_metrics_path(root), root)]}),
            name="ds_ranking", run_without_submitting=True,
        )
        connections += [
            (gate, ds_metrics, [("out", "wait_for")]),
            (gate, ds_ranking, [("out", "wait_for")]),
            (group_table, ds_metrics, [("out_tsv", "in_file")]),
            (ranking, ds_ranking, [("out_tsv", "in_file")]),
        ]
    if reports:
        ds_report = pe.Node(
            ReportsSink(base_directory=str(root), report_name=report_path().as_posix(),
                        figures_dir=figures_dir().as_posix()),
            name="ds_report", run_without_submitting=True,
        )
        connections += [
            (gate, ds_report, [("out", "wait_for")]),
            (report, ds_report, [("out_report", "in_report"), ("out_figures", "in_figures")]),
        ]
    workflow.connect(connections)
    return workflow


def _mean_descs(methods):
    from nipype_xai.bids import group_map_desc

    return [group_map_desc(m, "mean") for m in methods]


def _sd_descs(methods):
    from nipype_xai.bids import group_map_desc

    return [group_map_desc(m, "sd") for m in methods]
