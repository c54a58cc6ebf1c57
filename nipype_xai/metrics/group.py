"""Group statistics over subjects: bootstrap confidence intervals, method rankings, mean maps.

Pure pandas/numpy/nibabel: no Nipype, no files read or written. ``init_group_wf`` and the group report call
these three functions; the ranking plot reads the table :func:`summarize_methods` returns.

The bootstrap
-------------
Every confidence interval is a *percentile bootstrap of the mean over subjects* (Efron & Tibshirani
1993, ch. 13). The resampling unit is the subject. One index matrix of shape ``(n_boot, n_units)``
is drawn from ``numpy.random.default_rng(seed)`` for the whole table, and every method and every
metric is resampled with the *same* rows: the replicate means of two methods are paired over
subjects, as the methods were run on the same subjects, so a difference of replicate means is a
paired bootstrap of the difference. :func:`bootstrap_ci` is the one primitive: it draws
``rng.integers(0, n, size=(n_boot, n))`` over the positions of the vector it is given, and
:func:`summarize_methods` calls it on each method's column aligned to the table's full subject list,
so the two always agree.

Crossed designs (``cluster``): when the same subjects are scored under several settings drawn at
random -- the benchmark's models trained with different seeds -- both are sources of variation.
:func:`summarize_methods` then resamples the subjects *and* the clusters (seeds) independently, each
with replacement, and a replicate is the mean over every drawn (cluster, subject) cell: the
"pigeonhole" bootstrap for crossed random factors (Owen 2007, Ann. Appl. Stat. 1:1; McCullagh
2000, Bernoulli 6:2). The subject draws are :func:`bootstrap_indices`'s, so with one cluster the
intervals are those of the subject bootstrap.

NaN values (a metric undefined for one subject, or a subject missing for one method) are left out of
every mean -- the point estimate and each replicate -- but keep their position, so that aligned
vectors stay aligned. With no NaN this is the textbook percentile bootstrap; a replicate that draws
only NaN positions is discarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Optional, Union

import nibabel as nib
import numpy as np
import pandas as pd

from .inputs import AFFINE_ATOL_MM, _image_name
from .overlap import OVERLAP_METRICS

__all__ = [
    "LOWER_IS_BETTER",
    "SUMMARY_COLUMNS",
    "bootstrap_ci",
    "cluster_labels",
    "group_mean_maps",
    "summarize_methods",
]

#: Metrics where a smaller value is better (every other metric: larger is better). ``emd`` is a
#: distance in mm; ``roi_rank`` is the rank of the ground-truth region (1 = best).
LOWER_IS_BETTER: frozenset[str] = frozenset({"emd", "roi_rank"})

#: Statistic columns of :func:`summarize_methods`, after the ``group_by`` columns.
SUMMARY_COLUMNS: tuple[str, ...] = ("metric", "mean", "sd", "ci_low", "ci_high", "n", "rank")

# Columns that identify the resampling unit rather than a metric: the BIDS identifiers of the
# derivatives' tables (participant_id = sub-<label>, session_id), or plain subject/session labels.
_UNIT_COLUMNS = ("participant_id", "session_id", "subject", "session")
_SUBJECT_COLUMNS = ("participant_id", "subject")

Image = nib.spatialimages.SpatialImage


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def _check_bootstrap_args(n_boot: int, ci: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")


def bootstrap_indices(n: int, *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """The resampling indices every bootstrap in this module uses.

    Parameters
    ----------
    n
        Number of units (subjects) resampled.
    n_boot
        Number of bootstrap replicates.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    numpy.ndarray
        Integer array of shape ``(n_boot, n)``: row b holds the units drawn, with replacement, for
        replicate b. Depends only on ``n``, ``n_boot`` and ``seed``.
    """
    return np.random.default_rng(seed).integers(0, n, size=(int(n_boot), int(n)))


def _bootstrap(values: np.ndarray, indices: np.ndarray, ci: float) -> tuple[float, float, float]:
    valid = ~np.isnan(values)
    if not valid.any():
        return float("nan"), float("nan"), float("nan")
    mean = float(values[valid].mean())
    if valid.all():
        replicates = values[indices].mean(axis=1)
    else:
        drawn = valid[indices]
        counts = drawn.sum(axis=1)
        sums = np.where(drawn, values[indices], 0.0).sum(axis=1)
        keep = counts > 0
        replicates = sums[keep] / counts[keep]
    alpha = (1.0 - ci) / 2.0
    low, high = np.percentile(replicates, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return mean, float(low), float(high)


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """``(n_boot, n)`` draw counts of each unit from ``(n_boot, m)`` resampling indices."""
    counts = np.zeros((indices.shape[0], n), dtype=np.float64)
    np.add.at(counts, (np.arange(indices.shape[0])[:, None], indices), 1.0)
    return counts


def _crossed_bootstrap(values: np.ndarray, cluster_counts: np.ndarray, unit_counts: np.ndarray,
                       ci: float) -> tuple[float, float, float]:
    """Mean and percentile CI of a ``(n_clusters, n_units)`` matrix (NaN: no cell), both factors
    resampled: replicate b is ``sum_cu c_bc u_bu M_cu / sum_cu c_bc u_bu [M_cu not NaN]``."""
    valid = ~np.isnan(values)
    if not valid.any():
        return float("nan"), float("nan"), float("nan")
    mean = float(values[valid].mean())
    filled = np.where(valid, values, 0.0)
    sums = np.einsum("bc,cu,bu->b", cluster_counts, filled, unit_counts)
    counts = np.einsum("bc,cu,bu->b", cluster_counts, valid.astype(np.float64), unit_counts)
    keep = counts > 0
    replicates = sums[keep] / counts[keep]
    alpha = (1.0 - ci) / 2.0
    low, high = np.percentile(replicates, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return mean, float(low), float(high)


def cluster_labels(values: pd.Series) -> pd.Series:
    """Cluster values as strings, a missing one (a model without training seed) as ``"n/a"``: a
    cluster of its own (``astype(str)`` keeps it missing, and a missing value neither sorts
    beside strings nor counts as a value)."""
    return values.astype(object).where(values.notna(), "n/a").astype(str)


def bootstrap_ci(
    values: Union[Sequence[float], np.ndarray, pd.Series],
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean over subjects and its percentile-bootstrap confidence interval.

    Parameters
    ----------
    values
        One value per subject; NaN marks a subject without a value and is left out of every mean
        (see the module docstring: positions, not values, are resampled, so that vectors aligned on
        the same subjects are resampled together).
    n_boot
        Number of bootstrap replicates.
    ci
        Coverage of the interval, in (0, 1).
    seed
        Seed of the resampling indices (:func:`bootstrap_indices` with ``n = len(values)``).

    Returns
    -------
    tuple of float
        ``(mean, ci_low, ci_high)``: the mean of the non-NaN values and the ``(1 - ci) / 2`` and
        ``(1 + ci) / 2`` percentiles of the replicate means. All NaN when no value is finite; the
        interval collapses to the mean when a single value is.

    Raises
    ------
    ValueError
        ``values`` is not one-dimensional or holds an infinite value; bad ``n_boot`` or ``ci``.
    """
    _check_bootstrap_args(n_boot, ci)
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"values: expected one value per subject (1D), got shape {array.shape}")
    if np.isinf(array).any():
        raise ValueError("values: infinite values have no mean; use NaN for a missing value")
    if array.size == 0:
        return float("nan"), float("nan"), float("nan")
    return _bootstrap(array, bootstrap_indices(array.size, n_boot=n_boot, seed=seed), ci)


# --------------------------------------------------------------------------------------------
# Method summaries and rankings
# --------------------------------------------------------------------------------------------


def _default_metrics(table: pd.DataFrame, exclude: Iterable[str]) -> list[str]:
    excluded = set(exclude)
    numeric = [
        column for column in table.columns
        if column not in excluded
        and pd.api.types.is_numeric_dtype(table[column])
        and not pd.api.types.is_bool_dtype(table[column])
    ]
    # The ground-truth overlap metrics in their usual order; others follow.
    known = [name for name in OVERLAP_METRICS if name in numeric]
    return known + [name for name in numeric if name not in known]


def summarize_methods(
    table: pd.DataFrame,
    *,
    metrics: Optional[Sequence[str]] = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    group_by: Sequence[str] = ("method",),
    cluster: Optional[str] = None,
) -> pd.DataFrame:
    """Mean, SD, bootstrap CI and rank of every metric for every method, over subjects.

    Parameters
    ----------
    table
        One row per subject x method (the group ``desc-overlap_metrics.tsv``): a
        ``participant_id`` (or ``subject``) column (and ``session_id``/``session``, if present:
        the unit is then subject x session), the ``group_by``
        columns, and one float column per metric. Non-numeric columns are ignored.
    metrics
        The metric columns to summarise. Default: every numeric, non-boolean column that is not a
        unit or ``group_by`` column, the overlap metrics first in their usual order.
    n_boot, ci, seed
        The bootstrap (module docstring): one index matrix over all subjects of the table, shared
        by every method and metric, so the intervals of two methods are paired.
    group_by
        Columns that identify a method (e.g. ``("model", "method")``).
    cluster
        A column crossed with the subjects, e.g. ``"training_seed"``: the same subjects scored
        under each of its values. Clusters and subjects are then both resampled (module
        docstring: the pigeonhole bootstrap), the same draws for every method; the mean and
        ``n`` are over (cluster, subject) cells. None: subjects alone.

    Returns
    -------
    pandas.DataFrame
        Long format, one row per group x metric: the ``group_by`` columns, then ``metric``,
        ``mean``, ``sd`` (sample SD, ddof=1; NaN below 2 values), ``ci_low``, ``ci_high``, ``n``
        (number of subjects with a non-NaN value) and ``rank`` (1 = best mean within the metric;
        lower is better for the metrics in :data:`LOWER_IS_BETTER`, higher for all others; ties
        share the smallest rank; nullable integer, missing when the mean is NaN). Rows follow the
        metric order, then the rank.

    Raises
    ------
    ValueError
        A missing ``participant_id``/``subject``, ``group_by`` or metric column, a non-numeric
        metric column, a subject listed twice for one method, or bad bootstrap arguments.
    """
    _check_bootstrap_args(n_boot, ci)
    group_by = [group_by] if isinstance(group_by, str) else list(group_by)
    unit_columns = [column for column in _UNIT_COLUMNS if column in table.columns]
    missing = [c for c in group_by if c not in table.columns]
    if not any(c in table.columns for c in _SUBJECT_COLUMNS):
        missing.insert(0, " or ".join(_SUBJECT_COLUMNS))
    if missing:
        raise ValueError(f"metrics table: missing column(s) {missing}; has {list(table.columns)}")
    if metrics is None:
        metrics = _default_metrics(table, [*unit_columns, *group_by])
    else:
        metrics = list(metrics)
        absent = [m for m in metrics if m not in table.columns]
        if absent:
            raise ValueError(f"metrics table: no column(s) {absent}")
        for metric in metrics:
            if not pd.api.types.is_numeric_dtype(table[metric]):
                raise ValueError(f"metrics table: column {metric!r} is not numeric")

    if cluster is not None and cluster not in table.columns:
        raise ValueError(f"metrics table: no cluster column {cluster!r}")
    identity = [*unit_columns, *([cluster] if cluster is not None else []), *group_by]
    duplicated = table.duplicated(identity, keep=False)
    if duplicated.any():
        first = table.loc[duplicated, identity].iloc[0].to_dict()
        raise ValueError(f"metrics table: more than one row for {first}")

    # Every group's values aligned on the full, sorted list of units: same indices for all.
    keys = table[unit_columns].astype(str)
    unit_index = pd.MultiIndex.from_frame(keys.drop_duplicates().sort_values(unit_columns))
    indices = bootstrap_indices(len(unit_index), n_boot=n_boot, seed=seed)
    if cluster is not None:
        cluster_keys = cluster_labels(table[cluster])
        cluster_index = pd.Index(sorted(cluster_keys.unique()))
        # The cluster draws come from their own stream, so the subject draws stay
        # bootstrap_indices(seed)'s whatever the number of clusters.
        cluster_draws = np.random.default_rng([int(seed), 1]).integers(
            0, len(cluster_index), size=(int(n_boot), len(cluster_index)))
        cluster_counts = _counts(cluster_draws, len(cluster_index))
        unit_counts = _counts(indices, len(unit_index))

    rows = []
    for group, part in table.groupby(group_by, sort=True, dropna=False):
        group = group if isinstance(group, tuple) else (group,)
        if cluster is None:
            aligned = (
                part[metrics].astype(np.float64)
                .set_axis(pd.MultiIndex.from_frame(keys.loc[part.index]), axis=0)
                .reindex(unit_index)
            )
        else:  # one (n_clusters, n_units) matrix per metric
            cells = part[metrics].astype(np.float64).set_axis(
                pd.MultiIndex.from_arrays([cluster_keys.loc[part.index],
                                           keys.loc[part.index].apply(tuple, axis=1)]), axis=0)
        for metric in metrics:
            if cluster is None:
                values = aligned[metric].to_numpy(dtype=np.float64)
            else:
                values = (cells[metric].unstack(level=1)
                          .reindex(index=cluster_index, columns=list(unit_index))
                          .to_numpy(dtype=np.float64))
            if np.isinf(values).any():
                raise ValueError(
                    f"metrics table: infinite {metric!r} for {dict(zip(group_by, group))}"
                )
            if cluster is None:
                mean, low, high = _bootstrap(values, indices, ci)
            else:
                mean, low, high = _crossed_bootstrap(values, cluster_counts, unit_counts, ci)
            finite = values[~np.isnan(values)]
            rows.append({
                **dict(zip(group_by, group)),
                "metric": metric,
                "mean": mean,
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "n": int(finite.size),
            })

    summary = pd.DataFrame(rows, columns=[*group_by, *SUMMARY_COLUMNS[:-1]])
    summary["n"] = summary["n"].astype(int)
    ranks = [
        part["mean"].rank(ascending=metric in LOWER_IS_BETTER, method="min")
        for metric, part in summary.groupby("metric", sort=False)
    ]
    summary["rank"] = (pd.concat(ranks) if ranks else pd.Series(dtype=float)).astype("Int64")
    order = {metric: i for i, metric in enumerate(metrics)}
    summary = summary.assign(_order=summary["metric"].map(order)).sort_values(
        ["_order", "rank", *group_by], na_position="last", kind="stable"
    )
    summary = summary.drop(columns="_order").reset_index(drop=True)
    summary.attrs.update(ci=float(ci), n_boot=int(n_boot), seed=int(seed))
    return summary


# --------------------------------------------------------------------------------------------
# Group mean maps
# --------------------------------------------------------------------------------------------


class _RunningMoments:
    """Voxel-wise mean and sum of squared deviations, updated one volume at a time.

    Welford's algorithm (Welford 1962; Knuth, TAOCP vol. 2, 4.2.2): numerically stable, and one
    volume plus two float64 accumulators in memory however many subjects there are.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Optional[np.ndarray] = None
        self.m2: Optional[np.ndarray] = None

    def add(self, volume: np.ndarray) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = np.array(volume, dtype=np.float64)
            self.m2 = np.zeros_like(self.mean)
            return
        delta = volume - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (volume - self.mean)

    def sd(self) -> np.ndarray:
        """Sample SD (ddof=1); zero with a single volume."""
        if self.count < 2:
            return np.zeros_like(self.mean)
        return np.sqrt(self.m2 / (self.count - 1))


def _volume(image: Image, name: str) -> np.ndarray:
    """The image's data as a finite 3D float64 array (a 4D image of one volume is squeezed)."""
    data = np.asarray(image.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name}: expected a 3D image, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: contains NaN or Inf voxels")
    return data


class _Grid(NamedTuple):
    """The grid of the first map, which every other map must share, and what is kept of it."""

    name: str
    shape: tuple[int, ...]
    affine: np.ndarray
    header: Optional[nib.Nifti1Header]  # a NIfTI-1 input's header, kept for the outputs


def _check_grid(name: str, shape: tuple[int, ...], affine: np.ndarray, grid: _Grid) -> None:
    if shape != grid.shape:
        raise ValueError(
            f"{name}: shape {shape} does not match {grid.name}'s {grid.shape}; "
            "group maps must all be on one grid"
        )
    if not np.allclose(affine, grid.affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        raise ValueError(
            f"{name}: affine does not match {grid.name}'s; group maps must all be on one "
            f"grid\n{np.array2string(affine, precision=3)}\nvs\n"
            f"{np.array2string(grid.affine, precision=3)}"
        )


def group_mean_maps(
    maps: Mapping[str, Iterable[Image]],
) -> dict[str, tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    """Voxel-wise mean and SD over subjects of each method's maps.

    Parameters
    ----------
    maps
        Method name -> one 3D map per subject (nibabel images), all on one grid (the template
        grid: same shape and affine, within :data:`~nipype_xai.metrics.overlap.AFFINE_ATOL_MM`
        mm, for every map of every method). An iterator of images is read one image at a time
        (e.g. a generator that loads each file), so memory does not grow with the number of
        subjects. Maps are averaged as they are (signed, raw): take ``abs`` before if that is the
        question.

    Returns
    -------
    dict
        Method name -> ``(mean, sd)`` float32 ``Nifti1Image`` on that grid, with the first map's
        header. The SD is the sample SD (ddof=1); with a single subject it is zero everywhere (a
        NIfTI of NaN would fail every downstream input check). Both come from one streaming pass
        with float64 accumulators (Welford).

    Raises
    ------
    ValueError
        A method without maps, a non-3D or non-finite map, or a map whose shape or affine
        differs from the first map's; the message names the file of an image read from a file
        (``get_filename()``, as :func:`nipype_xai.images.load_volume` keeps it), else
        ``method[i]``.
    """
    grid: Optional[_Grid] = None
    out: dict[str, tuple[nib.Nifti1Image, nib.Nifti1Image]] = {}
    for method, images in maps.items():
        moments = _RunningMoments()
        for index, image in enumerate(images):
            name = _image_name(image, f"{method}[{index}]")
            data = _volume(image, name)
            affine = np.asarray(image.affine, dtype=np.float64)
            if grid is None:
                header = image.header.copy() if type(image) is nib.Nifti1Image else None
                grid = _Grid(name, data.shape, affine, header)
            _check_grid(name, data.shape, affine, grid)
            moments.add(data)
        if moments.count == 0:
            raise ValueError(f"{method}: no maps to average")
        out[method] = (_as_nifti(moments.mean, grid), _as_nifti(moments.sd(), grid))
    return out


def _as_nifti(data: np.ndarray, grid: _Grid) -> nib.Nifti1Image:
    out = nib.Nifti1Image(data.astype(np.float32), grid.affine, header=grid.header)
    out.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    if grid.header is None:
        out.set_sform(grid.affine, code=1)
        out.set_qform(grid.affine, code=1)
    return out
