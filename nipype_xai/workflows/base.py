"""The participant level: one workflow per subject (``init_xai_wf``) under one
``init_participant_wf``, so Nipype's plugins run subjects in parallel and a failing subject does
not stop the others. The BIDS query that finds each subject's inputs is
:func:`nipype_xai.bids.collect_data` (re-exported here)."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from nipype.pipeline import engine as pe

from ..bids.query import BIDSInputError, InputProblem, SubjectInputs, collect_data
from ..interfaces.registration import TemplateFlowSelect
from ..models.spec import load_model_spec
from .options import PipelineOptions, pipeline_options
from .xai import init_xai_wf, registration_resolution, subject_workflow_name

__all__ = [
    "BIDSInputError",
    "InputProblem",
    "SubjectInputs",
    "collect_data",
    "init_participant_wf",
]

PathLike = Union[str, os.PathLike]


def init_participant_wf(
    *,
    subjects: Sequence[SubjectInputs],
    output_dir: PathLike,
    options: Optional[PipelineOptions] = None,
    name: str = "participant_wf",
    **option_values: Any,
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
        From :func:`~nipype_xai.bids.collect_data`.
    output_dir
        Root of the derivatives dataset.
    options
        The pipeline options (:class:`~nipype_xai.workflows.options.PipelineOptions`), passed to
        every ``init_xai_wf``; keyword arguments of the same names replace or give them. A
        subject with a lab's anatomy (``preproc_t1w`` and ``brain_mask``) starts from it: no bias
        correction, no brain extraction.
    name
        Workflow name (the folder in the work directory).

    Inputs
    ------
    None: every subject workflow has its inputs set from ``subjects``.

    Outputs
    -------
    None: results are the derivatives in ``output_dir``.
    """
    options = pipeline_options(options, **option_values)
    spec = load_model_spec(options.model_spec, external_weights=options.external_weights)
    template = options.template or spec.input.space
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
        own_anatomy = entry.preproc_t1w is not None
        subject_wf = init_xai_wf(
            subject=entry.subject,
            session=entry.session,
            output_dir=output_dir,
            options=pipeline_options(options, template=template,
                                     bias_correction=options.bias_correction and not own_anatomy),
            t1w=entry.preproc_t1w or entry.t1w,
            t1w_mask=entry.brain_mask,
            ground_truth=entry.ground_truth,
            transforms=entry.transforms,
            select_template=False,
            name=subject_workflow_name(entry.subject, entry.session),
        )
        connections.append((template_select, subject_wf, [
            ("t1w_file", "inputnode.template"), ("brain_mask", "inputnode.template_mask"),
        ]))
    workflow.connect(connections)
    return workflow
