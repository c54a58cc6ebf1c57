"""The inputs of the scoring cores: arrays, binary masks, affines and grids, read and checked.

Every check fails with :class:`MetricsError` naming the input (``ground_truth``, ``brain_mask``,
... or, for an image read from a file, the file: :func:`_image_name`). Pure numpy; no files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ArrayLike = Any  # numpy array, torch tensor, or nibabel spatial image

#: Accepted values of ``score``.
SCORES = ("abs", "pos", "raw")

#: Two affines are "the same grid" when every entry agrees within this many mm (absolute).
#: NIfTI stores the sform in float32, so a round trip through a file moves a 100 mm translation
#: by ~1e-5 mm; a real grid mismatch is a fraction of a voxel, i.e. orders of magnitude larger.
AFFINE_ATOL_MM = 1e-3


class MetricsError(ValueError):
    """The inputs of a metric are inconsistent (empty ground truth, grid mismatch, bad values)."""


def _as_array(obj: ArrayLike, name: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Array and affine (None for a plain array) of a numpy array, torch tensor or nibabel image."""
    if hasattr(obj, "affine") and hasattr(obj, "dataobj"):
        # nibabel image: asanyarray keeps an integer mask integer (get_fdata would cast to float).
        return np.asanyarray(obj.dataobj), np.asarray(obj.affine, dtype=float)
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        return obj.detach().cpu().numpy(), None
    try:
        return np.asarray(obj), None
    except Exception as error:  # pragma: no cover - depends on the caller's object
        raise MetricsError(f"{name}: cannot be read as an array ({error})") from error


def _binary(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a boolean mask; anything but 0/1 values is an error, not a silent threshold."""
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.number)):
        raise MetricsError(f"{name}: expected a binary mask, got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        values = np.unique(array[(array != 0) & (array != 1)])
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise MetricsError(f"{name}: expected a binary (0/1) mask, found other values: {shown}")
    return array.astype(bool)


def _check_affine(reference: Optional[np.ndarray], other: Optional[np.ndarray], name: str) -> None:
    if reference is None or other is None:
        return
    if reference.shape != (4, 4) or other.shape != (4, 4):
        raise MetricsError(f"{name}: affines must be 4x4, got {reference.shape} and {other.shape}")
    if not np.allclose(reference, other, rtol=0.0, atol=AFFINE_ATOL_MM):
        raise MetricsError(
            f"{name}: affine does not match the attribution map's "
            f"(largest difference {np.abs(reference - other).max():.4g} mm, tolerance "
            f"{AFFINE_ATOL_MM} mm); resample it to the map's grid first.\n"
            f"attribution affine:\n{reference}\n{name} affine:\n{other}"
        )


def _resolve_affine(
    from_image: Optional[np.ndarray], given: Optional[ArrayLike], name: str
) -> Optional[np.ndarray]:
    """The affine of one input: the image's own or the one passed for it (which must agree)."""
    if given is None:
        return from_image
    given = np.asarray(given, dtype=float)
    if from_image is not None:
        _check_affine(from_image, given, f"{name} (image affine vs. the affine passed for it)")
    return given


def _linear_map(
    affine: Optional[np.ndarray], voxel_size: Optional[Sequence[float]]
) -> np.ndarray:
    """3x3 map from voxel index steps to mm: the affine's linear part, else diag(voxel_size).

    Using the full linear part (not only the voxel sizes) keeps distances right on oblique grids.
    """
    sizes = None
    if voxel_size is not None:
        try:
            sizes = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
        except ValueError as error:
            raise MetricsError(f"voxel_size: expected 1 or 3 sizes, got {voxel_size!r}") from error
        if np.any(sizes <= 0) or not np.all(np.isfinite(sizes)):
            raise MetricsError(f"voxel_size must be positive and finite, got {tuple(sizes)}")
    if affine is not None:
        linear = np.asarray(affine, dtype=float)[:3, :3]
        from_affine = np.linalg.norm(linear, axis=0)
        if sizes is not None and not np.allclose(from_affine, sizes, rtol=1e-4, atol=1e-6):
            raise MetricsError(
                f"voxel_size {tuple(sizes)} disagrees with the affine's voxel sizes "
                f"{tuple(np.round(from_affine, 6))}"
            )
        return linear
    return np.eye(3) if sizes is None else np.diag(sizes)


def _image_name(image: Any, fallback: str) -> str:
    """The file name of an image read from a file (nibabel remembers it), else ``fallback``.

    Cores take images, not paths; :func:`nipype_xai.images.load_volume` keeps the path in the
    image so that a core's message can still name the file.
    """
    filename = image.get_filename() if hasattr(image, "get_filename") else None
    return Path(filename).name if filename else fallback
