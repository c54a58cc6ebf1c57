"""NIfTI input checks and atomic writes, shared by every interface that reads or writes images.

Inputs are checked at the boundary, once, and fail with the file name and the fact (as nibabel and
nilearn do): ``"sub-01_T1w.nii.gz: expected a 3D image, got shape (64, 64, 40, 3)"``. Outputs are
written to a temporary file next to the destination and renamed into place, so a crash never leaves a
half-written derivative behind (SPEC §6, §10).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from .atomic import atomic_write

PathLike = Union[str, os.PathLike]

__all__ = ["ImageError", "load_volume", "save_image"]


class ImageError(ValueError):
    """An input image is missing, unreadable, of the wrong dimensionality or holds non-finite values.

    The message always starts with the file name.
    """


def load_volume(path: PathLike) -> nib.Nifti1Image:
    """Load a 3D NIfTI volume, fully read and checked.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file holding one 3D volume. A 4D image whose fourth dimension is a
        single volume (as some converters write) is accepted and squeezed to 3D.

    Returns
    -------
    nibabel.Nifti1Image
        The volume with float32 data in memory and the file's affine and header.

    Raises
    ------
    ImageError
        The file is missing or not a readable NIfTI; it is truncated or corrupt; it is not 3D; or it
        contains NaN or Inf voxels. The message names the file.
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise ImageError(f"{name}: file not found ({path})")
    if not path.is_file():
        raise ImageError(f"{name}: not a file ({path})")
    try:
        img = nib.load(str(path))
    except Exception as error:  # nibabel raises several types (ImageFileError, EOFError, OSError)
        raise ImageError(f"{name}: cannot be read as a NIfTI image ({_one_line(error)})") from error
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"{name}: expected a NIfTI image, got {type(img).__name__}")

    shape = tuple(int(n) for n in img.shape)
    # Check the dimensionality from the header before reading: a 4D time series can be large.
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) != 3:
        raise ImageError(f"{name}: expected a 3D image, got shape {tuple(img.shape)}")

    try:
        # The header can be intact while the data block is cut short (an interrupted copy of a
        # .nii.gz): only reading every voxel finds out.
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, ValueError, zlib.error) as error:
        raise ImageError(f"{name}: truncated or corrupt image data ({_one_line(error)})") from error
    data = data.reshape(shape)

    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        raise ImageError(
            f"{name}: contains non-finite voxels ({n_nan} NaN, {n_inf} Inf of {data.size})"
        )

    # Nifti2Image subclasses Nifti1Image, so the type test must be exact.
    if type(img) is nib.Nifti1Image:
        header = img.header.copy()
        header.set_data_shape(shape)
        header.set_data_dtype(np.float32)
        # The array already holds the scaled values: keep the header from scaling them again.
        header.set_slope_inter(1.0, 0.0)
        return nib.Nifti1Image(data, img.affine, header=header)
    # NIfTI-2: its header does not convert field by field; keep the affines and their codes.
    out = nib.Nifti1Image(data, img.affine)
    out.set_sform(img.get_sform(), code=int(img.header["sform_code"]))
    out.set_qform(img.get_qform(), code=int(img.header["qform_code"]))
    return out


def _one_line(error: BaseException) -> str:
    # nibabel's messages can span lines; a CLI error is one line.
    return " ".join(str(error).split())


def save_image(img: nib.spatialimages.SpatialImage, path: PathLike) -> Path:
    """Write ``img`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    ``os.replace`` within one folder is atomic on POSIX and Windows, so readers see either the old
    file or the complete new one, never a partial write.

    Parameters
    ----------
    img
        Any nibabel image; its format follows the extension of ``path`` (``.nii`` or ``.nii.gz``).
    path
        Destination file.

    Returns
    -------
    pathlib.Path
        The absolute path written.
    """
    # nibabel picks the format (and gzip) from the extension; atomic_write keeps it.
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
    return path
