"""Synthetic cohorts with a known signal source: the validation framework (SPEC §8).

A heat map is only trustworthy where its method has been shown to find a known signal in the same
kind of data and model. Following Siegel et al. (2025; tasks from localized anatomical features to
subject-specific lesions) and Oliveira et al. (lesion masks on real brain scans, explanations
scored against them), this package builds such tasks from real anatomy:

* :func:`generate_cohort` writes a BIDS dataset with ground truth in ``derivatives/groundtruth``:
  the anatomical region of each task (:func:`groundtruth_label`) and the exact ground truth, where
  the signal changes the image (:func:`signal_label`; for lesions the two are the same mask);
* :func:`make_subject` is its in-memory core, one subject at a time;
* ``lesion``: white-matter lesions in positives (:mod:`.lesion`); ``atrophy``: a contracted
  caudate in positives, intensities untouched (:mod:`.atrophy`), checked against intensity
  shortcuts by :func:`histogram_classifier_accuracy`;
* every subject's transform to the template is known (:mod:`.warps`) and stored in both
  directions as ITK/ANTs displacement fields.
"""

from .anatomy import TEMPLATE_SPACE, TemplateAnatomy, load_template_anatomy, native_grid
from .atrophy import CAUDATE, AtrophyRegion, atrophy_point_map, atrophy_signal_mask, region_mask
from .cohort import cohort_labels, generate_cohort, subject_seed
from .lesion import Lesion, lesion_mask, sample_lesions
from .shortcuts import histogram_classifier_accuracy, intensity_histograms
from .subject import TASKS, SubjectData, class_label, groundtruth_label, make_subject, signal_label
from .warps import (
    apply_displacement_field,
    displacement_field_image,
    displacement_from_image,
    jacobian_determinant,
)

__all__ = [
    "AtrophyRegion",
    "CAUDATE",
    "Lesion",
    "SubjectData",
    "TASKS",
    "TEMPLATE_SPACE",
    "TemplateAnatomy",
    "apply_displacement_field",
    "atrophy_point_map",
    "atrophy_signal_mask",
    "class_label",
    "cohort_labels",
    "displacement_field_image",
    "displacement_from_image",
    "generate_cohort",
    "groundtruth_label",
    "histogram_classifier_accuracy",
    "intensity_histograms",
    "jacobian_determinant",
    "lesion_mask",
    "load_template_anatomy",
    "make_subject",
    "native_grid",
    "region_mask",
    "sample_lesions",
    "signal_label",
    "subject_seed",
]
