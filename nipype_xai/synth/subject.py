"""One synthetic subject: template anatomy moved, deformed and imaged like a real T1w scan.

A subject's native image is the template pulled through a known point map ``phi`` from its native
("scanner") world to the template world,

    phi = c o A o W,

applied right to left to a native point: ``W`` a smooth random diffeomorphism of the native world
(anatomical variability; the exponential of a stationary velocity field), ``A`` a small random
affine (head position and size) and ``c`` the task's contraction of the atrophy region (identity
unless the subject is a positive of the ``atrophy`` task). Then come a smooth multiplicative bias
field, a random global intensity scale and Rician noise (the magnitude of complex Gaussian noise, as
in magnitude MR images). Lesions and the atrophy region are defined in template space, so the
template-space ground truth is exact. The native atrophy region is the template mask pulled
through ``phi`` with nearest-neighbour interpolation: exactly what ``antsApplyTransforms -n
NearestNeighbor`` does with the stored transform, and what SPEC §5 prescribes for masks. Lesions
are analytic in template mm, so they are drawn, and their native mask sampled, at the very point
``phi(x)`` each native voxel ``x`` sees: the T1w changes exactly inside that mask (a lesion drawn
on the template grid and then interpolated would spread a voxel beyond it), and the mask differs
from the nearest-neighbour pull of the template mask only at the border.

Randomness comes from two streams derived from the subject's seed: a *nuisance* stream (warp,
affine, bias, intensity, noise) and a *task* stream (lesions, atrophy fraction). The same seed with
the other label therefore gives the same person with or without the signal: only the signal
differs between the two, which is how the atrophy task's exact ground truth is defined (the voxels
where the twins differ, :func:`nipype_xai.synth.atrophy.atrophy_signal_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import nibabel as nib
import numpy as np
from numpy.polynomial import legendre

from .anatomy import TemplateAnatomy, native_grid
from .atrophy import (
    CAUDATE,
    AtrophyRegion,
    atrophy_point_map,
    atrophy_signal_mask,
    region_mask,
)
from .lesion import Lesion, lesion_intensity_factor_at, lesion_mask, lesion_mask_at, sample_lesions
from .warps import (
    WARP_LATTICE,
    displacement_field_image,
    grid_axes,
    integrate_velocity,
    jacobian_determinant,
    pull_image,
    random_affine,
    random_velocity_field,
    resample_separable,
    sample_field,
    sample_field_on_grid,
    transform_points,
    voxel_centres,
)

__all__ = [
    "HEAD_CENTRE_MM",
    "SubjectData",
    "TASKS",
    "class_label",
    "groundtruth_label",
    "make_subject",
    "signal_label",
]

#: The synthetic tasks.
TASKS = ("lesion", "atrophy")

#: Centre of the random rotations and scalings: roughly the middle of the MNI152 brain, mm.
HEAD_CENTRE_MM = (0.0, -18.0, 12.0)

#: Intensity of the template's brightest voxel before the subject's scale and bias (T1w images are
#: usually stored as integers of this order).
INTENSITY_UNIT = 1000.0

#: Bias field: a polynomial of total degree <= 3 over this box (the warp lattice, fixed in mm).
BIAS_DEGREE = 3
_BIAS_TERMS = [(i, j, k) for i in range(BIAS_DEGREE + 1) for j in range(BIAS_DEGREE + 1)
               for k in range(BIAS_DEGREE + 1) if 1 <= i + j + k <= BIAS_DEGREE]

Seed = Union[int, np.random.SeedSequence]


def groundtruth_label(task: str) -> str:
    """BIDS ``label-`` of the task's ground-truth mask: ``lesion`` or ``caudate``."""
    _check_task(task)
    return "lesion" if task == "lesion" else CAUDATE.name


def signal_label(task: str) -> str:
    """BIDS ``label-`` of the task's exact ground truth, the mask of where the signal changes the
    image: ``lesion`` (the lesion mask is that already) or ``atrophy`` (beside the anatomical
    ``caudate`` mask of :func:`groundtruth_label`; see :mod:`nipype_xai.synth.atrophy`)."""
    _check_task(task)
    return task


def class_label(task: str, label: int) -> str:
    """The ``label`` column of ``participants.tsv``: ``control`` or the task's positive class."""
    _check_task(task)
    return task if label else "control"


@dataclass(frozen=True)
class SubjectData:
    """Everything known about one synthetic subject.

    Attributes
    ----------
    task, label
        The task and the class (0 = control, 1 = positive).
    t1w
        Native T1w (int16) on the cohort's native grid.
    brain_mask
        Native brain mask (uint8): the template's, pulled through ``phi``.
    groundtruth, groundtruth_template
        Ground-truth mask (uint8) in native and template space; ``None`` for controls of the
        ``lesion`` task (there is no lesion, and an empty mask would break overlap metrics).
    to_native
        ITK displacement field on the native grid mapping native points to template points: the
        transform ``from-MNI152NLin2009aSym_to-T1w`` (resamples template images onto the T1w).
    to_template
        ITK displacement field on the template grid mapping template points to native points: the
        transform ``from-T1w_to-MNI152NLin2009aSym`` (resamples native images into the template).
    linear
        The affine component ``A`` (4 x 4, RAS mm, native world -> template world).
    lesions
        The lesions drawn (empty unless a positive of the ``lesion`` task).
    parameters
        Scalars for ``participants.tsv``.
    transform
        Parameters of ``phi`` for the transforms' JSON sidecars.
    signal_mask, signal_mask_template
        Exact ground truth of an ``atrophy`` positive (uint8): where the contraction changes the
        image (:func:`nipype_xai.synth.atrophy.atrophy_signal_mask`), on the native grid and on
        the template grid for the T1w brought into the template by ``A`` alone. ``None``
        otherwise: a control has no signal (the empty set), and the lesion mask already is
        where the lesions change the image.
    """

    task: str
    label: int
    t1w: nib.Nifti1Image
    brain_mask: nib.Nifti1Image
    groundtruth: Optional[nib.Nifti1Image]
    groundtruth_template: Optional[nib.Nifti1Image]
    to_native: nib.Nifti1Image
    to_template: nib.Nifti1Image
    linear: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    transform: dict[str, Any] = field(default_factory=dict)
    signal_mask: Optional[nib.Nifti1Image] = None
    signal_mask_template: Optional[nib.Nifti1Image] = None


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def _streams(seed: Seed) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent nuisance and task generators of one subject seed."""
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    # Explicit spawn keys rather than ``spawn()``: spawn() counts its calls, so building the same
    # subject twice from one SeedSequence object would give two different people.
    children = [np.random.SeedSequence(sequence.entropy, spawn_key=(*sequence.spawn_key, k))
                for k in (0, 1)]
    return np.random.default_rng(children[0]), np.random.default_rng(children[1])


def _bias_field(coefficients: np.ndarray, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """``exp`` of a low-order Legendre polynomial over the fixed lattice box (float32)."""
    low = np.asarray(WARP_LATTICE.origin)
    high = low + WARP_LATTICE.spacing * (np.asarray(WARP_LATTICE.shape) - 1)
    # The native grid is axis-aligned, so the polynomial is separable along the voxel axes.
    axes = []
    for a in range(3):
        world = affine[a, a] * np.arange(shape[a]) + affine[a, 3]
        unit = 2.0 * (world - low[a]) / (high[a] - low[a]) - 1.0
        axes.append(np.stack([legendre.legval(unit, np.eye(BIAS_DEGREE + 1)[d])
                              for d in range(BIAS_DEGREE + 1)], axis=-1))
    table = np.zeros((BIAS_DEGREE + 1,) * 3)
    for (i, j, k), value in zip(_BIAS_TERMS, coefficients):
        table[i, j, k] = value
    log_bias = np.einsum("ijk,xi,yj,zk->xyz", table, *axes, optimize=True)
    return np.exp(log_bias).astype(np.float32)


#: Step of the stored displacements, mm (a power of two: exact in float32).
DISPLACEMENT_STEP_MM = 2.0**-10


def _quantize(displacement: np.ndarray) -> np.ndarray:
    return np.round(displacement / DISPLACEMENT_STEP_MM) * DISPLACEMENT_STEP_MM


def _pull_mask(mask: np.ndarray, affine: np.ndarray, points: np.ndarray,
               order: int = 0) -> np.ndarray:
    """Values of a boolean template mask at ``points``, looked up only where the points fall
    near the mask (a lesion is a few thousandths of the grid).

    ``order=0``: nearest neighbour, boolean. ``order=1``: linear, the fraction of each voxel
    inside the mask (a partial-volume estimate, float32).
    """
    out = np.zeros(points.shape[1:], dtype=bool if order == 0 else np.float32)
    index = np.argwhere(mask)
    if len(index) == 0:
        return out
    corners = transform_points(affine, np.stack([index.min(axis=0) - 1, index.max(axis=0) + 1],
                                                axis=1).astype(np.float64))
    low, high = corners.min(axis=1), corners.max(axis=1)
    near = np.ones(points.shape[1:], dtype=bool)
    for a in range(3):
        near &= (points[a] >= low[a]) & (points[a] <= high[a])
    values = pull_image(mask.astype(np.uint8), affine, points[:, near], order=order)
    out[near] = values > 0 if order == 0 else values
    return out


def make_subject(
    anatomy: TemplateAnatomy,
    task: str,
    label: int,
    seed: Seed,
    *,
    margin_mm: float = 10.0,
    warp_rms_mm: tuple[float, float] = (1.5, 3.0),
    warp_smoothness_mm: float = 16.0,
    max_rotation_deg: float = 4.0,
    max_translation_mm: float = 4.0,
    max_scale: float = 0.05,
    bias_strength: tuple[float, float] = (0.05, 0.2),
    intensity_scale: tuple[float, float] = (0.8, 1.25),
    noise_fraction: tuple[float, float] = (0.01, 0.03),
    atrophy_fraction: tuple[float, float] = (0.2, 0.3),
    region: AtrophyRegion = CAUDATE,
    lesion_options: Optional[dict[str, Any]] = None,
) -> SubjectData:
    """Generate one subject of a synthetic task (images in memory, nothing written).

    Parameters
    ----------
    anatomy
        Template anatomy on the working grid (:func:`load_template_anatomy`).
    task
        ``"lesion"`` or ``"atrophy"``.
    label
        1 for a positive (lesions / atrophy), 0 for a control.
    seed
        An int or a :class:`numpy.random.SeedSequence`; the same seed gives the same subject.
    margin_mm
        Margin of the native grid around the template's field of view.
    warp_rms_mm, warp_smoothness_mm
        Range of the rms velocity of the nonlinear warp, and its spatial scale.
    max_rotation_deg, max_translation_mm, max_scale
        Bounds of the random affine (per axis).
    bias_strength
        Range of the norm of the log-bias polynomial's coefficients (about the largest relative
        intensity change the bias field makes).
    intensity_scale
        Range of the global intensity factor (drawn log-uniformly).
    noise_fraction
        Range of the noise standard deviation, as a fraction of the template's brightest tissue.
    atrophy_fraction
        Range of the region's volume loss in positives of the ``atrophy`` task.
    region
        The atrophy region (template space).
    lesion_options
        Keyword arguments of :func:`nipype_xai.synth.lesion.sample_lesions`.

    Returns
    -------
    SubjectData

    Raises
    ------
    ValueError
        Unknown task or label.
    RuntimeError
        The nonlinear warp or its inverse folds (a Jacobian determinant <= 0 on the warp
        lattice); with the default parameters this does not happen.
    """
    _check_task(task)
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (control) or 1 (positive), got {label!r}")
    label = int(label)
    nuisance, task_rng = _streams(seed)
    native_shape, native_affine = native_grid(anatomy, margin_mm)

    # Nuisance draws, always in this order (the noise last: its size depends on the grid).
    linear, affine_parameters = random_affine(
        nuisance, HEAD_CENTRE_MM, max_rotation_deg=max_rotation_deg,
        max_translation_mm=max_translation_mm, max_scale=max_scale)
    warp_rms = float(nuisance.uniform(*warp_rms_mm))
    velocity = random_velocity_field(WARP_LATTICE, nuisance, smoothness_mm=warp_smoothness_mm,
                                     rms_mm=warp_rms)
    bias_coefficients = nuisance.standard_normal(len(_BIAS_TERMS))
    bias_norm = float(nuisance.uniform(*bias_strength))
    bias_coefficients *= bias_norm / np.linalg.norm(bias_coefficients)
    scale = float(np.exp(nuisance.uniform(*np.log(intensity_scale))))
    noise_level = float(nuisance.uniform(*noise_fraction))

    lesions: list[Lesion] = []
    fraction = 0.0
    if label and task == "lesion":
        lesions = sample_lesions(anatomy, task_rng, **(lesion_options or {}))
    elif label and task == "atrophy":
        fraction = float(task_rng.uniform(*atrophy_fraction))

    # A diffeomorphic warp's inverse is only as good as the warp: check both on the lattice. The
    # affine has positive scales and the contraction's radial profile is checked to be monotonic,
    # so phi = c o A o W is a diffeomorphism when these are positive.
    forward = integrate_velocity(velocity, WARP_LATTICE)
    backward = integrate_velocity(-velocity, WARP_LATTICE)
    for name, displacement in (("warp", forward), ("inverse warp", backward)):
        det_min = float(jacobian_determinant(displacement, WARP_LATTICE.affine).min())
        if not det_min > 0.0:
            raise RuntimeError(f"the {name} folds (Jacobian determinant {det_min:.3g}); reduce "
                               f"warp_rms_mm or increase warp_smoothness_mm")

    # phi = c o A o W at every native voxel centre (W is read separably: the grid is regular).
    native_points = voxel_centres(native_shape, native_affine)
    points = native_points + sample_field_on_grid(forward, WARP_LATTICE, native_shape,
                                                  native_affine)
    points = transform_points(linear, points)
    exact: Optional[np.ndarray] = None
    if fraction:
        # Exact ground truth, from the points the control twin (same draw, no atrophy) samples.
        exact = atrophy_signal_mask(points, fraction, anatomy.resolution_mm, region)
        points = atrophy_point_map(points, fraction, region)
    # Stored displacements are rounded to 2**-10 mm (exact in float32, and a third smaller once
    # gzipped than raw float noise), and the image is made with the rounded field, so applying
    # the stored file reproduces the subject exactly.
    to_native = _quantize(points - native_points)
    points = native_points + to_native

    # phi^-1 = W^-1 o A^-1 o c^-1 at every template voxel centre, W^-1 = exp(-v). The exact
    # part (A^-1 o c^-1) is computed everywhere; the smooth displacement of W^-1 at the moved
    # points on a ~4 mm subgrid, then interpolated (its error is ~0.01 mm).
    inverse_linear = np.linalg.inv(linear)

    def before_warp(template_side: np.ndarray) -> np.ndarray:
        moved = (atrophy_point_map(template_side, fraction, region, inverse=True)
                 if fraction else template_side)
        return transform_points(inverse_linear, moved)

    template_axes = grid_axes(anatomy.shape, anatomy.affine)
    stride = max(1, int(round(4.0 / anatomy.resolution_mm)))
    coarse_axes = [axis[np.unique(np.r_[np.arange(0, len(axis), stride), len(axis) - 1])]
                   for axis in template_axes]
    coarse_points = np.stack(np.meshgrid(*coarse_axes, indexing="ij"))
    coarse_warp = sample_field(backward, WARP_LATTICE, before_warp(coarse_points))
    template_points = voxel_centres(anatomy.shape, anatomy.affine)
    exact_template: Optional[np.ndarray] = None
    if exact is not None:
        # On the template grid as the atrophy model sees its input: the T1w moved by A alone (a
        # nonlinear registration would undo the contraction) and resampled linearly, so template
        # point y differs from the twin's where its interpolation reads a native voxel that does.
        exact_template = _pull_mask(exact, native_affine,
                                    transform_points(inverse_linear, template_points),
                                    order=1) > 0
    to_template = _quantize(before_warp(template_points)
                            + resample_separable(coarse_warp, coarse_axes, template_axes)
                            - template_points)

    # Template-space content, then pulled through phi.
    tissue = anatomy.array("t1w")
    groundtruth_template: Optional[np.ndarray] = None
    if lesions:
        groundtruth_template = lesion_mask(lesions, anatomy.shape, anatomy.affine)
    elif task == "atrophy":
        groundtruth_template = np.asarray(region_mask(anatomy, region).dataobj) > 0
    signal = pull_image(tissue, anatomy.affine, points, order=1)
    brain = pull_image(anatomy.array("brain_mask"), anatomy.affine, points, order=0)
    groundtruth = None
    if lesions:
        # The lesions are drawn where each voxel samples the template, as the scanner would see
        # them, not interpolated from the template grid (which spreads them by a voxel beyond
        # any mask): the T1w then differs from its lesion-free twin exactly inside the mask.
        signal *= lesion_intensity_factor_at(lesions, points)
        groundtruth = lesion_mask_at(lesions, points)
    elif groundtruth_template is not None:
        groundtruth = _pull_mask(groundtruth_template, anatomy.affine, points)

    signal *= np.float32(INTENSITY_UNIT * scale)
    signal *= _bias_field(bias_coefficients, native_shape, native_affine)
    sigma = np.float32(noise_level * INTENSITY_UNIT * scale)
    real = signal + sigma * nuisance.standard_normal(native_shape, dtype=np.float32)
    imaginary = sigma * nuisance.standard_normal(native_shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    t1w = np.clip(np.rint(magnitude), 0, np.iinfo(np.int16).max).astype(np.int16)

    voxel_mm3 = float(abs(np.linalg.det(native_affine[:3, :3])))
    parameters: dict[str, Any] = {}
    # Volumes are partial-volume estimates (the template mask pulled with linear interpolation):
    # counting the voxels of a nearest-neighbour mask is off by +-15 % on a 4 mm grid.
    volume = (float(_pull_mask(groundtruth_template, anatomy.affine, points, order=1).sum())
              * voxel_mm3 if groundtruth_template is not None else 0.0)
    if task == "lesion":
        contrasts = sorted({"hyper" if lesion.contrast > 0 else "hypo" for lesion in lesions})
        parameters.update(
            n_lesions=len(lesions),
            lesion_volume_mm3=volume,
            lesion_contrast=(contrasts[0] if len(contrasts) == 1 else "mixed") if lesions
            else None,
        )
    else:
        parameters.update(atrophy_fraction=fraction, region_volume_mm3=volume)
    parameters.update(
        brain_volume_mm3=float(brain.sum()) * voxel_mm3,
        intensity_scale=scale,
        noise_fraction=noise_level,
        bias_strength=bias_norm,
        warp_rms_mm=warp_rms,
    )
    transform = {
        "LinearComponent": {
            "Description": "A: native (T1w) world -> template world, RAS mm, "
                           "x -> R S (x - centre) + centre + t",
            "MatrixRAS": linear.tolist(),
            **{_camel(key): value for key, value in affine_parameters.items()},
        },
        "NonlinearComponent": {
            "Description": "W = exp(v): stationary velocity field (Gaussian-filtered white noise) "
                           "integrated by scaling and squaring on a regular lattice, RAS mm",
            "RmsVelocityMm": warp_rms,
            "SmoothnessMm": warp_smoothness_mm,
            "LatticeOriginMm": list(WARP_LATTICE.origin),
            "LatticeSpacingMm": WARP_LATTICE.spacing,
            "LatticeShape": list(WARP_LATTICE.shape),
        },
        "AtrophyComponent": {
            "Description": f"c: contraction of the {region.name} region (template space); "
                           "identity when AtrophyFraction is 0",
            "AtrophyFraction": fraction,
            "Region": region.name,
            "CentresMm": [list(c) for c in region.centres_mm],
            "SemiAxesMm": list(region.semi_axes_mm),
            "Taper": region.taper,
        },
    }

    def image(data: np.ndarray, affine: np.ndarray, code: int) -> nib.Nifti1Image:
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=code)
        img.set_sform(affine, code=code)
        img.header.set_xyzt_units("mm")
        return img

    # xform codes: 1 = scanner (native grid), 4 = MNI152 (template grid).
    t1w_img = image(t1w, native_affine, 1)
    t1w_img.header.set_slope_inter(1.0, 0.0)
    return SubjectData(
        task=task,
        label=label,
        t1w=t1w_img,
        brain_mask=image(brain.astype(np.uint8), native_affine, 1),
        groundtruth=None if groundtruth is None else image(groundtruth.astype(np.uint8),
                                                           native_affine, 1),
        groundtruth_template=None if groundtruth_template is None else image(
            groundtruth_template.astype(np.uint8), anatomy.affine, 4),
        to_native=displacement_field_image(to_native, native_affine, xform_code=1),
        to_template=displacement_field_image(to_template, anatomy.affine, xform_code=4),
        linear=linear,
        lesions=lesions,
        parameters=parameters,
        transform=transform,
        signal_mask=None if exact is None else image(exact.astype(np.uint8), native_affine, 1),
        signal_mask_template=None if exact_template is None else image(
            exact_template.astype(np.uint8), anatomy.affine, 4),
    )


def _camel(key: str) -> str:
    """``rotation_deg`` -> ``RotationDeg`` (BIDS sidecar keys are CamelCase)."""
    return "".join(part[:1].upper() + part[1:] for part in key.split("_"))
