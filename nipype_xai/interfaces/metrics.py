"""Nipype interfaces around the scoring cores (:mod:`nipype_xai.metrics`).

- ``GroundTruthOverlap``: a subject's attribution maps + ground-truth mask -> one TSV row per map
  (:func:`nipype_xai.metrics.scoring.score_maps`).
- ``GroupOverlapTable``: every subject's overlap TSV -> one table (the group
  ``desc-overlap_metrics.tsv``).
- ``MethodRanking``: that table -> mean, SD, bootstrap CI and rank of every method for every metric
  (:func:`nipype_xai.metrics.group.summarize_methods`).
- ``GroupMeanMaps``: every subject's template-space maps -> voxel-wise mean and SD per method
  (:func:`nipype_xai.metrics.group.group_mean_maps`).
"""

from __future__ import annotations

from pathlib import Path
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from ..bids import method_to_desc
from ..images import load_volume, save_image
from ..metrics.overlap import SCORES, MetricsError
from ..metrics.scoring import score_maps
from ..tables import read_tsv, write_tsv

__all__ = ["GroundTruthOverlap", "GroupMeanMaps", "GroupOverlapTable", "MethodRanking"]

#: Columns of the overlap TSV that identify a row; every other numeric column is a metric.
#: ``participant_id`` holds ``sub-<label>`` and ``session_id`` ``ses-<label>``, as in BIDS tables
#: (``participants.tsv``, ``sessions.tsv``): text that no reader takes for a number.
ID_COLUMNS = ("participant_id", "session_id", "method")


def _method_maps(maps: list[str], methods: list[str]) -> list[tuple[str, str]]:
    """``(method, map)`` pairs of the ``methods`` and ``in_maps`` inputs, which must pair up."""
    if len(maps) != len(methods):
        raise MetricsError(f"{len(maps)} maps but {len(methods)} method names")
    return list(zip(methods, maps))


class _GroundTruthOverlapInputSpec(BaseInterfaceInputSpec):
    in_maps = traits.List(
        File(exists=True), mandatory=True, minlen=1, desc="attribution maps (3D NIfTI)"
    )
    methods = traits.List(
        traits.Str, mandatory=True, desc="method name of each map, in the order of in_maps"
    )
    ground_truth = File(
        exists=True, mandatory=True,
        desc="ground-truth mask (nonzero = signal), e.g. a lesion mask on the T1w grid",
    )
    brain_mask = File(exists=True, desc="brain mask: voxels outside it are ignored by every metric")
    score = traits.Enum(
        *SCORES, usedefault=True,
        desc="how the rank metrics and emd read maps: 'abs' |a| (default), 'pos' max(a, 0), "
             "'raw' signed a; the relevance mass accuracies read maps as their papers define",
    )
    subject = traits.Str(desc="subject label (without 'sub-'): 'participant_id' = sub-<label>")
    session = traits.Str(desc="session label (without 'ses-'): 'session_id' column = ses-<label>")


class _GroundTruthOverlapOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="one row per map: ids, every metric, how emd was computed")


class GroundTruthOverlap(SimpleInterface):
    """Score attribution maps against a ground-truth mask (SPEC §3 metrics, one TSV row per map).

    Loads the maps (one at a time), the ground truth and the brain mask, scores them with
    :func:`nipype_xai.metrics.scoring.score_maps` and writes its rows, after the subject's
    identifiers. The ground truth defines the grid: a map on another grid is resampled onto it
    (linearly, or by nearest neighbour when it holds only 0 and 1), as the brain mask is; give
    maps on the ground truth's grid to avoid any interpolation.

    Columns: ``participant_id`` (``sub-<label>``; and ``session_id``), ``method``, ``score``, the
    metrics of :func:`~nipype_xai.metrics.overlap_metrics` (``precision_at_k``,
    ``relevance_mass_accuracy`` (positive part, Arras et al.), ``relevance_mass_accuracy_siegel``
    (the Siegel et al. procedure), ``pointing_game``, ``auroc``, ``average_precision``,
    ``dice_at_k``, ``emd``, ``emd_score``; what each measures:
    :data:`~nipype_xai.metrics.overlap.METRIC_CONVENTIONS`), then ``emd_method`` (exact, or the
    coarsening used), ``n_gt_voxels`` (= k), ``n_brain_voxels`` and ``resampled`` (``no``, or how
    the map was resampled). Undefined values are ``n/a``.

    Raises
    ------
    nipype_xai.metrics.MetricsError
        The ground truth is empty (in the brain mask), a map cannot be scored, or ``methods``
        does not match ``in_maps``. The message names the ground-truth file (and the map's).
    nipype_xai.images.ImageError
        A map or mask cannot be read, is not 3D or holds NaN/Inf; the message names the file.
    """

    input_spec = _GroundTruthOverlapInputSpec
    output_spec = _GroundTruthOverlapOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        pairs = _method_maps(inputs.in_maps, inputs.methods)
        ids: dict[str, str] = {}
        if isdefined(inputs.subject):
            ids["participant_id"] = f"sub-{inputs.subject}"
        if isdefined(inputs.session):
            ids["session_id"] = f"ses-{inputs.session}"

        rows = score_maps(
            # A generator: the core reads one map at a time.
            ((method, load_volume(path)) for method, path in pairs),
            load_volume(inputs.ground_truth),
            load_volume(inputs.brain_mask) if isdefined(inputs.brain_mask) else None,
            inputs.score,
        )

        out_tsv = Path(fname_presuffix(
            inputs.ground_truth, suffix="_overlap_metrics.tsv", newpath=runtime.cwd, use_ext=False
        ))
        write_tsv(pd.DataFrame([{**ids, **row} for row in rows]), out_tsv)
        self._results["out_tsv"] = str(out_tsv)
        return runtime


class _GroupOverlapTableInputSpec(BaseInterfaceInputSpec):
    in_tsvs = traits.List(File(exists=True), mandatory=True, minlen=1,
                          desc="per-subject overlap-metrics TSVs (GroundTruthOverlap's)")


class _GroupOverlapTableOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="all rows, sorted by participant, session and method")


class GroupOverlapTable(SimpleInterface):
    """Concatenate per-subject overlap-metrics tables into the group table.

    Rows are sorted by ``participant_id``, ``session_id`` (if any) and ``method``; columns are the
    union of
    the inputs' (a metric missing for a subject is ``n/a``).
    """

    input_spec = _GroupOverlapTableInputSpec
    output_spec = _GroupOverlapTableOutputSpec

    def _run_interface(self, runtime):
        tables = [read_tsv(path) for path in self.inputs.in_tsvs]
        table = pd.concat(tables, ignore_index=True, sort=False)
        keys = [column for column in ID_COLUMNS if column in table.columns]
        table = table.sort_values(keys, kind="stable").reset_index(drop=True)
        out_tsv = Path(runtime.cwd, "group_overlap_metrics.tsv")
        write_tsv(table, out_tsv)
        self._results["out_tsv"] = str(out_tsv)
        return runtime


class _MethodRankingInputSpec(BaseInterfaceInputSpec):
    in_tsv = File(exists=True, mandatory=True, desc="group overlap-metrics table")
    metrics = traits.List(traits.Str, desc="metric columns to summarise (default: all)")
    n_boot = traits.Int(2000, usedefault=True, desc="bootstrap replicates")
    ci = traits.Float(0.95, usedefault=True, desc="coverage of the confidence intervals")
    seed = traits.Int(0, usedefault=True, desc="seed of the bootstrap")


class _MethodRankingOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="method x metric: mean, sd, ci_low, ci_high, n, rank")


class MethodRanking(SimpleInterface):
    """Rank methods by each metric with bootstrap confidence intervals over subjects.

    Calls :func:`nipype_xai.metrics.group.summarize_methods` (paired percentile bootstrap of the
    mean over subjects; rank 1 = best).
    """

    input_spec = _MethodRankingInputSpec
    output_spec = _MethodRankingOutputSpec

    def _run_interface(self, runtime):
        from ..metrics.group import summarize_methods

        table = read_tsv(self.inputs.in_tsv)
        # Row counts are bookkeeping, not metrics to rank methods by.
        table = table.drop(columns=[c for c in ("n_gt_voxels", "n_brain_voxels") if c in table])
        summary = summarize_methods(
            table,
            metrics=list(self.inputs.metrics) if isdefined(self.inputs.metrics) else None,
            n_boot=self.inputs.n_boot, ci=self.inputs.ci, seed=self.inputs.seed,
        )
        out_tsv = Path(runtime.cwd, "method_ranking.tsv")
        write_tsv(summary, out_tsv)
        self._results["out_tsv"] = str(out_tsv)
        return runtime


class _GroupMeanMapsInputSpec(BaseInterfaceInputSpec):
    in_maps = traits.List(File(exists=True), mandatory=True, minlen=1,
                          desc="every subject's template-space maps, any order")
    methods = traits.List(traits.Str, mandatory=True,
                          desc="method of each map, in the order of in_maps")


class _GroupMeanMapsOutputSpec(TraitedSpec):
    methods = traits.List(traits.Str, desc="the methods, in order of first appearance")
    out_mean = traits.List(File(exists=True), desc="voxel-wise mean map per method")
    out_sd = traits.List(File(exists=True), desc="voxel-wise SD map (ddof=1) per method")


class GroupMeanMaps(SimpleInterface):
    """Voxel-wise mean and SD over subjects of each method's template-space maps.

    Maps are averaged as they are (signed, raw), so the mean of a method whose sign flips between
    subjects can cancel: the SD map shows where. All maps must share one grid
    (:func:`nipype_xai.metrics.group.group_mean_maps`).
    """

    input_spec = _GroupMeanMapsInputSpec
    output_spec = _GroupMeanMapsOutputSpec

    def _run_interface(self, runtime):
        from ..metrics.group import group_mean_maps

        by_method: dict[str, list[str]] = {}
        for method, path in _method_maps(self.inputs.in_maps, self.inputs.methods):
            by_method.setdefault(method, []).append(path)
        # Generators: the core reads one map at a time, however many subjects there are.
        group = group_mean_maps({
            method: (load_volume(path) for path in paths) for method, paths in by_method.items()
        })
        means, sds = [], []
        for method, (mean, sd) in group.items():
            stem = method_to_desc(method)
            means.append(str(save_image(mean, Path(runtime.cwd, f"{stem}_mean.nii.gz"))))
            sds.append(str(save_image(sd, Path(runtime.cwd, f"{stem}_sd.nii.gz"))))
        self._results["methods"] = list(by_method)
        self._results["out_mean"] = means
        self._results["out_sd"] = sds
        return runtime
