"""Derivatives sinks (as sdcflows' ``workflows/outputs.py``): one subject's, and the gated sink
the subject and group workflows share.

Every sink waits for a *gate*, a ``Merge`` of every result its workflow computes, so a workflow
whose computation fails anywhere writes no derivative at all. A subject's sinks write into its
staging folder and ``CommitDerivatives`` then moves them into place (:mod:`nipype_xai.bids`'s
commit), so a run killed at any point never leaves an incomplete subject that looks complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids import bids_uri, derivative_path, figures_dir, input_dataset_links, method_to_desc
from ..bids import read_dataset_links, report_path, staging_folder, template_spatial_reference
from ..interfaces.bids import SOURCE_FILE, CommitDerivatives, DerivativesDataSink, ReportsSink
from ..interfaces.bids import mentions_source_file
from ..models.spec import ModelSpec
from .options import PipelineOptions

__all__ = ["DERIVATIVE_INPUTS", "gated_sink", "init_xai_derivatives_wf", "results_gate"]

PathLike = Union[str, os.PathLike]

Connections = list  # (source, destination, [(field, field), ...]) as Workflow.connect takes them

#: Fields of ``init_xai_derivatives_wf``'s inputnode: every result of a subject (``qc_passed``
#: is only waited for) and ``source_file``, the T1w its sidecars name when it is connected.
DERIVATIVE_INPUTS = (
    "source_file", "template_maps", "template_sidecars", "native_maps", "native_sidecars",
    "predictions", "t1w_model", "brain_mask", "forward_transform", "inverse_transform",
    "qc_passed", "qc_tsv", "qc_json", "t1w_preproc", "metrics", "report", "report_figures",
    "counterfactual_image", "counterfactual_image_sidecar", "counterfactual_xfm",
    "counterfactual_xfm_sidecar", "counterfactual_maps", "counterfactual_map_sidecars",
)


def results_gate(results: Sequence[tuple[pe.Node, str]], connections: Connections,
                 name: str = "all_results") -> pe.Node:
    """A ``Merge`` of every ``(node, field)`` in ``results``: what the sinks wait for."""
    gate = pe.Node(niu.Merge(len(results)), name=name)
    for index, (node, field) in enumerate(results, start=1):
        connections.append((node, gate, [(field, f"in{index}")]))
    return gate


def gated_sink(interface, *, name: str, gate: pe.Node, connections: Connections) -> pe.Node:
    """A sink node (``DerivativesDataSink`` or ``ReportsSink``) that runs once ``gate`` has all
    its results; in the main process, since it only copies files."""
    node = pe.Node(interface, name=name, run_without_submitting=True)
    connections.append((gate, node, [("out", "wait_for")]))
    return node


def init_xai_derivatives_wf(
    *,
    subject: str,
    session: Optional[str],
    options: PipelineOptions,
    spec: ModelSpec,
    output_dir: PathLike,
    methods: Sequence[str],
    template: str,
    res: str,
    model_desc: str,
    given_mask: bool = False,
    ground_truth: bool = False,
    reuse_transforms: bool = False,
    known_inputs: Optional[Mapping[str, PathLike]] = None,
    name: str = "derivatives_wf",
) -> pe.Workflow:
    """Stage one subject's derivatives once all of its results exist, then commit them.

    Derivatives (``<s>`` = ``sub-<subject>[_ses-<session>]``, under ``sub-<subject>/[ses-*/]anat``):
    ``<s>_space-<tpl>_res-<r>_desc-<method>_attribution.nii.gz`` (+ ``.json``),
    ``<s>_desc-<method>_attribution.nii.gz`` (T1w grid, + ``.json``),
    ``<s>_space-<tpl>_res-<r>_desc-preproc_T1w.nii.gz`` (the model input), ``<s>_desc-preproc_T1w``
    (with bias correction), ``<s>_desc-brain_mask``, ``<s>_from-T1w_to-<tpl>_mode-image_xfm.h5``
    and its inverse (when registered here), ``<s>_desc-<model>_predictions.tsv``,
    ``<s>_desc-registration_metrics.tsv``, ``<s>_desc-overlap_metrics.tsv`` (with ground truth);
    with ``options.counterfactual``, on the model grid: ``<s>_space-<tpl>_res-<r>_desc-
    counterfactual_T1w.nii.gz``, ``<s>_from-T1w_to-counterfactual_mode-image_xfm.nii.gz`` and
    ``<s>_space-<tpl>_res-<r>_desc-{logJacobian,intensityDifference}_counterfactual.nii.gz``;
    and ``<s>.html`` with ``sub-<subject>/figures/`` at the root. Every sidecar names its
    ``Sources`` as BIDS URIs (``bids::`` for this dataset's files, ``bids:raw:`` and the like for
    the inputs, the names being the output's ``DatasetLinks``, completed at commit) and its
    ``SpatialReference`` (TemplateFlow's template, or the T1w).

    Parameters
    ----------
    subject, session
        BIDS labels.
    options
        The pipeline options (``bias_correction``, ``brain_extraction``, ``restrict_maps``,
        ``reports`` shape what is written and what the sidecars say).
    spec
        The model spec (name, outputs, task, input grid).
    output_dir
        Root of the derivatives dataset (absolute).
    methods
        Every map's method, in the order of the maps.
    template, res, model_desc
        ``space-``, ``res-`` of the model grid, and ``desc-`` of the predictions.
    given_mask, ground_truth, reuse_transforms
        The subject's brain mask was given; a ground-truth mask exists (overlap metrics are
        written); the transforms were given (not written: they stay where they came from).
    known_inputs
        Input files known when the workflow is built (``t1w``, ``t1w_mask``, ``ground_truth``,
        ``forward_transform``, ``inverse_transform``): named in ``Sources``. A T1w connected at
        run time is named from ``inputnode.source_file`` instead.
    name
        Workflow name.

    Inputs
    ------
    source_file, template_maps, template_sidecars, native_maps, native_sidecars, predictions, \
t1w_model, brain_mask, forward_transform, inverse_transform, qc_passed, qc_tsv, qc_json, \
t1w_preproc, metrics, report, report_figures, counterfactual_*
        :data:`DERIVATIVE_INPUTS`; those of steps that do not run stay unconnected.

    Outputs
    -------
    out_files
        The committed derivatives.
    """
    output_dir = Path(output_dir).absolute()
    known = {key: Path(value).absolute() for key, value in (known_inputs or {}).items()
             if value is not None}
    entities = {"subject": subject, "session": session}
    label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    staging = staging_folder(output_dir, label)
    descs = [method_to_desc(m) for m in methods]
    extracted = given_mask or options.brain_extraction != "none"

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(DERIVATIVE_INPUTS)), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    results = ["template_maps", "template_sidecars", "native_maps", "native_sidecars",
               "predictions", "t1w_model", "brain_mask", "forward_transform",
               "inverse_transform", "qc_passed"]
    results += (["t1w_preproc"] if options.bias_correction else []) + (
        ["metrics"] if ground_truth else []) + (
        ["report", "report_figures"] if options.reports else []) + (
        [f for f in DERIVATIVE_INPUTS if f.startswith("counterfactual_")]
        if options.counterfactual is not None else [])
    connections: Connections = []
    gate = results_gate([(inputnode, field) for field in results], connections)

    # Provenance (BIDS derivatives): Sources as BIDS URIs, "bids::" for the files of this dataset
    # (named here with derivative_path, as the sinks name them), "bids:<name>:" for the inputs,
    # <name> from the output's DatasetLinks (the command line writes them before building) or
    # given here to the datasets that hold the inputs; the commit adds those it lacks.
    # SpatialReference: TemplateFlow's template in template space, the T1w on its own grid.
    def here(**named: Any) -> str:
        return "bids::" + derivative_path({**entities, **named}).as_posix()

    links = input_dataset_links(None, *known.values(), links=read_dataset_links(output_dir))
    links_text = {key: str(folder) for key, folder in links.items()}

    def given(key: str) -> list[str]:
        # An input connected at run time is not known here: left out of Sources.
        return [bids_uri(known[key], output_dir, links)] if key in known else []

    # A T1w connected at run time: the sinks put its URI where SOURCE_FILE stands.
    t1w_uri = (given("t1w") or [SOURCE_FILE])[0]
    template_reference = template_spatial_reference(template)
    xfm = {"mode": "image", "suffix": "xfm", "extension": ".h5"}
    forward_uri = (given("forward_transform") if reuse_transforms
                   else [here(**{"from": "T1w", "to": template}, **xfm)])
    inverse_uri = (given("inverse_transform") if reuse_transforms
                   else [here(**{"from": template, "to": "T1w"}, **xfm)])
    nifti = {"extension": ".nii.gz"}
    preproc_uri = (here(desc="preproc", suffix="T1w", **nifti) if options.bias_correction
                   else t1w_uri)
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
    staged = []  # (sink, output field) of every staged file, for the commit

    def sink(node_name: str, data: Sequence[tuple[str, str]], **inputs: Any) -> pe.Node:
        node = gated_sink(
            DerivativesDataSink(base_directory=str(staging), dataset_description=False,
                                dataset_root=str(output_dir), dataset_links=links_text,
                                **inputs, **{k: v for k, v in entities.items() if v}),
            name=node_name, gate=gate, connections=connections)
        connections.append((inputnode, node, list(data)))
        staged.extend([(node, "out_file"), (node, "out_meta")])
        if mentions_source_file([inputs.get("meta_dict"), inputs.get("meta_per_file")]):
            connections.append((inputnode, node, [("source_file", "source_file")]))
        return node

    maps_in = [("template_maps", "in_file"), ("template_sidecars", "in_sidecar")]
    sink("ds_template_maps", maps_in, space=template, res=res, desc=descs, suffix="attribution",
         meta_dict={"Space": template, **template_space, "Sources": [model_input_uri]})
    sink(
        "ds_native_maps", [("native_maps", "in_file"), ("native_sidecars", "in_sidecar")],
        desc=descs, suffix="attribution",
        meta_dict={
            "Space": "T1w",
            "SpatialReference": t1w_uri,
            "Resolution": (
                "the subject's T1w grid: the template-space map resampled through the "
                f"template -> T1w transform ({'given' if reuse_transforms else inverse_name}) "
                "with linear interpolation"
            ),
        },
        meta_per_file=[
            {"Sources": [here(space=template, res=res, desc=desc, suffix="attribution", **nifti),
                         *inverse_uri, *([mask_uri] if options.restrict_maps else [])]}
            for desc in descs
        ],
    )
    sink(
        "ds_t1w_model", [("t1w_model", "in_file")], space=template, res=res, desc="preproc",
        suffix="T1w",
        meta_dict={"Description": "The T1w as the model received it, before intensity "
                                  "normalisation" + (", bias-corrected (N4)"
                                                     if options.bias_correction
                                                     and not given_mask else ""),
                   "SkullStripped": extracted or options.brain_extraction == "none",
                   **template_space,
                   "Sources": [preproc_uri, *([mask_uri] if extracted else []), *forward_uri]},
    )
    if options.bias_correction:
        # The bias-corrected T1w on its own grid, as sMRIPrep writes it: the underlay of the
        # native maps, and with the mask and transforms, anatomy a later run can take back
        # (--anat-derivatives) instead of correcting, extracting and registering again.
        sink("ds_t1w_preproc", [("t1w_preproc", "in_file")], desc="preproc", suffix="T1w",
             meta_dict={"Description": "The T1w after N4 bias-field correction (ANTs), on its "
                                       "own grid",
                        "SkullStripped": options.brain_extraction == "none" and not given_mask,
                        "SpatialReference": t1w_uri, "Sources": [t1w_uri]})
    sink(
        "ds_brain_mask", [("brain_mask", "in_file")], desc="brain", suffix="mask",
        meta_dict={"Type": "Brain", "SpatialReference": t1w_uri, "Description": (
            "The subject's brain mask as given to the workflow" if given_mask else
            "The subject's brain, extracted from the bias-corrected T1w by deepbet (Fisch et al. "
            "2024)" if extracted else
            f"{template} brain mask pulled back onto the T1w grid through the template -> T1w "
            "transform (nearest neighbour)"),
            "Sources": (given("t1w_mask") if given_mask else [preproc_uri] if extracted
                        else [template_reference, *inverse_uri])},
    )
    sink("ds_predictions", [("predictions", "in_file")], desc=model_desc, suffix="predictions",
         meta_dict={"ModelSpec": spec.name, "Outputs": list(spec.outputs), "Task": spec.task,
                    "Description": "The model's prediction for the T1w on the model grid",
                    "Sources": [model_input_uri]})
    if not reuse_transforms:
        # Transforms computed here are derivatives; reused ones stay where they came from.
        sink("ds_forward_transform", [("forward_transform", "in_file")], from_space="T1w",
             to_space=template, mode="image", suffix="xfm")
        sink("ds_inverse_transform", [("inverse_transform", "in_file")], from_space=template,
             to_space="T1w", mode="image", suffix="xfm")
    sink("ds_registration_qc", [("qc_tsv", "in_file"), ("qc_json", "in_sidecar")],
         desc="registration", suffix="metrics",
         meta_dict={"Description": f"Registration quality control: the subject's brain "
                                   f"registered to {template} against the template's brain "
                                   "(nipype_xai.anatomy.registration_qc)",
                    "Sources": [preproc_uri, mask_uri, *forward_uri]})
    if ground_truth:
        sink("ds_metrics", [("metrics", "in_file")], desc="overlap", suffix="metrics",
             meta_dict={"Description": "Overlap of each native-space map with the ground-truth "
                                       "mask, inside the brain mask (nipype_xai.metrics)",
                        "Sources": [*(here(desc=desc, suffix="attribution", **nifti)
                                      for desc in descs), *given("ground_truth"), mask_uri]})
    if options.counterfactual is not None:
        from ..interfaces.counterfactual import MAP_DESCS

        # On the model grid, where the simulator deformed the model input.
        counterfactual_meta = {"Space": template, **template_space, "Sources": [model_input_uri]}
        sink("ds_counterfactual_t1w", [("counterfactual_image", "in_file"),
                                       ("counterfactual_image_sidecar", "in_sidecar")],
             space=template, res=res, desc="counterfactual", suffix="T1w",
             meta_dict={**counterfactual_meta,
                        "SkullStripped": extracted or options.brain_extraction == "none"})
        sink("ds_counterfactual_xfm", [("counterfactual_xfm", "in_file"),
                                       ("counterfactual_xfm_sidecar", "in_sidecar")],
             from_space="T1w", to_space="counterfactual", mode="image", suffix="xfm",
             meta_dict=counterfactual_meta)
        sink("ds_counterfactual_maps", [("counterfactual_maps", "in_file"),
                                        ("counterfactual_map_sidecars", "in_sidecar")],
             space=template, res=res, desc=list(MAP_DESCS), suffix="counterfactual",
             meta_dict=counterfactual_meta)
    if options.reports:
        ds_report = gated_sink(
            ReportsSink(base_directory=str(staging),
                        report_name=report_path(subject, session).as_posix(),
                        figures_dir=figures_dir(subject).as_posix(), dataset_description=False),
            name="ds_report", gate=gate, connections=connections)
        connections.append((inputnode, ds_report, [("report", "in_report"),
                                                    ("report_figures", "in_figures")]))
        staged.extend([(ds_report, "out_figures"), (ds_report, "out_report")])

    # Every staged file, flattened (sinks without sidecars leave out_meta undefined: skipped).
    all_staged = pe.Node(niu.Merge(len(staged), ravel_inputs=True), name="all_staged",
                         run_without_submitting=True)
    commit = pe.Node(CommitDerivatives(base_directory=str(output_dir), label=label,
                                       dataset_links=links_text),
                     name="commit_derivatives", run_without_submitting=True)
    for index, (node, field) in enumerate(staged, start=1):
        connections.append((node, all_staged, [(field, f"in{index}")]))
    connections += [(all_staged, commit, [("out", "in_files")]),
                    (commit, outputnode, [("out_files", "out_files")])]
    workflow.connect(connections)
    return workflow
