"""One subject: T1w -> template -> model grid -> prediction and attribution maps -> derivatives."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Collection, Optional, Union

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..attribution import method_defaults, split_methods
from ..bids import resolution_label
from ..interfaces.anatomy import CheckRegistrationQC, RegistrationQC
from ..interfaces.attribution import Attribution, RestrictMaps
from ..interfaces.baselines import BaselineMaps
from ..interfaces.batch import BatchItem
from ..interfaces.counterfactual import Counterfactual
from ..interfaces.grids import ModelGridReference
from ..interfaces.metrics import GroundTruthOverlap
from ..interfaces.model import ModelInference
from ..interfaces.registration import ApplyTransforms
from ..interfaces.reports import SubjectReport
from ..models.spec import ModelSpec, load_model_spec
from .anatomy import init_anat_wf
from .options import PipelineOptions, pipeline_options
from .outputs import init_xai_derivatives_wf
from .registration import init_registration_wf

__all__ = [
    "CONNECTABLE_INPUTS",
    "GPU_NODE_PLUGIN_ARGS",
    "STAGES",
    "attribution_inputs",
    "init_xai_wf",
    "model_label",
    "model_resolution_label",
    "registration_resolution",
    "subject_workflow_name",
]

PathLike = Union[str, os.PathLike]


def model_label(spec: ModelSpec) -> str:
    """The model's name as a BIDS label (``desc-<label>_predictions.tsv``): alphanumeric only."""
    return re.sub(r"[^A-Za-z0-9]", "", spec.name) or "model"


def model_resolution_label(spec: ModelSpec) -> str:
    """``res-`` label of the model grid: ``4`` for 4 mm, ``2x2x3`` for an anisotropic grid."""
    sizes = [float(r) for r in spec.input.resolution_mm]
    if len(set(sizes)) == 1:
        return resolution_label(sizes[0])
    return "x".join(resolution_label(r) for r in sizes)


def registration_resolution(spec: ModelSpec) -> int:
    """TemplateFlow ``res-`` index to register to: 2 mm for models on 2 mm grids or coarser.

    Registering to the 2 mm template is about seven times faster than to the 1 mm one and loses
    nothing a model that sees >= 2 mm voxels could use.
    """
    return 2 if min(spec.input.resolution_mm) >= 2 else 1


def subject_workflow_name(subject: str, session: Optional[str] = None) -> str:
    """Name of a subject's workflow: ``sub_01_wf`` or ``sub_01_ses_1_wf``."""
    return f"sub_{subject}" + (f"_ses_{session}" if session else "") + "_wf"


#: What a node that runs the model on a GPU (``--device cuda``) asks a batch scheduler for. Nipype's
#: SLURM plugin appends a node's ``sbatch_args`` to the run's (``--plugin-args``), so only these
#: nodes request a GPU, not the registration; MultiProc schedules them by ``use_gpu`` instead.
# The leading space: Nipype's graph plugins (SLURMGraph) glue a node's sbatch_args to the
# run's without one ("--mem=4G--gres=gpu:1"); the SLURM plugin's own space makes it two, harmless.
GPU_NODE_PLUGIN_ARGS = {"sbatch_args": " --gres=gpu:1"}

#: What :func:`init_xai_wf` builds: everything, or the steps up to the model input.
STAGES = ("all", "model_input")

#: Inputs a caller may connect at ``inputnode`` instead of giving files (``connected=``).
CONNECTABLE_INPUTS = ("t1w_mask", "ground_truth", "transforms")


def init_xai_wf(
    *,
    subject: str,
    output_dir: PathLike,
    options: Optional[PipelineOptions] = None,
    session: Optional[str] = None,
    t1w: Optional[PathLike] = None,
    t1w_mask: Optional[PathLike] = None,
    ground_truth: Optional[PathLike] = None,
    transforms: Optional[tuple[PathLike, PathLike]] = None,
    connected: Collection[str] = (),
    template_resolution: Optional[int] = None,
    select_template: bool = True,
    batch_position: Optional[int] = None,
    stage: str = "all",
    name: Optional[str] = None,
    **option_values: Any,
) -> pe.Workflow:
    """Explain a model's prediction for one subject's T1w, in template and native space.

    The graph, in the order data flows:

    1. T1w -> template: ANTsPy registration (``registration`` preset), or the given
       ``transforms`` (e.g. fMRIPrep's); the subject's brain mask is the template's pulled back
       (:func:`~nipype_xai.workflows.registration.init_registration_wf`).
    2. T1w -> model grid: the spec's grid in template space (``ModelGridReference``), reached in
       one interpolation through the forward transform (``ApplyTransforms``).
    3. ``ModelInference`` (the prediction) and ``Attribution`` (every method in one run, sharing
       passes), plus ``BaselineMaps`` for the requested baselines (sobel, laplace, random); with
       ``counterfactual`` (a simulator spec), ``Counterfactual`` on the model input: the subject
       deformed until the model sees the class it did not predict, on the model grid.
    4. With ``restrict_maps``: each map kept on its domain (``RestrictMaps``): the voxels where
       the model input holds the subject's brain, then, back on the T1w grid through the
       inverse transform (linear), the subject's brain mask; the share of each map's mass that
       lay outside is written in its sidecar.
    5. With ground truth: ``GroundTruthOverlap`` of the native maps against the native
       ground-truth mask, inside the native brain mask.
    6. A subject HTML report, and the derivatives
       (:func:`~nipype_xai.workflows.outputs.init_xai_derivatives_wf`, which lists them), written
       only once every result above exists and committed as a whole.

    Parameters
    ----------
    subject, session
        BIDS labels.
    output_dir
        Root of the derivatives dataset.
    options
        The pipeline options (:class:`~nipype_xai.workflows.options.PipelineOptions`: model spec,
        methods, template, registration, brain extraction, seed, device, ...); keyword arguments
        of the same names (``methods=``, ``model_spec=``, ``seed=``) replace or give them.
    t1w, t1w_mask, ground_truth, transforms
        Files known when the workflow is built: the T1w; the subject's own brain mask on the T1w
        grid (e.g. fMRIPrep's ``desc-brain_mask``: it is the brain fed to registration and the
        model, the brain mask of the overlap metrics and the ``desc-brain`` derivative; without
        one, the brain is extracted, or for skull-stripped inputs the template's mask is pulled
        back); the native-space ground-truth mask (overlap metrics); ``(T1w -> template,
        template -> T1w)`` transforms to reuse instead of registering. Set on ``inputnode`` and
        named in the sidecars' ``Sources``. A T1w not given here is connected at
        ``inputnode.t1w``.
    connected
        Inputs of :data:`CONNECTABLE_INPUTS` the caller connects at ``inputnode`` instead of
        giving files (``"transforms"``: ``forward_transform`` and ``inverse_transform``).
    template_resolution
        TemplateFlow ``res-`` index registered to; default :func:`registration_resolution`.
    select_template
        Select the template files in this workflow; ``False``: connect ``inputnode.template``
        and ``inputnode.template_mask`` (one selection shared by many subjects).
    batch_position
        The subject's position in a batch of subjects explained together by a
        :class:`~nipype_xai.interfaces.ModelBatch` node outside this workflow, whose items the
        caller connects at ``inputnode.model_batch`` (:func:`~nipype_xai.workflows.base.
        init_participant_wf`); this workflow then runs no model itself, and takes its
        prediction and maps from its item (:class:`~nipype_xai.interfaces.BatchItem`, which
        fails this subject alone where the batch could not explain it). None: the model runs
        here, for this subject alone.
    stage
        ``"all"``; or ``"model_input"``: only the steps up to the model input (anatomy,
        registration, the T1w on the model grid), under the same names, so that a later run of
        the whole workflow in the same work directory finds them done.
    name
        Workflow name; default :func:`subject_workflow_name`.

    Inputs
    ------
    t1w, t1w_mask, ground_truth, forward_transform, inverse_transform
        Always declared; set from the files given, or connected by the caller (see
        ``connected``).
    template, template_mask
        Template T1w (skull-stripped) and brain mask at ``template_resolution`` (when
        ``select_template`` is off).
    model_batch
        A ``ModelBatch``'s items (with ``batch_position``).

    Outputs
    -------
    template_maps, native_maps
        Maps on the model grid (template space) and on the T1w grid, in the order of ``methods``.
    methods
        The method of each map.
    predictions
        The prediction TSV.
    metrics
        The overlap-metrics TSV (with ground truth).
    t1w_model
        The T1w on the model grid (the model's input before normalisation).
    brain_mask
        The subject's brain mask on the T1w grid.
    forward_transform, inverse_transform
        T1w <-> template transforms.
    report
        The subject's HTML report (in the work directory; the sink copies it).
    """
    options = pipeline_options(options, **option_values)
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
    model_methods, baselines = split_methods(options.methods)
    all_methods = model_methods + baselines
    connected = _connected_inputs(connected, t1w_mask=t1w_mask, ground_truth=ground_truth,
                                  transforms=transforms)
    known = {"t1w": t1w, "t1w_mask": t1w_mask, "ground_truth": ground_truth,
             "forward_transform": transforms[0] if _is_files(transforms) else None,
             "inverse_transform": transforms[1] if _is_files(transforms) else None}
    # Nodes run in their own work folders: relative paths would point elsewhere there (a relative
    # output_dir would scatter derivatives into the work directory).
    known = {key: str(Path(value).absolute()) for key, value in known.items()
             if _is_files(value)}
    output_dir = Path(output_dir).absolute()
    model_spec = str(options.model_spec)
    spec = load_model_spec(model_spec, external_weights=options.external_weights)
    template = options.template or spec.input.space
    res = model_resolution_label(spec)
    if template_resolution is None:
        template_resolution = registration_resolution(spec)
    has_mask = "t1w_mask" in known or "t1w_mask" in connected
    has_gt = "ground_truth" in known or "ground_truth" in connected
    reuse = "forward_transform" in known or "transforms" in connected
    gpu = str(options.device).startswith("cuda")
    name = name or subject_workflow_name(subject, session)
    label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    reports = options.reports

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["t1w", "t1w_mask", "ground_truth", "forward_transform",
                                      "inverse_transform", "template", "template_mask",
                                      "model_batch"]),
        name="inputnode",
    )
    for field, value in known.items():
        setattr(inputnode.inputs, field, value)
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["template_maps", "native_maps", "methods", "predictions",
                                      "metrics", "t1w_model", "brain_mask", "forward_transform",
                                      "inverse_transform", "report"]),
        name="outputnode",
    )
    outputnode.inputs.methods = all_methods

    anat_wf = init_anat_wf(brain_extraction=options.brain_extraction,
                           bias_correction=options.bias_correction, given_mask=has_mask,
                           device=options.device)
    extracted = has_mask or options.brain_extraction != "none"
    registration_wf = init_registration_wf(
        template=template, preset=options.registration, resolution=template_resolution,
        reuse_transforms=reuse, resample_t1w=False, apply_to_masks=has_gt and reports,
        select_template=select_template, seed=options.seed,
        num_threads=1 if options.deterministic else 0,
    )
    # The subject's brain mask: the lab's own or the extracted one; for an input that is
    # already skull-stripped, the template's pulled back.
    brain_source = ((anat_wf, "outputnode.brain_mask") if extracted
                    else (registration_wf, "outputnode.brain_mask"))
    model_grid = pe.Node(ModelGridReference(model_spec=model_spec, **options.trust),
                         name="model_grid")
    t1w_model = pe.Node(ApplyTransforms(interpolation="linear"), name="t1w_model")
    preparation = [
        (inputnode, anat_wf, [("t1w", "inputnode.t1w"), ("t1w_mask", "inputnode.t1w_mask")]),
        # The brain, not the head, is registered to the template brain and fed to the model.
        (anat_wf, registration_wf, [("outputnode.t1w_brain", "inputnode.t1w")]),
        (inputnode, registration_wf, [("forward_transform", "inputnode.forward_transform"),
                                      ("inverse_transform", "inputnode.inverse_transform"),
                                      ("template", "inputnode.template"),
                                      ("template_mask", "inputnode.template_mask")]),
        (registration_wf, model_grid, [("outputnode.template", "template")]),
        (anat_wf, t1w_model, [("outputnode.t1w_brain", "in_file")]),
        (model_grid, t1w_model, [("out_file", "reference_image")]),
        (registration_wf, t1w_model, [("outputnode.forward_transform", "transforms")]),
        (t1w_model, outputnode, [("out_file", "t1w_model")]),
    ]
    if has_gt and reports:
        preparation.append((inputnode, registration_wf, [("ground_truth", "inputnode.masks")]))
    if stage == "model_input":
        workflow.connect(preparation)
        return workflow
    if batch_position is not None:
        # The prediction and the maps come from the batch's item of this subject: one node
        # stands for ModelInference and Attribution, with their outputs' names.
        inference = pe.Node(BatchItem(index=batch_position), name="model_results")
    else:
        inference = pe.Node(
            ModelInference(model_spec=model_spec, device=options.device, use_gpu=gpu,
                           **options.trust),
            name="inference",
        )
    counterfactual = None
    if options.counterfactual is not None:
        counterfactual = pe.Node(
            Counterfactual(model_spec=model_spec, simulator_spec=str(options.counterfactual),
                           device=options.device, use_gpu=gpu, **options.trust),
            name="counterfactual",
        )
    gpu_nodes = [inference] + ([counterfactual] if counterfactual is not None else [])
    sources = []  # every map-producing node
    if model_methods and batch_position is not None:
        sources.append(inference)
        gpu_nodes.remove(inference)
    elif model_methods:
        attribution = pe.Node(Attribution(**attribution_inputs(options)), name="attribution")
        sources.append(attribution)
        gpu_nodes.append(attribution)
    if gpu:
        for node in gpu_nodes:
            node.plugin_args = dict(GPU_NODE_PLUGIN_ARGS)
    if baselines:
        baseline_maps = pe.Node(
            BaselineMaps(model_spec=model_spec, baselines=baselines, seed=options.seed,
                         **options.trust),
            name="baseline_maps",
        )
        sources.append(baseline_maps)
    # One list of maps (and one of sidecars) in the order of all_methods.
    merge_maps = pe.Node(niu.Merge(len(sources)), name="merge_maps")
    merge_sidecars = pe.Node(niu.Merge(len(sources)), name="merge_sidecars")
    maps_to_native = pe.MapNode(
        ApplyTransforms(interpolation="linear"), iterfield=["in_file"], name="maps_to_native"
    )
    # The maps (and sidecars) that go on: restricted to their domain, or as computed.
    if options.restrict_maps:
        restrict_template = pe.Node(RestrictMaps(
            description="the model input's nonzero voxels (the subject's brain on the model grid)",
            sidecar_key="ModelInputRestriction"), name="restrict_template")
        restrict_native = pe.Node(RestrictMaps(
            description="the subject's brain mask (desc-brain_mask)",
            sidecar_key="BrainMaskRestriction"), name="restrict_native")
        template_maps = (restrict_template, "out_files")
        template_sidecars = (restrict_template, "out_sidecars")
        native_maps = (restrict_native, "out_files")
        native_sidecars = (restrict_native, "out_sidecars")
    else:
        template_maps, template_sidecars = (merge_maps, "out"), (merge_sidecars, "out")
        native_maps, native_sidecars = (maps_to_native, "out_file"), (merge_sidecars, "out")

    # Registration QC of every subject, also of reused transforms; a failure stops the subject
    # (its derivatives wait for check_qc) unless keep_failed_qc.
    registration_qc = pe.Node(RegistrationQC(), name="registration_qc")
    check_qc = pe.Node(CheckRegistrationQC(subject=label, keep_failed=options.keep_failed_qc),
                       name="check_qc")
    derivatives_wf = init_xai_derivatives_wf(
        subject=subject, session=session, options=options, spec=spec, output_dir=output_dir,
        methods=all_methods, template=template, res=res, model_desc=model_label(spec),
        given_mask=has_mask, ground_truth=has_gt, reuse_transforms=reuse, known_inputs=known,
    )

    connections = preparation + [
        (t1w_model, inference, [("out_file", "in_file")]),
        (brain_source[0], outputnode, [(brain_source[1], "brain_mask")]),
        (brain_source[0], registration_qc, [(brain_source[1], "brain_mask")]),
        (anat_wf, registration_qc, [("outputnode.t1w_brain", "brain_file")]),
        (registration_wf, registration_qc, [("outputnode.forward_transform", "transforms"),
                                            ("outputnode.template", "template_brain"),
                                            ("outputnode.template_mask", "template_mask")]),
        (registration_qc, check_qc, [("passed", "passed"), ("reasons", "reasons"),
                                     ("out_tsv", "in_tsv")]),
    ]
    # No moving mask for the registration: the brain image is already 0 outside the brain, and
    # its outline is what aligns it. Restricting the metric to the mask hides that outline: on a
    # real head turned 15 degrees the correlation with the template brain fell from 0.63
    # (unmasked) to 0.35 (masked), a failed registration.
    if batch_position is not None:
        connections.append((inputnode, inference, [("model_batch", "items")]))
    for index, node in enumerate(sources, start=1):
        if node is not inference:
            connections.append((t1w_model, node, [("out_file", "in_file")]))
        connections += [
            (node, merge_maps, [("out_files", f"in{index}")]),
            (node, merge_sidecars, [("out_sidecars", f"in{index}")]),
        ]
    if options.restrict_maps:
        connections += [
            (merge_maps, restrict_template, [("out", "in_files")]),
            (merge_sidecars, restrict_template, [("out", "in_sidecars")]),
            (t1w_model, restrict_template, [("out_file", "mask")]),
            (maps_to_native, restrict_native, [("out_file", "in_files")]),
            (restrict_template, restrict_native, [("out_sidecars", "in_sidecars")]),
            (brain_source[0], restrict_native, [(brain_source[1], "mask")]),
        ]
    connections += [
        (template_maps[0], maps_to_native, [(template_maps[1], "in_file")]),
        (inputnode, maps_to_native, [("t1w", "reference_image")]),
        (registration_wf, maps_to_native, [("outputnode.inverse_transform", "transforms")]),
        (template_maps[0], outputnode, [(template_maps[1], "template_maps")]),
        (native_maps[0], outputnode, [(native_maps[1], "native_maps")]),
        (inference, outputnode, [("out_tsv", "predictions")]),
        (registration_wf, outputnode, [("outputnode.forward_transform", "forward_transform"),
                                       ("outputnode.inverse_transform", "inverse_transform")]),
        # Every result goes to the derivatives, which wait for all of them.
        (inputnode, derivatives_wf, [("t1w", "inputnode.source_file")]),
        (template_maps[0], derivatives_wf, [(template_maps[1], "inputnode.template_maps")]),
        (template_sidecars[0], derivatives_wf,
         [(template_sidecars[1], "inputnode.template_sidecars")]),
        (native_maps[0], derivatives_wf, [(native_maps[1], "inputnode.native_maps")]),
        (native_sidecars[0], derivatives_wf, [(native_sidecars[1], "inputnode.native_sidecars")]),
        (inference, derivatives_wf, [("out_tsv", "inputnode.predictions")]),
        (t1w_model, derivatives_wf, [("out_file", "inputnode.t1w_model")]),
        (brain_source[0], derivatives_wf, [(brain_source[1], "inputnode.brain_mask")]),
        (registration_wf, derivatives_wf,
         [("outputnode.forward_transform", "inputnode.forward_transform"),
          ("outputnode.inverse_transform", "inputnode.inverse_transform")]),
        (check_qc, derivatives_wf, [("passed", "inputnode.qc_passed")]),
        (registration_qc, derivatives_wf, [("out_tsv", "inputnode.qc_tsv"),
                                           ("out_json", "inputnode.qc_json")]),
    ]
    if options.bias_correction:
        connections.append((anat_wf, derivatives_wf, [("outputnode.t1w_preproc",
                                                       "inputnode.t1w_preproc")]))
    if counterfactual is not None:
        connections += [
            (t1w_model, counterfactual, [("out_file", "in_file")]),
            (counterfactual, derivatives_wf, [
                ("out_image", "inputnode.counterfactual_image"),
                ("out_image_sidecar", "inputnode.counterfactual_image_sidecar"),
                ("out_displacement", "inputnode.counterfactual_xfm"),
                ("out_displacement_sidecar", "inputnode.counterfactual_xfm_sidecar"),
                ("out_maps", "inputnode.counterfactual_maps"),
                ("out_map_sidecars", "inputnode.counterfactual_map_sidecars")]),
        ]

    if has_gt:
        overlap = pe.Node(
            GroundTruthOverlap(methods=all_methods, subject=subject), name="overlap"
        )
        if session:
            overlap.inputs.session = session
        connections += [
            (native_maps[0], overlap, [(native_maps[1], "in_maps")]),
            (inputnode, overlap, [("ground_truth", "ground_truth")]),
            (brain_source[0], overlap, [(brain_source[1], "brain_mask")]),
            (overlap, outputnode, [("out_tsv", "metrics")]),
            (overlap, derivatives_wf, [("out_tsv", "inputnode.metrics")]),
        ]

    if reports:
        report = pe.Node(SubjectReport(subject=subject, methods=all_methods, space=template,
                                       res=res, model_desc=model_label(spec)),
                         name="report")
        if session:
            report.inputs.session = session
        connections += [
            (t1w_model, report, [("out_file", "t1w")]),
            (template_maps[0], report, [(template_maps[1], "maps")]),
            (model_grid, report, [("out_file", "background")]),
            (inference, report, [("out_tsv", "predictions_tsv")]),
            (registration_qc, report, [("out_tsv", "qc_tsv"), ("out_png", "qc_figure")]),
            (report, outputnode, [("out_report", "report")]),
            (report, derivatives_wf, [("out_report", "inputnode.report"),
                                      ("out_figures", "inputnode.report_figures")]),
        ]
        if has_gt:
            connections += [
                (registration_wf, report, [(("outputnode.masks", _first), "ground_truth")]),
                (overlap, report, [("out_tsv", "metrics_tsv")]),
            ]
    workflow.connect(connections)
    return workflow


def attribution_inputs(options: PipelineOptions) -> dict[str, Any]:
    """The inputs of the node that computes the maps (``Attribution``, or ``ModelBatch`` for a
    batch of subjects) as the options give them: the spec, the model methods (baselines need no
    model), seed, device, precision, per-method parameters, background and the trust
    opt-ins."""
    model_methods, _ = split_methods(options.methods)
    inputs: dict[str, Any] = {
        "model_spec": str(options.model_spec), "methods": list(model_methods),
        "seed": options.seed, "device": options.device,
        "use_gpu": str(options.device).startswith("cuda"), **options.trust,
        **options.precision_inputs,
    }
    params = {m: p for m, p in options.method_params.items() if m in model_methods}
    if params:
        inputs["method_params"] = params
    if options.background is not None and any(
            "background" in method_defaults(m) for m in model_methods):
        inputs["background"] = str(options.background)
    return inputs


def _is_files(value: Any) -> bool:
    # A file (or pair of files), not a flag: True/False say "connected", the old way.
    return value is not None and not isinstance(value, bool)


def _connected_inputs(connected: Collection[str], **given: Any) -> set[str]:
    """The inputs the caller connects; ``True`` for one of them (the former way of saying so)
    is still accepted, with a warning."""
    result = set(connected)
    unknown = sorted(result - set(CONNECTABLE_INPUTS))
    if unknown:
        raise ValueError(f"connected: {unknown} are not among {list(CONNECTABLE_INPUTS)}")
    for key, value in given.items():
        if value is True:
            warnings.warn(f"init_xai_wf({key}=True) is deprecated: pass connected=[{key!r}]",
                          DeprecationWarning, stacklevel=3)
            result.add(key)
    return result


def _first(values):
    # A one-element list from a MapNode to a single-file input.
    return values[0] if isinstance(values, (list, tuple)) else values
