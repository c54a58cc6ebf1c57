"""The ``lesion`` task: subject-specific white-matter lesions with a known mask.

Oliveira et al. (*Explainable AI for brain MRI*) placed lesion masks on real brain scans and scored
explanations by how much of their evidence fell inside the masks. Our positive subjects carry 1-4
lesions of random size, shape, orientation, place and contrast, defined in template space so the
same mask can be read in template and native space:

* shape: an ellipsoid (random semi-axes and orientation) whose radius is modulated by a few random
  low-frequency lobes, so lesions are blobby rather than perfect ellipsoids;
* place: centred in deep white matter (WM probability >= 0.9) and kept only when at least
  ``min_wm_fraction`` of its voxels lie in white matter (probability > 0.5); lesions do not touch;
* contrast: hypo- or hyper-intense by 30-60 % at the core with a soft border (a 2 mm cosine ramp
  centred on the modulated ellipsoid's surface).

The mask (the ground truth) is where a lesion changes the intensity at all: the ramp's support,
out to its outer end (``Lesion.profile > 0``), so the whole border lies inside it and the lesions
change nothing outside it (a mask ending at the ramp's half-height leaves the outer ~1 mm of the
border, up to half the contrast, outside the ground truth). Placement (white-matter share) is
decided on the ellipsoid itself (``radius <= 1``); masks are kept from touching.

A lesion's shape is analytic in world mm, so it is drawn the same on any grid; where lesions are
placed depends on the grid's WM map (the acceptance tests run on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from .anatomy import TemplateAnatomy
from .warps import transform_points

__all__ = [
    "Lesion",
    "lesion_intensity_factor",
    "lesion_intensity_factor_at",
    "lesion_mask",
    "lesion_mask_at",
    "sample_lesions",
]

#: Sum of the lobe amplitudes stays below this, so the modulated radius stays positive.
MAX_LOBE_AMPLITUDE = 0.3


@dataclass(frozen=True)
class Lesion:
    """One lesion in template world coordinates.

    Attributes
    ----------
    centre_mm
        Centre, RAS mm.
    semi_axes_mm
        Semi-axes of the underlying ellipsoid, mm.
    rotation
        3 x 3 rotation from the lesion's frame to world axes.
    contrast
        Relative intensity change at the core: ``-0.4`` = 40 % darker (hypo-intense).
    lobe_frequencies, lobe_amplitudes, lobe_phases
        Radius modulation ``1 + sum_j a_j cos(w_j . u + phi_j)`` over unit directions ``u``.
    edge_mm
        Width of the soft border (a cosine ramp centred on the mask boundary), mm.
    """

    centre_mm: np.ndarray
    semi_axes_mm: np.ndarray
    rotation: np.ndarray
    contrast: float
    lobe_frequencies: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    lobe_amplitudes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lobe_phases: np.ndarray = field(default_factory=lambda: np.zeros(0))
    edge_mm: float = 2.0

    @property
    def border(self) -> float:
        """Half-width of the soft border in normalised radius (``edge_mm / 2`` over the mean
        semi-axis, at most 0.5)."""
        return min(0.5, 0.5 * self.edge_mm / float(np.mean(self.semi_axes_mm)))

    @property
    def extent_mm(self) -> float:
        """Radius of a sphere that holds the lesion and its soft border."""
        return (float(np.max(self.semi_axes_mm)) * (1.0 + MAX_LOBE_AMPLITUDE)
                * (1.0 + self.border) + 1.0)

    def radius(self, points: np.ndarray) -> np.ndarray:
        """Normalised radius at ``points`` ``(3, ...)`` (RAS mm): <= 1 inside the lesion."""
        offset = points.reshape(3, -1) - self.centre_mm[:, np.newaxis]
        local = (self.rotation.T @ offset) / self.semi_axes_mm[:, np.newaxis]
        r = np.sqrt(np.sum(local**2, axis=0))
        if len(self.lobe_amplitudes):
            direction = local / np.maximum(r, 1e-9)
            lobes = np.cos(self.lobe_frequencies @ direction + self.lobe_phases[:, np.newaxis])
            r = r / (1.0 + self.lobe_amplitudes @ lobes)
        return r.reshape(points.shape[1:])

    def profile(self, points: np.ndarray) -> np.ndarray:
        """Soft lesion weight in [0, 1] at ``points`` ``(3, ...)``: 1 at the core, 0.5 on the
        ellipsoid's surface (``radius == 1``), exactly 0 beyond the border (a cosine ramp over
        ``edge_mm``), so nothing outside the lesion's mask (``profile > 0``) is touched."""
        h = self.border
        ramp = np.clip((self.radius(points) - (1.0 - h)) / (2.0 * h), 0.0, 1.0)
        return 0.5 * (1.0 + np.cos(np.pi * ramp))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _box(lesion: Lesion, shape: Sequence[int], affine: np.ndarray) -> tuple[slice, ...]:
    """Voxel box of a grid that holds the lesion's extent."""
    inverse = np.linalg.inv(affine)
    corners = lesion.centre_mm + lesion.extent_mm * np.array(
        [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    index = corners @ inverse[:3, :3].T + inverse[:3, 3]
    low = np.clip(np.floor(index.min(axis=0)).astype(int), 0, shape)
    high = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, shape)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high))


def _box_points(box: tuple[slice, ...], affine: np.ndarray) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in box],
                                 indexing="ij"))
    return transform_points(affine, index)


def lesion_mask(lesions: Sequence[Lesion], shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Boolean mask of the union of ``lesions`` on a grid: the voxel centres where a lesion
    changes the intensity (``profile > 0``, the soft border included)."""
    mask = np.zeros(tuple(shape), dtype=bool)
    for lesion in lesions:
        box = _box(lesion, shape, affine)
        mask[box] |= lesion.profile(_box_points(box, affine)) > 0.0
    return mask


def lesion_intensity_factor(lesions: Sequence[Lesion], shape: Sequence[int],
                            affine: np.ndarray) -> np.ndarray:
    """Multiplicative intensity change ``1 + sum_i contrast_i * profile_i`` on a grid (float32)."""
    factor = np.ones(tuple(shape), dtype=np.float32)
    for lesion in lesions:
        box = _box(lesion, shape, affine)
        factor[box] += np.float32(lesion.contrast) * lesion.profile(
            _box_points(box, affine)).astype(np.float32)
    return factor


def _near(lesion: Lesion, points: np.ndarray) -> np.ndarray:
    """Which of ``points`` ``(3, N)`` lie within the lesion's extent."""
    offset = points - lesion.centre_mm[:, np.newaxis]
    return np.einsum("ij,ij->j", offset, offset) < lesion.extent_mm**2


def lesion_intensity_factor_at(lesions: Sequence[Lesion], points: np.ndarray) -> np.ndarray:
    """:func:`lesion_intensity_factor` at arbitrary template points ``(3, ...)`` (RAS mm), e.g.
    where a subject's voxels sample the template (float32)."""
    flat = np.asarray(points, dtype=np.float64).reshape(3, -1)
    factor = np.ones(flat.shape[1], dtype=np.float32)
    for lesion in lesions:
        near = _near(lesion, flat)
        factor[near] += np.float32(lesion.contrast) * lesion.profile(flat[:, near]).astype(
            np.float32)
    return factor.reshape(np.shape(points)[1:])


def lesion_mask_at(lesions: Sequence[Lesion], points: np.ndarray) -> np.ndarray:
    """:func:`lesion_mask` at arbitrary template points ``(3, ...)``: where a lesion changes the
    intensity."""
    flat = np.asarray(points, dtype=np.float64).reshape(3, -1)
    mask = np.zeros(flat.shape[1], dtype=bool)
    for lesion in lesions:
        near = np.flatnonzero(_near(lesion, flat))
        mask[near[lesion.profile(flat[:, near]) > 0.0]] = True
    return mask.reshape(np.shape(points)[1:])


def sample_lesions(
    anatomy: TemplateAnatomy,
    rng: np.random.Generator,
    *,
    n_lesions: tuple[int, int] = (1, 4),
    radius_mm: tuple[float, float] = (4.0, 9.0),
    contrast: tuple[float, float] = (0.3, 0.6),
    hyper_probability: float = 0.5,
    min_wm_fraction: float = 0.85,
    max_tries: int = 200,
) -> list[Lesion]:
    """Draw a subject's lesions in template space.

    Parameters
    ----------
    anatomy
        Template whose WM map guides the placement (its grid decides the acceptance tests).
    rng
        Random generator (the subject's task stream).
    n_lesions
        Inclusive range of the lesion count.
    radius_mm
        Range of the largest semi-axis; the other two are 60-100 % of it.
    contrast
        Range of the relative intensity change at the core.
    hyper_probability
        Probability that a lesion is hyper- rather than hypo-intense.
    min_wm_fraction
        Least share of a lesion's voxels with WM probability > 0.5.
    max_tries
        Placement attempts per lesion before its size is reduced.

    Returns
    -------
    list of Lesion
        Non-overlapping lesions, each non-empty on the anatomy's grid.
    """
    wm = anatomy.array("wm")
    shape, affine = anatomy.shape, anatomy.affine
    deep = np.argwhere((wm >= 0.9) & (anatomy.array("brain_mask") > 0))
    if len(deep) == 0:
        raise RuntimeError("the white-matter map has no voxel with probability >= 0.9")
    count = int(rng.integers(n_lesions[0], n_lesions[1] + 1))
    # Voxels taken by earlier lesions' masks, grown by one voxel: masks never touch, so the count
    # in participants.tsv is the number of separate blobs.
    blocked = np.zeros(shape, dtype=bool)
    lesions: list[Lesion] = []
    for _ in range(count):
        radius = rng.uniform(*radius_mm)
        sign = 1.0 if rng.uniform() < hyper_probability else -1.0
        strength = rng.uniform(*contrast)
        placed = None
        while placed is None:
            for _ in range(max_tries):
                index = deep[rng.integers(len(deep))]
                jitter = rng.uniform(-0.5, 0.5, 3)
                centre = affine[:3, :3] @ (index + jitter) + affine[:3, 3]
                n_lobes = 3
                candidate = Lesion(
                    centre_mm=centre,
                    semi_axes_mm=radius * np.concatenate([[1.0], rng.uniform(0.6, 1.0, 2)]),
                    rotation=_random_rotation(rng),
                    contrast=sign * strength,
                    lobe_frequencies=rng.standard_normal((n_lobes, 3)) * 1.5,
                    lobe_amplitudes=rng.uniform(0.0, MAX_LOBE_AMPLITUDE / n_lobes, n_lobes),
                    lobe_phases=rng.uniform(0.0, 2.0 * np.pi, n_lobes),
                )
                box = _box(candidate, shape, affine)
                box_points = _box_points(box, affine)
                inside = candidate.radius(box_points) <= 1.0
                if not inside.any():
                    continue
                footprint = candidate.profile(box_points) > 0.0
                if blocked[box][footprint].any():
                    continue
                if np.mean(wm[box][inside] > 0.5) < min_wm_fraction:
                    continue
                placed = candidate
                grown = np.zeros(shape, dtype=bool)
                grown[box] = footprint
                blocked |= ndimage.binary_dilation(grown)
                break
            else:
                # Nowhere to put a lesion this big: real lesion loads have small ones too.
                radius *= 0.8
                if radius < anatomy.resolution_mm:
                    raise RuntimeError(f"cannot place lesion {len(lesions) + 1} of {count} in "
                                       f"white matter on the {anatomy.resolution_mm:g} mm grid")
        lesions.append(placed)
    return lesions

