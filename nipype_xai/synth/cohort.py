"""Write a synthetic cohort as a BIDS dataset with its ground truth as a derivatives dataset.

Layout (``XX`` zero-padded to at least two digits)::

    OUTPUT_DIR/
      dataset_description.json  README  participants.tsv  participants.json
      sub-XX/anat/sub-XX_T1w.nii.gz
      derivatives/groundtruth/
        dataset_description.json  README
        sub-XX/anat/sub-XX_desc-brain_mask.nii.gz                      native brain mask
        sub-XX/anat/sub-XX_label-<gt>_mask.nii.gz (+ .json)             native ground truth
        sub-XX/anat/sub-XX_space-MNI152NLin2009aSym[_res-<r>]_label-<gt>_mask.nii.gz (+ .json)
        sub-XX/anat/sub-XX[_space-MNI152NLin2009aSym[_res-<r>]]_label-atrophy_mask.nii.gz (+ .json)
        sub-XX/anat/sub-XX_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.nii.gz (+ .json)
        sub-XX/anat/sub-XX_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.nii.gz (+ .json)

``<gt>`` is ``lesion`` (lesion task) or ``caudate`` (atrophy task). Controls of the lesion task have
no lesion mask (``groundtruth_mask`` is ``no`` in ``participants.tsv``): an empty mask would make
every overlap metric undefined. ``label-caudate`` is the anatomical region; ``label-atrophy``
(atrophy positives only) is the exact ground truth, where the contraction changes the image
(:mod:`nipype_xai.synth.atrophy`): on the T1w grid, and on the template grid for the T1w moved by
the affine component alone (a full registration would undo the contraction). A control's exact
ground truth is empty, so it has no ``label-atrophy`` file. Template-space files on a grid other
than the template's 1 mm grid carry ``res-<r>`` (SPEC §6), e.g. ``res-2``: nilearn's
MNI152NLin2009aSym grid resampled to 2 mm with the same origin and axes
(``nilearn.datasets.load_mni152_template(resolution=2)``'s grid).

Reproducibility: subject ``k`` is drawn from ``SeedSequence(seed, spawn_key=(0, k))`` and the
labels of subjects ``2j`` and ``2j + 1`` from ``SeedSequence(seed, spawn_key=(1, j))`` (one of
each pair is positive), so a subject is the same whatever the cohort size and the classes are
balanced. Files are byte-identical for the same seed (nibabel writes gzip with mtime 0 and no file
name). Each file is written to a temporary name and renamed into place; ``participants.tsv`` comes
last, so a dataset without it is an interrupted run. Subjects are generated and written one at a
time: memory does not grow with the cohort.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from .. import __version__
from ..bids import atomic_write, derivative_path, resolution_label, write_json
from ..images import save_image
from .anatomy import TEMPLATE_SPACE, TemplateAnatomy, load_template_anatomy
from .atrophy import CAUDATE, SIGNAL_MIN_DISPLACEMENT_VOXELS, SIGNAL_MIN_LOG_JACOBIAN
from .subject import TASKS, SubjectData, class_label, groundtruth_label, make_subject, signal_label

__all__ = ["BIDS_VERSION", "cohort_labels", "generate_cohort", "subject_seed"]

PathLike = Union[str, os.PathLike]

BIDS_VERSION = "1.10.0"

#: Where the ground truth goes, relative to the dataset root.
GROUNDTRUTH_DIR = Path("derivatives", "groundtruth")

_PARAMETER_COLUMNS = {
    "lesion": ("n_lesions", "lesion_volume_mm3", "lesion_contrast"),
    "atrophy": ("atrophy_fraction", "region_volume_mm3"),
}
_COMMON_COLUMNS = ("brain_volume_mm3", "intensity_scale", "noise_fraction", "bias_strength",
                   "warp_rms_mm")


def subject_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Seed of subject ``index`` (0-based) of a cohort: independent of the cohort's size."""
    return np.random.SeedSequence(int(seed), spawn_key=(0, int(index)))


def cohort_labels(seed: int, n_subjects: int) -> list[int]:
    """Class of each subject (1 = positive): one of every consecutive pair, chosen at random.

    Balanced for every even size (one extra subject of a random class for an odd size), and the
    label of subject ``k`` does not depend on the cohort size.
    """
    labels = []
    for pair in range((n_subjects + 1) // 2):
        coin = int(np.random.default_rng(
            np.random.SeedSequence(int(seed), spawn_key=(1, pair))).integers(2))
        labels.extend([coin, 1 - coin])
    return labels[:n_subjects]


def generate_cohort(
    output_dir: PathLike,
    task: str = "lesion",
    n_subjects: int = 20,
    seed: int = 0,
    resolution_mm: float = 2.0,
    *,
    overwrite: bool = False,
    progress: bool = True,
    **subject_options: Any,
) -> Path:
    """Generate a synthetic cohort with a known signal source and write it as BIDS.

    Parameters
    ----------
    output_dir
        Dataset root; created if missing. It must be empty unless ``overwrite`` is true.
    task
        ``"lesion"`` (white-matter lesions in positives) or ``"atrophy"`` (caudate contraction
        in positives); see :mod:`nipype_xai.synth.lesion` and :mod:`nipype_xai.synth.atrophy`.
    n_subjects
        Number of subjects; half of them positive.
    seed
        Master seed; the same seed writes the same bytes.
    resolution_mm
        Isotropic voxel size of the images (2 mm: about 1-2 s per subject on one CPU core).
    overwrite
        Write into a non-empty ``output_dir``, replacing files of the same names (nothing is
        deleted).
    progress
        Show a tqdm progress bar.
    **subject_options
        Passed to :func:`nipype_xai.synth.subject.make_subject` (warp, affine, bias, noise,
        atrophy and lesion settings).

    Returns
    -------
    pathlib.Path
        The dataset root.

    Raises
    ------
    ValueError
        Unknown task, ``n_subjects < 1`` or a bad resolution.
    FileExistsError
        ``output_dir`` is not empty and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if int(n_subjects) != n_subjects or n_subjects < 1:
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    n_subjects = int(n_subjects)
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root}: folder is not empty; choose a new one or pass "
                              f"overwrite=True")
    anatomy = load_template_anatomy(resolution_mm)
    root.mkdir(parents=True, exist_ok=True)
    groundtruth_root = root / GROUNDTRUTH_DIR

    settings = {"task": task, "n_subjects": n_subjects, "seed": int(seed),
                "resolution_mm": float(resolution_mm), **subject_options}
    _write_descriptions(root, groundtruth_root, anatomy, settings)

    labels = cohort_labels(seed, n_subjects)
    width = max(2, len(str(n_subjects)))
    rows = []
    for index in tqdm(range(n_subjects), desc=f"synth {task}", unit="subject",
                      disable=not progress):
        subject = f"{index + 1:0{width}d}"
        data = make_subject(anatomy, task, labels[index], subject_seed(seed, index),
                            **subject_options)
        _write_subject(root, groundtruth_root, subject, data, anatomy)
        rows.append(_participant_row(subject, data))
    # Last: a dataset without participants.tsv is an interrupted run.
    _write_participants(root, task, rows)
    return root


def _template_entities(anatomy: TemplateAnatomy) -> dict[str, str]:
    entities = {"space": TEMPLATE_SPACE}
    if anatomy.resolution_mm != 1.0:
        entities["res"] = resolution_label(anatomy.resolution_mm)
    return entities


def _resolution_text(anatomy: TemplateAnatomy) -> str:
    return (f"{anatomy.resolution_mm:g} mm isotropic, shape {list(anatomy.shape)}: nilearn's "
            f"MNI152NLin2009aSym grid (197 x 233 x 189 at 1 mm, origin (-98, -134, -72) mm) "
            f"resampled with the same origin and axes")


def _write_subject(root: Path, groundtruth_root: Path, subject: str, data: SubjectData,
                   anatomy: TemplateAnatomy) -> None:
    t1w_path = derivative_path({"subject": subject, "suffix": "T1w"}, root)
    save_image(data.t1w, t1w_path)
    raw_source = f"bids:raw:{t1w_path.relative_to(root).as_posix()}"

    save_image(data.brain_mask, derivative_path(
        {"subject": subject, "desc": "brain", "suffix": "mask"}, groundtruth_root))

    label = groundtruth_label(data.task)
    template = _template_entities(anatomy)
    if data.groundtruth is not None:
        kind = "Lesion" if data.task == "lesion" else "ROI"
        what = ("white-matter lesions" if data.task == "lesion"
                else f"the {CAUDATE.name} region, contracted in positives")
        native = {"subject": subject, "label": label, "suffix": "mask"}
        save_image(data.groundtruth, derivative_path(native, groundtruth_root))
        write_json(derivative_path({**native, "extension": ".json"}, groundtruth_root), {
            "Type": kind, "RawSources": [raw_source],
            "Description": f"Ground truth ({what}) on the T1w grid: "
                           + (f"the lesions sampled where each voxel sees the template (through "
                              f"the from-{TEMPLATE_SPACE}_to-T1w transform), i.e. the voxels "
                              f"whose intensity the lesions change."
                              if data.task == "lesion" else
                              f"the template-space mask pulled through the "
                              f"from-{TEMPLATE_SPACE}_to-T1w transform, nearest neighbour.")})
        in_template = {"subject": subject, **template, "label": label, "suffix": "mask"}
        save_image(data.groundtruth_template, derivative_path(in_template, groundtruth_root))
        write_json(derivative_path({**in_template, "extension": ".json"}, groundtruth_root), {
            "Type": kind, "RawSources": [raw_source], "Resolution": _resolution_text(anatomy),
            "Description": f"Ground truth ({what}) in {TEMPLATE_SPACE}, where it is defined."})
    if data.signal_mask is not None:
        _write_signal(groundtruth_root, subject, data, anatomy, raw_source)

    convention = ("ITK/ANTs displacement field: NIfTI (X, Y, Z, 1, 3), intent vector, float32 "
                  "vectors in LPS mm. A point p of this file's grid maps to p + u(p) in the "
                  "other space; with antsApplyTransforms, pass this file as -t and an image of "
                  "this grid as -r.")
    composition = ("phi = c o A o W (native point -> template point, W applied first): W the "
                   "nonlinear warp of the native world, A the affine (LinearComponent), c the "
                   "atrophy contraction in template space (identity when AtrophyFraction is 0).")
    for source, target, field, grid, direction in (
        (TEMPLATE_SPACE, "T1w", data.to_native, "T1w (native)",
         "phi: maps T1w points to template points; resamples template-space images onto the "
         "T1w grid"),
        ("T1w", TEMPLATE_SPACE, data.to_template, f"{TEMPLATE_SPACE} ({_resolution_text(anatomy)})",
         "phi^-1: maps template points to T1w points; resamples T1w-space images into the "
         "template"),
    ):
        entities = {"subject": subject, "from": source, "to": target, "mode": "image",
                    "suffix": "xfm", "extension": ".nii.gz"}
        path = derivative_path(entities, groundtruth_root)
        save_image(field, path)
        write_json(path.with_name(path.name[: -len(".nii.gz")] + ".json"), {
            "Description": f"Known ground-truth transform. {direction}.",
            "FromSpace": source, "ToSpace": target, "Grid": grid,
            "Convention": convention, "Composition": composition, **data.transform})


def _write_signal(groundtruth_root: Path, subject: str, data: SubjectData,
                  anatomy: TemplateAnatomy, raw_source: str) -> None:
    """The exact ground truth of an atrophy positive, beside the anatomical ROI masks."""
    label = signal_label(data.task)
    fraction = data.parameters["atrophy_fraction"]
    definition = {
        "Definition": "Voxels whose content the atrophy changes: the contraction c moves the "
                      "template point p the voxel samples without atrophy (the same subject "
                      "generated as a control from the same draw) by more than "
                      "MinDisplacementVoxels of a voxel, or changes the volume there by more "
                      "than MinAbsLogJacobian (|log det Dc(p)|). Controls have no such mask: "
                      "their ground truth is empty (nothing differs).",
        "MinDisplacementVoxels": SIGNAL_MIN_DISPLACEMENT_VOXELS,
        "MinAbsLogJacobian": SIGNAL_MIN_LOG_JACOBIAN,
        "VoxelSizeMm": anatomy.resolution_mm,
        "AtrophyFraction": fraction,
        "AnatomicalROI": f"label-{groundtruth_label(data.task)}",
    }
    native = {"subject": subject, "label": label, "suffix": "mask"}
    save_image(data.signal_mask, derivative_path(native, groundtruth_root))
    write_json(derivative_path({**native, "extension": ".json"}, groundtruth_root), {
        "Type": "ROI", "RawSources": [raw_source],
        "Description": "Exact ground truth of the atrophy signal on the T1w grid: where this "
                       "T1w differs from the same subject without atrophy.", **definition})
    in_template = {"subject": subject, **_template_entities(anatomy), "label": label,
                   "suffix": "mask"}
    save_image(data.signal_mask_template, derivative_path(in_template, groundtruth_root))
    write_json(derivative_path({**in_template, "extension": ".json"}, groundtruth_root), {
        "Type": "ROI", "RawSources": [raw_source], "Resolution": _resolution_text(anatomy),
        "Description": f"Exact ground truth of the atrophy signal on the {TEMPLATE_SPACE} grid, "
                       f"for the T1w brought into the template by the affine component A of the "
                       f"from-T1w_to-{TEMPLATE_SPACE} transform alone (the LinearComponent; "
                       f"nipype_xai.synth.train's 'affine'), linear interpolation: the voxels "
                       f"whose interpolation reads a voxel of the T1w-grid mask. The whole "
                       f"transform would undo the contraction, leaving no signal; A alone keeps "
                       f"the subject's own warp, so this mask is not the template-space "
                       f"{groundtruth_label(data.task)} mask moved.", **definition})


def _participant_row(subject: str, data: SubjectData) -> dict[str, Any]:
    row: dict[str, Any] = {
        "participant_id": f"sub-{subject}",
        "label": class_label(data.task, data.label),
        "groundtruth_mask": "yes" if data.groundtruth is not None else "no",
    }
    for column in _PARAMETER_COLUMNS[data.task] + _COMMON_COLUMNS:
        row[column] = data.parameters[column]
    return row


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def _write_participants(root: Path, task: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    lines = ["\t".join(columns)] + ["\t".join(_format(row[c]) for c in columns) for row in rows]
    text = "\n".join(lines) + "\n"
    atomic_write(root / "participants.tsv", lambda tmp: tmp.write_text(text))


def _participants_sidecar(task: str) -> dict[str, Any]:
    positive = class_label(task, 1)
    label = groundtruth_label(task)
    common = {
        "participant_id": {"Description": "Participant identifier"},
        "label": {"Description": "Class of the subject in the synthetic task",
                  "Levels": {"control": "no signal",
                             positive: ("white-matter lesions" if task == "lesion" else
                                        f"contracted {label} region (volume loss)")}},
        "groundtruth_mask": {
            "Description": f"Whether derivatives/groundtruth holds a label-{label} mask for the "
                           f"subject (controls of the lesion task have none: there is no lesion)"
                           + ("" if task == "lesion" else
                              f"; positives also have label-{signal_label(task)}, the exact "
                              f"ground truth (a control's is empty: no file)"),
            "Levels": {"yes": "mask present", "no": "no mask"}},
        "brain_volume_mm3": {"Description": "Volume of the native brain mask", "Units": "mm^3"},
        "intensity_scale": {"Description": "Global intensity factor of the T1w"},
        "noise_fraction": {"Description": "Standard deviation of the Rician noise's Gaussian "
                                          "components, relative to the template's brightest "
                                          "tissue (x intensity_scale x 1000)"},
        "bias_strength": {"Description": "Norm of the log-bias polynomial's coefficients (about "
                                         "the largest relative intensity change of the bias "
                                         "field)"},
        "warp_rms_mm": {"Description": "RMS velocity of the subject's nonlinear warp",
                        "Units": "mm"},
    }
    if task == "lesion":
        specific = {
            "n_lesions": {"Description": "Number of lesions (0 for controls)"},
            "lesion_volume_mm3": {"Description": "Lesion volume in the T1w (partial-volume "
                                                 "estimate: the template-space mask pulled "
                                                 "through the transform with linear "
                                                 "interpolation)", "Units": "mm^3"},
            "lesion_contrast": {"Description": "T1w contrast of the lesions",
                                "Levels": {"hypo": "all darker than their surroundings",
                                           "hyper": "all brighter", "mixed": "both",
                                           "n/a": "no lesion"}},
        }
    else:
        specific = {
            "atrophy_fraction": {"Description": f"Volume lost by the {label} region (0 for "
                                                f"controls)"},
            "region_volume_mm3": {"Description": f"Volume of the {label} region in the T1w "
                                                 f"(partial-volume estimate: the template-space "
                                                 f"mask pulled through the transform with "
                                                 f"linear interpolation)", "Units": "mm^3"},
        }
    return {**common, **specific}


def _write_descriptions(root: Path, groundtruth_root: Path, anatomy: TemplateAnatomy,
                        settings: dict[str, Any]) -> None:
    task = settings["task"]
    call = ", ".join(f"{key}={value!r}" for key, value in settings.items())
    generated_by = [{"Name": "nipype-xai", "Version": __version__,
                     "Description": f"nipype_xai.synth.generate_cohort({call})"}]
    write_json(root / "dataset_description.json", {
        "Name": f"nipype-xai synthetic {task} cohort",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "GeneratedBy": generated_by,
    })
    write_json(root / "participants.json", _participants_sidecar(task))
    readme = _README.format(task=task, call=call, label=groundtruth_label(task),
                            space=TEMPLATE_SPACE, resolution=_resolution_text(anatomy))
    atomic_write(root / "README", lambda tmp: tmp.write_text(readme))
    write_json(groundtruth_root / "dataset_description.json", {
        "Name": f"nipype-xai synthetic {task} cohort: ground truth",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": generated_by,
        "DatasetLinks": {"raw": "../../"},
        "SourceDatasets": [{"URL": "bids:raw:"}],
    })
    atomic_write(groundtruth_root / "README", lambda tmp: tmp.write_text(readme))


_README = """\
nipype-xai synthetic {task} cohort
===================================

Generated by nipype_xai.synth.generate_cohort({call}).

Each subject is the MNI152 2009a symmetric template (nilearn's skull-stripped copy) pulled
through a known transform phi = c o A o W from its native (T1w) world to the template world:
W a smooth random diffeomorphic warp, A a small random affine, c the contraction of the atrophy
region (positives of the atrophy task only); then a smooth bias field, a global intensity scale
and Rician noise. T1w images share one axis-aligned grid, wider on every side than the
template's (so a T1w-space map and a template-space mask never share a grid by accident).

Ground truth (derivatives/groundtruth): masks with label-{label}, in {space} (where they are
defined; {resolution}) and on the T1w grid (the lesions sampled at phi of each voxel; the caudate
pulled through phi with nearest neighbour); the native brain mask (desc-brain); for positives of
the atrophy task, label-atrophy, the exact ground truth (where the contraction changes the image:
the same subject generated without atrophy differs from it only there; the sidecars state the
thresholds; on the template grid it is for the T1w moved by the affine component alone); and phi in both directions as ITK/ANTs displacement fields
(5D NIfTI, LPS vectors): from-{space}_to-T1w lives on the T1w grid and maps T1w points to
template points (it resamples template images onto the T1w), from-T1w_to-{space} lives on the
template grid and maps template points to T1w points. Each has a JSON sidecar with the affine
component and the parameters. Example:
  antsApplyTransforms -d 3 -i <template-space mask> -r sub-XX_T1w.nii.gz -n NearestNeighbor
      -t sub-XX_from-{space}_to-T1w_mode-image_xfm.nii.gz -o <native mask>

participants.tsv lists each subject's class (label), whether a ground-truth mask exists, and the
generation parameters (participants.json describes them).
"""
