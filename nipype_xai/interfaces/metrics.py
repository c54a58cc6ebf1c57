"""Nipype interfaces around the scoring cores (:mod:`nipype_xai.metrics`).

- ``GroundTruthOverlap``: a subject's attribution maps + ground-truth mask -> one TSV row per map
  (:func:`nipype_xai.metrics.overlap_metrics_report`).
- ``GroupOverlapTable``: every subject's overlap TSV -> one table (the group
  ``desc-overlap_metrics.tsv``).
- ``MethodRanking``: that table -> mean, SD, bootstrap CI and rank of every method for every metric
  (:func:`nipype_xai.metrics.group.summarize_methods`).
- ``GroupMeanMaps``: every subject's template-space maps -> voxel-wise mean and SD per method
  (:func:`nipype_xai.metrics.group.group_mean_maps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
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
from ..metrics import AFFINE_ATOL_MM, SCORES, MetricsError, overlap_metrics_report
from ..tables import read_tsv, write_tsv

__all__ = ["GroundTruthOverlap", "GroupMeanMaps", "GroupOverlapTable", "MethodRanking"]

#: Columns of the overlap TSV that identify a row; every other numeric column is a metric.
#: ``participant_id`` holds ``sub-<label>`` and ``session_id`` ``ses-<label>``, as in BIDS tables
#: (``participants.tsv``, ``sessions.tsv``): text that no reader takes for a number.
ID_COLUMNS = ("participant_id", "session_id", "method")


def _is_binary(img: nib.spatialimages.SpatialImage) -> bool:
    """Whether an image holds only the values 0 and 1 (a mask, whatever its data type)."""
    data = np.asarray(img.dataobj)
    return bool(np.isin(data, (0, 1)).all())


def _same_grid(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(
        a.affine, b.affine, rtol=0.0, atol=AFFINE_ATOL_MM
    )


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
        desc="how maps are read: 'abs' |a| (default), 'pos' max(a, 0), 'raw' signed a",
    )
    subject = traits.Str(desc="subject label (without 'sub-'): 'participant_id' = sub-<label>")
    session = traits.Str(desc="session label (without 'ses-'): 'session_id' column = ses-<label>")


class _GroundTruthOverlapOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="one row per map: ids, every metric, how emd was computed")


class GroundTruthOverlap(SimpleInterface):
    """Score attribution maps against a ground-truth mask (SPEC §3 metrics, one TSV row per map).

    Columns: ``participant_id`` (``sub-<label>``; and ``session_id``), ``method``, ``score``, the
    metrics of
    :func:`~nipype_xai.metrics.overlap_metrics` (``precision_at_k``, ``relevance_mass_accuracy``,
    ``pointing_game``, ``auroc``, ``average_precision``, ``dice_at_k``, ``emd``, ``emd_score``),
    then ``emd_method`` (exact, or the coarsening used), ``n_gt_voxels`` (= k),
    ``n_brain_voxels`` and ``resampled`` (see below). Undefined values are ``n/a``.

    The ground truth and the brain mask are read as masks: nonzero voxels are inside. The ground
    truth defines the grid the metrics are computed on: a map on another grid is resampled onto
    it before scoring, with linear interpolation, or with nearest neighbour when the map holds
    only 0 and 1 (a mask given as a map, e.g. an oracle or a thresholded map: interpolating it
    would invent values no map had), as the brain mask is; the row says which in ``resampled``.
    Give maps on the ground truth's grid to avoid any interpolation.

    Raises
    ------
    nipype_xai.metrics.MetricsError
        The ground truth is empty (in the brain mask), or ``methods`` does not match ``in_maps``.
        The message names the ground-truth file.
    nipype_xai.images.ImageError
        A map or mask cannot be read, is not 3D or holds NaN/Inf; the message names the file.
    """

    input_spec = _GroundTruthOverlapInputSpec
    output_spec = _GroundTruthOverlapOutputSpec

    def _run_interface(self, runtime):
        from nilearn.image import resample_to_img

        inputs = self.inputs
        maps, methods = list(inputs.in_maps), list(inputs.methods)
        if len(maps) != len(methods):
            raise MetricsError(f"{len(maps)} maps but {len(methods)} method names")
        gt_path = Path(inputs.ground_truth)
        gt_img = load_volume(gt_path)
        gt = np.asarray(gt_img.dataobj) != 0
        if not gt.any():
            raise MetricsError(
                f"{gt_path.name}: the ground-truth mask is empty (no nonzero voxel); no overlap "
                "metric is defined without a target"
            )

        brain = None
        if isdefined(inputs.brain_mask):
            mask_img = load_volume(inputs.brain_mask)
            if not _same_grid(mask_img, gt_img):
                mask_img = resample_to_img(mask_img, gt_img, interpolation="nearest",
                                           force_resample=True, copy_header=True)
            brain = np.asarray(mask_img.dataobj) != 0
            if not (gt & brain).any():
                raise MetricsError(
                    f"{gt_path.name}: the ground-truth mask lies entirely outside the brain mask "
                    f"{Path(inputs.brain_mask).name}"
                )

        rows = []
        for map_path, method in zip(maps, methods):
            map_img = load_volume(map_path)
            resampled = None
            if not _same_grid(map_img, gt_img):
                resampled = "nearest" if _is_binary(map_img) else "linear"
                map_img = resample_to_img(map_img, gt_img, interpolation=resampled,
                                          force_resample=True, copy_header=True)
            try:
                scores, notes = overlap_metrics_report(
                    np.asarray(map_img.dataobj, dtype=np.float32), gt, brain, inputs.score,
                    affine=gt_img.affine,
                )
            except MetricsError as error:
                raise MetricsError(f"{Path(map_path).name} vs {gt_path.name}: {error}") from error
            row: dict[str, Any] = {}
            if isdefined(inputs.subject):
                row["participant_id"] = f"sub-{inputs.subject}"
            if isdefined(inputs.session):
                row["session_id"] = f"ses-{inputs.session}"
            row.update(method=method, score=inputs.score, **scores)
            row.update(
                emd_method=notes.get("emd_method"),
                n_gt_voxels=notes.get("n_gt_voxels"),
                n_brain_voxels=notes.get("n_brain_voxels"),
                resampled=f"{resampled} onto the ground-truth grid" if resampled else "no",
            )
            rows.append(row)

        out_tsv = Path(fname_presuffix(
            str(gt_path), suffix="_overlap_metrics.tsv", newpath=runtime.cwd, use_ext=False
        ))
        write_tsv(pd.DataFrame(rows), out_tsv)
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

        if len(self.inputs.in_maps) != len(self.inputs.methods):
            raise ValueError(f"{len(self.inputs.in_maps)} maps but {len(self.inputs.methods)} "
                             "method names")
        by_method: dict[str, list[str]] = {}
        for path, method in zip(self.inputs.in_maps, self.inputs.methods):
            by_method.setdefault(method, []).append(path)
        means, sds = [], []
        for method, (mean, sd) in group_mean_maps(by_method).items():
            stem = method_to_desc(method)
            means.append(str(save_image(mean, Path(runtime.cwd, f"{stem}_mean.nii.gz"))))
            sds.append(str(save_image(sd, Path(runtime.cwd, f"{stem}_sd.nii.gz"))))
        self._results["methods"] = list(by_method)
        self._results["out_mean"] = means
        self._results["out_sd"] = sds
        return runtime
