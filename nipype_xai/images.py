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

__all__ = [
    "ImageError",
    "check_affine",
    "check_header_size",
    "check_not_constant",
    "check_volume",
    "format_bytes",
    "image_like",
    "load_volume",
    "open_image",
    "reorient_like",
    "reorient_to_ras",
    "save_image",
    "usable_memory_bytes",
]

#: deflate (gzip) cannot expand data by more than 1032:1 (zlib's technical details): a ``.nii.gz``
#: file whose header declares more bytes than that is corrupt or cut short, whatever it holds.
_MAX_DEFLATE_RATIO = 1032


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

    The returned image remembers ``path`` (``get_filename()``), so that cores given the image
    can name the file in their messages.

    Raises
    ------
    ImageError
        The file is missing or not a readable NIfTI; its header declares more data than the file or
        this machine's memory can hold; its affine is not finite or singular; it is truncated or
        corrupt; it is not 3D; or it contains NaN or Inf voxels. The message names the file.
    """
    out = check_volume(open_image(path), Path(path).name)
    out.set_filename(str(path))
    return out


def open_image(path: PathLike) -> nib.spatialimages.SpatialImage:
    """Open an image file with nibabel (header only; nothing checked or read beyond it).

    Raises
    ------
    ImageError
        The file is missing, not a file, or not readable by nibabel; the message names it.
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise ImageError(f"{name}: file not found ({path})")
    if not path.is_file():
        raise ImageError(f"{name}: not a file ({path})")
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises several types (ImageFileError, EOFError, OSError)
        raise ImageError(f"{name}: cannot be read as a NIfTI image ({_one_line(error)})") from error


def check_volume(img: nib.spatialimages.SpatialImage, name: str) -> nib.Nifti1Image:
    """Check an opened (or in-memory) NIfTI image and read it: what :func:`load_volume` does
    after opening the file, for images that come in memory.

    Returns a new ``Nifti1Image`` with float32 data in memory (scaling applied), the image's
    affine, header fields and xform codes; a single-volume 4D image is squeezed to 3D.

    Raises
    ------
    ImageError
        Not NIfTI; not 3D; a header declaring more data than the file or this machine's memory
        can hold; an affine that is not finite or singular; truncated or corrupt data; NaN or
        Inf voxels. The message starts with ``name``.
    """
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"{name}: expected a NIfTI image, got {type(img).__name__} (convert it "
                         "to .nii.gz first)")
    shape = tuple(int(n) for n in img.shape)
    # Check the dimensionality from the header before reading: a 4D time series can be large.
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) != 3:
        raise ImageError(f"{name}: expected a 3D image, got shape {tuple(img.shape)}")
    check_header_size(img, name)
    check_affine(img.affine, name)

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


def check_header_size(img: nib.spatialimages.SpatialImage, name: str | None = None) -> None:
    """Refuse a header that declares more voxel data than the file or this machine can hold.

    Checked before any voxel is read: a corrupt header declaring 10000³ voxels would otherwise end
    in a MemoryError (or an attempt to allocate terabytes) instead of a message.

    Parameters
    ----------
    img
        The image as ``nibabel.load`` returned it (data not read yet). The size of its image file,
        if it has one, bounds the data: an uncompressed ``.nii`` must hold every declared byte
        after the header, and a ``.nii.gz`` cannot unpack to more than 1032 times its size
        (deflate's limit).
    name
        The file name for the message (default: the image file's name).

    Raises
    ------
    ImageError
        The file cannot hold the declared data, or the data as float32 (as the loaders read them)
        exceed :func:`usable_memory_bytes`. The message names the file, the shape and the size.
    """
    filename = img.get_filename()
    name = name or (Path(filename).name if filename else "<in-memory image>")
    shape = tuple(int(n) for n in img.shape)
    dtype = np.dtype(img.get_data_dtype())
    n_voxels = 1
    for n in shape:  # Python ints: no overflow, however absurd the header
        n_voxels *= n
    stored = n_voxels * dtype.itemsize
    declared = f"the header declares a {'x'.join(map(str, shape))} {dtype.name} image"

    image_file = img.file_map["image"].filename if "image" in img.file_map else None
    capacity = None
    if image_file and Path(image_file).is_file():
        size = Path(image_file).stat().st_size
        offset = int(getattr(img.dataobj, "offset", 0) or 0)
        if str(image_file).lower().endswith(".gz"):
            capacity = size * _MAX_DEFLATE_RATIO
            held = f"{format_bytes(size)} of gzip data, at most {format_bytes(capacity)} unpacked"
        elif str(image_file).lower().endswith((".nii", ".img")):
            capacity, held = size, format_bytes(size)
        # Other compressions (.bz2, .zst): the file size gives no useful bound.
        if capacity is not None and offset + stored > capacity:
            raise ImageError(f"{name}: {declared} ({format_bytes(stored)}), more than the file "
                             f"can hold ({held}): a corrupt header or a truncated file")
    memory = usable_memory_bytes()
    in_memory = n_voxels * np.dtype(np.float32).itemsize
    if memory is not None and in_memory > memory:
        raise ImageError(f"{name}: {declared} ({format_bytes(in_memory)} as float32), more than "
                         f"this machine's memory ({format_bytes(memory)})")


def check_affine(affine: np.ndarray, name: str) -> None:
    """Refuse an affine that maps no volume: non-finite entries, or a singular linear part.

    Parameters
    ----------
    affine
        4×4 voxel-to-world affine.
    name
        The file (or a description of the image) for the message.

    Raises
    ------
    ImageError
        The affine has NaN or Inf entries, or its 3×3 part is singular (a voxel size of 0, or
        axes that are parallel). Checked without dividing, so no numpy warning is emitted.
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ImageError(f"{name}: the affine (voxel to world) is not finite (NaN or Inf); the "
                         "header's sform/qform is corrupt")
    linear = affine[:3, :3]
    with np.errstate(all="ignore"):  # absurdly large entries overflow to inf: still not singular
        zooms = np.sqrt((linear**2).sum(axis=0))
        det = float(np.linalg.det(linear))
    # Singular relative to the voxel sizes: |det| is the volume of the voxel, at most the product of
    # its edge lengths, equal to it without shear.
    if not (zooms > 0).all() or abs(det) <= 1e-6 * float(np.prod(zooms)):
        sizes = "x".join(f"{z:.4g}" for z in zooms)
        raise ImageError(f"{name}: the affine (voxel to world) is singular (voxel sizes {sizes} "
                         f"mm, determinant {det:.3g}); the header's sform/qform is corrupt")


def check_not_constant(image: Union[nib.spatialimages.SpatialImage, np.ndarray], name: str, *,
                       role: str = "image") -> None:
    """Refuse an image whose voxels all hold one value: it carries nothing to predict from or to
    register (an empty T1w, a failed conversion, a mask that lost its brain).

    Parameters
    ----------
    image
        A nibabel image (its stored voxels are read) or its data array.
    name
        The file (or a description of the image) for the message.
    role
        What the image is, for the message (``"image"``, ``"T1w"``, ``"brain mask"``).

    Raises
    ------
    ImageError
        ``"<name>: the <role> is empty (all voxels 0)"`` or ``"... constant (all voxels <v>)"``.
    """
    data = np.asanyarray(image.dataobj if hasattr(image, "dataobj") else image)
    low, high = float(data.min()), float(data.max())
    if low == high:
        fact = "empty (all voxels 0)" if low == 0 else f"constant (all voxels {low:g})"
        raise ImageError(f"{name}: the {role} is {fact}")


def usable_memory_bytes() -> int | None:
    """This machine's memory for one process: physical memory, or the cgroup limit if lower.

    The total, not what is free now: a check against it fails only where a run cannot succeed.
    ``None`` where neither can be read (then nothing is checked against memory).
    """
    memory = None
    try:
        memory = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX
        pass
    # A container's or a batch job's limit (cgroup v2, then v1; "max" or a huge v1 value: none).
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = int(text)
            memory = limit if memory is None else min(memory, limit)
        break
    return memory if memory and memory > 0 else None


def format_bytes(n_bytes: int | float) -> str:
    """``1863 GiB``, ``2 MiB``, ``1.5 KiB``, ``352 B``: binary units up to GiB (the unit memory is
    sold in, so sizes compare at a glance)."""
    value, unit = float(n_bytes), "B"
    for next_unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    text = f"{value:.0f}" if value >= 10 or unit == "B" else f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"


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


def image_like(reference: nib.Nifti1Image, data: np.ndarray,
               affine: np.ndarray | None = None) -> nib.Nifti1Image:
    """A new image of ``data`` with ``reference``'s xform codes, no scaling.

    On ``reference``'s grid with its exact affine, or with ``affine`` when given.
    """
    affine = reference.affine if affine is None else affine
    out = nib.Nifti1Image(data, affine)
    header = reference.header
    sform_code = int(header["sform_code"]) if "sform_code" in header else 1
    qform_code = int(header["qform_code"]) if "qform_code" in header else 0
    # update_affine=False: the header stores float32, and the in-memory affine must stay the
    # reference's own float64 one, bit for bit.
    out.set_sform(affine, code=sform_code or 1, update_affine=False)
    out.set_qform(affine, code=qform_code or sform_code or 1, update_affine=False)
    out.header.set_xyzt_units("mm")
    return out


def _reoriented(img: nib.Nifti1Image, ornt: np.ndarray) -> nib.Nifti1Image:
    data = np.asanyarray(img.dataobj)  # scaled values, for a file's proxy and an array alike
    shape = data.shape[:3]
    affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    return image_like(img, np.ascontiguousarray(nib.orientations.apply_orientation(data, ornt)),
                      affine=affine)


def reorient_to_ras(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same voxels with the array axes permuted and flipped to the closest RAS+ order.

    No resampling: the voxel centres and values are the input's, only stored in another order (as
    ``nibabel.as_closest_canonical``, and sMRIPrep's conform step). Steps that work in index space
    (N4's and ANTs's shrink factors subsample every k-th voxel from index 0) then see the same
    array whatever order the scanner wrote, so their results do not depend on it. An image already
    in RAS order is returned as it is.
    """
    ornt = nib.orientations.io_orientation(img.affine)
    if np.array_equal(ornt, nib.orientations.axcodes2ornt("RAS")):
        return img
    return _reoriented(img, ornt)


def reorient_like(img: nib.Nifti1Image, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` stored on ``reference``'s grid, with its affine: the inverse of
    :func:`reorient_to_ras`.

    Raises
    ------
    ImageError
        ``img``'s voxels are not a permutation/flip of ``reference``'s grid (another shape, voxel
        size or position).
    """
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                                nib.orientations.io_orientation(reference.affine))
    out = _reoriented(img, transform)
    if out.shape[:3] != reference.shape[:3] or not np.allclose(out.affine, reference.affine,
                                                               atol=1e-4):
        raise ImageError("reorient_like: the image is not on a reordering of the reference grid "
                         f"(shape {img.shape[:3]} vs {reference.shape[:3]})")
    return image_like(reference, np.asanyarray(out.dataobj))
