"""Nipype interfaces for templates and registration: thin wrappers of ``nipype_xai.templates`` and
``nipype_xai.registration`` (load -> one core call -> save).

- ``TemplateFlowSelect``: template id + resolution -> T1w and brain mask files (TemplateFlow, or
  nipype-xai's offline copy of MNI152NLin2009aSym).
- ``RegisterToTemplate``: an image (the subject's T1w) -> forward and inverse composite transforms
  and the image resampled onto the template.
- ``ApplyTransforms``: any image through a list of transforms (ours, fMRIPrep's, sMRIPrep's).
"""

from __future__ import annotations

import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from ..images import save_image
from ..registration import PRESETS, apply_transforms, register, strip_hdf5_timestamps
from ..templates import DEFAULT_TEMPLATE, get_template

__all__ = ["ApplyTransforms", "RegisterToTemplate", "TemplateFlowSelect"]


def nifti_name(in_file: str, suffix: str, newpath: str) -> str:
    """``<in_file stem><suffix>.nii.gz`` in ``newpath`` (keeps ``.nii``/``.nii.gz``): where an
    interface writes the image it derives from ``in_file``."""
    out = fname_presuffix(in_file, suffix=suffix, newpath=newpath)
    if not out.endswith((".nii", ".nii.gz")):
        out = str(Path(out).with_suffix("")) + ".nii.gz"
    return out


class _TemplateFlowSelectInputSpec(BaseInterfaceInputSpec):
    template = traits.Str(DEFAULT_TEMPLATE, usedefault=True, desc="TemplateFlow identifier")
    resolution = traits.Int(1, usedefault=True,
                            desc="TemplateFlow res- index (voxel size in mm for MNI templates)")
    t1w_desc = traits.Either(
        None, traits.Str, default=None, usedefault=True,
        desc="desc- of the T1w: None for the head T1w (offline: the brain T1w, with a warning), "
             "'brain' for the skull-stripped one",
    )


class _TemplateFlowSelectOutputSpec(TraitedSpec):
    t1w_file = File(exists=True, desc="template T1w")
    brain_mask = File(exists=True, desc="template brain mask (desc-brain_mask)")


class TemplateFlowSelect(SimpleInterface):
    """Select a template's T1w and brain mask (TemplateFlow first, offline copy after).

    Output paths point into the TemplateFlow home or nipype-xai's own home; nothing is copied.
    """

    input_spec = _TemplateFlowSelectInputSpec
    output_spec = _TemplateFlowSelectOutputSpec

    def _run_interface(self, runtime):
        template, resolution = self.inputs.template, self.inputs.resolution
        self._results["t1w_file"] = str(get_template(template, resolution=resolution, suffix="T1w",
                                                     desc=self.inputs.t1w_desc))
        self._results["brain_mask"] = str(get_template(template, resolution=resolution, suffix="mask",
                                                       desc="brain"))
        return runtime


class _RegisterToTemplateInputSpec(BaseInterfaceInputSpec):
    moving_image = File(exists=True, mandatory=True, desc="image to register (the subject's T1w)")
    fixed_image = File(exists=True, mandatory=True,
                       desc="template image (e.g. TemplateFlowSelect.t1w_file)")
    preset = traits.Enum("affine", *sorted(set(PRESETS) - {"affine"}), usedefault=True,
                         desc="rigid, affine (rigid then affine) or syn (rigid, affine, SyN)")
    moving_mask = File(exists=True, desc="restrict the metric to these moving-image voxels")
    fixed_mask = File(exists=True, desc="restrict the metric to these template voxels")
    seed = traits.Range(low=0, value=0, usedefault=True, desc="random seed of the metric sampling")
    num_threads = traits.Range(
        low=0, value=1, usedefault=True, nohash=True,
        desc="ITK threads of the registration: 1 (default) makes it bit-reproducible for a given "
        "seed; 0 keeps ITK's own setting (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS, else all cores). "
        "ITK reads it once per process, at its first use",
    )


class _RegisterToTemplateOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="moving -> template ITK composite (Composite.h5)")
    inverse_transform = File(exists=True, desc="template -> moving ITK composite (InverseComposite.h5)")
    warped_image = File(exists=True, desc="moving image resampled onto the template grid")


class RegisterToTemplate(SimpleInterface):
    """Register an image to a template with ANTsPy (``nipype_xai.registration.register``)."""

    input_spec = _RegisterToTemplateInputSpec
    output_spec = _RegisterToTemplateOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        if inputs.num_threads:
            # ANTs's registration is bit-reproducible for a seed only on one ITK thread; ITK reads
            # this once per process (the CLI also sets it before starting any worker).
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(inputs.num_threads)
        result = register(
            inputs.moving_image, inputs.fixed_image, preset=inputs.preset,
            moving_mask=inputs.moving_mask if isdefined(inputs.moving_mask) else None,
            fixed_mask=inputs.fixed_mask if isdefined(inputs.fixed_mask) else None,
            seed=inputs.seed, out_dir=runtime.cwd,
        )
        # HDF5 stamps objects with their write time: strip it, so equal transforms are equal files.
        self._results["forward_transform"] = str(strip_hdf5_timestamps(result.forward_transform))
        self._results["inverse_transform"] = str(strip_hdf5_timestamps(result.inverse_transform))
        self._results["warped_image"] = str(save_image(
            result.warped, nifti_name(inputs.moving_image, "_warped", runtime.cwd)))
        return runtime


class _ApplyTransformsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D image to resample (map, mask, T1w)")
    reference_image = File(exists=True, mandatory=True, desc="defines the output grid")
    transforms = InputMultiObject(
        File(exists=True), mandatory=True,
        desc="ITK/ANTs transforms (.h5 composite, .mat, displacement .nii.gz) in antsApplyTransforms "
             "-t order",
    )
    interpolation = traits.Enum("linear", "nearest", usedefault=True,
                                desc="linear for maps, nearest for masks and labels")
    invert_transform_flags = InputMultiObject(traits.Bool, desc="invert each (.mat only) transform")


class _ApplyTransformsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="in_file on the reference grid")


class ApplyTransforms(SimpleInterface):
    """Resample an image through transforms (``nipype_xai.registration.apply_transforms``)."""

    input_spec = _ApplyTransformsInputSpec
    output_spec = _ApplyTransformsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        invert = inputs.invert_transform_flags if isdefined(inputs.invert_transform_flags) else False
        out = apply_transforms(inputs.in_file, inputs.reference_image, inputs.transforms,
                               interpolation=inputs.interpolation, invert=invert)
        self._results["out_file"] = str(save_image(
            out, nifti_name(inputs.in_file, "_trans", runtime.cwd)))
        return runtime
