"""Registration to a template and transform application with ANTsPy (no ANTs command line needed).

Pure functions on images: they take nibabel images or NIfTI paths and return nibabel images and
transform *files*. Callers (interfaces, workflows) decide the BIDS names of those files.

Conventions are ANTs' own, so transforms from fMRIPrep/sMRIPrep
(``*_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5``, an ITK composite written by
``antsRegistration``) are applied exactly like the ones :func:`register` writes:

- ``register(moving, fixed)`` writes ``Composite.h5`` (the *forward* transform: it resamples an
  image on the moving grid, e.g. the subject's T1w, onto the fixed grid, e.g. the template) and
  ``InverseComposite.h5`` (the fixed-to-moving direction). Both are kept: a dense SyN field cannot
  be inverted later, only re-estimated.
- ``apply_transforms(img, reference, transforms)`` resamples ``img`` onto ``reference``'s grid;
  ``transforms`` is listed as ``antsApplyTransforms -t`` and ``ants.registration``'s
  ``fwdtransforms`` list them: a reference point p goes through them from first to last
  (``[warp, affine]`` samples ``img`` at A(p + w(p)), all in ITK's LPS millimetres).

nibabel's affines map voxels to RAS+ millimetres, ITK's images live in LPS+ millimetres; the
conversion here flips the first two axes and is checked against world coordinates in the tests.

One module, a little over 500 lines, on purpose: the image checks at the boundary, the
registration and the transform application share one thing that must not drift apart, the
RAS <-> LPS conversion and ITK's affine limits (:func:`to_ants`), and each part is a few short
functions around one ANTsPy call.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from .images import (
    ImageError,
    check_affine,
    check_volume,
    image_like,
    open_image,
    reorient_like,
    reorient_to_ras,
)

__all__ = [
    "PRESETS",
    "RegistrationError",
    "RegistrationResult",
    "apply_transforms",
    "derive_brain_mask",
    "load_image",
    "register",
    "to_ants",
]

ImageLike = Union[str, os.PathLike, nib.Nifti1Image, nib.Nifti2Image]

#: Linear transform files that ANTs can invert on the fly; dense fields (.nii.gz) and
#: composites (.h5, which may hold one) cannot be inverted: use the inverse file instead.
_INVERTIBLE_SUFFIXES = (".mat",)
_TRANSFORM_SUFFIXES = (".h5", ".mat", ".txt", ".nii", ".nii.gz")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Stage parameters of ANTs' antsRegistrationSyNQuick.sh (rigid -> affine -> SyN; ANTsPy's
# "antsRegistrationSyNQuick[s]"), written out here so that masks, the seed and the composite
# output are ours to set. "Quick" = Mattes mutual information (32 bins) in every stage and no
# iterations at full resolution (the SyN field is estimated at twice the voxel size). Measured on
# two shared CPUs, template warped by a known affine + smooth field: 2 mm grid, affine 5 s / SyN
# 6 s (brain-mask Dice 0.987 / 0.993); 1 mm grid, affine 35 s / SyN 90 s (Dice 0.986 / 0.995).
_LINEAR_SCHEDULE = ("[1000x500x250x0,1e-6,10]", "8x4x2x1", "3x2x1x0vox")
_SYN_SCHEDULE = ("[100x70x50x0,1e-6,10]", "8x4x2x1", "3x2x1x0vox")
PRESETS: dict[str, tuple[str, ...]] = {
    "rigid": ("Rigid[0.1]",),
    "affine": ("Rigid[0.1]", "Affine[0.1]"),
    "syn": ("Rigid[0.1]", "Affine[0.1]", "SyN[0.1,3,0]"),
}


class RegistrationError(ValueError):
    """Bad input to registration or transform application (the message names the file)."""


@dataclass(frozen=True)
class RegistrationResult:
    """What :func:`register` produced.

    Attributes
    ----------
    forward_transform : pathlib.Path
        ITK composite (``.h5``) mapping the moving image onto the fixed grid (e.g. T1w -> template).
    inverse_transform : pathlib.Path
        ITK composite (``.h5``) mapping fixed-space images onto the moving grid (template -> T1w).
    warped : nibabel.Nifti1Image
        The moving image resampled onto the fixed grid (linear interpolation), float32.
    preset : str
        ``"rigid"``, ``"affine"`` or ``"syn"``.
    command : str
        The ``antsRegistration`` command line that was run, with ``<fixed>``, ``<moving>``, ...
        standing for the in-memory images (for provenance sidecars).
    elapsed_s : float
        Wall-clock seconds spent in ``antsRegistration``.
    """

    forward_transform: Path
    inverse_transform: Path
    warped: nib.Nifti1Image
    preset: str
    command: str
    elapsed_s: float


# --- images at the boundary -----------------------------------------------------------------


def load_image(img: ImageLike, role: str = "image") -> tuple[nib.Nifti1Image, np.ndarray, str]:
    """Load and check a 3D NIfTI image.

    Parameters
    ----------
    img : path or nibabel image
        A NIfTI file or an in-memory NIfTI image.
    role : str
        What the image is for, used in error messages when it has no file name.

    Returns
    -------
    image : nibabel.Nifti1Image
        The (squeezed) 3D image.
    data : numpy.ndarray
        Its voxel values as float32 (scale slope applied).
    name : str
        The file name (or a description of the in-memory image) for messages.

    Raises
    ------
    RegistrationError
        Missing, unreadable, truncated or non-NIfTI file; not 3D; a header declaring more data
        than the file or this machine's memory can hold (checked before reading); an affine that
        is not finite, singular or sheared (ITK cannot represent shear); NaN or infinite voxels.
    """
    # One loader (nipype_xai.images), its ImageError as this module's error.
    try:
        if isinstance(img, (str, os.PathLike)):
            path = Path(img)
            name = str(path)  # the whole path, as the CLI's failure lines show it
            if not path.is_file():
                raise RegistrationError(f"{name}: {role} file not found ({path})")
            opened = open_image(path)
        elif isinstance(img, nib.spatialimages.SpatialImage):
            name = img.get_filename() or f"<in-memory {role}>"
            opened = img
        else:
            raise RegistrationError(
                f"{role}: expected a NIfTI path or a nibabel image, got {type(img).__name__}")
        checked = check_volume(opened, name)
    except ImageError as exc:
        raise RegistrationError(str(exc)) from None
    _check_itk_affine(checked.affine, name)
    # The image as stored (its dtype decides nearest-neighbour outputs), 3D; the checked data.
    if len(opened.shape) == 4:
        opened = nib.funcs.squeeze_image(opened)
    return opened, np.asanyarray(checked.dataobj), name


def to_ants(img: nib.Nifti1Image, data: np.ndarray | None = None, name: str = "<in-memory image>"):
    """Convert a 3D nibabel image to an ANTsPy image with the same voxel-to-world mapping.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D image; its affine maps voxel indices to RAS+ mm.
    data : numpy.ndarray, optional
        Voxel values to use instead of ``img``'s (e.g. already loaded as float32).
    name : str
        For error messages.

    Returns
    -------
    ants.ANTsImage
        float32 image whose origin/spacing/direction are the LPS+ form of ``img.affine``.

    Notes
    -----
    Written here rather than with ``ants.from_nibabel_nifti`` (ANTsPy 0.6): that function edits
    the caller's header (units), prints to stdout, and rejects images whose header zooms disagree
    with the sform. ITK cannot represent sheared affines; those are rejected, not desheared.
    """
    import ants

    _check_itk_affine(img.affine, name)
    lps = _RAS_TO_LPS @ img.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    values = np.asarray(img.get_fdata(dtype=np.float32) if data is None else data, dtype=np.float32)
    return ants.from_numpy(values, origin=[float(v) for v in lps[:3, 3]],
                           spacing=[float(v) for v in spacing], direction=direction)


def _check_itk_affine(affine: np.ndarray, name: str) -> None:
    """Finite, non-singular (:func:`~nipype_xai.images.check_affine`), then unsheared: what an
    ITK image's origin, spacing and orthonormal direction can represent."""
    try:
        check_affine(affine, name)
    except ImageError as exc:
        raise RegistrationError(str(exc)) from None
    linear = np.asarray(affine, dtype=float)[:3, :3]
    # Safe to divide: check_affine guarantees every voxel size is > 0.
    direction = linear / np.linalg.norm(linear, axis=0)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise RegistrationError(f"{name}: the image affine has shear, which ITK/ANTs images cannot "
                                "represent; reslice it to an unsheared grid first")


def _check_contrast(data: np.ndarray, name: str) -> None:
    """An image to register must vary: ANTs fails on a constant one with a page of ITK errors."""
    low, high = float(data.min()), float(data.max())
    if low == high:
        if low == 0:
            raise RegistrationError(f"{name}: the image is empty (all voxels 0)")
        raise RegistrationError(f"{name}: the image is constant (all voxels {low:g}); registration "
                                "needs contrast")


def _load_mask(mask: ImageLike | None, role: str):
    if mask is None:
        return None
    img, data, name = load_image(mask, role)
    if not (data > 0).any():  # ANTs would silently sample nothing
        raise RegistrationError(f"{name}: {role} is empty")
    ras = reorient_to_ras(image_like(img, (data > 0).astype(np.float32)))  # as the images
    return to_ants(ras, np.asanyarray(ras.dataobj), name).clone("unsigned char")


# --- registration -----------------------------------------------------------------------------


def register(
    moving_img: ImageLike,
    fixed_img: ImageLike,
    preset: str = "affine",
    moving_mask: ImageLike | None = None,
    fixed_mask: ImageLike | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> RegistrationResult:
    """Register ``moving_img`` (e.g. a subject's T1w) to ``fixed_img`` (e.g. the template).

    Parameters
    ----------
    moving_img, fixed_img : path or nibabel image
        3D NIfTI images. For the skull-stripped offline template, give a skull-stripped T1w or a
        ``moving_mask``, or the skull will pull the linear stages.
    preset : {"rigid", "affine", "syn"}
        Stages of ANTs' ``antsRegistrationSyNQuick.sh``: rigid; rigid then affine; rigid, affine,
        then SyN (symmetric diffeomorphic, Avants et al. 2008, doi:10.1016/j.media.2007.06.004).
    moving_mask, fixed_mask : path or nibabel image, optional
        Restrict the similarity metric to these voxels (all stages).
    seed : int
        Seed (>= 0) of the metric's random sampling, passed as ``--random-seed seed+1`` because
        ANTs reads 0 as "seed from the clock". Bit-reproducible only with one ITK thread:
        set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` before the process's first registration
        (ITK reads it once); with several threads, results differ slightly from run to run.
    out_dir : path, optional
        Where the transforms are written (created if needed); a new temporary folder otherwise.

    Returns
    -------
    RegistrationResult
        Forward and inverse composite transforms (``Composite.h5``, ``InverseComposite.h5``),
        the warped moving image and provenance.

    Raises
    ------
    RegistrationError
        Unknown preset; an input that is not a valid 3D NIfTI image, or is empty (all voxels 0) or
        constant (the message names it, and ANTs is not run); or antsRegistration failing.
    """
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RegistrationError(f"seed must be a non-negative integer, got {seed!r}")
    if preset not in PRESETS:
        raise RegistrationError(
            f"unknown registration preset {preset!r}; choose one of {sorted(PRESETS)}")
    moving_nib, moving_data, moving_name = load_image(moving_img, "moving image")
    fixed_nib, fixed_data, fixed_name = load_image(fixed_img, "fixed image")
    _check_contrast(moving_data, moving_name)
    _check_contrast(fixed_data, fixed_name)
    # Both images in RAS voxel order: ANTs shrinks them in index space (every k-th voxel from
    # index 0), so the same head stored in another voxel order would otherwise be sampled at
    # other points and give another transform. Transforms are in world space: unaffected.
    moving_ras = reorient_to_ras(image_like(moving_nib, moving_data))
    fixed_ras = reorient_to_ras(image_like(fixed_nib, fixed_data))
    moving = to_ants(moving_ras, np.asanyarray(moving_ras.dataobj), moving_name)
    fixed = to_ants(fixed_ras, np.asanyarray(fixed_ras.dataobj), fixed_name)
    masks = (_load_mask(fixed_mask, "fixed mask"), _load_mask(moving_mask, "moving mask"))

    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="nipype_xai_registration_")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = str(out_dir / "registration_")
    warped = fixed.clone()
    inverse_warped = moving.clone()

    # ANTsPy passes in-memory images to the ANTs library as pointer strings; these tokens
    # are what the provenance command shows instead.
    names = {get_pointer_string(fixed): "<fixed>", get_pointer_string(moving): "<moving>",
             get_pointer_string(warped): "<warped>",
             get_pointer_string(inverse_warped): "<inverse_warped>"}
    fixed_s, moving_s = get_pointer_string(fixed), get_pointer_string(moving)
    mask_s = "[%s,%s]" % tuple("NA" if m is None else get_pointer_string(m) for m in masks)
    for mask, label in zip(masks, ("<fixed_mask>", "<moving_mask>")):
        if mask is not None:
            names[get_pointer_string(mask)] = label

    args = [
        "--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
        "--output", f"[{prefix},{get_pointer_string(warped)},{get_pointer_string(inverse_warped)}]",
        "--interpolation", "Linear", "--use-histogram-matching", "0",
        "--winsorize-image-intensities", "[0.005,0.995]",
        # Start from the centres of mass, as antsRegistrationSyN.sh does.
        "--initial-moving-transform", f"[{fixed_s},{moving_s},1]",
    ]
    for transform in PRESETS[preset]:
        if transform.startswith("SyN"):
            metric = f"MI[{fixed_s},{moving_s},1,32]"
            convergence, shrink, smoothing = _SYN_SCHEDULE
        else:
            metric = f"MI[{fixed_s},{moving_s},1,32,Regular,0.25]"
            convergence, shrink, smoothing = _LINEAR_SCHEDULE
        args += ["--transform", transform, "--metric", metric, "--convergence", convergence,
                 "--shrink-factors", shrink, "--smoothing-sigmas", smoothing]
    # One mask pair given once applies to every stage.
    args += ["--masks", mask_s, "--write-composite-transform", "1", "--random-seed", str(int(seed) + 1)]

    command = "antsRegistration " + " ".join(shlex.quote(_replace_all(str(a), names)) for a in args)
    started = time.perf_counter()
    status = get_lib_fn("antsRegistration")(process_arguments(args))
    elapsed = time.perf_counter() - started
    forward, inverse = Path(prefix + "Composite.h5"), Path(prefix + "InverseComposite.h5")
    if status != 0 or not forward.is_file() or not inverse.is_file():
        raise RegistrationError(
            f"antsRegistration ({preset}) failed with status {status}; command: {command}")
    warped_nib = reorient_like(image_like(fixed_ras, warped.numpy().astype(np.float32)), fixed_nib)
    return RegistrationResult(forward_transform=forward, inverse_transform=inverse, warped=warped_nib,
                              preset=preset, command=command, elapsed_s=elapsed)


def _replace_all(text: str, names: dict[str, str]) -> str:
    # Longest first: one pointer string could be a prefix of another.
    for pointer, label in sorted(names.items(), key=lambda item: -len(item[0])):
        text = text.replace(pointer, label)
    return text


# --- applying transforms ------------------------------------------------------------------------


def _check_transforms(transforms, invert) -> tuple[list[str], list[bool]]:
    if isinstance(transforms, (str, os.PathLike)):
        transforms = [transforms]
    paths = [Path(t) for t in transforms]
    if not paths:
        raise RegistrationError("no transform given")
    flags = [bool(invert)] * len(paths) if isinstance(invert, bool) else [bool(i) for i in invert]
    if len(flags) != len(paths):
        raise RegistrationError(f"invert has {len(flags)} entries for {len(paths)} transforms")
    for path, flag in zip(paths, flags):
        if not path.is_file():
            raise RegistrationError(f"{path}: transform file not found")
        if not path.name.endswith(_TRANSFORM_SUFFIXES):
            raise RegistrationError(
                f"{path}: not an ITK/ANTs transform (expected one of {_TRANSFORM_SUFFIXES})")
        if flag and not path.name.endswith(_INVERTIBLE_SUFFIXES):
            raise RegistrationError(
                f"{path}: only linear .mat transforms can be inverted on the fly; a composite or "
                "displacement field needs its inverse file (InverseComposite.h5, or the "
                "from-<template>_to-T1w transform fMRIPrep writes)")
        if path.name.endswith(".h5"):
            # A specific message rather than ITK's generic "could not create an IO object".
            with path.open("rb") as handle:
                if handle.read(8) != _HDF5_SIGNATURE:
                    raise RegistrationError(f"{path}: not an HDF5 (ITK composite) transform file")
    return [str(p) for p in paths], flags


def apply_transforms(
    img: ImageLike,
    reference: ImageLike,
    transforms: str | os.PathLike | Sequence[str | os.PathLike],
    interpolation: str = "linear",
    invert: bool | Sequence[bool] = False,
) -> nib.Nifti1Image:
    """Resample ``img`` onto ``reference``'s grid through ANTs/ITK transforms.

    Parameters
    ----------
    img : path or nibabel image
        The 3D image to move (an attribution map, a mask, a T1w).
    reference : path or nibabel image
        Defines the output grid (shape and affine, copied exactly).
    transforms : path or list of paths
        ITK composite ``.h5`` (ours, fMRIPrep's, sMRIPrep's), ANTs ``.mat`` affines, or
        displacement fields ``.nii.gz``, in ``antsApplyTransforms -t`` order (a reference point
        goes through them first to last: ``[warp, affine]`` samples ``img`` at A(p + w(p))).
    interpolation : {"linear", "nearest"}
        Linear for continuous maps; nearest neighbour for masks and labels (keeps values exact).
    invert : bool or list of bool
        Invert a ``.mat`` affine on the fly (not possible for composites or fields).

    Returns
    -------
    nibabel.Nifti1Image
        On ``reference``'s grid; float32 for linear, ``img``'s own dtype for nearest. Voxels
        mapped from outside ``img`` are 0.

    Raises
    ------
    RegistrationError
        Missing or unreadable transform (the message names it), a bad image, or an
        interpolation other than linear/nearest.
    """
    import ants

    interpolators = {"linear": "linear", "nearest": "nearestNeighbor"}
    if interpolation not in interpolators:
        raise RegistrationError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    paths, flags = _check_transforms(transforms, invert)
    moving_nib, moving_data, moving_name = load_image(img, "image to transform")
    reference_nib, reference_data, reference_name = load_image(reference, "reference image")
    # ANTsPy returns the reference's pixel type: float32 everywhere keeps maps and labels exact.
    moving = to_ants(moving_nib, moving_data, moving_name)
    fixed = to_ants(reference_nib, reference_data, reference_name)
    try:
        warped = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=paths,
                                       interpolator=interpolators[interpolation], whichtoinvert=flags,
                                       defaultvalue=0, singleprecision=True)
    except Exception as exc:  # noqa: BLE001 - ANTsPy raises RuntimeError, ValueError and bare Exception
        raise RegistrationError(f"applying {', '.join(paths)} to {moving_name} failed: {exc}") from exc
    dtype = _stored_dtype(moving_nib) if interpolation == "nearest" else np.float32
    return image_like(reference_nib, warped.numpy().astype(dtype))


def _stored_dtype(img: nib.Nifti1Image) -> np.dtype:
    """The dtype nearest-neighbour output can keep: the stored one, unless a scale slope applies."""
    proxy = img.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    scaled = (slope not in (1, None) and np.isfinite(slope)) or (
        inter not in (0, None) and np.isfinite(inter))
    if scaled:
        return np.dtype(np.float32)
    return np.dtype(img.get_data_dtype())


def derive_brain_mask(
    template_mask: ImageLike,
    t1w: ImageLike,
    inverse_transform: str | os.PathLike | Sequence[str | os.PathLike],
) -> nib.Nifti1Image:
    """Pull the template's brain mask back to the subject's T1w grid.

    Parameters
    ----------
    template_mask : path or nibabel image
        Brain mask in template space (e.g. ``get_template(suffix="mask", desc="brain")``).
    t1w : path or nibabel image
        The subject image whose grid the mask is wanted on.
    inverse_transform : path or list of paths
        Template -> T1w transform(s), e.g. :attr:`RegistrationResult.inverse_transform` or
        fMRIPrep's ``from-<template>_to-T1w_mode-image_xfm.h5``.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask (0/1) on the T1w grid, resampled nearest-neighbour so it stays binary.
    """
    warped = apply_transforms(template_mask, t1w, inverse_transform, interpolation="nearest")
    return image_like(warped, (np.asanyarray(warped.dataobj) > 0).astype(np.uint8))


def strip_hdf5_timestamps(path: Union[str, os.PathLike]) -> Path:
    """Rewrite an ITK ``.h5`` transform without HDF5's object timestamps, in place (atomically).

    HDF5 stamps every group and dataset with its creation and modification time, and ITK's
    transform writer keeps that default, so two registrations with identical parameters give
    files that differ in those bytes only. The copy holds the same groups, datasets (values and
    types) and attributes, written with ``track_times`` off, which ITK/ANTs read as before
    (tested: the same parameters, the same resampled image); ``--seed`` then gives byte-identical
    transforms. h5py, not a byte patch: the timestamps' offsets are HDF5-internal.
    """
    import h5py

    from .atomic import atomic_write

    path = Path(path)

    def copy(source, target, group_plist) -> None:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                child = h5py.Group(h5py.h5g.create(target.id, name.encode(), gcpl=group_plist))
                copy(item, child, group_plist)
            else:
                dataset = target.create_dataset(name, data=item[()], dtype=item.dtype,
                                                track_times=False)
                for key, value in item.attrs.items():
                    dataset.attrs[key] = value

    def write(tmp: Path) -> None:
        group_plist = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
        group_plist.set_obj_track_times(False)
        with h5py.File(path, "r") as source, h5py.File(tmp, "w", track_order=False) as target:
            copy(source, target, group_plist)

    return atomic_write(path, write)
