"""Nipype interfaces for the anatomical steps before and after registration: thin wrappers of
``nipype_xai.anatomy`` (load -> one core call -> save).

- ``N4BiasFieldCorrection``: a T1w -> the T1w without its bias field (N4, ANTsPy).
- ``BrainExtraction``: a T1w head -> brain mask and skull-stripped T1w (deepbet).
- ``MaskImage``: a T1w and a brain mask given with it (a lab's own) -> the skull-stripped T1w.
- ``RegistrationQC``: the subject's brain and mask, the transforms to the template, the template's
  brain and mask -> a one-row QC table, its verdict, and an overlay figure. Failing QC does not
  raise: the ``passed`` output lets the workflow decide.
- ``CheckRegistrationQC``: that decision, a gate: a failed QC stops the subject (a one-line error)
  unless ``keep_failed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..anatomy import (
    QC_THRESHOLDS,
    RegistrationQCFailed,
    apply_brain_mask,
    extract_brain,
    n4_bias_correct,
    plot_registration_overlay,
    qc_passed,
    registration_qc,
)
from ..atomic import atomic_write
from ..images import load_volume, save_image
from ..registration import apply_transforms
from ..tables import write_tsv
from .model import resolve_device
from .registration import nifti_name

__all__ = [
    "BrainExtraction",
    "CheckRegistrationQC",
    "MaskImage",
    "N4BiasFieldCorrection",
    "RegistrationQC",
]


def _stem(in_file: str) -> str:
    name = Path(in_file).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D T1w (head or brain)")
    mask_file = File(exists=True, desc="voxels that inform the fit (default: the head, found "
                     "automatically); on in_file's grid")
    shrink_factor = traits.Range(low=1, value=4, usedefault=True,
                                 desc="the fit runs on the image subsampled by this factor")
    n_iterations = traits.List(traits.Range(low=1), [50, 50, 50, 50], usedefault=True, minlen=1,
                               desc="maximum iterations per fitting level (one entry per level)")


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected T1w (float32, in_file's grid)")


class N4BiasFieldCorrection(SimpleInterface):
    """N4 bias-field correction (``nipype_xai.anatomy.n4_bias_correct``)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        mask = load_volume(inputs.mask_file) if isdefined(inputs.mask_file) else None
        corrected = n4_bias_correct(load_volume(inputs.in_file), mask=mask,
                                    shrink_factor=inputs.shrink_factor,
                                    iterations=inputs.n_iterations)
        out_file = nifti_name(inputs.in_file, "_n4", runtime.cwd)
        self._results["out_file"] = str(save_image(corrected, out_file))
        return runtime


class _BrainExtractionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D T1w head (bias-corrected or not)")
    threshold = traits.Range(low=0.0, high=1.0, value=0.5, usedefault=True, exclude_low=True,
                             exclude_high=True, desc="probability above which a voxel is brain")
    n_dilate = traits.Int(0, usedefault=True,
                          desc="dilate (> 0) or erode (< 0) the mask by this many voxel layers")
    device = traits.Str(nohash=True,
                        desc="torch device ('cpu', 'cuda', 'cuda:1'); default 'cuda' if use_gpu "
                        "else 'cpu'")
    use_gpu = traits.Bool(False, usedefault=True, nohash=True,
                          desc="run deepbet on the GPU; Nipype's MultiProc schedules such nodes "
                          "against n_gpu_procs")


class _BrainExtractionOutputSpec(TraitedSpec):
    out_brain = File(exists=True, desc="skull-stripped T1w (0 outside the brain), in_file's grid")
    out_mask = File(exists=True, desc="brain mask (uint8), in_file's grid")
    volume_cm3 = traits.Float(desc="volume of the brain mask")


class BrainExtraction(SimpleInterface):
    """Brain extraction with deepbet (``nipype_xai.anatomy.extract_brain``)."""

    input_spec = _BrainExtractionInputSpec
    output_spec = _BrainExtractionOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        result = extract_brain(load_volume(inputs.in_file), device=resolve_device(inputs),
                               threshold=inputs.threshold, n_dilate=inputs.n_dilate)
        self._results["out_brain"] = str(save_image(
            result.brain, nifti_name(inputs.in_file, "_brain", runtime.cwd)))
        self._results["out_mask"] = str(save_image(
            result.mask, nifti_name(inputs.in_file, "_brainmask", runtime.cwd)))
        self._results["volume_cm3"] = result.volume_cm3
        return runtime


class _MaskImageInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D T1w")
    mask = File(exists=True, mandatory=True, desc="brain mask on in_file's grid (> 0.5 is brain)")


class _MaskImageOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="in_file inside the mask, 0 outside (float32)")


class MaskImage(SimpleInterface):
    """Skull-strip with a given brain mask (``nipype_xai.anatomy.apply_brain_mask``)."""

    input_spec = _MaskImageInputSpec
    output_spec = _MaskImageOutputSpec

    def _run_interface(self, runtime):
        brain = apply_brain_mask(load_volume(self.inputs.in_file), load_volume(self.inputs.mask))
        out_file = nifti_name(self.inputs.in_file, "_brain", runtime.cwd)
        self._results["out_file"] = str(save_image(brain, out_file))
        return runtime


_QC_DESCRIPTIONS = {
    "dice": "Dice of the subject's brain mask on the template grid and the template's brain mask",
    "ncc": "Pearson correlation of the registered brain and the template brain inside the "
           "template's brain mask",
    "volume_ratio": "volume of the subject's registered brain mask / volume of the template's",
    "passed": "True when every metric is within its range, else False",
    "reasons": "the failed checks, separated by '; '",
}


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f"[{low:g}, {high:g}]"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


class _RegistrationQCInputSpec(BaseInterfaceInputSpec):
    brain_mask = File(exists=True, mandatory=True, desc="the subject's brain mask (native space)")
    brain_file = File(exists=True, mandatory=True,
                      desc="the subject's skull-stripped T1w (native space)")
    transforms = InputMultiObject(
        File(exists=True), mandatory=True,
        desc="subject -> template transform(s) in antsApplyTransforms -t order (e.g. "
             "RegisterToTemplate.forward_transform)",
    )
    template_brain = File(exists=True, mandatory=True, desc="the template's skull-stripped T1w")
    template_mask = File(exists=True, mandatory=True, desc="the template's brain mask")
    plot = traits.Bool(True, usedefault=True, desc="also draw the overlay figure (PNG and SVG)")


class _RegistrationQCOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="one-row TSV: the metrics, passed, reasons")
    out_json = File(exists=True, desc="the TSV's column descriptions and the pass ranges")
    passed = traits.Bool(desc="every metric within its range (QC_THRESHOLDS)")
    reasons = traits.List(traits.Str, desc="the failed checks (empty when passed)")
    metrics = traits.Dict(traits.Str, traits.Float, desc="metric name -> value")
    warped_mask = File(exists=True,
                       desc="the brain mask on the template grid (nearest; its stored type kept)")
    warped_brain = File(exists=True, desc="the brain on the template grid (linear)")
    out_png = File(desc="overlay figure: the registered brain, the template's outline in red")
    out_svg = File(desc="the same figure as SVG (byte-reproducible)")


class RegistrationQC(SimpleInterface):
    """Registration QC on the template grid (``nipype_xai.anatomy.registration_qc``).

    Never raises on a failed QC: ``passed`` and ``reasons`` say it, and the workflow decides.
    """

    input_spec = _RegistrationQCInputSpec
    output_spec = _RegistrationQCOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        template_brain = load_volume(inputs.template_brain)
        template_mask = load_volume(inputs.template_mask)
        # From the files: nearest-neighbour keeps the mask's stored type (uint8).
        warped_mask = apply_transforms(inputs.brain_mask, template_brain, inputs.transforms,
                                       interpolation="nearest")
        warped_brain = apply_transforms(inputs.brain_file, template_brain, inputs.transforms,
                                        interpolation="linear")
        metrics = registration_qc(warped_mask, template_mask, warped_brain, template_brain)
        passed, reasons = qc_passed(metrics)

        stem = _stem(inputs.brain_file)
        out_tsv = Path(runtime.cwd) / f"{stem}_regqc.tsv"
        row = {**{name: round(value, 6) for name, value in metrics.items()}, "passed": passed,
               "reasons": "; ".join(reasons) or "n/a"}
        table = pd.DataFrame([row])
        write_tsv(table, out_tsv)
        sidecar = {name: {"Description": text} for name, text in _QC_DESCRIPTIONS.items()}
        for name, (low, high) in QC_THRESHOLDS.items():
            sidecar[name]["PassRange"] = _range_text(low, high)
        out_json = out_tsv.with_suffix(".json")
        atomic_write(out_json, lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2) + "\n"))

        self._results.update(
            out_tsv=str(out_tsv), out_json=str(out_json), passed=passed, reasons=reasons,
            metrics=metrics,
            warped_mask=str(save_image(warped_mask, nifti_name(inputs.brain_mask, "_tpl",
                                                                runtime.cwd))),
            warped_brain=str(save_image(warped_brain, nifti_name(inputs.brain_file, "_tpl",
                                                                  runtime.cwd))),
        )
        if inputs.plot:
            verdict = "passed" if passed else "FAILED: " + "; ".join(reasons)
            figures = plot_registration_overlay(warped_brain, template_mask,
                                                Path(runtime.cwd) / f"{stem}_regqc",
                                                title=f"registration QC {verdict}")
            self._results.update(out_png=str(figures["png"]), out_svg=str(figures["svg"]))
        return runtime


class _CheckRegistrationQCInputSpec(BaseInterfaceInputSpec):
    passed = traits.Bool(mandatory=True, desc="RegistrationQC.passed")
    reasons = traits.List(traits.Str, desc="RegistrationQC.reasons")
    in_tsv = File(exists=True, desc="RegistrationQC.out_tsv (named in the error)")
    subject = traits.Str(desc="who, for the error message (e.g. 'sub-01_ses-1')")
    keep_failed = traits.Bool(False, usedefault=True,
                              desc="let a subject that failed QC through (its outputs say so)")


class _CheckRegistrationQCOutputSpec(TraitedSpec):
    passed = traits.Bool(desc="the verdict, passed on (only reached when passed or keep_failed)")


class CheckRegistrationQC(SimpleInterface):
    """Stop a subject whose registration failed QC, with one line saying why.

    Raises
    ------
    nipype_xai.anatomy.RegistrationQCFailed
        ``passed`` is False and ``keep_failed`` is not set.
    """

    input_spec = _CheckRegistrationQCInputSpec
    output_spec = _CheckRegistrationQCOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        if not inputs.passed and not inputs.keep_failed:
            where = Path(inputs.in_tsv).name if isdefined(inputs.in_tsv) else "registration QC"
            who = f" of {inputs.subject}" if isdefined(inputs.subject) and inputs.subject else ""
            reasons = "; ".join(inputs.reasons) if isdefined(inputs.reasons) else "see the table"
            raise RegistrationQCFailed(
                f"{where}: the registration{who} to the template failed QC ({reasons}); look at "
                "its overlay figure, or rerun with --keep-failed-qc to publish it flagged")
        self._results["passed"] = bool(inputs.passed)
        return runtime
