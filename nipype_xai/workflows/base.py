"""The participant level: the BIDS query that finds each subject's inputs, and one workflow per
subject (``init_xai_wf``) under one ``init_participant_wf`` so Nipype's plugins run subjects in
parallel and a failing subject does not stop the others."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from nipype.pipeline import engine as pe

from ..interfaces.registration import TemplateFlowSelect
from ..models.spec import load_model_spec
from .xai import init_xai_wf, registration_resolution, subject_workflow_name

__all__ = [
    "BIDSInputError",
    "InputProblem",
    "SubjectInputs",
    "collect_data",
    "init_participant_wf",
]

LOGGER = logging.getLogger("nipype_xai")

PathLike = Union[str, os.PathLike]

_NIFTI = [".nii.gz", ".nii"]
_TRANSFORM_EXTENSIONS = (".h5", ".nii.gz", ".txt", ".mat")


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
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


@dataclass(frozen=True)
class InputProblem:
    """A subject that cannot be processed, and why (e.g. no T1w)."""

    subject: str
    session: Optional[str]
    problem: str


def _layout(root: Path, what: str):
    from bids import BIDSLayout

    if not root.is_dir():
        raise BIDSInputError(f"{root}: {what} is not a folder")
    if not (root / "dataset_description.json").is_file():
        raise BIDSInputError(
            f"{root}: not a BIDS dataset (no dataset_description.json at its root)"
        )
    try:
        # Derivative datasets (DatasetType "derivative") get pybids' derivatives entities
        # (desc, label, space, res, from, to, ...) automatically.
        return BIDSLayout(str(root), validate=False)
    except Exception as error:  # pybids raises several types for unreadable datasets
        message = " ".join(str(error).split())
        raise BIDSInputError(f"{root}: cannot be indexed as a BIDS dataset ({message})") from error


def _entity_query(value: Optional[str]) -> Any:
    """A pybids query for an entity: the value, or "no such entity" (not "any value")."""
    from bids.layout import Query

    return value if value else Query.NONE


def _find_transforms(root: Path, subject: str, session: Optional[str], template: str
                     ) -> tuple[Optional[Path], Optional[Path]]:
    """fMRIPrep-style ``*_from-T1w_to-<tpl>_mode-image_xfm.*`` and its inverse for a subject.

    A session-specific pair is preferred, then a subject-level pair (fMRIPrep writes the
    anatomical transforms once per subject, ``sub-X/anat``, when it averages T1w images across
    sessions). Both directions always come from the same level, never one of each.
    """
    def candidates(source: str, target: str) -> list[Path]:
        found = []
        for extension in _TRANSFORM_EXTENSIONS:
            pattern = f"sub-{subject}_*from-{source}_to-{target}_mode-image_xfm{extension}"
            found += sorted((root / f"sub-{subject}").rglob(pattern))
        return found

    forward_all, inverse_all = candidates("T1w", template), candidates(template, "T1w")
    levels = ([lambda p: f"_ses-{session}_" in p.name] if session else []) + [
        lambda p: "_ses-" not in p.name]
    for level in levels:
        forward = [p for p in forward_all if level(p)]
        inverse = [p for p in inverse_all if level(p)]
        if forward and inverse:
            return forward[0], inverse[0]
    forward = next((p for level in levels for p in forward_all if level(p)), None)
    inverse = next((p for level in levels for p in inverse_all if level(p)), None)
    # Only one direction exists: report which is missing (the caller treats it as a problem).
    return (forward, None) if forward else (None, inverse)


def _find_anatomy(layout, root: Path, subject: str, session: Optional[str]
                  ) -> tuple[Optional[Path], Optional[Path], Optional[str]]:
    """A subject's ``desc-preproc_T1w`` and ``desc-brain_mask`` in a lab's anatomical derivatives.

    Session-level files are preferred, then subject-level ones (sMRIPrep writes the anatomy once
    per subject when it averages sessions). Both or neither: a preprocessed T1w without its mask
    (or the reverse) is a problem, since the two must come from the same processing.
    """
    def query(**entities) -> list[str]:
        for level in ([session] if session else []) + [None]:
            found = layout.get(subject=subject, session=_entity_query(level),
                               space=_entity_query(None), datatype="anat", extension=_NIFTI,
                               return_type="file", **entities)
            if found:
                return sorted(found)
        return []

    preproc = query(desc="preproc", suffix="T1w")
    mask = query(desc="brain", suffix="mask")
    if bool(preproc) != bool(mask):
        have, lack = (("desc-preproc_T1w", "desc-brain_mask") if preproc
                      else ("desc-brain_mask", "desc-preproc_T1w"))
        return None, None, (f"{root}: sub-{subject} has a {have} but no {lack} in the "
                            "anatomical derivatives")
    if not preproc:
        return None, None, None
    return Path(preproc[0]), Path(mask[0]), None


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
    """Query a BIDS dataset (pybids) for each subject's T1w, ground truth and transforms.

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
        subject
        without both is reported as a problem.
    anat_dir
        A lab's anatomical derivatives (sMRIPrep/fMRIPrep output), queried with pybids for each
        subject's ``desc-preproc_T1w`` and ``desc-brain_mask`` (native space, both or neither)
        and, when present, its ``from-T1w_to-<template>`` / ``from-<template>_to-T1w``
        transforms; whatever it has is not computed again. Unlike ``transforms_dir``, a subject
        without transforms there is registered here.
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
    # A subject folder with no file pybids indexes (e.g. an empty anat/) is still a subject the
    # user expects to be processed: it is reported as lacking a T1w, not silently skipped.
    folders = {path.name[4:] for path in root.glob("sub-*")
               if path.is_dir() and path.name[4:].isalnum()}
    available = sorted(set(layout.get_subjects()) | folders)
    if participant_labels:
        wanted = [label[4:] if label.startswith("sub-") else label for label in participant_labels]
        missing = [label for label in wanted if label not in available]
        if missing:
            raise BIDSInputError(
                f"{root}: no subject {', '.join('sub-' + m for m in missing)} in the dataset "
                f"(subjects: {', '.join('sub-' + s for s in available) or 'none'})"
            )
        subjects = list(dict.fromkeys(wanted))
    else:
        subjects = available
    if not subjects:
        raise BIDSInputError(f"{root}: no subject folders (sub-*) in the dataset")

    gt_layout = None
    if ground_truth_dir is not None:
        gt_layout = _layout(Path(ground_truth_dir).absolute(), "the ground-truth folder")
    anat_layout, anat_root = None, None
    if anat_dir is not None:
        anat_root = Path(anat_dir).absolute()
        anat_layout = _layout(anat_root, "the anatomical derivatives folder")
    transforms_root = None
    if transforms_dir is not None:
        transforms_root = Path(transforms_dir).absolute()
        if not transforms_root.is_dir():
            raise BIDSInputError(f"{transforms_root}: the transforms folder is not a folder")

    found: list[SubjectInputs] = []
    problems: list[InputProblem] = []
    for subject in subjects:
        sessions = layout.get_sessions(subject=subject) or [None]
        for session in sessions:
            t1ws = layout.get(subject=subject, session=_entity_query(session), suffix="T1w",
                              datatype="anat", extension=_NIFTI, return_type="file")
            where = f"sub-{subject}" + (f"/ses-{session}" if session else "") + "/anat"
            if not t1ws:
                problems.append(InputProblem(subject, session, f"no T1w image found under {where}"))
                continue
            t1ws = sorted(t1ws)
            if len(t1ws) > 1:
                LOGGER.warning("%s: %d T1w images; using %s", where, len(t1ws), Path(t1ws[0]).name)
            ground_truth = None
            if gt_layout is not None:
                masks = gt_layout.get(subject=subject, session=_entity_query(session),
                                      label=gt_label, suffix="mask", extension=_NIFTI,
                                      space=_entity_query(None), return_type="file")
                if not masks and session:
                    # Ground truth defined once per subject.
                    masks = gt_layout.get(subject=subject, session=_entity_query(None),
                                          label=gt_label, suffix="mask", extension=_NIFTI,
                                          space=_entity_query(None), return_type="file")
                ground_truth = Path(sorted(masks)[0]) if masks else None
            transforms = None
            if transforms_root is not None:
                forward, inverse = _find_transforms(transforms_root, subject, session, template)
                if forward is None or inverse is None:
                    missing = [f"from-{a}_to-{b}" for (a, b), p in
                               ((("T1w", template), forward), ((template, "T1w"), inverse))
                               if p is None]
                    problems.append(InputProblem(
                        subject, session,
                        f"{transforms_root}: no {' or '.join(missing)} transform for "
                        f"sub-{subject}" + (f" ses-{session}" if session else "")))
                    continue
                transforms = (forward, inverse)
            preproc, brain_mask = None, None
            if anat_layout is not None:
                preproc, brain_mask, problem = _find_anatomy(anat_layout, anat_root, subject,
                                                             session)
                if problem:
                    problems.append(InputProblem(subject, session, problem))
                    continue
                if transforms is None:
                    forward, inverse = _find_transforms(anat_root, subject, session, template)
                    transforms = (forward, inverse) if forward and inverse else None
            found.append(SubjectInputs(subject, session, Path(t1ws[0]), ground_truth, transforms,
                                       preproc, brain_mask))

    if not found and all("no T1w" in p.problem for p in problems):
        raise BIDSInputError(
            f"{root}: no T1w images found (expected sub-<label>/[ses-<label>/]anat/"
            f"sub-<label>[_ses-<label>]_T1w.nii.gz)"
        )
    return found, problems


def init_participant_wf(
    *,
    subjects: Sequence[SubjectInputs],
    output_dir: PathLike,
    model_spec: PathLike,
    methods: Sequence[str],
    template: Optional[str] = None,
    registration: str = "affine",
    brain_extraction: str = "deepbet",
    bias_correction: bool = True,
    keep_failed_qc: bool = False,
    restrict_maps: bool = True,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    seed: int = 0,
    deterministic: bool = True,
    device: str = "cpu",
    trust_model_code: bool = False,
    external_weights: bool = False,
    reports: bool = True,
    name: str = "participant_wf",
) -> pe.Workflow:
    """One :func:`~nipype_xai.workflows.xai.init_xai_wf` per subject (and session), side by side.

    The subject workflows share one node, the template selection, and nothing else, so any Nipype
    plugin runs them in parallel, and when one fails (``stop_on_first_crash`` off, the default)
    the others run to the end; each writes its derivatives only once all of its own results
    exist. Each is named
    :func:`~nipype_xai.workflows.xai.subject_workflow_name`, which is how a crashed node is traced
    back to its subject.

    Files are hashed by timestamp (size and modification time) for Nipype's cache, so a large
    image is not re-read to decide whether a node must rerun.

    Parameters
    ----------
    subjects
        From :func:`collect_data`.
    output_dir, model_spec, methods, template, registration, brain_extraction, bias_correction, \
    keep_failed_qc, restrict_maps, method_params, seed, deterministic, device, trust_model_code, external_weights, reports
        Passed to every ``init_xai_wf``. A subject with a lab's anatomy (``preproc_t1w`` and
        ``brain_mask``) starts from it: no bias correction, no brain extraction.
    name
        Workflow name (the folder in the work directory).

    Inputs
    ------
    None: every subject workflow has its inputs set from ``subjects``.

    Outputs
    -------
    None: results are the derivatives in ``output_dir``.
    """
    spec = load_model_spec(model_spec, external_weights=external_weights)
    template = template or spec.input.space
    workflow = pe.Workflow(name=name)
    workflow.config["execution"] = {"hash_method": "timestamp"}
    # One template selection for every subject: TemplateFlow's query (and the offline fallback's
    # indexing) costs seconds per process, which would otherwise be paid once per subject.
    template_select = pe.Node(
        TemplateFlowSelect(template=template, resolution=registration_resolution(spec),
                           t1w_desc="brain"),
        name="template_select",
    )
    connections = []
    for entry in subjects:
        subject_wf = init_xai_wf(
            subject=entry.subject,
            session=entry.session,
            t1w=entry.preproc_t1w or entry.t1w,
            t1w_mask=entry.brain_mask,
            ground_truth=entry.ground_truth,
            transforms=entry.transforms,
            methods=methods,
            model_spec=model_spec,
            output_dir=output_dir,
            template=template,
            registration=registration,
            brain_extraction=brain_extraction,
            bias_correction=bias_correction and entry.preproc_t1w is None,
            keep_failed_qc=keep_failed_qc,
            restrict_maps=restrict_maps,
            method_params=method_params,
            seed=seed,
            deterministic=deterministic,
            device=device,
            trust_model_code=trust_model_code,
            external_weights=external_weights,
            reports=reports,
            select_template=False,
            name=subject_workflow_name(entry.subject, entry.session),
        )
        connections.append((template_select, subject_wf, [
            ("t1w_file", "inputnode.template"), ("brain_mask", "inputnode.template_mask"),
        ]))
    workflow.connect(connections)
    return workflow
