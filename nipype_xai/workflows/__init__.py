"""Nipype workflow builders (graphs only): ``init_<what>_wf(*, name=..., ...)``.

- :func:`init_registration_wf`: T1w -> template transforms, the T1w in template space, the
  subject's brain mask, and forward application to lists of maps and masks.
- :func:`init_xai_wf`: one subject, T1w -> model grid -> prediction, attribution and baseline
  maps (template and native space) -> ground-truth overlap -> report -> derivatives.
- :func:`init_xai_derivatives_wf`: one subject's derivatives, staged once all of its results
  exist, then committed (the sinks; the group workflow shares its gated sink).
- :func:`init_participant_wf`: one ``init_xai_wf`` per subject (:func:`collect_data`, in
  :mod:`nipype_xai.bids`, finds their inputs with pybids).
- :class:`PipelineOptions`: the participant level's options, stated once.
- :func:`init_group_wf`: all subjects' metrics in one table, method ranking with bootstrap CIs,
  group mean and SD maps, group report.
"""

from .base import (
    BIDSInputError,
    InputProblem,
    SubjectInputs,
    collect_data,
    init_participant_wf,
)
from .group import GroupInputs, collect_group_inputs, init_group_wf
from .options import PipelineOptions, pipeline_options
from .outputs import init_xai_derivatives_wf
from .registration import init_registration_wf
from .xai import init_xai_wf, subject_workflow_name

__all__ = [
    "BIDSInputError",
    "GroupInputs",
    "InputProblem",
    "PipelineOptions",
    "SubjectInputs",
    "collect_data",
    "collect_group_inputs",
    "init_group_wf",
    "init_participant_wf",
    "init_registration_wf",
    "init_xai_derivatives_wf",
    "init_xai_wf",
    "pipeline_options",
    "subject_workflow_name",
]
