"""Finding the inputs: pybids queries driven by one table (as niworkflows' ``collect_data``).

:data:`QUERIES` holds the pybids filters of every input the participant level reads (the T1w, the
ground-truth mask, a lab's anatomy, transforms); :func:`collect_data` runs them per subject and
session, session-level files first and subject-level ones after (sMRIPrep and fMRIPrep write the
anatomy once per subject when they average sessions). :func:`collect_group_inputs` finds the
participant-level derivatives the group level summarises.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..tables import outside_training_inputs, read_tsv
from .commit import recorded_files, subject_status
from .naming import FAILURES_FILE, desc_to_method

__all__ = [
    "QUERIES",
    "BIDSInputError",
    "GroupInputs",
    "InputProblem",
    "SubjectInputs",
    "collect_data",
    "collect_group_inputs",
]

LOGGER = logging.getLogger("nipype_xai")

PathLike = Union[str, os.PathLike]

_NIFTI = [".nii.gz", ".nii"]
#: Transform files, in the order of preference when several exist.
_TRANSFORM_EXTENSIONS = [".h5", ".nii.gz", ".txt", ".mat"]

#: The pybids filters of every input, by name. ``None`` means "no such entity" (a native-space
#: file has no ``space-``); ``{template}`` and ``{gt_label}`` are filled in per run.
QUERIES: dict[str, dict[str, Any]] = {
    "t1w": {"datatype": "anat", "suffix": "T1w", "extension": _NIFTI},
    "ground_truth": {"label": "{gt_label}", "suffix": "mask", "space": None,
                     "extension": _NIFTI},
    "preproc_t1w": {"datatype": "anat", "desc": "preproc", "suffix": "T1w", "space": None,
                    "extension": _NIFTI},
    "brain_mask": {"datatype": "anat", "desc": "brain", "suffix": "mask", "space": None,
                   "extension": _NIFTI},
    "forward_transform": {"from": "T1w", "to": "{template}", "mode": "image", "suffix": "xfm",
                          "extension": _TRANSFORM_EXTENSIONS},
    "inverse_transform": {"from": "{template}", "to": "T1w", "mode": "image", "suffix": "xfm",
                          "extension": _TRANSFORM_EXTENSIONS},
}


class BIDSInputError(ValueError):
    """The input dataset (or a derivatives folder given with it) cannot be used at all.

    The message starts with the folder or file and says what is wrong.
    """


@dataclass(frozen=True)
class SubjectInputs:
    """What one subject (one session) contributes to the participant level.

    Attributes
    ----------
    subject, session
        BIDS labels (``session`` is None for datasets without sessions).
    t1w
        The T1w image.
    ground_truth
        Native-space ground-truth mask, if the ground-truth dataset has one for this subject.
    transforms
        ``(T1w -> template, template -> T1w)`` transform files to reuse, if given.
    preproc_t1w, brain_mask
        A lab's own anatomical derivatives (sMRIPrep/fMRIPrep ``desc-preproc_T1w`` and
        ``desc-brain_mask``), if given: used instead of bias-correcting and brain-extracting the
        raw T1w.
    """

    subject: str
    session: Optional[str]
    t1w: Path
    ground_truth: Optional[Path] = None
    transforms: Optional[tuple[Path, Path]] = None
    preproc_t1w: Optional[Path] = None
    brain_mask: Optional[Path] = None

    @property
    def label(self) -> str:
        """``sub-<subject>[_ses-<session>]``."""
        return _label(self.subject, self.session)


@dataclass(frozen=True)
class InputProblem:
    """A subject that cannot be processed, and why (e.g. no T1w)."""

    subject: str
    session: Optional[str]
    problem: str


def _label(subject: str, session: Optional[str]) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def _layout(root: Path, what: str, *, dataset: bool = True):
    """A pybids layout of ``root``; ``dataset=False``: any folder of BIDS-named files (a
    transforms folder need not describe itself), indexed with the derivatives entities."""
    from bids import BIDSLayout

    if not root.is_dir():
        raise BIDSInputError(f"{root}: {what} is not a folder")
    if dataset and not (root / "dataset_description.json").is_file():
        raise BIDSInputError(
            f"{root}: not a BIDS dataset (no dataset_description.json at its root)"
        )
    try:
        # Derivative datasets (DatasetType "derivative") get pybids' derivatives entities
        # (desc, label, space, res, from, to, ...) automatically; a bare folder is told.
        config = {} if dataset else {"config": ["bids", "derivatives"]}
        return BIDSLayout(str(root), validate=False, **config)
    except Exception as error:  # pybids raises several types for unreadable datasets
        message = " ".join(str(error).split())
        raise BIDSInputError(f"{root}: cannot be indexed as a BIDS dataset ({message})") from error


def _query(layout, name: str, subject: str, session: Optional[str], **fill: str) -> list[Path]:
    """The files of :data:`QUERIES` ``[name]`` for a subject at one level (``session`` None:
    files without a session), in the order of preference."""
    from bids.layout import Query

    filters = {key: (Query.NONE if value is None else
                     value.format(**fill) if isinstance(value, str) else value)
               for key, value in QUERIES[name].items()}
    found = layout.get(subject=subject, session=session or Query.NONE, return_type="file",
                       **filters)
    extensions = filters["extension"]
    return sorted((Path(f) for f in found), key=lambda p: (
        next((i for i, e in enumerate(extensions) if p.name.endswith(e)), len(extensions)),
        str(p)))


def _by_level(layout, names: Sequence[str], subject: str, session: Optional[str], *,
              together: bool = False, **fill: str) -> dict[str, Path]:
    """The first file of each input in ``names``: session level first, then subject level.

    The first level that has them all wins. Otherwise each input is taken from the first level
    that has it; with ``together`` (a transform and its inverse must be a pair), only the first
    input found is returned, so the caller names the one missing.
    """
    levels = [session, None] if session else [None]
    partial: dict[str, Path] = {}
    for level in levels:
        found = {name: files[0] for name in names
                 if (files := _query(layout, name, subject, level, **fill))}
        if len(found) == len(names):
            return found
        for name, path in found.items():
            partial.setdefault(name, path)
    if together and partial:
        first = next(name for name in names if name in partial)
        return {first: partial[first]}
    return partial


def _subjects(layout, root: Path, participant_labels: Optional[Sequence[str]]) -> list[str]:
    # A subject folder with no file pybids indexes (e.g. an empty anat/) is still a subject the
    # user expects to be processed: it is reported as lacking a T1w, not silently skipped.
    folders = {path.name[4:] for path in root.glob("sub-*")
               if path.is_dir() and path.name[4:].isalnum()}
    available = sorted(set(layout.get_subjects()) | folders)
    if not participant_labels:
        subjects = available
    else:
        wanted = [label[4:] if label.startswith("sub-") else label for label in participant_labels]
        missing = [label for label in wanted if label not in available]
        if missing:
            raise BIDSInputError(
                f"{root}: no subject {', '.join('sub-' + m for m in missing)} in the dataset "
                f"(subjects: {', '.join('sub-' + s for s in available) or 'none'})"
            )
        subjects = list(dict.fromkeys(wanted))
    if not subjects:
        raise BIDSInputError(f"{root}: no subject folders (sub-*) in the dataset")
    return subjects


def collect_data(
    bids_dir: PathLike,
    participant_labels: Optional[Sequence[str]] = None,
    *,
    ground_truth_dir: Optional[PathLike] = None,
    gt_label: str = "lesion",
    transforms_dir: Optional[PathLike] = None,
    anat_dir: Optional[PathLike] = None,
    template: str = "MNI152NLin2009aSym",
) -> tuple[list[SubjectInputs], list[InputProblem]]:
    """Query a BIDS dataset (pybids, :data:`QUERIES`) for each subject's inputs.

    Parameters
    ----------
    bids_dir
        The BIDS dataset (T1w images under ``sub-*/[ses-*/]anat``).
    participant_labels
        Subjects to process (with or without ``sub-``); default: all.
    ground_truth_dir
        A derivatives dataset with native-space masks ``sub-X[_ses-Y]_label-<gt_label>_mask.nii.gz``
        (no ``space-`` entity), e.g. a synthetic cohort's ``derivatives/groundtruth``. A subject
        without one (a control of the lesion task) is processed without overlap metrics.
    gt_label
        ``label-`` of the ground-truth masks.
    transforms_dir
        A derivatives folder (fMRIPrep, sMRIPrep, or a synthetic cohort's ground truth) holding
        ``*_from-T1w_to-<template>_mode-image_xfm.*`` and ``*_from-<template>_to-T1w_...``; a
        subject without both is reported as a problem.
    anat_dir
        A lab's anatomical derivatives (sMRIPrep/fMRIPrep output): each subject's
        ``desc-preproc_T1w`` and ``desc-brain_mask`` (native space, both or neither) and, when
        present, its transforms; whatever it has is not computed again. Unlike
        ``transforms_dir``, a subject without transforms there is registered here.
    template
        Template of the transforms looked for.

    Returns
    -------
    subjects : list of SubjectInputs
        One per subject and session with a T1w (the first, with a logged note, when there are
        several runs).
    problems : list of InputProblem
        Subjects that cannot be processed (no T1w, missing transforms).

    Raises
    ------
    BIDSInputError
        ``bids_dir`` (or a derivatives folder) is not a BIDS dataset, a requested participant is
        not in it, or no subject has a T1w.
    """
    root = Path(bids_dir).absolute()
    layout = _layout(root, "BIDS_DIR")
    subjects = _subjects(layout, root, participant_labels)
    gt_layout = anat_layout = transforms_layout = None
    if ground_truth_dir is not None:
        gt_layout = _layout(Path(ground_truth_dir).absolute(), "the ground-truth folder")
    anat_root = Path(anat_dir).absolute() if anat_dir is not None else None
    if anat_root is not None:
        anat_layout = _layout(anat_root, "the anatomical derivatives folder")
    transforms_root = Path(transforms_dir).absolute() if transforms_dir is not None else None
    if transforms_root is not None:
        if not transforms_root.is_dir():
            raise BIDSInputError(f"{transforms_root}: the transforms folder is not a folder")
        transforms_layout = _layout(transforms_root, "the transforms folder", dataset=(
            transforms_root / "dataset_description.json").is_file())
    pair = ("forward_transform", "inverse_transform")

    found: list[SubjectInputs] = []
    problems: list[InputProblem] = []
    for subject in subjects:
        for session in layout.get_sessions(subject=subject) or [None]:
            t1ws = _query(layout, "t1w", subject, session)
            where = f"sub-{subject}" + (f"/ses-{session}" if session else "") + "/anat"
            if not t1ws:
                problems.append(InputProblem(subject, session, f"no T1w image found under {where}"))
                continue
            t1ws = sorted(t1ws)
            if len(t1ws) > 1:
                LOGGER.warning("%s: %d T1w images; using %s", where, len(t1ws), t1ws[0].name)
            inputs: dict[str, Any] = {}
            if gt_layout is not None:
                inputs.update(_by_level(gt_layout, ["ground_truth"], subject, session,
                                        gt_label=gt_label))
            problem = None
            if transforms_layout is not None:
                inputs.update(_by_level(transforms_layout, pair, subject, session,
                                        together=True, template=template))
                missing = [f"from-{a}_to-{b}" for (a, b), name in
                           ((("T1w", template), pair[0]), ((template, "T1w"), pair[1]))
                           if name not in inputs]
                if missing:
                    problem = (f"{transforms_root}: no {' or '.join(missing)} transform for "
                               f"sub-{subject}" + (f" ses-{session}" if session else ""))
            if anat_layout is not None and problem is None:
                anatomy = _by_level(anat_layout, ["preproc_t1w", "brain_mask"], subject, session)
                if len(anatomy) == 1:
                    have, lack = (("desc-preproc_T1w", "desc-brain_mask")
                                  if "preproc_t1w" in anatomy
                                  else ("desc-brain_mask", "desc-preproc_T1w"))
                    problem = (f"{anat_root}: sub-{subject} has a {have} but no {lack} in the "
                               "anatomical derivatives")
                inputs.update(anatomy)
                if transforms_layout is None:
                    inputs.update(_by_level(anat_layout, pair, subject, session,
                                            together=True, template=template))
            if problem:
                problems.append(InputProblem(subject, session, problem))
                continue
            transforms = ((inputs[pair[0]], inputs[pair[1]])
                          if pair[0] in inputs and pair[1] in inputs else None)
            found.append(SubjectInputs(subject, session, t1ws[0], inputs.get("ground_truth"),
                                       transforms, inputs.get("preproc_t1w"),
                                       inputs.get("brain_mask")))

    if not found and all("no T1w" in p.problem for p in problems):
        raise BIDSInputError(
            f"{root}: no T1w images found (expected sub-<label>/[ses-<label>/]anat/"
            f"sub-<label>[_ses-<label>]_T1w.nii.gz)"
        )
    return found, problems


# ---- the group level's inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class GroupInputs:
    """The participant-level derivatives the group level summarises.

    Attributes
    ----------
    metrics_tsvs
        Every subject's ``desc-overlap_metrics.tsv`` (empty without ground truth).
    maps, methods
        Every subject's template-space map, and the method of each.
    template, res
        ``space-`` and ``res-`` of those maps (one grid).
    subjects
        Subjects with maps (participant labels, without ``sub-``).
    failures_tsv
        The participant level's ``failures.tsv``, if any.
    incomplete
        ``(sub-X[_ses-Y], why)`` of the subjects left out because their derivatives are not
        complete (a run killed while it wrote them, or files changed since).
    labels
        ``sub-X[_ses-Y]`` of every subject and session with maps: one report each.
    outside_domain
        ``(sub-X[_ses-Y], why)`` of the subjects with maps whose input the model's input-domain
        check put outside its training inputs (their predictions TSV,
        :func:`nipype_xai.tables.outside_training_inputs`). They are summarised with the others;
        the group report and the command line name them.
    """

    metrics_tsvs: list[Path]
    maps: list[Path]
    methods: list[str]
    template: str
    res: Optional[str]
    subjects: list[str] = field(default_factory=list)
    failures_tsv: Optional[Path] = None
    incomplete: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    outside_domain: list[tuple[str, str]] = field(default_factory=list)


def _method_of(path: Path, desc: str) -> str:
    """The method of a map: its sidecar's ``Method``, else the ``desc`` label read back."""
    sidecar = path.with_name(path.name[: -len(".nii.gz")] + ".json")
    try:
        method = json.loads(sidecar.read_text()).get("Method")
    except (OSError, ValueError):
        method = None
    if isinstance(method, str) and method:
        return method
    # A baseline's desc is its name (sobel, laplace, random): read back as camel case undone.
    return desc_to_method(desc)


def collect_group_inputs(output_dir: PathLike, template: Optional[str] = None) -> GroupInputs:
    """Find the participant-level derivatives in ``output_dir`` with pybids.

    Parameters
    ----------
    output_dir
        The derivatives dataset the participant level wrote.
    template
        ``space-`` of the maps to average; default: the one space the maps are in.

    Raises
    ------
    BIDSInputError
        ``output_dir`` holds no participant-level maps, or maps on several grids.
    """
    from bids import BIDSLayout
    from bids.layout import Query

    root = Path(output_dir).absolute()
    if not (root / "dataset_description.json").is_file():
        raise BIDSInputError(
            f"{root}: no participant-level results (no dataset_description.json); run the "
            "participant level first"
        )
    layout = BIDSLayout(str(root), validate=False)
    query: dict[str, Any] = {"subject": Query.ANY, "suffix": "attribution",
                             "extension": ".nii.gz", "space": template or Query.ANY}
    files, incomplete = _complete_only(root, layout.get(**query))
    if not files:
        raise BIDSInputError(
            f"{root}: no template-space attribution maps of any subject "
            f"(sub-*/anat/*_space-{template or '<tpl>'}_*_attribution.nii.gz); run the "
            "participant level first"
        )
    grids = Counter((f.entities.get("space"), f.entities.get("res")) for f in files)
    if len(grids) > 1:
        listed = ", ".join(f"space-{s}" + (f"_res-{r}" if r else "") for s, r in grids)
        raise BIDSInputError(f"{root}: maps on several grids ({listed}); choose one with "
                             "--template")
    (space, res), = grids
    maps, methods, labels = [], [], []
    for f in sorted(files, key=lambda f: f.path):
        maps.append(Path(f.path))
        methods.append(_method_of(Path(f.path), f.entities.get("desc", "")))
        labels.append((f.entities["subject"], f.entities.get("session")))
    metrics, _ = _complete_only(root, layout.get(
        subject=Query.ANY, desc="overlap", suffix="metrics", extension=".tsv"))
    with_maps = {_label(s, ses) for s, ses in labels}
    predictions, _ = _complete_only(root, layout.get(
        subject=Query.ANY, suffix="predictions", extension=".tsv"))
    outside: dict[str, str] = {}
    for f in sorted(predictions, key=lambda f: f.path):
        label = _label(f.entities["subject"], f.entities.get("session"))
        if label not in with_maps or label in outside:
            continue
        why = outside_training_inputs(read_tsv(f.path))
        if why is not None:
            outside[label] = why
    failures = root / FAILURES_FILE
    return GroupInputs(
        metrics_tsvs=sorted(Path(f.path) for f in metrics), maps=maps, methods=methods,
        template=space, res=res, subjects=sorted({s for s, _ in labels}),
        failures_tsv=failures if failures.is_file() else None, incomplete=incomplete,
        labels=sorted(with_maps), outside_domain=sorted(outside.items()),
    )


def _complete_only(root: Path, files: list) -> tuple[list, list[tuple[str, str]]]:
    """The files of subjects whose derivatives are complete and listed in their record.

    A subject is complete when its completion record lists every file it wrote, unchanged
    (:func:`nipype_xai.bids.subject_status`); a run killed while it wrote a subject leaves no
    record, and that subject is left out (and named) rather than summarised from part of it.
    """
    status: dict[str, Optional[str]] = {}
    listed: dict[str, set[Path]] = {}
    kept, incomplete = [], []
    for f in files:
        label = _label(f.entities["subject"], f.entities.get("session"))
        if label not in status:
            status[label] = subject_status(root, label)
            listed[label] = {p.absolute() for p in recorded_files(root, label)}
            if status[label] is not None:
                incomplete.append((label, status[label]))
        if status[label] is None and Path(f.path).absolute() in listed[label]:
            kept.append(f)
    return kept, incomplete
