"""Registration quality control on the template grid (SPEC §5): :func:`registration_qc` scores a
registered brain against the template's, :func:`qc_passed` compares the scores with
:data:`QC_THRESHOLDS`, and :func:`plot_registration_overlay` draws the template's brain outline
over the registered brain for the report.

Pure functions on nibabel images (no Nipype, no paths except the figure's output).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Optional, Union

import nibabel as nib
import numpy as np

from .preprocessing import AnatomyError, _check_same_grid, _plain

__all__ = [
    "QC_THRESHOLDS",
    "RegistrationQCFailed",
    "plot_registration_overlay",
    "qc_passed",
    "registration_qc",
]

PathLike = Union[str, os.PathLike]


class RegistrationQCFailed(RuntimeError):
    """A registration below :data:`QC_THRESHOLDS` (raised where a workflow stops the subject)."""


#: Pass ranges of the registration QC metrics, ``name -> (low, high)`` with ``None`` for no bound:
#: the one source of truth for :func:`qc_passed`, the QC table's sidecar and the report. How they
#: were chosen: see :func:`registration_qc`.
QC_THRESHOLDS: Mapping[str, tuple[Optional[float], Optional[float]]] = MappingProxyType({
    "dice": (0.90, None),
    "ncc": (0.50, None),
    "volume_ratio": (0.80, 1.25),
})


def registration_qc(
    warped_brain_mask: nib.Nifti1Image,
    template_mask: nib.Nifti1Image,
    warped_brain: nib.Nifti1Image,
    template_brain: nib.Nifti1Image,
) -> dict[str, float]:
    """Agreement of a registered brain with the template brain, on the template grid.

    Parameters
    ----------
    warped_brain_mask : nibabel.Nifti1Image
        The subject's brain mask resampled onto the template grid (nearest neighbour).
    template_mask : nibabel.Nifti1Image
        The template's brain mask.
    warped_brain : nibabel.Nifti1Image
        The subject's skull-stripped T1w resampled onto the template grid (linear).
    template_brain : nibabel.Nifti1Image
        The template's skull-stripped T1w.

    Returns
    -------
    dict
        ``dice``: Dice of the two masks, binarised at 0.5; ``ncc``: normalised cross-correlation
        (Pearson's r) of the warped brain and the template brain over the template mask's voxels;
        ``volume_ratio``: warped mask volume / template mask volume.

    Raises
    ------
    AnatomyError
        An image that is not 3D and finite, images on different grids, or an empty template mask.

    Notes
    -----
    :data:`QC_THRESHOLDS` come from these measurements of dice / ncc / volume_ratio (deepbet
    brain and mask, affine registration of the brain to the MNI152NLin2009aSym brain, metrics
    on the template grid at 2 mm; in brackets at 1 mm):

    ===============================================  =====================================
    case                                             dice / ncc / volume_ratio
    ===============================================  =====================================
    real head (Colin27), registered                  0.955 / 0.670 / 1.07 (0.959 / 0.654)
    ... turned 15/10 deg, moved 50 mm, registered    0.956 / 0.672 / 1.07 (0.959 / 0.654)
    ... same pose, identity transform                0.546 / 0.099 / 1.04 (0.546 / 0.094)
    ... anterior-posterior axis flipped in affine    0.863 / 0.310 / 1.09 (0.933 / 0.333)
    ... inferior-superior axis flipped in affine     0.902 / 0.247 / 1.13 (0.911 / 0.248)
    ... top half of the brain only                   0.681 / 0.338 / 0.56 (0.685 / 0.331)
    ... front half of the brain only                 0.603 / 0.206 / 0.49
    ... left-right axis flipped in affine            0.951 / 0.668 / 1.09 (undetectable)
    4 synthetic subjects (synth), registered         0.971-0.980 / 0.798-0.869 / 1.02-1.03
    ... SyN; their true transform                    0.990 / 0.947 / 1.01; 0.998 / 0.93 / 1.00
    ... identity (native pose: 4 deg, 4 mm, warp)    0.929 / 0.450 / 1.03
    ... turned 15/10 deg, moved 50 mm, identity      0.501 / 0.111 / 1.03
    ... anterior-posterior axis flipped              0.834 / 0.307 / 1.27
    ... inferior-superior axis flipped               0.875 / 0.192 / 1.10
    ... top half of the brain only                   0.696 / 0.349 / 0.56
    ===============================================  =====================================

    Good registrations have ncc >= 0.65 and every failure <= 0.45: ``ncc >= 0.5`` alone flags
    them all. Dice does not (a flipped axis keeps 0.83-0.93: a brain is nearly an ellipsoid);
    ``dice >= 0.90`` and ``volume_ratio`` in [0.8, 1.25] are a second line that flags partial
    coverage and unregistered heads as well, and a mis-sized brain that correlates by chance.
    A left-right flip is invisible to these metrics (the brain is nearly symmetric). The ranges
    are calibrated on one real head and synthetic subjects: look at the overlay figures of a
    lab's first subjects.
    """
    template_mask, template_mask_data, template_name = _plain(template_mask, "template mask")
    images = {"warped brain mask": warped_brain_mask, "warped brain": warped_brain,
              "template brain": template_brain}
    arrays = {}
    for role, image in images.items():
        image, data, name = _plain(image, role)
        _check_same_grid(image, template_mask, name, template_name)
        arrays[role] = data
    reference = template_mask_data > 0.5
    if not reference.any():
        raise AnatomyError(f"{template_name}: the template mask is empty")
    warped = arrays["warped brain mask"] > 0.5
    moving = arrays["warped brain"][reference].astype(np.float64)
    fixed = arrays["template brain"][reference].astype(np.float64)
    moving, fixed = moving - moving.mean(), fixed - fixed.mean()
    norm = math.sqrt(float((moving * moving).sum()) * float((fixed * fixed).sum()))
    return {
        "dice": float(2.0 * (warped & reference).sum() / (warped.sum() + reference.sum())),
        # A constant warped brain (all 0: it landed outside the template) correlates with nothing.
        "ncc": float((moving * fixed).sum() / norm) if norm > 0 else 0.0,
        "volume_ratio": float(warped.sum() / reference.sum()),
    }


def qc_passed(
    metrics: Mapping[str, float],
    thresholds: Mapping[str, tuple[Optional[float], Optional[float]]] = QC_THRESHOLDS,
) -> tuple[bool, list[str]]:
    """Compare QC metrics with their pass ranges.

    Parameters
    ----------
    metrics : mapping
        Output of :func:`registration_qc` (or a row of its TSV).
    thresholds : mapping
        ``name -> (low, high)``, ``None`` for no bound; default :data:`QC_THRESHOLDS`.

    Returns
    -------
    passed : bool
        True when every metric is within its range.
    reasons : list of str
        One line per failed check, e.g. ``"dice 0.612 < 0.9"``; empty when passed. A missing or
        non-finite metric fails.
    """
    reasons = []
    for name, (low, high) in thresholds.items():
        value = metrics.get(name)
        if value is None or not math.isfinite(float(value)):
            reasons.append(f"{name} missing or not finite ({value!r})")
            continue
        value = float(value)
        if low is not None and value < low:
            reasons.append(f"{name} {value:.3f} < {low:g}")
        if high is not None and value > high:
            reasons.append(f"{name} {value:.3f} > {high:g}")
    return not reasons, reasons


# --- QC figure ----------------------------------------------------------------------------------

_FIGURE_DPI = 100
_CONTOUR_COLOR = "#ff4040"
#: Height of the three views, and of the band above them for the title and the slice positions:
#: nilearn draws its title and each view's "x=0" over the image, where they hid the brain's edge
#: (the very place a misregistration shows).
_VIEWS_IN = 3.2
_TITLE_LINE_IN = 0.3


def plot_registration_overlay(
    warped_brain_img: nib.Nifti1Image,
    template_mask_img: nib.Nifti1Image,
    out_base: PathLike,
    *,
    title: Optional[str] = None,
) -> dict[str, Path]:
    """The registered brain in three planes with the template's brain outline on top.

    Parameters
    ----------
    warped_brain_img : nibabel.Nifti1Image
        The subject's (skull-stripped) T1w on the template grid.
    template_mask_img : nibabel.Nifti1Image
        The template's brain mask; its 0.5 contour is drawn in red.
    out_base : path
        Output path without extension; ``.png`` and ``.svg`` are added. Both are written
        atomically, the SVG byte-reproducibly.
    title : str, optional
        Drawn above the views (e.g. the subject and the QC verdict), with the slice positions on
        the line below it; neither covers the images.

    Returns
    -------
    dict
        ``{"png": Path, "svg": Path}``.
    """
    from matplotlib.figure import Figure
    from nilearn.plotting import plot_anat

    from ..atomic import atomic_write
    from ..reports.figures import save_reproducibly

    brain, brain_data, _ = _plain(warped_brain_img, "warped brain")
    mask, mask_data, mask_name = _plain(template_mask_img, "template mask")
    if not (mask_data > 0.5).any():
        raise AnatomyError(f"{mask_name}: the template mask is empty")
    brain = nib.Nifti1Image(brain_data, brain.affine)
    mask = nib.Nifti1Image((mask_data > 0.5).astype(np.float32), mask.affine)
    # Cut through the template's brain, not the subject's: a misplaced brain then shows as
    # an outline with nothing (or the wrong anatomy) inside.
    centre = np.argwhere(mask_data > 0.5).mean(axis=0)
    cuts = tuple(float(v) for v in nib.affines.apply_affine(mask.affine, centre))
    lines = [title] if title else []
    lines.append("slices at " + ", ".join(f"{axis} = {v:.0f}" for axis, v in zip("xyz", cuts))
                 + " mm")
    height = _VIEWS_IN + _TITLE_LINE_IN * (len(lines) + 0.5)
    figure = Figure(figsize=(9.0, height), facecolor="k")
    figure.text(0.01, 1.0 - 0.25 * _TITLE_LINE_IN / height, "\n".join(lines), color="w",
                fontsize=11, ha="left", va="top", linespacing=1.5)
    with warnings.catch_warnings():
        # An outline missing from a slice, or an all-zero brain, is what QC is there to show.
        warnings.simplefilter("ignore")
        display = plot_anat(brain, figure=figure, axes=[0.0, 0.0, 1.0, _VIEWS_IN / height],
                            display_mode="ortho", cut_coords=cuts, black_bg=True,
                            draw_cross=False, annotate=False, dim=-0.3)
        # The L/R letters stay, in the views' top corners, outside the brain.
        display.annotate(left_right=True, positions=False, size=9)
        display.add_contours(mask, levels=[0.5], colors=[_CONTOUR_COLOR], linewidths=1.0)
    out_base = Path(out_base)
    written = {}
    for fmt in ("png", "svg"):
        written[fmt] = atomic_write(
            out_base.with_name(f"{out_base.name}.{fmt}"),
            lambda tmp, fmt=fmt: save_reproducibly(figure, tmp, format=fmt, dpi=_FIGURE_DPI,
                                                   facecolor=figure.get_facecolor()))
    return written
