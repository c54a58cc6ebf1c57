"""Known spatial transforms of the synthetic subjects: smooth diffeomorphic warps and small affines.

A subject differs from the template by a point map ``phi`` from its native (scanner) world to the
template world; its T1w is the template pulled through ``phi``. Knowing ``phi`` exactly makes it a
ground truth for registration as well as the way masks move between spaces.

Conventions
-----------
* Points and vectors are world mm, **RAS** (nibabel's convention), held component-first: an array
  ``(3, ...)`` whose first axis is x, y, z. (Component-first keeps every coordinate a contiguous
  array for ``scipy.ndimage.map_coordinates`` and turns a point transform into one ``(3, 3) @
  (3, N)`` product; the ``(N, 3) @ (3, 3)`` form is pathologically slow with multithreaded
  OpenBLAS.)
* A transform is the displacement ``u`` of ``p -> p + u(p)`` sampled on a grid.
* On disk a transform is one ITK/ANTs displacement field: a NIfTI of shape ``(X, Y, Z, 1, 3)``,
  intent ``vector`` (1007), float32, whose vectors are in **LPS** (ITK's physical space: the x and y
  components negated) and whose grid is the space the transform is *applied in*. As with ANTs'
  ``*Warp.nii.gz``, the field on a grid maps each point ``p`` of that grid to ``p + u(p)`` in the
  other space, so it resamples an image of the other space onto this grid
  (``antsApplyTransforms -r <this grid> -i <other-space image> -t field.nii.gz``). BIDS names it
  ``from-<other space>_to-<this space>_mode-image_xfm`` (fMRIPrep's sense of "from" / "to").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "Lattice",
    "WARP_LATTICE",
    "apply_displacement_field",
    "displacement_field_image",
    "displacement_from_image",
    "grid_axes",
    "integrate_velocity",
    "jacobian_determinant",
    "pull_image",
    "random_affine",
    "random_velocity_field",
    "resample_separable",
    "sample_field",
    "sample_field_on_grid",
    "transform_points",
    "voxel_centres",
]

#: ITK's physical space is LPS, nibabel's RAS: a vector changes sign on the first two axes.
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])

@dataclass(frozen=True)
class Lattice:
    """A regular axis-aligned grid in world mm on which smooth fields are sampled.

    A field is an array ``(3, X, Y, Z)`` on the lattice, read anywhere by trilinear interpolation
    (the nearest lattice value outside it).
    """

    origin: tuple[float, float, float]
    spacing: float
    shape: tuple[int, int, int]

    @classmethod
    def covering(cls, lower: Sequence[float], upper: Sequence[float],
                 spacing: float) -> "Lattice":
        """The lattice from ``lower`` (mm) with ``spacing`` that reaches at least ``upper``."""
        lower_arr = np.asarray(lower, dtype=float)
        extent = np.asarray(upper, dtype=float) - lower_arr
        shape = tuple(int(n) for n in np.ceil(extent / spacing - 1e-9).astype(int) + 1)
        return cls(tuple(float(v) for v in lower_arr), float(spacing), shape)

    @property
    def affine(self) -> np.ndarray:
        """Index-to-world affine of the lattice."""
        matrix = np.diag([self.spacing] * 3 + [1.0])
        matrix[:3, 3] = self.origin
        return matrix

    def axes(self) -> list[np.ndarray]:
        """World coordinate of the nodes along x, y and z."""
        return [self.origin[a] + self.spacing * np.arange(self.shape[a]) for a in range(3)]

    def points(self) -> np.ndarray:
        """World coordinates of the nodes, ``(3, X, Y, Z)``."""
        return voxel_centres(self.shape, self.affine)


#: The lattice of the subjects' nonlinear warps: the template's 1 mm field of view plus 30 mm on
#: every side, nodes 8 mm apart (half the default smoothness of the warps, so trilinear
#: interpolation between nodes loses nothing visible). It is fixed in mm, so a subject's warp does
#: not depend on the resolution its images are rendered at.
WARP_LATTICE = Lattice.covering((-128.0, -164.0, -102.0), (128.0, 128.0, 146.0), 8.0)


def voxel_centres(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of every voxel centre of a grid, ``(3, X, Y, Z)``."""
    shape = tuple(int(n) for n in shape[:3])
    if _is_diagonal(affine):
        return np.stack(np.meshgrid(*grid_axes(shape, affine), indexing="ij"))
    return transform_points(affine, np.indices(shape, dtype=np.float64))


def _is_diagonal(affine: np.ndarray) -> bool:
    linear = np.asarray(affine, dtype=float)[:3, :3]
    return not np.any(np.abs(linear - np.diag(np.diag(linear))) > 1e-12)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4 x 4 affine to points ``(3, ...)``."""
    if _is_diagonal(matrix):
        return np.stack([points[a] * matrix[a, a] + matrix[a, 3] for a in range(3)])
    flat = points.reshape(3, -1)
    out = matrix[:3, :3] @ flat + matrix[:3, 3:4]
    return out.reshape(points.shape)


def grid_axes(shape: Sequence[int], affine: np.ndarray) -> list[np.ndarray]:
    """World coordinate along each axis of an axis-aligned grid.

    Raises
    ------
    ValueError
        The grid is rotated or sheared (its affine is not diagonal).
    """
    if not _is_diagonal(affine):
        raise ValueError("expected an axis-aligned grid (diagonal affine)")
    return [affine[a, a] * np.arange(int(shape[a])) + affine[a, 3] for a in range(3)]


def _linear_weights(nodes: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """Left node, right node and right weight of 1D linear interpolation (clamped at the ends)."""
    index = np.arange(len(nodes), dtype=np.float64)
    if len(nodes) > 1 and nodes[0] > nodes[-1]:
        # np.interp needs increasing nodes: a flipped axis (negative voxel size) is read backwards.
        position = np.interp(queries, nodes[::-1], index[::-1])
    else:
        position = np.interp(queries, nodes, index)
    left = np.clip(np.floor(position).astype(np.intp), 0, max(len(nodes) - 2, 0))
    right = np.minimum(left + 1, len(nodes) - 1)
    return left, right, position - left


def resample_separable(values: np.ndarray, source_axes: Sequence[np.ndarray],
                       target_axes: Sequence[np.ndarray]) -> np.ndarray:
    """Trilinear resampling of ``(C, X, Y, Z)`` values between two axis-aligned grids.

    Done one axis at a time (tensor-product linear interpolation *is* trilinear interpolation),
    which costs a few passes over the output instead of a scattered lookup per voxel. Outside the
    source grid the nearest value is used, as ``map_coordinates(mode="nearest")`` does.
    """
    out = values
    for axis in range(3):
        left, right, weight = _linear_weights(np.asarray(source_axes[axis]),
                                              np.asarray(target_axes[axis]))
        shape = [1, 1, 1, 1]
        shape[axis + 1] = len(weight)
        lo = np.take(out, left, axis=axis + 1)
        hi = np.take(out, right, axis=axis + 1)
        out = lo + (hi - lo) * weight.reshape(shape)
    return out


def sample_field(field: np.ndarray, lattice: Lattice, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a field ``(3, X, Y, Z)`` on ``lattice`` at points ``(3, ...)``.

    Outside the lattice the nearest node's value is used (constant extrapolation).
    """
    coords = ((points.reshape(3, -1) - np.asarray(lattice.origin)[:, None]) / lattice.spacing)
    out = np.empty(coords.shape, dtype=np.float64)
    for c in range(3):
        out[c] = ndimage.map_coordinates(field[c], coords, order=1, mode="nearest")
    return out.reshape(points.shape)


def sample_field_on_grid(field: np.ndarray, lattice: Lattice, shape: Sequence[int],
                         affine: np.ndarray) -> np.ndarray:
    """:func:`sample_field` at every voxel centre of an axis-aligned grid, ``(3, X, Y, Z)``.

    Same values as ``sample_field(field, lattice, voxel_centres(shape, affine))``, computed
    separably.
    """
    return resample_separable(field, lattice.axes(), grid_axes(shape, affine))


def random_velocity_field(lattice: Lattice, rng: np.random.Generator, *,
                          smoothness_mm: float = 16.0, rms_mm: float = 2.5) -> np.ndarray:
    """A smooth random stationary velocity field: Gaussian-filtered white noise on ``lattice``.

    Parameters
    ----------
    smoothness_mm
        Standard deviation of the Gaussian filter (the spatial scale of the deformation).
    rms_mm
        Root-mean-square length of the velocity vectors over the lattice, close to the rms
        displacement of the integrated warp.

    Returns
    -------
    numpy.ndarray
        ``(3, X, Y, Z)`` velocities, RAS mm.
    """
    noise = rng.standard_normal((3, *lattice.shape))
    sigma = smoothness_mm / lattice.spacing
    velocity = np.stack([ndimage.gaussian_filter(noise[c], sigma, mode="reflect")
                         for c in range(3)])
    velocity *= rms_mm / np.sqrt(np.mean(np.sum(velocity**2, axis=0)))
    return velocity


def integrate_velocity(velocity: np.ndarray, lattice: Lattice, n_squarings: int = 6) -> np.ndarray:
    """Displacement of ``exp(velocity)`` by scaling and squaring (Arsigny et al. 2006).

    The exponential of a smooth stationary velocity field is a diffeomorphism, and the exponential
    of ``-velocity`` is its inverse: both directions of a subject's warp come from one field.
    The velocity is scaled down by ``2**n_squarings`` so the first step is a tiny, invertible
    displacement, then composed with itself ``n_squarings`` times: ``u <- u + u o (id + u)``.

    Returns
    -------
    numpy.ndarray
        ``(3, X, Y, Z)`` displacement, RAS mm: ``exp(v)(x) = x + u(x)`` at the lattice nodes.
    """
    nodes = lattice.points()
    displacement = velocity / 2.0**n_squarings
    for _ in range(n_squarings):
        displacement = displacement + sample_field(displacement, lattice, nodes + displacement)
    return displacement


def random_affine(rng: np.random.Generator, centre: Sequence[float], *,
                  max_rotation_deg: float = 4.0, max_translation_mm: float = 4.0,
                  max_scale: float = 0.05) -> tuple[np.ndarray, dict[str, list[float]]]:
    """A small random affine ``x -> R S (x - centre) + centre + t`` (4 x 4, RAS mm).

    Rotation angles about x, y and z are uniform in ``+-max_rotation_deg`` (applied x, then y,
    then z), the per-axis scales uniform in ``1 +- max_scale`` and the translation uniform in
    ``+-max_translation_mm``: the head position and size differences between real scans.

    Returns
    -------
    matrix, parameters
        The matrix and its parameters (``rotation_deg``, ``scale``, ``translation_mm``,
        ``centre_mm``) for the record.
    """
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    scale = rng.uniform(1.0 - max_scale, 1.0 + max_scale, 3)
    translation = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    ax, ay, az = np.deg2rad(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    linear = rz @ ry @ rx @ np.diag(scale)
    centre_arr = np.asarray(centre, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre_arr + translation - linear @ centre_arr
    parameters = {"rotation_deg": angles.tolist(), "scale": scale.tolist(),
                  "translation_mm": translation.tolist(), "centre_mm": centre_arr.tolist()}
    return matrix, parameters


def displacement_field_image(displacement: np.ndarray, affine: np.ndarray,
                             xform_code: int = 1) -> nib.Nifti1Image:
    """An ITK/ANTs displacement-field NIfTI from a RAS displacement ``(3, X, Y, Z)`` on a grid.

    The vectors are converted to LPS and stored as float32 in a 5D ``(X, Y, Z, 1, 3)`` image with
    intent ``vector``, the layout ``antsApplyTransforms`` reads as a displacement-field transform.
    """
    data = np.empty((*displacement.shape[1:], 1, 3), dtype=np.float32)
    for c in range(3):
        data[:, :, :, 0, c] = displacement[c] * RAS_TO_LPS[c]
    img = nib.Nifti1Image(data, affine)
    img.header.set_intent("vector", (), "")
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=xform_code)
    img.set_sform(affine, code=xform_code)
    return img


def displacement_from_image(img: nib.Nifti1Image) -> np.ndarray:
    """The RAS displacement ``(3, X, Y, Z)`` of an ITK displacement-field NIfTI (LPS vectors).

    Raises
    ------
    ValueError
        The image is not ``(X, Y, Z, 1, 3)`` or ``(X, Y, Z, 3)``.
    """
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 3:
        data = data[:, :, :, 0, :]
    elif not (data.ndim == 4 and data.shape[3] == 3):
        raise ValueError(f"expected a displacement field of shape (X, Y, Z, 1, 3), got "
                         f"{data.shape}")
    return np.stack([data[..., c] * RAS_TO_LPS[c] for c in range(3)])


def jacobian_determinant(displacement: Union[np.ndarray, nib.Nifti1Image],
                         affine: Optional[np.ndarray] = None) -> np.ndarray:
    """Jacobian determinant of ``x -> x + u(x)`` at every voxel of the field's grid.

    Parameters
    ----------
    displacement
        A RAS displacement ``(3, X, Y, Z)`` with its grid ``affine``, or a displacement-field image
        as written by :func:`displacement_field_image` (its own affine is used).

    Returns
    -------
    numpy.ndarray
        ``(X, Y, Z)`` float32 (central differences inside, one-sided at the borders). The map is
        locally invertible and orientation-preserving where this is positive; the volume of a
        small region scales by this factor.
    """
    if isinstance(displacement, nib.Nifti1Image):
        affine = displacement.affine
        displacement = displacement_from_image(displacement)
    if affine is None:
        raise ValueError("affine is required with a displacement array")
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=float)[:3, :3]).astype(np.float32)
    jac = [[None] * 3 for _ in range(3)]
    for c in range(3):
        grads = np.gradient(displacement[c].astype(np.float32))
        # Chain rule to world mm: d u_c / d x_b = sum_a (d u_c / d i_a)(d i_a / d x_b).
        for b in range(3):
            column = grads[0] * to_voxel[0, b]
            column += grads[1] * to_voxel[1, b]
            column += grads[2] * to_voxel[2, b]
            if b == c:
                column += 1.0
            jac[c][b] = column
    (a, b, c), (d, e, f), (g, h, i) = jac
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def pull_image(data: np.ndarray, affine: np.ndarray, points: np.ndarray, order: int = 1,
               cval: float = 0.0) -> np.ndarray:
    """Values of an image (array + affine) at world ``points`` ``(3, ...)``; 0 outside it.

    ``order`` is the spline order of ``scipy.ndimage.map_coordinates``: 0 (nearest neighbour)
    keeps the dtype, 1 (linear) returns float32.
    """
    if order > 0:
        # map_coordinates returns the input dtype: interpolating a uint8 mask would truncate.
        data = np.asarray(data, dtype=np.float32)
    coords = transform_points(np.linalg.inv(affine), points).reshape(3, -1)
    values = ndimage.map_coordinates(data, coords, order=order, mode="constant", cval=cval,
                                     prefilter=order > 1)
    return values.reshape(points.shape[1:])


def apply_displacement_field(image: nib.Nifti1Image, field: nib.Nifti1Image,
                             order: int = 1) -> nib.Nifti1Image:
    """Resample ``image`` onto the grid of ``field`` through the field (ANTs semantics).

    Each voxel ``p`` of the field's grid takes the value of ``image`` at ``p + u(p)``; outside the
    image it is 0. ``order=0`` (nearest neighbour) keeps the dtype and suits masks (SPEC §5);
    ``order=1`` (linear) returns float32 and suits intensities and attribution maps.
    """
    displacement = displacement_from_image(field)
    points = voxel_centres(displacement.shape[1:], field.affine) + displacement
    values = pull_image(np.asanyarray(image.dataobj), image.affine, points, order=order)
    dtype = image.get_data_dtype() if order == 0 else np.float32
    out = nib.Nifti1Image(values.astype(dtype), field.affine)
    out.set_qform(field.affine, code=int(field.header["qform_code"]))
    out.set_sform(field.affine, code=int(field.header["sform_code"]))
    return out
