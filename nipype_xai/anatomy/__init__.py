"""Anatomical preprocessing of a raw T1w and registration quality control (SPEC §5).

A raw BIDS T1w holds skull, scalp, neck and a bias field; the template and the models hold brains.
Before registration, as sMRIPrep does: N4 bias-field correction (:func:`n4_bias_correct`), then
brain extraction (:func:`extract_brain`); the brain is registered to the template brain
(:mod:`nipype_xai.anatomy.preprocessing`). After registration, :func:`registration_qc` scores the
result on the template grid and :func:`qc_passed` compares the scores with :data:`QC_THRESHOLDS`;
:func:`plot_registration_overlay` draws the template's brain outline over the registered brain for
the report (:mod:`nipype_xai.anatomy.qc`).

Pure functions on nibabel images (no Nipype, no paths except the figure's output). Images keep
their grid: every output is on its input's grid with its exact affine.
"""

from .preprocessing import (
    AnatomyError,
    BrainExtractionResult,
    apply_brain_mask,
    extract_brain,
    n4_bias_correct,
)
from .qc import (
    QC_THRESHOLDS,
    RegistrationQCFailed,
    plot_registration_overlay,
    qc_passed,
    registration_qc,
)

__all__ = [
    "AnatomyError",
    "BrainExtractionResult",
    "QC_THRESHOLDS",
    "RegistrationQCFailed",
    "apply_brain_mask",
    "extract_brain",
    "n4_bias_correct",
    "plot_registration_overlay",
    "qc_passed",
    "registration_qc",
]
