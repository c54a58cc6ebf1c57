"""T1w to template: registration (or reuse of existing transforms) and transform application."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.registration import ApplyTransforms, RegisterToTemplate, TemplateFlowSelect
from ..templates import DEFAULT_TEMPLATE

__all__ = ["init_registration_wf"]


def init_registration_wf(
    *,
    template: str = DEFAULT_TEMPLATE,
    preset: str = "affine",
    resolution: int = 1,
    reuse_transforms: bool = False,
    resample_t1w: bool = True,
    apply_to_maps: bool = False,
    apply_to_masks: bool = False,
    select_template: bool = True,
    seed: int = 0,
    num_threads: int = 1,
    name: str = "registration_wf",
) -> pe.Workflow:
    """Register a T1w to a template, or take existing transforms, and apply them.

    The subject's T1w is registered with ANTsPy to the template's skull-stripped T1w at TemplateFlow
    resolution ``resolution`` (the metric restricted to the template's brain mask), giving forward
    (T1w -> template) and inverse (template -> T1w) ITK composite transforms; both are kept, since a
    dense SyN field cannot be inverted later (SPEC §5). With ``reuse_transforms``, no registration
    runs: the transforms given at the inputnode are used, e.g. fMRIPrep's
    ``*_from-T1w_to-<tpl>_mode-image_xfm.h5`` and ``*_from-<tpl>_to-T1w_mode-image_xfm.h5``.

    The subject's brain mask is the template's brain mask pulled back through the inverse
    transform (nearest neighbour), so metrics can be restricted to brain voxels of any subject.

    Lists of T1w-space images can be sent to the template grid through the forward transform:
    ``maps`` with linear interpolation, ``masks`` with nearest neighbour. (Template-space maps go
    back to the T1w through ``inverse_transform`` in the calling workflow: a nested workflow whose
    outputs feed a node that feeds it again would make Nipype's graph cyclic.)

    Parameters
    ----------
    template
        TemplateFlow identifier of the target space.
    preset
        ``"rigid"``, ``"affine"`` or ``"syn"`` (:data:`nipype_xai.registration.PRESETS`).
    resolution
        TemplateFlow ``res-`` index of the template image registered to (the grid of
        ``t1w_template``); 2 is enough for models on grids of 2 mm and coarser, and ~7x faster.
    reuse_transforms
        Take ``forward_transform`` / ``inverse_transform`` from the inputnode instead of
        registering.
    resample_t1w
        With ``reuse_transforms``: resample the T1w onto the template grid (``t1w_template``).
        ``False`` leaves that output empty and saves the node when nothing reads it (a
        registration gives the warped T1w anyway).
    apply_to_maps, apply_to_masks
        Add the nodes that send ``maps`` / ``masks`` to the template grid.
    select_template
        Select the template files here (``TemplateFlowSelect``); ``False``: take them from the
        inputnode, e.g. from one selection shared by every subject of a participant workflow.
    seed
        Seed of the registration metric's sampling.
    num_threads
        ITK threads of the registration: 1 (default) makes it bit-reproducible for a seed; 0
        keeps ITK's own setting.
    name
        Workflow name.

    Inputs
    ------
    t1w
        The subject's T1w (skull-stripped, or with ``t1w_mask``).
    t1w_mask
        Optional brain mask of the T1w, restricting the registration metric.
    forward_transform, inverse_transform
        With ``reuse_transforms``: T1w -> template and template -> T1w transforms.
    template, template_mask
        Without ``select_template``: the template T1w (skull-stripped) and its brain mask.
    maps
        T1w-space maps to resample onto the template grid (linear).
    masks
        T1w-space masks to resample onto the template grid (nearest neighbour).

    Outputs
    -------
    forward_transform, inverse_transform
        T1w -> template and template -> T1w transforms.
    t1w_template
        The T1w resampled onto the template grid (linear).
    template, template_mask
        The template T1w and brain mask registered to.
    brain_mask
        The subject's brain mask on the T1w grid (template mask pulled back, nearest neighbour).
    maps, masks
        ``maps`` and ``masks`` on the template grid.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["t1w", "t1w_mask", "forward_transform",
                                      "inverse_transform", "template", "template_mask", "maps",
                                      "masks"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["forward_transform", "inverse_transform", "t1w_template",
                                      "template", "template_mask", "brain_mask", "maps",
                                      "masks"]),
        name="outputnode",
    )
    if select_template:
        template_select = pe.Node(
            TemplateFlowSelect(template=template, resolution=resolution, t1w_desc="brain"),
            name="template_select",
        )
        template_source, t1w_file, mask_file = template_select, "t1w_file", "brain_mask"
    else:
        template_source, t1w_file, mask_file = inputnode, "template", "template_mask"
    # The template's brain mask pulled back onto the T1w grid: the subject's brain mask.
    brain_mask = pe.Node(ApplyTransforms(interpolation="nearest"), name="brain_mask")

    connections = [
        (template_source, outputnode, [(t1w_file, "template"), (mask_file, "template_mask")]),
        (template_source, brain_mask, [(mask_file, "in_file")]),
        (inputnode, brain_mask, [("t1w", "reference_image")]),
        (brain_mask, outputnode, [("out_file", "brain_mask")]),
    ]
    if reuse_transforms:
        connections += [
            (inputnode, brain_mask, [("inverse_transform", "transforms")]),
            (inputnode, outputnode, [("forward_transform", "forward_transform"),
                                     ("inverse_transform", "inverse_transform")]),
        ]
        if resample_t1w:
            t1w_template = pe.Node(ApplyTransforms(interpolation="linear"), name="t1w_template")
            connections += [
                (inputnode, t1w_template, [("t1w", "in_file"),
                                           ("forward_transform", "transforms")]),
                (template_source, t1w_template, [(t1w_file, "reference_image")]),
                (t1w_template, outputnode, [("out_file", "t1w_template")]),
            ]
        forward_source, forward_field = inputnode, "forward_transform"
    else:
        register = pe.Node(RegisterToTemplate(preset=preset, seed=seed, num_threads=num_threads),
                           name="register")
        connections += [
            (inputnode, register, [("t1w", "moving_image"), ("t1w_mask", "moving_mask")]),
            (template_source, register, [(t1w_file, "fixed_image"), (mask_file, "fixed_mask")]),
            (register, brain_mask, [("inverse_transform", "transforms")]),
            (register, outputnode, [("forward_transform", "forward_transform"),
                                    ("inverse_transform", "inverse_transform"),
                                    ("warped_image", "t1w_template")]),
        ]
        forward_source, forward_field = register, "forward_transform"

    # Maps linearly, masks nearest-neighbour (a 0/1 image is never interpolated).
    for field, interpolation, wanted in (("maps", "linear", apply_to_maps),
                                         ("masks", "nearest", apply_to_masks)):
        if not wanted:
            continue
        apply = pe.MapNode(ApplyTransforms(interpolation=interpolation), iterfield=["in_file"],
                           name=f"{field}_to_template")
        connections += [
            (inputnode, apply, [(field, "in_file")]),
            (template_source, apply, [(t1w_file, "reference_image")]),
            (forward_source, apply, [(forward_field, "transforms")]),
            (apply, outputnode, [("out_file", field)]),
        ]
    workflow.connect(connections)
    return workflow
