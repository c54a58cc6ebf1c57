"""A background set for the Shapley-family methods (``gradient_shap``, ``deeplift_shap``): reference
inputs on the model grid drawn from a cohort, and the file that holds them.

SHAP explains a prediction against a *background*, the distribution of inputs that stands for "no
particular subject" (Lundberg & Lee 2017): the model's training images, or a control group. Here
it is a set of N volumes, each prepared exactly as the explained images are
(:func:`~nipype_xai.models.preprocessing.to_model_grid`: resampled to the model grid and
normalised as the spec says, what :func:`~nipype_xai.models.inference.explain_image` does).

The file (written by :func:`write_background`, ``nipype-xai background``)
--------------------------------------------------------------------------
``BACKGROUND.nii.gz``: a 4D float32 NIfTI on the model grid, (X, Y, Z, N), volume n the n-th
background sample, already a model input (one channel: a spec with C channels feeds the same
volume C times, as ``to_model_grid`` does, so :func:`load_background` repeats it). Beside it,
``BACKGROUND.json``: ``ModelSpec`` (name), ``Space``, ``ModelGrid`` (resolution and shape),
``N``, ``Seed``, ``Selection`` (the class kept, or null), ``NAvailable`` (the images it was
drawn from) and ``Sources`` (the file name of each volume, in order).

:func:`load_background` checks the file against the spec (grid shape, voxel size, orientation)
and, given the grid of the image being explained, the exact grid, so a background prepared for
another model or another field of view is refused in one line naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np
import torch

from ..bids import write_json
from ..images import (
    ImageError,
    check_affine,
    check_header_size,
    check_not_constant,
    open_image,
    save_image,
)
from .preprocessing import ModelGrid, to_model_grid
from .spec import ModelSpec
from .weights import weights_sha256

__all__ = [
    "Background",
    "background_description",
    "background_sidecar_path",
    "choose_background",
    "load_background",
    "prepare_background",
    "write_background",
]

PathLike = Union[str, os.PathLike]

#: Largest distance (mm) between two grids' voxel centres that still counts as the same grid:
#: float32 rounding of a NIfTI header's affine, far below any voxel.
GRID_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Background:
    """A background set read from its file (:func:`load_background`).

    Attributes
    ----------
    volumes
        float32 (N, C, X, Y, Z): the model inputs, C = the spec's channels.
    affine
        The model grid's voxel-to-world affine.
    path
        The file (absolute).
    sha256
        SHA-256 of the file's bytes.
    sidecar
        Its JSON sidecar (``{}`` when there is none).
    """

    volumes: torch.Tensor
    affine: np.ndarray
    path: Path
    sha256: str
    sidecar: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of background samples."""
        return int(self.volumes.shape[0])


def choose_background(
    n_available: int,
    n: int,
    seed: int,
    *,
    labels: Optional[Sequence[Any]] = None,
    keep: Optional[Any] = None,
) -> list[int]:
    """Which of ``n_available`` inputs form the background: ``n`` drawn without replacement.

    Parameters
    ----------
    n_available
        Number of candidate inputs.
    n
        Background size; all candidates when there are no more than ``n``.
    seed
        Seed of the draw (the same seed and candidates give the same background).
    labels, keep
        With ``keep``: only candidates whose label is ``keep`` (e.g. the controls).

    Returns
    -------
    list of int
        Indices into the candidates, ascending.

    Raises
    ------
    ValueError
        ``n`` < 1, ``labels`` not one per input, or no candidate left.
    """
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    candidates = list(range(int(n_available)))
    if keep is not None:
        if labels is None or len(labels) != n_available:
            raise ValueError(f"labels: expected one label per input ({n_available}), got "
                             f"{'none' if labels is None else len(labels)}")
        candidates = [i for i in candidates if labels[i] == keep]
    if not candidates:
        which = f" with label {keep!r}" if keep is not None else ""
        raise ValueError(f"no input{which} to draw a background from")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(candidates), generator=generator)[: int(n)]
    return sorted(candidates[int(i)] for i in order)


def prepare_background(
    images: Iterable[tuple[str, nib.spatialimages.SpatialImage]],
    spec: ModelSpec,
) -> tuple[torch.Tensor, ModelGrid]:
    """Background volumes from images in the spec's space, prepared as explained images are.

    Parameters
    ----------
    images
        ``(name, image)`` pairs (3D, in the spec's template space); consumed one at a time, so a
        generator keeps one image in memory.
    spec
        The model spec: grid and normalisation.

    Returns
    -------
    volumes : torch.Tensor
        float32 (N, C, X, Y, Z).
    grid : ModelGrid
        Their common model grid.

    Raises
    ------
    nipype_xai.images.ImageError
        An empty or constant image, or one whose model grid is not the first image's (another
        field of view: the volumes would not be voxel-aligned); the message names it.
    ValueError
        No image.
    """
    volumes, grid, first = [], None, None
    for name, img in images:
        check_not_constant(img, name)
        x, image_grid = to_model_grid(img, spec)
        if grid is None:
            grid, first = image_grid, name
        elif not same_grid(image_grid.affine, grid.affine):
            raise ImageError(
                f"{name}: its model grid is not {first}'s (origin "
                f"{_origin(image_grid.affine)} vs {_origin(grid.affine)} mm): background images "
                f"must share one field of view in {spec.input.space}")
        volumes.append(x)
    if grid is None:
        raise ValueError("no image to prepare a background from")
    return torch.cat(volumes), grid


def same_grid(affine: np.ndarray, other: np.ndarray) -> bool:
    """Whether two voxel-to-world affines describe the same grid (within
    :data:`GRID_TOLERANCE_MM`)."""
    return bool(np.allclose(affine, other, rtol=0, atol=GRID_TOLERANCE_MM))


def _origin(affine: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in affine[:3, 3]) + ")"


def background_sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar beside a background file (``X.nii.gz`` -> ``X.json``)."""
    path = Path(path)
    for suffix in (".nii.gz", ".nii"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def write_background(
    path: PathLike, volumes: torch.Tensor, grid: ModelGrid, sidecar: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write a background as its 4D NIfTI and JSON sidecar, each atomically.

    Parameters
    ----------
    path
        ``.nii.gz`` (or ``.nii``) file to write.
    volumes
        (N, C, X, Y, Z) model inputs on ``grid``; channel 0 is stored (the channels of a model
        input are copies of one volume).
    grid
        Their model grid.
    sidecar
        The JSON sidecar's content.

    Returns
    -------
    tuple of pathlib.Path
        The image and the sidecar written.
    """
    path = Path(path)
    if not path.name.endswith((".nii.gz", ".nii")):
        raise ValueError(f"{path.name}: a background file ends in .nii.gz or .nii")
    data = volumes[:, 0].detach().cpu().numpy().astype(np.float32).transpose(1, 2, 3, 0)
    if data.shape[:3] != tuple(grid.shape):
        raise ValueError(f"volumes of shape {data.shape[:3]} are not on the grid {grid.shape}")
    img = nib.Nifti1Image(np.ascontiguousarray(data), grid.affine)
    img.set_sform(grid.affine, code=1)
    img.set_qform(grid.affine, code=1)
    img.header.set_xyzt_units("mm")
    out = save_image(img, path)
    return out, write_json(background_sidecar_path(out), dict(sidecar))


def load_background(
    path: PathLike, spec: ModelSpec, grid: Optional[ModelGrid] = None
) -> Background:
    """Read a background file and check it against the model spec (and the explained grid).

    Parameters
    ----------
    path
        4D NIfTI written by :func:`write_background` (a 3D one is one background sample).
    spec
        The model spec it must fit: grid shape, voxel size, orientation; its volumes are repeated
        to the spec's channels.
    grid
        The model grid of the image being explained (``model_grid_for(img, spec)``); the file
        must be on it exactly. None: only the spec is checked.

    Returns
    -------
    Background

    Raises
    ------
    nipype_xai.images.ImageError
        Missing or unreadable file, not 3D/4D, a shape, voxel size, orientation or grid that is
        not the model's, NaN or Inf values, or an unreadable sidecar; one line naming the file.
    """
    path = Path(path).absolute()
    name = path.name
    img = open_image(path)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"{name}: expected a NIfTI image, got {type(img).__name__}")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 3:
        shape = shape + (1,)
    if len(shape) != 4:
        raise ImageError(f"{name}: a background is a 4D image (X, Y, Z, N), got shape "
                         f"{tuple(img.shape)}")
    check_header_size(img, name)
    check_affine(img.affine, name)
    expected = tuple(int(n) for n in spec.input.shape)
    if shape[:3] != expected:
        raise ImageError(
            f"{name}: background grid {'x'.join(map(str, shape[:3]))} is not the model's input "
            f"grid {'x'.join(map(str, expected))} ({spec.source}); make it for this model with "
            f"'nipype-xai background --model'")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    resolution = np.asarray(spec.input.resolution_mm, dtype=float)
    if not np.allclose(zooms, resolution, rtol=1e-3):
        raise ImageError(f"{name}: background voxels of {'x'.join(f'{z:g}' for z in zooms)} mm "
                         f"are not the model's {'x'.join(f'{r:g}' for r in resolution)} mm "
                         f"({spec.source})")
    axcodes = "".join(nib.aff2axcodes(img.affine))
    if axcodes != spec.input.orientation:
        raise ImageError(f"{name}: background orientation {axcodes} is not the model's "
                         f"{spec.input.orientation} ({spec.source})")
    if grid is not None and not same_grid(img.affine, grid.affine):
        raise ImageError(
            f"{name}: background grid (origin {_origin(img.affine)} mm) is not the model grid of "
            f"the explained image (origin {_origin(grid.affine)} mm); make the background from "
            f"images on the same field of view")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, OSError, ValueError) as error:
        raise ImageError(f"{name}: truncated or corrupt image data ({error})") from error
    if not np.isfinite(data).all():
        raise ImageError(f"{name}: contains NaN or Inf voxels")
    volumes = torch.from_numpy(np.ascontiguousarray(data.transpose(3, 0, 1, 2)))[:, None]
    if spec.input.channels > 1:
        volumes = volumes.repeat(1, spec.input.channels, 1, 1, 1)
    sidecar_path = background_sidecar_path(path)
    sidecar: dict[str, Any] = {}
    if sidecar_path.is_file():
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ImageError(f"{sidecar_path.name}: not a readable JSON sidecar of {name} "
                             f"({error})") from error
        if not isinstance(sidecar, dict):
            raise ImageError(f"{sidecar_path.name}: expected a JSON object")
    return Background(volumes=volumes, affine=np.asarray(img.affine, dtype=float), path=path,
                      sha256=weights_sha256(path), sidecar=sidecar)


def background_description(background: Background) -> dict[str, Any]:
    """How a map's sidecar names the background it was computed against (never its values).

    ``Source`` (the file), ``SHA256`` (of its bytes), ``N``; and from its own sidecar, when
    present, ``ModelSpec``, ``Seed``, ``Selection`` and ``NAvailable`` (the images listed in
    ``Sources`` there are not repeated in every map's sidecar).
    """
    description: dict[str, Any] = {"Source": str(background.path), "SHA256": background.sha256,
                                   "N": background.n}
    for key in ("ModelSpec", "Seed", "Selection", "NAvailable"):
        if key in background.sidecar:
            description[key] = background.sidecar[key]
    return description
