"""A synthetic cohort as training data: BIDS files -> tensors on a model spec's grid, balanced
batches and augmentation (:mod:`nipype_xai.synth.train` trains on them).

Into template space with the known transforms
---------------------------------------------
A model spec's input lives in a template space, and a subject's T1w does not. The pipeline
registers each T1w to the template with ANTs (:mod:`nipype_xai.registration`); for *training* we
use the cohort's known ground-truth transform instead (``derivatives/groundtruth/
sub-XX_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.nii.gz``), which is what a perfect
registration would give, costs no registration time and makes the training set independent of
ANTs' version and thread count. ``to_template`` chooses how much of it is used:

``"groundtruth"``
    the whole transform ``phi^-1``: a perfect *nonlinear* registration. Right for the lesion task
    (lesions are intensity changes and survive any warp).
``"affine"``
    only its affine component ``A`` (the sidecar's ``LinearComponent``): a perfect *affine*
    registration, leaving the subject's smooth anatomical variability in place. Right for the
    atrophy task: ``phi`` contains the caudate contraction ``c``, so a perfect nonlinear
    registration would undo exactly the shape change that tells the classes apart (the reason
    voxel-based morphometry modulates by the Jacobian).
``"identity"``
    no transform: the native image is read as if it were already in template space (the native
    grid shares the template's axes and field-of-view centre, so only the subject's own affine and
    warp separate them). A baseline for how much the registration matters.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np
import torch

from ..images import load_volume
from ..models.preprocessing import to_model_grid
from ..models.spec import ModelSpec
from .anatomy import TEMPLATE_SPACE
from .warps import apply_displacement_field

__all__ = [
    "TASK_TO_TEMPLATE",
    "TO_TEMPLATE",
    "augment_batch",
    "balanced_batches",
    "cohort_to_template",
    "load_cohort_arrays",
    "read_participants",
]

PathLike = Union[str, os.PathLike]

#: How a cohort's T1w images are brought into template space (see the module notes).
TO_TEMPLATE = ("groundtruth", "affine", "identity")

#: How each task's images reach the template for training and scoring: lesions survive any warp,
#: so the full known transform; the atrophy task's signal *is* a deformation, which a perfect
#: nonlinear registration would undo, so only the affine part.
TASK_TO_TEMPLATE: dict[str, str] = {"lesion": "groundtruth", "atrophy": "affine"}

_GROUNDTRUTH = Path("derivatives", "groundtruth")




def read_participants(bids_dir: PathLike) -> list[tuple[str, str]]:
    """``(participant_id, label)`` of every row of a cohort's ``participants.tsv``.

    Raises
    ------
    FileNotFoundError
        No ``participants.tsv`` (:func:`~nipype_xai.synth.generate_cohort` writes it last, so its
        absence also means an interrupted generation).
    ValueError
        The table has no ``participant_id`` or ``label`` column, or no rows.
    """
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (not a cohort, or an interrupted generation)")
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path.name}: no participants")
    missing = [c for c in ("participant_id", "label") if c not in rows[0]]
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {missing}")
    return [(row["participant_id"], row["label"]) for row in rows]


def cohort_to_template(
    bids_dir: PathLike, participant_id: str, to_template: str = "groundtruth"
) -> nib.Nifti1Image:
    """A cohort subject's T1w in template space (the cohort's template grid), by known transform.

    Parameters
    ----------
    bids_dir
        Root of a cohort written by :func:`~nipype_xai.synth.generate_cohort`.
    participant_id
        ``sub-XX``.
    to_template
        ``"groundtruth"``, ``"affine"`` or ``"identity"`` (see the module notes).

    Returns
    -------
    nibabel.Nifti1Image
        float32; on the template grid at the cohort's resolution (the grid of the stored
        transform), or the native T1w itself for ``"identity"``.
    """
    if to_template not in TO_TEMPLATE:
        raise ValueError(f"to_template must be one of {list(TO_TEMPLATE)}, got {to_template!r}")
    root = Path(bids_dir)
    t1w = load_volume(root / participant_id / "anat" / f"{participant_id}_T1w.nii.gz")
    if to_template == "identity":
        return t1w
    xfm = (root / _GROUNDTRUTH / participant_id / "anat"
           / f"{participant_id}_from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm.nii.gz")
    if not xfm.is_file():
        raise FileNotFoundError(f"{xfm.name}: the known transform of {participant_id} is missing "
                                f"({xfm})")
    field = nib.load(str(xfm))
    if to_template == "groundtruth":
        return apply_displacement_field(t1w, field, order=1)

    from nilearn.image import resample_img

    sidecar = xfm.with_name(xfm.name[: -len(".nii.gz")] + ".json")
    try:
        linear = np.asarray(json.loads(sidecar.read_text())["LinearComponent"]["MatrixRAS"])
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{sidecar.name}: no LinearComponent.MatrixRAS to read the affine "
                         f"from ({error})") from error
    # A maps native world to template world: the same voxels with affine A @ affine are the image
    # in template world, resampled once onto the template grid of the stored transform.
    moved = nib.Nifti1Image(np.asarray(t1w.dataobj), linear @ t1w.affine)
    return resample_img(moved, target_affine=field.affine, target_shape=field.shape[:3],
                        interpolation="linear", fill_value=0.0, force_resample=True,
                        copy_header=True)


def load_cohort_arrays(
    bids_dir: PathLike,
    spec: ModelSpec,
    *,
    to_template: str = "groundtruth",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every subject of a synthetic cohort on the spec's model grid, with its class index.

    Each T1w is brought into template space with the cohort's known transform
    (:func:`cohort_to_template`; the pipeline registers with ANTs instead) and then onto the
    model grid with :func:`~nipype_xai.models.to_model_grid` (resolution, shape and
    normalisation of ``spec.input``), exactly as inference prepares an image.

    Parameters
    ----------
    bids_dir
        Root of a cohort written by :func:`~nipype_xai.synth.generate_cohort`.
    spec
        A classification spec in ``MNI152NLin2009aSym`` whose ``outputs`` name the cohort's
        ``label`` values (``["control", "lesion"]``).
    to_template
        ``"groundtruth"`` (default), ``"affine"`` or ``"identity"``.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    X : torch.Tensor
        float32, ``(N, C, X, Y, Z)``.
    y : torch.Tensor
        int64, ``(N,)``: index of each subject's label in ``spec.outputs``.
    subjects : list of str
        ``participant_id`` of each row, in ``participants.tsv`` order.

    Raises
    ------
    ValueError
        A regression spec, another template space, or a label the spec does not list.
    """
    from tqdm.auto import tqdm

    if spec.task != "classification":
        raise ValueError(f"{spec.source}: cohorts are classification tasks; the spec's task is "
                         f"{spec.task!r}")
    if to_template != "identity" and spec.input.space != TEMPLATE_SPACE:
        raise ValueError(f"{spec.source}: the cohort's known transforms go to {TEMPLATE_SPACE}, "
                         f"but the spec's input space is {spec.input.space!r}")
    participants = read_participants(bids_dir)
    unknown = sorted({label for _, label in participants} - set(spec.outputs))
    if unknown:
        raise ValueError(f"participants.tsv: label(s) {unknown} are not among the spec's outputs "
                         f"{list(spec.outputs)}")
    X = torch.empty((len(participants), spec.input.channels, *spec.input.shape),
                    dtype=torch.float32)
    for row, (participant_id, _) in enumerate(tqdm(participants, desc="load cohort",
                                                   unit="subject", disable=not progress)):
        X[row] = to_model_grid(cohort_to_template(bids_dir, participant_id, to_template), spec)[0][0]
    y = torch.tensor([spec.outputs.index(label) for _, label in participants], dtype=torch.int64)
    return X, y, [participant_id for participant_id, _ in participants]


def balanced_batches(y: torch.Tensor, batch_size: int, generator: torch.Generator
                     ) -> list[torch.Tensor]:
    """One epoch of class-balanced batches of sample indices.

    Each class is shuffled and the smaller classes are repeated (a fresh shuffle each pass) up to
    the size of the largest; the classes are then interleaved, so every batch of
    ``batch_size`` holds ``batch_size / n_classes`` samples of each class. A BatchNorm model
    therefore never sees a one-class batch, and a rare class weighs as much as a common one. A
    last batch of a single sample is dropped (BatchNorm statistics of one sample are noise).
    """
    classes = torch.unique(y)
    members = [torch.nonzero(y == c).flatten() for c in classes]
    largest = max(len(m) for m in members)
    columns = []
    for indices in members:
        passes = [indices[torch.randperm(len(indices), generator=generator)]
                  for _ in range(math.ceil(largest / len(indices)))]
        columns.append(torch.cat(passes)[:largest])
    order = torch.stack(columns, dim=1).flatten()
    batches = list(torch.split(order, int(batch_size)))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    max_shift: int = 2,
    intensity_jitter: float = 0.1,
    flip_x: bool = False,
) -> torch.Tensor:
    """Light, label-preserving augmentation of a batch ``(B, C, X, Y, Z)``.

    * a random shift of up to ``max_shift`` voxels along each axis, filled with zeros (not a
      circular roll: the brain touches the bottom of the template's field of view, and a roll
      would wrap the cerebellum onto the vertex), as residual misregistration does;
    * an intensity change ``a x + b`` of the nonzero voxels, ``a`` in ``1 +- jitter`` and ``b``
      in ``+- jitter``, as a z-scored image of another scanner would differ; zeros stay zero,
      as the spec's ``mask="nonzero"`` normalisation keeps them;
    * with ``flip_x``, a left-right flip of half the samples. Only for tasks that are not
      lateralised, on a symmetric template (MNI152NLin2009aSym is): a flip must not change the
      label.
    """
    batch = x.shape[0]
    out = torch.zeros_like(x)
    shifts = torch.randint(-max_shift, max_shift + 1, (batch, 3), generator=generator)
    scales = 1.0 + intensity_jitter * (2.0 * torch.rand(batch, generator=generator) - 1.0)
    offsets = intensity_jitter * (2.0 * torch.rand(batch, generator=generator) - 1.0)
    flips = torch.rand(batch, generator=generator) < 0.5
    for b in range(batch):
        source = x[b]
        if flip_x and flips[b]:
            source = torch.flip(source, dims=(1,))
        target_slices, source_slices = [slice(None)], [slice(None)]
        for axis, shift in enumerate(shifts[b].tolist()):
            size = x.shape[2 + axis]
            # Content moves by +shift: target[i + shift] = source[i].
            target_slices.append(slice(max(shift, 0), size + min(shift, 0)))
            source_slices.append(slice(max(-shift, 0), size - max(shift, 0)))
        out[b][tuple(target_slices)] = source[tuple(source_slices)]
        nonzero = out[b] != 0
        out[b] = torch.where(nonzero, out[b] * scales[b] + offsets[b], out[b])
    return out
