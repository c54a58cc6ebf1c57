"""The participant level: one workflow per subject (``init_xai_wf``) under one
``init_participant_wf``, so Nipype's plugins run subjects in parallel and a failing subject does
not stop the others. The BIDS query that finds each subject's inputs is
:func:`nipype_xai.bids.collect_data` (re-exported here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from nipype.pipeline import engine as pe


from ..bids.query import BIDSInputError, InputProblem, SubjectInputs, collect_data
from ..interfaces.batch import ModelBatch
from ..interfaces.registration import TemplateFlowSelect
from ..models.spec import load_model_spec
from .options import PipelineOptions, pipeline_options
from .xai import (
    GPU_NODE_PLUGIN_ARGS,
    attribution_inputs,
    init_xai_wf,
    registration_resolution,
    subject_workflow_name,
)

__all__ = [
    "BIDSInputError",
    "InputProblem",
    "SubjectInputs",
    "batch_workflow_name",
    "collect_data",
    "init_model_batch_wf",
    "init_participant_wf",
    "subject_batches",
]

PathLike = Union[str, os.PathLike]


def subject_batches(subjects: Sequence[SubjectInputs], subjects_per_job: int
                    ) -> list[list[SubjectInputs]]:
    """The subjects in batches of at most ``subjects_per_job``, in order, as even as possible
    (7 subjects by 3: 3, 2, 2; not 3, 3, 1): the fewest batches, none nearly empty.

    A batch's composition is part of what its maps are (batched passes round differently in the
    last float bits), so it depends only on the subjects and ``subjects_per_job``.
    """
    if subjects_per_job < 1:
        raise ValueError(f"subjects_per_job must be >= 1, got {subjects_per_job}")
    n_batches = -(-len(subjects) // subjects_per_job)
    batches, start = [], 0
    for index in range(n_batches):
        size = len(subjects) // n_batches + (1 if index < len(subjects) % n_batches else 0)
        batches.append(list(subjects[start:start + size]))
        start += size
    return batches


def batch_workflow_name(index: int) -> str:
    """Name of the workflow of the ``index``-th batch of subjects: ``model_batch_0003_wf``."""
    return f"model_batch_{index:04d}_wf"


def init_participant_wf(
    *,
    subjects: Sequence[SubjectInputs],
    output_dir: PathLike,
    options: Optional[PipelineOptions] = None,
    name: str = "participant_wf",
    stage: str = "all",
    model_inputs: Optional[Mapping[str, PathLike]] = None,
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
    stage
        ``"all"``, or ``"model_input"``: each subject's steps up to its model input only
        (:func:`~nipype_xai.workflows.xai.init_xai_wf`), the first half of a batched run.

    model_inputs
        With ``subjects_per_job`` above 1: each subject's model input (label ``sub-01`` ->
        the file its ``t1w_model`` step wrote), from a run of ``stage="model_input"`` in the same
        work directory.

    With ``subjects_per_job`` above 1 (an option), the subjects go in batches
    (:func:`subject_batches`): per batch, one workflow (:func:`batch_workflow_name`) whose
    :class:`~nipype_xai.interfaces.ModelBatch` loads the model once and explains the batch's
    model inputs together, and each subject's workflow takes its results from it. The batch
    reads the model inputs a first run (``stage="model_input"``) made: connected to the
    subjects' workflows it would both feed them and be fed by them (not a graph Nipype runs),
    and it would wait for every subject, so that one failing before its model input would stop
    its batch-mates. Only the subjects that got a model input are batched
    (:func:`nipype_xai.cli.execution.run_participant_level` runs both halves).

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
    per_job = options.subjects_per_job or 1
    batches = subject_batches(subjects, per_job) if per_job > 1 and stage == "all" else []
    missing = [entry.label for batch in batches for entry in batch
               if entry.label not in (model_inputs or {})]
    if missing:
        raise ValueError(f"subjects_per_job={per_job}: no model input given for "
                         f"{', '.join(missing)} (model_inputs, from a stage='model_input' run)")
    position = {}
    for batch in batches:
        position.update({id(entry): index for index, entry in enumerate(batch)})
    subject_wfs = []
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
            batch_position=position.get(id(entry)),
            stage=stage,
            name=subject_workflow_name(entry.subject, entry.session),
        )
        subject_wfs.append(subject_wf)
        connections.append((template_select, subject_wf, [
            ("t1w_file", "inputnode.template"), ("brain_mask", "inputnode.template_mask"),
        ]))
    by_entry = {id(entry): subject_wf for entry, subject_wf in zip(subjects, subject_wfs)}
    for index, batch in enumerate(batches):
        batch_wf = init_model_batch_wf(
            [str(Path(model_inputs[entry.label]).absolute()) for entry in batch], options,
            name=batch_workflow_name(index))
        connections += [(batch_wf, by_entry[id(entry)],
                         [("model.out_items", "inputnode.model_batch")]) for entry in batch]
    workflow.connect(connections)
    return workflow


def init_model_batch_wf(model_inputs: Sequence[PathLike], options: PipelineOptions, *,
                        name: str = "model_batch_wf") -> pe.Workflow:
    """A batch of subjects' model inputs explained by one
    :class:`~nipype_xai.interfaces.ModelBatch` (output ``model.out_items``, in their order),
    with the options' methods (baselines aside: they need no model), seed, background and
    device."""
    workflow = pe.Workflow(name=name)
    settings = attribution_inputs(options)
    model = pe.Node(ModelBatch(in_files=[str(path) for path in model_inputs], **settings),
                    name="model")
    if settings["use_gpu"]:
        model.plugin_args = dict(GPU_NODE_PLUGIN_ARGS)
    workflow.add_nodes([model])
    return workflow
