"""The ``atrophy`` task: a fixed anatomical region contracted by a local smooth warp.

Siegel et al. (2025) showed that attribution methods differ sharply in how well they localise
"localized anatomical features" whose location is known. Here the feature is a change of *shape*
only: in positive subjects one fixed region loses a set fraction of its volume, the tissue around it
fills the space, and no intensity is changed, so a model must look at the region's shape to tell the
classes apart (:mod:`nipype_xai.synth.shortcuts` checks that whole-brain intensity histograms do not
suffice).

The region: the bilateral caudate nucleus
-----------------------------------------
Caudate atrophy, with the enlargement of the frontal horns of the lateral ventricles next to it, is
the earliest structural sign of Huntington's disease and is also reported in Alzheimer's disease.
In the MNI152 2009a GM map the caudate is crisp (GM probability > 0.9 at its head), bounded by
ventricular CSF medially and the internal capsule laterally, so it can be defined without an atlas
(none ships offline): grey matter (probability > 0.5) inside two axis-aligned ellipsoids centred at
MNI (+-12, 8, 12) mm with semi-axes (6.5, 16, 11) mm, keeping the largest connected component per
side. That is the head and body of the caudate, about 2.4 cm^3 per side (the tail and the ventral
striatum below z = 1 mm are left out).

The contraction
---------------
Around each centre ``c`` with normalised ellipsoidal radius ``r(p) = |(p - c) / semi_axes|``, the
point map from the atrophied subject's template coordinates to the original template is
``p -> c + g(r) (p - c)`` with ``g(r) = 1 + (k - 1) w(r)``, ``w = 1`` inside the ellipsoid and a
cosine taper to 0 at ``r = taper``. Inside the ellipsoid it is a scaling by ``k``, so the region
(which lies inside the ellipsoid) shrinks exactly by ``k**3 = 1 / (1 - fraction)`` in volume;
beyond ``taper`` nothing moves; in between, the surroundings stretch inwards. The map moves points
along rays from ``c``, so its inverse reduces to inverting the 1D radial profile.
The exact ground truth
----------------------
The region is not where the signal is: the contraction scales the whole ellipsoid the caudate lies
in, and its taper moves tissue out to ``taper`` = 1.8 times the ellipsoid's radii (about 6 times
its volume), up to the border of the lateral ventricles. The exact ground truth (``label-atrophy``,
:func:`atrophy_signal_mask`) is therefore built from the signal itself. A positive and its control
twin (the same seed with label 0: same anatomy, pose, bias field and noise draw) differ only by
``c``: a voxel that samples the template at ``p`` in the twin samples ``c(p)`` in the positive, so
the two images differ exactly where ``c(p) != p``, by about the image gradient times
``|c(p) - p|``. A voxel belongs to the ground truth when

* ``|c(p) - p|`` exceeds :data:`SIGNAL_MIN_DISPLACEMENT_VOXELS` (0.05) of a voxel: the tissue it
  shows moves, so every edge in it shifts (by 5 % of a voxel: about 5 % of the contrast across
  the edge, comparable to the noise); or
* ``|log det Dc(p)|`` exceeds :data:`SIGNAL_MIN_LOG_JACOBIAN` (0.01, a 1 % change of volume): the
  amount of tissue changes, which is what atrophy is. The displacement alone misses the centres,
  where the caudate shrinks most but hardly moves.

Why thresholds rather than the support ``c(p) != p``: the cosine taper fades to zero smoothly, so
the support is the whole taper ellipsoid, most of it changed far below the noise. Why not a
threshold on the difference image: it depends on the noise draw and on the contrast each voxel
happens to have, while ``c`` is known exactly. On cohorts of the default settings the mask holds
over 99.9 % of the summed ``|positive - twin|`` on the 4 mm and 2 mm grids, noise-free or with the
twin's noise draw, in about 15 times the ``caudate`` region's voxels, while the region holds
about 6 % of it (``tests/test_synth_groundtruth.py``). On the template grid the mask is made for
the T1w moved by its affine component alone and resampled linearly (the atrophy model's input,
:mod:`nipype_xai.synth.train`): the template voxels whose interpolation reads a voxel of the
native mask. A control's exact ground truth is empty (no file is written): nothing differs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from .anatomy import TemplateAnatomy
from .warps import voxel_centres

__all__ = [
    "AtrophyRegion",
    "CAUDATE",
    "SIGNAL_MIN_DISPLACEMENT_VOXELS",
    "SIGNAL_MIN_LOG_JACOBIAN",
    "atrophy_displacement",
    "atrophy_log_jacobian",
    "atrophy_point_map",
    "atrophy_signal_mask",
    "region_mask",
]


@dataclass(frozen=True)
class AtrophyRegion:
    """A template-space region defined by grey matter inside ellipsoids (one per hemisphere).

    Attributes
    ----------
    name
        BIDS ``label-`` value of its mask.
    centres_mm
        Ellipsoid centres, MNI mm (RAS).
    semi_axes_mm
        Ellipsoid semi-axes along x, y, z, mm.
    min_gm
        GM probability above which a voxel inside an ellipsoid belongs to the region.
    taper
        Normalised radius where the contraction has faded to nothing (> 1). The tapers of the two
        hemispheres must not overlap: the inverse assumes one centre acts at a time.
    """

    name: str
    centres_mm: tuple[tuple[float, float, float], ...]
    semi_axes_mm: tuple[float, float, float]
    min_gm: float = 0.5
    taper: float = 1.8

    def __post_init__(self) -> None:
        if self.taper <= 1.0:
            raise ValueError(f"taper must exceed 1, got {self.taper}")
        axes = np.asarray(self.semi_axes_mm)
        for i, first in enumerate(self.centres_mm):
            for second in self.centres_mm[i + 1:]:
                gap = np.sqrt(np.sum(((np.asarray(first) - np.asarray(second)) / axes) ** 2))
                if gap <= 2.0 * self.taper:
                    raise ValueError(f"region {self.name!r}: the tapers around {first} and "
                                     f"{second} overlap")

    def radius(self, points: np.ndarray, centre: Sequence[float]) -> np.ndarray:
        """Normalised ellipsoidal radius of ``points`` ``(3, ...)`` (RAS mm) about ``centre``."""
        total = np.zeros(points.shape[1:])
        for a in range(3):
            total += ((points[a] - centre[a]) / self.semi_axes_mm[a]) ** 2
        return np.sqrt(total)


#: The fixed region of the atrophy task (see the module docstring).
CAUDATE = AtrophyRegion(
    name="caudate",
    centres_mm=((-12.0, 8.0, 12.0), (12.0, 8.0, 12.0)),
    semi_axes_mm=(6.5, 16.0, 11.0),
)


def region_mask(anatomy: TemplateAnatomy, region: AtrophyRegion = CAUDATE) -> nib.Nifti1Image:
    """The region's template-space mask (uint8) on the anatomy's grid."""
    img = nib.Nifti1Image(_region_array(anatomy, region).astype(np.uint8), anatomy.affine)
    img.set_qform(anatomy.affine, code=4)
    img.set_sform(anatomy.affine, code=4)
    return img


@functools.lru_cache(maxsize=8)
def _region_array(anatomy: TemplateAnatomy, region: AtrophyRegion) -> np.ndarray:
    gm = anatomy.array("gm")
    points = voxel_centres(anatomy.shape, anatomy.affine)
    mask = np.zeros(anatomy.shape, dtype=bool)
    for centre in region.centres_mm:
        part = (region.radius(points, centre) <= 1.0) & (gm > region.min_gm)
        labels, n = ndimage.label(part)
        if n == 0:
            raise RuntimeError(f"region {region.name!r} is empty around {centre} mm on the "
                               f"{anatomy.resolution_mm:g} mm grid")
        sizes = ndimage.sum_labels(part, labels, index=np.arange(1, n + 1))
        mask |= labels == 1 + int(np.argmax(sizes))
    mask.flags.writeable = False
    return mask


def contraction_scale(fraction: float) -> float:
    """Scale ``k`` of the point map inside the region for a volume loss ``fraction``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"atrophy fraction must lie in [0, 1), got {fraction}")
    return (1.0 - fraction) ** (-1.0 / 3.0)


def _taper_weight(r: np.ndarray, taper: float) -> np.ndarray:
    t = np.clip((r - 1.0) / (taper - 1.0), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def atrophy_point_map(points: np.ndarray, fraction: float, region: AtrophyRegion = CAUDATE,
                      inverse: bool = False) -> np.ndarray:
    """Point map of the contraction, in template world mm.

    Parameters
    ----------
    points
        ``(3, ...)`` RAS mm.
    fraction
        Volume lost by the region, e.g. 0.25. 0 gives the identity.
    inverse
        ``False``: atrophied-subject coordinates -> original template coordinates (the map an
        image is pulled through). ``True``: original template -> atrophied coordinates.

    Returns
    -------
    numpy.ndarray
        Mapped points, same shape as ``points``.

    Raises
    ------
    ValueError
        ``fraction`` outside [0, 1), or so large that the taper folds (the map would not be
        invertible).
    """
    scale = contraction_scale(fraction)
    points = np.asarray(points, dtype=np.float64)
    if scale == 1.0:
        return points.copy()
    # Radial profile h(r) = r g(r): the map sends radius r to h(r) along each ray.
    radii = np.linspace(0.0, region.taper, 4001)
    profile = radii * (1.0 + (scale - 1.0) * _taper_weight(radii, region.taper))
    if np.any(np.diff(profile) <= 0):
        raise ValueError(f"atrophy fraction {fraction} folds the taper of region "
                         f"{region.name!r}: use a smaller fraction or a wider taper")
    out = points.copy()
    for centre in region.centres_mm:
        r = region.radius(points, centre)
        near = r < region.taper
        r_near = r[near]
        if inverse:
            source = np.interp(r_near, profile, radii)
            factor = np.divide(source, r_near, out=np.full_like(r_near, 1.0 / scale),
                               where=r_near > 0)
        else:
            factor = 1.0 + (scale - 1.0) * _taper_weight(r_near, region.taper)
        for a in range(3):
            out[a][near] = centre[a] + (points[a][near] - centre[a]) * factor
    return out


def _taper_slope(r: np.ndarray, taper: float) -> np.ndarray:
    """Derivative of :func:`_taper_weight` with respect to ``r``."""
    t = (r - 1.0) / (taper - 1.0)
    inside = (t > 0.0) & (t < 1.0)
    return np.where(inside, -0.5 * np.pi / (taper - 1.0) * np.sin(np.pi * np.clip(t, 0.0, 1.0)),
                    0.0)


def atrophy_displacement(points: np.ndarray, fraction: float,
                         region: AtrophyRegion = CAUDATE) -> np.ndarray:
    """Length (mm) of the contraction's displacement ``|c(p) - p|`` at ``points`` ``(3, ...)``.

    ``points`` are where a voxel samples the template *without* atrophy (the control twin's
    template points); the atrophied twin samples ``c(p)`` there instead.
    """
    return np.sqrt(np.sum((atrophy_point_map(points, fraction, region) - points) ** 2, axis=0))


def atrophy_log_jacobian(points: np.ndarray, fraction: float,
                         region: AtrophyRegion = CAUDATE) -> np.ndarray:
    """``log det`` of the Jacobian of the contraction's point map ``c`` at ``points`` ``(3, ...)``.

    Closed form: ``c(p) = m + g(r) (p - m)`` about a centre ``m``, with ``r`` homogeneous of
    degree 1 in ``p - m``, so ``det Dc = g**2 (g + r g'(r))`` (two tangential stretches ``g`` and
    the radial one ``d(r g)/dr``). Positive where the atrophied subject has *less* tissue than
    the template (the map reads a larger template volume into each voxel): ``log(1 / (1 -
    fraction))`` inside the ellipsoids, 0 beyond the taper, and of either sign in between.
    """
    scale = contraction_scale(fraction)
    points = np.asarray(points, dtype=np.float64)
    out = np.zeros(points.shape[1:])
    if scale == 1.0:
        return out
    for centre in region.centres_mm:
        r = region.radius(points, centre)
        near = r < region.taper
        r_near = r[near]
        g = 1.0 + (scale - 1.0) * _taper_weight(r_near, region.taper)
        radial = g + r_near * (scale - 1.0) * _taper_slope(r_near, region.taper)
        out[near] = 2.0 * np.log(g) + np.log(radial)
    return out


#: Exact atrophy ground truth: a voxel belongs to it when the contraction moves the tissue it
#: samples by more than this fraction of a voxel ...
SIGNAL_MIN_DISPLACEMENT_VOXELS = 0.05

#: ... or changes the local volume by more than this (``|log det Dc|``; 0.01 is a 1 % change).
SIGNAL_MIN_LOG_JACOBIAN = 0.01


def atrophy_signal_mask(points: np.ndarray, fraction: float, voxel_mm: float,
                        region: AtrophyRegion = CAUDATE, *,
                        min_displacement_voxels: float = SIGNAL_MIN_DISPLACEMENT_VOXELS,
                        min_log_jacobian: float = SIGNAL_MIN_LOG_JACOBIAN) -> np.ndarray:
    """Where the contraction changes a grid's image: the exact ground truth of the atrophy task.

    Parameters
    ----------
    points
        ``(3, ...)`` template points (RAS mm) each voxel of the grid samples *without* atrophy
        (the control twin's points).
    fraction
        The subject's volume loss; 0 gives an empty mask.
    voxel_mm
        Voxel size of the grid the mask is for.
    region
        The atrophy region.
    min_displacement_voxels, min_log_jacobian
        Thresholds (see the module docstring).

    Returns
    -------
    numpy.ndarray
        Boolean, ``points.shape[1:]``.
    """
    if fraction == 0.0:
        return np.zeros(np.shape(points)[1:], dtype=bool)
    moved = atrophy_displacement(points, fraction, region) > min_displacement_voxels * voxel_mm
    return moved | (np.abs(atrophy_log_jacobian(points, fraction, region)) > min_log_jacobian)
