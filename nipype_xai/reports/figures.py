"""Report figures: attribution maps over anatomy (nilearn), glass brains, method rankings.

Every function draws on its own ``matplotlib.figure.Figure`` (not ``pyplot``): nothing is
registered with pyplot's figure manager, so the user's backend is neither used nor changed, no
window opens, and a figure is freed as soon as it goes out of scope (no leak over 1,000 subjects).
Saving renders with matplotlib's Agg (PNG) and SVG canvases whatever the global backend is.
Importing ``nilearn.plotting`` switches the global backend to Agg only when the current one cannot
load (no display), which is nilearn's own behaviour.

Maps are shown as ``|map|`` scaled per map: divided by its 99th percentile of ``|map|`` over the
nonzero voxels (:data:`SCALE_PERCENTILE`) and clipped to [0, 1]. Raw attribution values differ by
orders of magnitude between methods; after this scaling every row uses the same colour scale, and 1
means "among the top 1 % of this map". ``threshold`` is on that scale.

Each row's label sits in a band above it and the slice positions, shared by every row, in the
title: nilearn draws its titles and positions over the images. Every figure is written twice,
``<out_base>.png`` and ``<out_base>.svg``, atomically.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..atomic import atomic_write
from ..attribution.baselines import is_baseline
from ..metrics.group import LOWER_IS_BETTER, SUMMARY_COLUMNS

__all__ = [
    "DEFAULT_THRESHOLD",
    "SCALE_PERCENTILE",
    "is_baseline",
    "plot_anatomy",
    "plot_attribution_panel",
    "plot_glass_brains",
    "plot_method_ranking",
    "save_figure",
    "save_reproducibly",
    "scale_abs",
]

PathLike = Union[str, os.PathLike]
ImageLike = Union[str, os.PathLike, nib.spatialimages.SpatialImage]
#: What every ``plot_*`` function returns: the two files written, ``{"png": Path, "svg": Path}``.
FigureFiles = dict[str, Path]

#: Percentile of the nonzero ``|map|`` values that maps to 1 on the colour scale.
SCALE_PERCENTILE = 99.0
#: Default display threshold, on the scaled ``|map|`` (0.1 = a tenth of the 99th percentile).
DEFAULT_THRESHOLD = 0.1

_DPI = 100
_ROW_HEIGHT_IN = 2.3
_TITLE_IN = 0.45
#: A band above each row for its label: nilearn's own titles and cut positions are drawn over
#: the images (they hid the top-left corner and the bottom of every cut).
_LABEL_IN = 0.32
_CMAP = "hot"
_GT_COLOR = "cyan"
_METHOD_COLOR = "#1f77b4"
_BASELINE_COLOR = "#9a9a9a"


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _as_image(obj: ImageLike, name: str) -> nib.Nifti1Image:
    """A 3D float32 image in memory; a path is read once, here."""
    if isinstance(obj, (str, os.PathLike)):
        name = Path(obj).name
        try:
            obj = nib.load(str(obj))
        except Exception as error:  # nibabel raises several types for a missing or bad file
            raise ValueError(f"{name}: cannot be read as an image ({error})") from error
    try:
        data = np.asarray(obj.dataobj, dtype=np.float32)
    except Exception as error:
        raise ValueError(f"{name}: truncated or corrupt image data ({error})") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name}: expected a 3D image, got shape {data.shape}")
    return nib.Nifti1Image(data, obj.affine)


def scale_abs(img: ImageLike, *, percentile: float = SCALE_PERCENTILE) -> tuple[nib.Nifti1Image, float]:
    """``|map|`` divided by its ``percentile`` over nonzero voxels, clipped to [0, 1].

    Parameters
    ----------
    img
        A 3D map (path or image); NaN and Inf are shown as 0.
    percentile
        The percentile of the nonzero ``|map|`` values that maps to 1.

    Returns
    -------
    image : nibabel.Nifti1Image
        The scaled map, float32, on the input's grid.
    scale : float
        The divisor (0.0 for an all-zero map, which stays all zero).
    """
    image = _as_image(img, "map")
    data = np.abs(np.nan_to_num(np.asarray(image.dataobj), nan=0.0, posinf=0.0, neginf=0.0))
    nonzero = data[data > 0]
    scale = float(np.percentile(nonzero, percentile)) if nonzero.size else 0.0
    scaled = np.clip(data / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(data)
    return nib.Nifti1Image(scaled.astype(np.float32), image.affine), scale


def _ground_truth_centre(ground_truth: nib.Nifti1Image) -> tuple[float, float, float]:
    """World coordinates of the voxel of the largest GT component nearest its centre of mass.

    The centre of mass itself can fall between lesions, or outside a curved one.
    """
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(ground_truth.dataobj) > 0.5)
    sizes = np.bincount(labels.ravel())[1:]
    component = labels == (int(np.argmax(sizes)) + 1)
    voxels = np.argwhere(component)
    centre = voxels.mean(axis=0)
    nearest = voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]
    return tuple(float(v) for v in nib.affines.apply_affine(ground_truth.affine, nearest))


def _shared_cut_coords(scaled: Sequence[nib.Nifti1Image], ground_truth: Optional[nib.Nifti1Image],
                       display_mode: str, reference: nib.Nifti1Image):
    """One set of cuts for every row, so methods are compared on the same slices."""
    from nilearn.plotting import find_cut_slices, find_xyz_cut_coords

    if display_mode in ("ortho", "tiled"):
        if ground_truth is not None and (np.asarray(ground_truth.dataobj) > 0.5).any():
            return _ground_truth_centre(ground_truth)
        mean = np.mean([np.asarray(image.dataobj) for image in scaled], axis=0)
        if mean.any():
            return find_xyz_cut_coords(nib.Nifti1Image(mean, scaled[0].affine))
        return find_xyz_cut_coords(reference)
    if display_mode in ("x", "y", "z"):
        source = ground_truth if ground_truth is not None else reference
        return find_cut_slices(source, direction=display_mode, n_cuts=5)
    return None  # other modes: nilearn's own choice per row


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_figure(figure: Figure, out_base: PathLike, **savefig_kwargs: Any) -> FigureFiles:
    """Write ``figure`` as ``<out_base>.png`` and ``.svg``, atomically and reproducibly.

    ``savefig_kwargs`` go to ``Figure.savefig`` (default: the figure's own face colour, 100 dpi).
    """
    out_base = Path(out_base)
    options = {"dpi": _DPI, "facecolor": figure.get_facecolor(), **savefig_kwargs}
    written = {}
    for fmt in ("png", "svg"):
        path = out_base.with_name(f"{out_base.name}.{fmt}")
        written[fmt] = atomic_write(path, lambda tmp, fmt=fmt: save_reproducibly(
            figure, tmp, format=fmt, **options))
    return written


def save_reproducibly(figure: Figure, path: PathLike, *, format: str, **savefig_kwargs) -> None:
    """``figure.savefig`` with the same bytes on every run (``--seed`` promises byte-identical
    outputs): matplotlib stamps SVGs with the date and draws their element ids from a random
    salt; a fixed salt and no date make them a function of the figure alone. PNGs carry no date.
    """
    import matplotlib

    metadata = {"Date": None} if format in ("svg", "pdf") else None
    with matplotlib.rc_context({"svg.hashsalt": "nipype-xai"}):
        figure.savefig(path, format=format, metadata=metadata, **savefig_kwargs)


def _rows_figure(n_rows: int, title: Optional[str], width: float, black: bool) -> tuple[Figure, float]:
    lines = title.count("\n") + 1 if title else 0
    top = _TITLE_IN + 0.22 * (lines - 1) if title else 0.0
    height = n_rows * (_ROW_HEIGHT_IN + _LABEL_IN) + top
    figure = Figure(figsize=(width, height), facecolor="k" if black else "w")
    if title:
        figure.suptitle(title, color="w" if black else "k", fontsize=13,
                        y=1.0 - 0.12 * _TITLE_IN / height, va="top", linespacing=1.4)
    return figure, top / height


def _row_rect(figure: Figure, i: int, n_rows: int, top_fraction: float,
              label: Optional[str] = None, black: bool = True) -> list[float]:
    """The axes rectangle of row ``i``, below a band holding its label (drawn here)."""
    row = (1.0 - top_fraction) / n_rows
    band = row * _LABEL_IN / (_ROW_HEIGHT_IN + _LABEL_IN)
    row_top = 1.0 - top_fraction - i * row
    if label:
        figure.text(0.01, row_top - band / 2, label, color="w" if black else "k", fontsize=11,
                    fontweight="bold", va="center", ha="left")
    return [0.0, row_top - row, 1.0, row - band]


def _cuts_text(cut_coords, display_mode: str) -> Optional[str]:
    """Where the slices are, once for the figure (nilearn writes it under every cut)."""
    if cut_coords is None:
        return None
    values = np.atleast_1d(np.asarray(cut_coords, dtype=float)).tolist()
    if display_mode in ("ortho", "tiled") and len(values) == 3:
        return "slices at " + ", ".join(f"{axis} = {v:.0f}" for axis, v in zip("xyz", values)) + " mm"
    if display_mode in ("x", "y", "z"):
        return f"slices at {display_mode} = " + ", ".join(f"{v:.0f}" for v in values) + " mm"
    return None


def _with_cuts(title: Optional[str], cuts: Optional[str]) -> Optional[str]:
    if not cuts:
        return title
    return f"{title}\n{cuts}" if title else cuts


def _annotate(display, positions: bool) -> None:
    # Left/right letters stay (radiological conventions differ); the positions go in the title.
    display.annotate(left_right=True, positions=positions, size=9)


def _display_masked(image: nib.Nifti1Image, mask: Optional[nib.Nifti1Image]) -> nib.Nifti1Image:
    """``image`` set to 0 outside ``mask`` (resampled to its grid, nearest neighbour)."""
    if mask is None:
        return image
    from nilearn.image import resample_to_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_grid = resample_to_img(mask, image, interpolation="nearest", force_resample=True,
                                  copy_header=True)
    inside = np.asarray(on_grid.dataobj) > 0.5
    return nib.Nifti1Image(np.where(inside, np.asarray(image.dataobj), 0).astype(np.float32),
                           image.affine)


# --------------------------------------------------------------------------------------------
# Public figures
# --------------------------------------------------------------------------------------------


def plot_attribution_panel(
    maps: Mapping[str, ImageLike],
    background: ImageLike,
    out_base: PathLike,
    *,
    title: Optional[str] = None,
    threshold: Optional[float] = None,
    display_mode: str = "ortho",
    cut_coords=None,
    ground_truth: Optional[ImageLike] = None,
    display_mask: Optional[ImageLike] = None,
) -> FigureFiles:
    """One row per method: ``|map|`` over the background, the ground-truth outline on top.

    Parameters
    ----------
    maps
        Method name -> 3D attribution map (path or image), in the background's space.
    background
        Anatomy drawn under every map (read once for all rows).
    out_base
        Output path without extension; ``.png`` and ``.svg`` are added.
    title
        Figure title.
    threshold
        Scaled values (module docstring: 1 = the map's 99th percentile of ``|map|``) below this
        are transparent. None: :data:`DEFAULT_THRESHOLD`.
    display_mode
        nilearn display mode (``"ortho"``, ``"z"``, ...).
    cut_coords
        Cuts for every row. None: the same cuts for all rows -- the ground truth's centre for
        ``ortho``/``tiled`` when it is given, otherwise the peak of the mean scaled map; five
        slices through the ground truth (or the background) for ``x``/``y``/``z``.
    ground_truth
        Binary mask whose outline (level 0.5) is drawn in cyan on every row.
    display_mask
        Brain mask (any grid: resampled, nearest neighbour): every map is shown inside it only,
        and scaled over the voxels inside. Group means of maps that cover the whole grid
        (Grad-CAM's upsampled coarse map, the random baseline) otherwise fill the box around
        the brain.

    Returns
    -------
    FigureFiles
        The panel, one row per map.

    Raises
    ------
    ValueError
        No maps, or an unreadable or non-3D image (the message names the file).
    """
    from nilearn.plotting import plot_stat_map

    if not maps:
        raise ValueError("plot_attribution_panel: no maps to plot")
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    bg = _as_image(background, "background")
    gt = _as_image(ground_truth, "ground_truth") if ground_truth is not None else None
    mask = _as_image(display_mask, "display_mask") if display_mask is not None else None
    scaled = {method: scale_abs(_display_masked(_as_image(img, method), mask))
              for method, img in maps.items()}
    if cut_coords is None:
        cut_coords = _shared_cut_coords([s for s, _ in scaled.values()], gt, display_mode, bg)
    cuts = _cuts_text(cut_coords, display_mode)

    width = 11.0 if display_mode not in ("x", "y", "z") else 12.0
    figure, top = _rows_figure(len(scaled), _with_cuts(title, cuts), width, black=True)
    with warnings.catch_warnings():
        # Empty contours on a slice and nilearn's notes on non-finite or zero maps are expected.
        warnings.simplefilter("ignore")
        for i, (method, (image, scale)) in enumerate(scaled.items()):
            label = method if scale > 0 else f"{method} (all zero)"
            display = plot_stat_map(
                image, bg_img=bg, figure=figure,
                axes=_row_rect(figure, i, len(scaled), top, label),
                display_mode=display_mode, cut_coords=cut_coords, threshold=threshold,
                vmin=0.0, vmax=1.0, cmap=_CMAP, symmetric_cbar=False, black_bg=True,
                colorbar=True, draw_cross=False, annotate=False,
            )
            _annotate(display, positions=cuts is None)
            if gt is not None:
                display.add_contours(gt, levels=[0.5], colors=[_GT_COLOR], linewidths=1.0)
    return save_figure(figure, out_base)


def plot_anatomy(img: ImageLike, out_base: PathLike, *, title: Optional[str] = None) -> FigureFiles:
    """The input image alone (nilearn ``plot_anat``, ortho), as ``.png`` and ``.svg``.

    Returns
    -------
    FigureFiles
        The image in three orthogonal cuts.
    """
    from nilearn.plotting import plot_anat

    from nilearn.plotting import find_xyz_cut_coords

    image = _as_image(img, "anatomy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut_coords = find_xyz_cut_coords(image)
    figure, top = _rows_figure(1, _with_cuts(title, _cuts_text(cut_coords, "ortho")), 9.0,
                               black=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        display = plot_anat(image, figure=figure, axes=_row_rect(figure, 0, 1, top),
                            display_mode="ortho", cut_coords=cut_coords, black_bg=True,
                            draw_cross=False, colorbar=False, dim=-0.5, annotate=False)
        _annotate(display, positions=False)
    return save_figure(figure, out_base)


def plot_glass_brains(
    maps: Mapping[str, ImageLike],
    out_base: PathLike,
    *,
    title: Optional[str] = None,
    threshold: Optional[float] = None,
    display_mask: Optional[ImageLike] = None,
) -> FigureFiles:
    """One row per method: maximum-intensity projection of the scaled ``|map|`` (glass brain).

    The glass brain outline is MNI152's, so the maps must be in an MNI space. Scaling,
    ``threshold`` and ``display_mask`` as in :func:`plot_attribution_panel`.

    Returns
    -------
    FigureFiles
        The glass brains, one row per map.
    """
    from nilearn.plotting import plot_glass_brain

    if not maps:
        raise ValueError("plot_glass_brains: no maps to plot")
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    mask = _as_image(display_mask, "display_mask") if display_mask is not None else None
    scaled = {method: scale_abs(_display_masked(_as_image(img, method), mask))
              for method, img in maps.items()}
    figure, top = _rows_figure(len(scaled), title, 9.0, black=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (method, (image, scale)) in enumerate(scaled.items()):
            label = method if scale > 0 else f"{method} (all zero)"
            display = plot_glass_brain(
                image, figure=figure, axes=_row_rect(figure, i, len(scaled), top, label,
                                                     black=False),
                display_mode="ortho", threshold=threshold, vmin=0.0, vmax=1.0, cmap=_CMAP,
                plot_abs=True, symmetric_cbar=False, colorbar=True, black_bg=False,
                annotate=False,
            )
            _annotate(display, positions=False)
    return save_figure(figure, out_base)


def _group_labels(summary: pd.DataFrame) -> tuple[list[str], pd.Series]:
    group_columns = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    if not group_columns:
        raise ValueError("plot_method_ranking: the summary has no method column")
    labels = summary[group_columns].astype(str).agg(" / ".join, axis=1)
    return group_columns, labels


def plot_method_ranking(
    summary: pd.DataFrame,
    metric: str,
    out_base: PathLike,
    *,
    title: Optional[str] = None,
) -> FigureFiles:
    """Mean and bootstrap CI of one metric per method, best on top; baselines in grey.

    Parameters
    ----------
    summary
        The table of :func:`nipype_xai.metrics.group.summarize_methods` (its ``attrs["ci"]``, when
        present, labels the interval).
    metric
        The metric to plot (a value of the ``metric`` column).
    out_base
        Output path without extension.
    title
        Figure title; default: the metric's name.

    Returns
    -------
    FigureFiles
        The chart of ``metric``, one bar per method.

    Raises
    ------
    ValueError
        The summary has no row for ``metric``.
    """
    rows = summary.loc[summary["metric"] == metric]
    if rows.empty:
        raise ValueError(
            f"plot_method_ranking: no {metric!r} in the summary "
            f"(metrics: {sorted(summary['metric'].unique())})"
        )
    group_columns, labels = _group_labels(rows)
    lower = metric in LOWER_IS_BETTER
    # Best first (NaN means last), then drawn top-down.
    order = rows.assign(_label=labels).sort_values(
        "mean", ascending=lower, na_position="last", kind="stable"
    )
    n = len(order)
    y = np.arange(n)[::-1]
    method_column = "method" if "method" in group_columns else group_columns[-1]
    grey = [is_baseline(str(name)) for name in order[method_column]]
    colors = [_BASELINE_COLOR if g else _METHOD_COLOR for g in grey]

    mean = order["mean"].to_numpy(dtype=float)
    low = order["ci_low"].to_numpy(dtype=float)
    high = order["ci_high"].to_numpy(dtype=float)
    figure = Figure(figsize=(7.5, 1.4 + 0.42 * n))
    axes = figure.add_subplot(1, 1, 1)
    for yi, m, lo, hi, color in zip(y, mean, low, high, colors):
        if np.isnan(m):
            continue
        axes.barh(yi, m, height=0.6, color=color, alpha=0.35)
        axes.errorbar(m, yi, xerr=[[max(m - lo, 0.0)], [max(hi - m, 0.0)]], fmt="o", color=color,
                      ecolor=color, elinewidth=1.6, capsize=4, markersize=6)
    axes.set_yticks(y)
    axes.set_yticklabels(
        [f"{label}  (n={int(k)})" for label, k in zip(order["_label"], order["n"])], fontsize=9
    )
    for tick, g in zip(axes.get_yticklabels(), grey):
        tick.set_color(_BASELINE_COLOR if g else "k")
    finite = np.concatenate([mean, low, high])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        span = max(float(finite.max()) - min(float(finite.min()), 0.0), 1e-9)
        axes.set_xlim(min(float(finite.min()), 0.0), float(finite.max()) + 0.18 * span)
        for yi, m, hi in zip(y, mean, high):
            if np.isfinite(m):
                axes.text((hi if np.isfinite(hi) else m) + 0.02 * span, yi, f"{m:.3g}",
                          va="center", fontsize=8)
    axes.set_ylim(-0.7, n - 0.3)
    ci = summary.attrs.get("ci")
    interval = f"{ci:.0%} bootstrap CI" if isinstance(ci, float) else "bootstrap CI"
    direction = "lower is better" if lower else "higher is better"
    axes.set_xlabel(f"{metric}: mean over subjects, {interval} ({direction})")
    axes.grid(axis="x", alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)
    if any(grey):
        from matplotlib.patches import Patch

        axes.legend(handles=[Patch(color=_METHOD_COLOR, label="method"),
                             Patch(color=_BASELINE_COLOR, label="baseline")],
                    loc="best", fontsize=8, frameon=False)
    # Long titles (task / model / subset: metric) are wrapped, not cut at the figure's edge.
    import textwrap

    axes.set_title("\n".join(textwrap.wrap(title or metric, width=60)), fontsize=10)
    figure.tight_layout()
    return save_figure(figure, out_base)
