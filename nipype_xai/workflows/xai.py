"""One subject: T1w -> template -> model grid -> prediction and attribution maps -> derivatives."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..attribution import available_methods
from ..bids import (
    bids_uri,
    derivative_path,
    figures_dir,
    input_dataset_links,
    method_to_desc,
    read_dataset_links,
    report_path,
    resolution_label,
    staging_folder,
    template_spatial_reference,
)
from ..interfaces.anatomy import CheckRegistrationQC, RegistrationQC
from ..interfaces.attribution import Attribution, RestrictMaps
from ..interfaces.baselines import BASELINE_DESCRIPTIONS, BaselineMaps
from ..interfaces.bids import SOURCE_FILE, CommitDerivatives, DerivativesDataSink, ReportsSink
from ..interfaces.grids import ModelGridReference
from ..interfaces.metrics import GroundTruthOverlap
from ..interfaces.model import ModelInference
from ..interfaces.registration import ApplyTransforms
from ..interfaces.reports import SubjectReport
from ..models.spec import ModelSpec, load_model_spec
from .anatomy import init_anat_wf
from .registration import init_registration_wf

__all__ = [
    "check_methods",
    "init_xai_wf",
    "model_label",
    "model_resolution_label",
    "registration_resolution",
    "subject_workflow_name",
]

PathLike = Union[str, os.PathLike]


def check_methods(methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split requested names into attribution methods and model-free baselines, in order.

    Raises
    ------
    ValueError
        An unknown name (the message lists the valid ones), or no name at all.
    """
    names = list(dict.fromkeys(methods))
    if not names:
        raise ValueError("no attribution method requested")
    known = available_methods()
    unknown = [name for name in names if name not in known and name not in BASELINE_DESCRIPTIONS]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; methods: {', '.join(known)}; baselines: "
            f"{', '.join(BASELINE_DESCRIPTIONS)}"
        )
    return ([n for n in names if n in known], [n for n in names if n in BASELINE_DESCRIPTIONS])


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


def init_xai_wf(
    *,
    subject: str,
    methods: Sequence[str],
    model_spec: PathLike,
    output_dir: PathLike,
    session: Optional[str] = None,
    template: Optional[str] = None,
    t1w: Optional[PathLike] = None,
    t1w_mask: Union[PathLike, bool, None] = None,
    ground_truth: Union[PathLike, bool, None] = None,
    transforms: Union[tuple[PathLike, PathLike], bool, None] = None,
    registration: str = "affine",
    brain_extraction: str = "deepbet",
    bias_correction: bool = True,
    keep_failed_qc: bool = False,
    restrict_maps: bool = True,
    template_resolution: Optional[int] = None,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    seed: int = 0,
    deterministic: bool = True,
    device: str = "cpu",
    trust_model_code: bool = False,
    external_weights: bool = False,
    reports: bool = True,
    select_template: bool = True,
    name: Optional[str] = None,
) -> pe.Workflow:
    """Explain a model's prediction for one subject's T1w, in template and native space.

    The graph, in the order data flows:

    1. T1w -> template: ANTsPy registration (``registration`` preset), or the given
       ``transforms`` (e.g. fMRIPrep's); the subject's brain mask is the template's pulled back
       (:func:`~nipype_xai.workflows.registration.init_registration_wf`).
    2. T1w -> model grid: the spec's grid in template space (``ModelGridReference``), reached in
       one interpolation through the forward transform (``ApplyTransforms``).
    3. ``ModelInference`` (the prediction) and ``Attribution`` (every method in one run, sharing
       passes), plus ``BaselineMaps`` for the requested baselines (sobel, laplace, random).
    4. With ``restrict_maps``: each map kept on its domain (``RestrictMaps``): the voxels where
       the model input holds the subject's brain, then, back on the T1w grid through the
       inverse transform (linear), the subject's brain mask; the share of each map's mass that
       lay outside is written in its sidecar.
    5. With ground truth: ``GroundTruthOverlap`` of the native maps against the native
       ground-truth mask, inside the native brain mask.
    6. A subject HTML report, and derivatives (SPEC §6) written by ``DerivativesDataSink`` nodes
       that all wait for every result above, into the subject's staging folder inside the
       dataset; ``CommitDerivatives`` then moves them into place and writes the subject's
       completion record last. A subject whose computation fails anywhere gets no derivative at
       all, and a run killed at any point never leaves an incomplete subject that looks complete
       (:func:`nipype_xai.bids.commit_subject`).

    Derivatives (``<s>`` = ``sub-<subject>[_ses-<session>]``, under ``sub-<subject>/[ses-*/]anat``):
    ``<s>_space-<tpl>_res-<r>_desc-<method>_attribution.nii.gz`` (+ ``.json``; ``r`` = the model
    grid's voxel size), ``<s>_desc-<method>_attribution.nii.gz`` (T1w grid, + ``.json``),
    ``<s>_space-<tpl>_res-<r>_desc-preproc_T1w.nii.gz`` (the model input), ``<s>_desc-brain_mask``,
    ``<s>_from-T1w_to-<tpl>_mode-image_xfm.h5`` and its inverse (when registered here),
    ``<s>_desc-<model>_predictions.tsv``, ``<s>_desc-overlap_metrics.tsv`` (with ground truth);
    and ``<s>.html`` with ``sub-<subject>/figures/`` at the root. Every sidecar names its
    ``Sources`` as BIDS URIs (``bids::`` for this dataset's files, ``bids:raw:`` and the like for
    the inputs, the names being the output's ``DatasetLinks``, completed at commit) and its
    ``SpatialReference`` (TemplateFlow's template, or the T1w).

    Parameters
    ----------
    subject, session
        BIDS labels.
    methods
        Attribution methods and baselines (``sobel``, ``laplace``, ``random``), all computed.
    model_spec
        Model spec JSON (SPEC §4); read now for the grid, the model name and the space.
    output_dir
        Root of the derivatives dataset.
    template
        TemplateFlow identifier of the space to work in; default: the model spec's space.
    t1w
        The T1w file; or ``None`` to connect ``inputnode.t1w``.
    t1w_mask
        The subject's own brain mask on the T1w grid (e.g. fMRIPrep's ``desc-brain_mask``), or
        ``True`` to connect ``inputnode.t1w_mask``: it restricts the registration metric and is
        the brain mask of the overlap metrics and the ``desc-brain`` derivative. ``None``: the
        template's brain mask pulled back through the inverse transform.
    ground_truth
        The native-space ground-truth mask, or ``True`` to connect ``inputnode.ground_truth``, or
        ``None``/``False`` for no overlap metrics.
    transforms
        ``(T1w -> template, template -> T1w)`` transform files to reuse instead of registering, or
        ``True`` to connect ``inputnode.forward_transform`` / ``inverse_transform``.
    registration
        Registration preset: ``"affine"`` (default) or ``"syn"`` (or ``"rigid"``).
    brain_extraction, bias_correction
        How the raw T1w becomes a brain before registration
        (:func:`~nipype_xai.workflows.anatomy.init_anat_wf`): ``"deepbet"`` (default) or
        ``"none"`` for skull-stripped inputs; N4 first unless ``bias_correction`` is off. With
        ``t1w_mask``, the brain is the T1w inside that mask and nothing is extracted.
    keep_failed_qc
        Registration quality control (``RegistrationQC``: Dice of the registered brain mask with
        the template's, correlation of the registered brain with the template brain) fails a
        subject below its thresholds (``nipype_xai.anatomy.QC_THRESHOLDS``): no derivative, a
        row in ``failures.tsv``. With ``keep_failed_qc`` its maps are published, and its QC
        table and report say it failed.
    restrict_maps
        Keep the maps on the subject's data (:mod:`nipype_xai.attribution.restriction`):
        gradients and perturbations also give values on the zero padding around the brain.
        ``False``: the raw maps (``--unrestricted-maps``).
    template_resolution
        TemplateFlow ``res-`` index registered to; default :func:`registration_resolution`.
    method_params
        Per-method parameter overrides, e.g. ``{"smoothgrad": {"n_samples": 20}}``; recorded in
        the sidecars.
    seed
        Seed of the stochastic methods, the random baseline and the registration.
    deterministic
        Register on one ITK thread, so that a seed gives byte-identical outputs (the default);
        ``False``: ITK's own thread count (faster; transforms differ slightly between runs).
    device
        Torch device of the model nodes (``"cpu"``, ``"cuda"``); not part of the cache hash.
    trust_model_code, external_weights
        Opt-ins of the model spec's trust boundary (:mod:`nipype_xai.models.spec`): import an
        architecture from outside the allow-list; read weights from outside the spec's folder.
    reports
        Make the subject HTML report.
    select_template
        Select the template files in this workflow; ``False``: connect ``inputnode.template``
        and ``inputnode.template_mask`` (one selection shared by many subjects).
    name
        Workflow name; default :func:`subject_workflow_name`.

    Inputs
    ------
    t1w
        The subject's T1w.
    t1w_mask
        The subject's brain mask (when ``t1w_mask`` is set).
    ground_truth
        Native-space ground-truth mask (when ``ground_truth`` is set).
    forward_transform, inverse_transform
        Transforms to reuse (when ``transforms`` is set).
    template, template_mask
        Template T1w (skull-stripped) and brain mask at ``template_resolution`` (when
        ``select_template`` is off).

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
    model_methods, baselines = check_methods(methods)
    all_methods = model_methods + baselines
    # Nodes run in their own work folders: relative paths would point elsewhere there (a relative
    # output_dir would scatter derivatives into the work directory).
    model_spec = Path(model_spec).absolute()
    output_dir = Path(output_dir).absolute()
    spec = load_model_spec(model_spec, external_weights=external_weights)
    trust = {"trust_model_code": trust_model_code, "external_weights": external_weights}
    template = template or spec.input.space
    res = model_resolution_label(spec)
    if template_resolution is None:
        template_resolution = registration_resolution(spec)
    params = {m: dict(p) for m, p in (method_params or {}).items() if m in model_methods}
    has_gt = bool(ground_truth)
    reuse = bool(transforms)
    gpu = str(device).startswith("cuda")
    name = name or subject_workflow_name(subject, session)
    entities = {"subject": subject, "session": session}
    label = f"sub-{subject}" + (f"_ses-{session}" if session else "")

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["t1w", "t1w_mask", "ground_truth", "forward_transform",
                                      "inverse_transform", "template", "template_mask"]),
        name="inputnode",
    )
    if t1w is not None:
        inputnode.inputs.t1w = str(Path(t1w).absolute())
    has_mask = bool(t1w_mask)
    if has_mask and t1w_mask is not True:
        inputnode.inputs.t1w_mask = str(Path(t1w_mask).absolute())
    if has_gt and ground_truth is not True:
        inputnode.inputs.ground_truth = str(Path(ground_truth).absolute())
    if reuse and transforms is not True:
        forward, inverse = transforms
        inputnode.inputs.forward_transform = str(Path(forward).absolute())
        inputnode.inputs.inverse_transform = str(Path(inverse).absolute())
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["template_maps", "native_maps", "methods", "predictions",
                                      "metrics", "t1w_model", "brain_mask", "forward_transform",
                                      "inverse_transform", "report"]),
        name="outputnode",
    )
    outputnode.inputs.methods = all_methods

    anat_wf = init_anat_wf(brain_extraction=brain_extraction, bias_correction=bias_correction,
                           given_mask=has_mask, device=device)
    extracted = has_mask or brain_extraction != "none"
    registration_wf = init_registration_wf(
        template=template, preset=registration, resolution=template_resolution,
        reuse_transforms=reuse, resample_t1w=False, apply_to_masks=has_gt and reports,
        select_template=select_template, seed=seed, num_threads=1 if deterministic else 0,
    )
    # The subject's brain mask: the lab's own or the extracted one; for an input that is
    # already skull-stripped, the template's pulled back.
    brain_source = ((anat_wf, "outputnode.brain_mask") if extracted
                    else (registration_wf, "outputnode.brain_mask"))
    model_grid = pe.Node(ModelGridReference(model_spec=str(model_spec), **trust),
                         name="model_grid")
    t1w_model = pe.Node(ApplyTransforms(interpolation="linear"), name="t1w_model")
    inference = pe.Node(
        ModelInference(model_spec=str(model_spec), device=device, use_gpu=gpu, **trust),
        name="inference",
    )
    sources = []  # (node, maps field, sidecars field) of every map-producing node
    if model_methods:
        attribution = pe.Node(
            Attribution(model_spec=str(model_spec), methods=model_methods, seed=seed,
                        device=device, use_gpu=gpu, **trust),
            name="attribution",
        )
        if params:
            attribution.inputs.method_params = params
        sources.append(attribution)
    if baselines:
        baseline_maps = pe.Node(
            BaselineMaps(model_spec=str(model_spec), baselines=baselines, seed=seed, **trust),
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
    if restrict_maps:
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

    # Every result a derivative depends on: the sinks wait for all of them (see docstring).
    # Registration QC of every subject, also of reused transforms; a failure stops the subject
    # here (its derivatives wait for this gate) unless keep_failed_qc.
    registration_qc = pe.Node(RegistrationQC(), name="registration_qc")
    check_qc = pe.Node(CheckRegistrationQC(subject=label, keep_failed=keep_failed_qc),
                       name="check_qc")
    gate_fields = [
        template_maps, template_sidecars, native_maps, native_sidecars,
        (inference, "out_tsv"), (t1w_model, "out_file"),
        brain_source,
        (registration_wf, "outputnode.forward_transform"),
        (registration_wf, "outputnode.inverse_transform"),
        (check_qc, "passed"),
    ]
    if bias_correction:
        gate_fields.append((anat_wf, "outputnode.t1w_preproc"))

    connections = [
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
    for index, node in enumerate(sources, start=1):
        connections += [
            (t1w_model, node, [("out_file", "in_file")]),
            (node, merge_maps, [("out_files", f"in{index}")]),
            (node, merge_sidecars, [("out_sidecars", f"in{index}")]),
        ]
    if restrict_maps:
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
        (t1w_model, outputnode, [("out_file", "t1w_model")]),
        (registration_wf, outputnode, [("outputnode.forward_transform", "forward_transform"),
                                       ("outputnode.inverse_transform", "inverse_transform")]),
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
        ]
        gate_fields.append((overlap, "out_tsv"))

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
        ]
        if has_gt:
            connections += [
                (inputnode, registration_wf, [("ground_truth", "inputnode.masks")]),
                (registration_wf, report, [(("outputnode.masks", _first), "ground_truth")]),
                (overlap, report, [("out_tsv", "metrics_tsv")]),
            ]
        gate_fields += [(report, "out_report"), (report, "out_figures")]

    gate = pe.Node(niu.Merge(len(gate_fields)), name="all_results")
    for index, (node, field) in enumerate(gate_fields, start=1):
        connections.append((node, gate, [(field, f"in{index}")]))

    # ---- derivatives, staged once every result above exists, then committed as a whole ------
    staging = staging_folder(output_dir, label)
    staged = []  # (sink, output field) of every staged file, for the commit
    descs = [method_to_desc(m) for m in all_methods]

    # Provenance (BIDS derivatives): Sources as BIDS URIs, "bids::" for the files of this dataset
    # (named here with derivative_path, as the sinks name them), "bids:<name>:" for the inputs,
    # <name> from the output's DatasetLinks (the command line writes them before building) or
    # given here to the datasets that hold the inputs; the commit adds those it lacks.
    # SpatialReference: TemplateFlow's template in template space, the T1w on its own grid.
    def here(**named: Any) -> str:
        return "bids::" + derivative_path({**entities, **named}).as_posix()

    known_inputs = [
        path for path in (t1w, t1w_mask if has_mask and t1w_mask is not True else None,
                          ground_truth if has_gt and ground_truth is not True else None,
                          *(transforms if reuse and transforms is not True else ()))
        if path is not None
    ]
    links = input_dataset_links(None, *known_inputs, links=read_dataset_links(output_dir))
    links_text = {key: str(folder) for key, folder in links.items()}

    def given(path: Optional[PathLike]) -> list[str]:
        # An input connected at run time (True) is not known here: left out of Sources.
        if path is None or path is True or path is False:
            return []
        return [bids_uri(path, output_dir, links)]

    # A T1w connected at run time: the sinks put its URI where SOURCE_FILE stands.
    t1w_uri = given(t1w)[0] if t1w is not None else SOURCE_FILE
    template_reference = template_spatial_reference(template)
    xfm = {"mode": "image", "suffix": "xfm", "extension": ".h5"}
    forward_uri = (given(transforms[0]) if reuse and transforms is not True else
                   [] if reuse else [here(**{"from": "T1w", "to": template}, **xfm)])
    inverse_uri = (given(transforms[1]) if reuse and transforms is not True else
                   [] if reuse else [here(**{"from": template, "to": "T1w"}, **xfm)])
    nifti = {"extension": ".nii.gz"}
    preproc_uri = here(desc="preproc", suffix="T1w", **nifti) if bias_correction else t1w_uri
    mask_uri = here(desc="brain", suffix="mask", **nifti)
    model_input_uri = here(space=template, res=res, desc="preproc", suffix="T1w", **nifti)
    inverse_name = derivative_path(
        {**entities, "from": template, "to": "T1w", "mode": "image", "suffix": "xfm"}).name
    template_text = (
        f"{template}, on the model grid: the model spec's {res} mm grid of shape "
        f"{'x'.join(str(n) for n in spec.input.shape)}, centred on the template's field of view; "
        "the subject's T1w was resampled onto it in one linear interpolation through the "
        "T1w -> template transform"
    )
    template_space = {"SpatialReference": template_reference, "Resolution": {res: template_text}}

    def sink(node_name: str, **inputs: Any) -> pe.Node:
        node = pe.Node(
            DerivativesDataSink(base_directory=str(staging), dataset_description=False,
                                dataset_root=str(output_dir), dataset_links=links_text,
                                **inputs, **{k: v for k, v in entities.items() if v}),
            name=node_name, run_without_submitting=True,
        )
        connections.append((gate, node, [("out", "wait_for")]))
        staged.extend([(node, "out_file"), (node, "out_meta")])
        if _mentions_source_file([inputs.get("meta_dict"), inputs.get("meta_per_file")]):
            connections.append((inputnode, node, [("t1w", "source_file")]))
        return node

    ds_template_maps = sink(
        "ds_template_maps", space=template, res=res, desc=descs, suffix="attribution",
        meta_dict={"Space": template, **template_space, "Sources": [model_input_uri]},
    )
    ds_native_maps = sink(
        "ds_native_maps", desc=descs, suffix="attribution",
        meta_dict={
            "Space": "T1w",
            "SpatialReference": t1w_uri,
            "Resolution": (
                "the subject's T1w grid: the template-space map resampled through the "
                f"template -> T1w transform ({'given' if reuse else inverse_name}) with linear "
                "interpolation"
            ),
        },
        meta_per_file=[
            {"Sources": [here(space=template, res=res, desc=desc, suffix="attribution", **nifti),
                         *inverse_uri, *([mask_uri] if restrict_maps else [])]}
            for desc in descs
        ],
    )
    ds_t1w_model = sink(
        "ds_t1w_model", space=template, res=res, desc="preproc", suffix="T1w",
        meta_dict={"Description": "The T1w as the model received it, before intensity "
                                  "normalisation" + (", bias-corrected (N4)" if bias_correction
                                                     and not has_mask else ""),
                   "SkullStripped": extracted or brain_extraction == "none",
                   **template_space,
                   "Sources": [preproc_uri, *([mask_uri] if extracted else []), *forward_uri]},
    )
    if bias_correction:
        # The bias-corrected T1w on its own grid, as sMRIPrep writes it: the underlay of the
        # native maps, and with the mask and transforms, anatomy a later run can take back
        # (--anat-derivatives) instead of correcting, extracting and registering again.
        ds_t1w_preproc = sink(
            "ds_t1w_preproc", desc="preproc", suffix="T1w",
            meta_dict={"Description": "The T1w after N4 bias-field correction (ANTs), on its "
                                      "own grid",
                       "SkullStripped": brain_extraction == "none" and not has_mask,
                       "SpatialReference": t1w_uri, "Sources": [t1w_uri]},
        )
        connections.append((anat_wf, ds_t1w_preproc, [("outputnode.t1w_preproc", "in_file")]))
    ds_brain_mask = sink(
        "ds_brain_mask", desc="brain", suffix="mask",
        meta_dict={"Type": "Brain", "SpatialReference": t1w_uri, "Description": (
            "The subject's brain mask as given to the workflow" if has_mask else
            "The subject's brain, extracted from the bias-corrected T1w by deepbet (Fisch et al. "
            "2024)" if extracted else
            f"{template} brain mask pulled back onto the T1w grid through the template -> T1w "
            "transform (nearest neighbour)"),
            "Sources": (given(t1w_mask) if has_mask else [preproc_uri] if extracted
                        else [template_reference, *inverse_uri])},
    )
    ds_predictions = sink(
        "ds_predictions", desc=model_label(spec), suffix="predictions",
        meta_dict={"ModelSpec": spec.name, "Outputs": list(spec.outputs), "Task": spec.task,
                   "Description": "The model's prediction for the T1w on the model grid",
                   "Sources": [model_input_uri]},
    )
    connections += [
        (template_maps[0], ds_template_maps, [(template_maps[1], "in_file")]),
        (template_sidecars[0], ds_template_maps, [(template_sidecars[1], "in_sidecar")]),
        (native_maps[0], ds_native_maps, [(native_maps[1], "in_file")]),
        (native_sidecars[0], ds_native_maps, [(native_sidecars[1], "in_sidecar")]),
        (t1w_model, ds_t1w_model, [("out_file", "in_file")]),
        (brain_source[0], ds_brain_mask, [(brain_source[1], "in_file")]),
        (inference, ds_predictions, [("out_tsv", "in_file")]),
    ]
    if not reuse:
        # Transforms computed here are derivatives; reused ones stay where they came from.
        ds_forward = sink("ds_forward_transform", from_space="T1w", to_space=template,
                          mode="image", suffix="xfm")
        ds_inverse = sink("ds_inverse_transform", from_space=template, to_space="T1w",
                          mode="image", suffix="xfm")
        connections += [
            (registration_wf, ds_forward, [("outputnode.forward_transform", "in_file")]),
            (registration_wf, ds_inverse, [("outputnode.inverse_transform", "in_file")]),
        ]
    ds_registration_qc = sink(
        "ds_registration_qc", desc="registration", suffix="metrics",
        meta_dict={"Description": f"Registration quality control: the subject's brain registered "
                                  f"to {template} against the template's brain "
                                  "(nipype_xai.anatomy.registration_qc)",
                   "Sources": [preproc_uri, mask_uri, *forward_uri]},
    )
    connections += [(registration_qc, ds_registration_qc, [("out_tsv", "in_file"),
                                                           ("out_json", "in_sidecar")])]
    if has_gt:
        ds_metrics = sink(
            "ds_metrics", desc="overlap", suffix="metrics",
            meta_dict={"Description": "Overlap of each native-space map with the ground-truth "
                                      "mask, inside the brain mask (nipype_xai.metrics)",
                       "Sources": [*(here(desc=desc, suffix="attribution", **nifti)
                                     for desc in descs),
                                   *given(ground_truth), mask_uri]},
        )
        connections.append((overlap, ds_metrics, [("out_tsv", "in_file")]))
    if reports:
        ds_report = pe.Node(
            ReportsSink(base_directory=str(staging),
                        report_name=report_path(subject, session).as_posix(),
                        figures_dir=figures_dir(subject).as_posix(), dataset_description=False),
            name="ds_report", run_without_submitting=True,
        )
        connections += [
            (gate, ds_report, [("out", "wait_for")]),
            (report, ds_report, [("out_report", "in_report"), ("out_figures", "in_figures")]),
        ]
        staged.extend([(ds_report, "out_figures"), (ds_report, "out_report")])

    # Every staged file, flattened (sinks without sidecars leave out_meta undefined: skipped).
    all_staged = pe.Node(niu.Merge(len(staged), ravel_inputs=True), name="all_staged",
                         run_without_submitting=True)
    commit = pe.Node(CommitDerivatives(base_directory=str(output_dir), label=label,
                                       dataset_links=links_text),
                     name="commit_derivatives", run_without_submitting=True)
    for index, (node, field) in enumerate(staged, start=1):
        connections.append((node, all_staged, [(field, f"in{index}")]))
    connections.append((all_staged, commit, [("out", "in_files")]))

    workflow.connect(connections)
    return workflow


def _mentions_source_file(value: Any) -> bool:
    # Whether sidecar entries hold the SOURCE_FILE token of a T1w connected at run time.
    if isinstance(value, str):
        return value == SOURCE_FILE
    if isinstance(value, dict):
        return any(_mentions_source_file(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mentions_source_file(item) for item in value)
    return False


def _first(values):
    # A one-element list from a MapNode to a single-file input.
    return values[0] if isinstance(values, (list, tuple)) else values
