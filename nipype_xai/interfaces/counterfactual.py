"""``Counterfactual``: how one image would have to deform for the model to see another class
(:mod:`nipype_xai.counterfactual`), as four images on the model grid, each with a JSON sidecar."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits
from nipype.utils.filemanip import fname_presuffix

from ..bids import write_json
from ..counterfactual.image import counterfactual_of_image
from ..counterfactual.spec import (
    SimulatorSpecError,
    load_simulator,
    load_simulator_spec,
    simulator_record,
)
from ..images import load_volume, save_image
from ..models.spec import load_model, weights_sha256
from .model import _ModelInputSpec, read_model_spec, resolve_device

__all__ = ["Counterfactual", "MAP_DESCS"]

#: ``desc`` labels of ``out_maps``, in order (suffix ``counterfactual``).
MAP_DESCS = ("logJacobian", "intensityDifference")

#: (output field, file suffix, what the sidecar says the file is).
_OUTPUTS = (
    ("out_image", "_desc-counterfactual_T1w.nii.gz",
     "The input on the model grid, deformed by the simulator until the model sees the target "
     "class; intensities as the model's input (normalised as its spec says)."),
    ("out_displacement", "_from-T1w_to-counterfactual_mode-image_xfm.nii.gz",
     "ITK/ANTs displacement field (X, Y, Z, 1, 3; LPS vectors, mm) on the model grid: each point "
     "p of the counterfactual reads the input at p + u(p) (antsApplyTransforms -r <model grid> "
     "-i <input on the model grid> -t <this file>)."),
    ("out_log_jacobian", "_desc-logJacobian_counterfactual.nii.gz",
     "log det of the Jacobian of the map from the input to its counterfactual, at each voxel of "
     "the input: > 0 where the tissue there takes more volume in the counterfactual, < 0 where "
     "it shrinks."),
    ("out_difference", "_desc-intensityDifference_counterfactual.nii.gz",
     "Counterfactual minus input, in the model's input intensities."),
)


class _CounterfactualInputSpec(_ModelInputSpec):
    simulator_spec = File(exists=True, mandatory=True,
                          desc="simulator spec JSON written by 'nipype-xai train-simulator' for "
                               "this model")
    simulator_weights = File(
        exists=True,
        desc="the weights file simulator_spec names; filled in when simulator_spec is set (do "
             "not set it), so that Nipype's cache reruns the node when they change")
    target = traits.Int(desc="index into the spec's outputs of the class the counterfactual "
                             "should reach; default: a binary classifier's other class")

    def _simulator_spec_changed(self, new):
        try:
            weights = load_simulator_spec(new).weights
        except (SimulatorSpecError, TypeError):
            return
        if weights.is_file():
            self.simulator_weights = str(weights)


class _CounterfactualOutputSpec(TraitedSpec):
    out_image = File(exists=True, desc="the counterfactual image on the model grid")
    out_displacement = File(exists=True, desc="its displacement field (ITK/ANTs)")
    out_log_jacobian = File(exists=True, desc="its log-Jacobian determinant map")
    out_difference = File(exists=True, desc="counterfactual minus input")
    out_files = traits.List(File(exists=True), desc="the four images, in that order")
    out_sidecars = traits.List(File(exists=True), desc="one JSON sidecar per image")
    out_image_sidecar = File(exists=True, desc="the counterfactual image's sidecar")
    out_displacement_sidecar = File(exists=True, desc="the displacement field's sidecar")
    out_maps = traits.List(File(exists=True),
                           desc="the log-Jacobian and intensity-difference maps (MAP_DESCS)")
    out_map_sidecars = traits.List(File(exists=True), desc="their sidecars")


class Counterfactual(SimpleInterface):
    """A simulator-network counterfactual of one image (Liu et al., IPMI 2021).

    The model and the simulator are loaded (the simulator refuses any classifier but the one it
    was trained for), the image is brought onto the model grid as for a prediction, and
    :func:`~nipype_xai.counterfactual.image.counterfactual_of_image` computes the counterfactual,
    its displacement field, log-Jacobian map and intensity difference, all on the model grid.

    Examples
    --------
    >>> node = Counterfactual(in_file="sub-01_space-MNI_T1w.nii.gz", model_spec="model.json",
    ...                       simulator_spec="model_simulator.json")
    >>> node.run()  # doctest: +SKIP
    """

    input_spec = _CounterfactualInputSpec
    output_spec = _CounterfactualOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        img = load_volume(inputs.in_file)
        spec = read_model_spec(inputs)
        device = resolve_device(inputs)
        model = load_model(spec, device=device, trust_code=inputs.trust_model_code)
        simulator_spec = load_simulator_spec(inputs.simulator_spec)
        simulator = load_simulator(simulator_spec, spec, device=device)

        result = counterfactual_of_image(
            model, spec, simulator, img, inputs.target if isdefined(inputs.target) else None,
            n_squarings=simulator_spec.n_squarings)

        common = {
            "Simulator": simulator_record(simulator_spec),
            "ModelSpec": spec.name,
            "ModelWeightsSHA256": weights_sha256(spec.weights),
            **result.record,
        }
        images = (result.image, result.displacement, result.log_jacobian,
                  result.intensity_difference)
        out_files, out_sidecars = [], []
        for (field, suffix, description), image in zip(_OUTPUTS, images):
            out_file = Path(fname_presuffix(inputs.in_file, suffix=suffix, newpath=runtime.cwd,
                                            use_ext=False))
            sidecar = out_file.with_name(out_file.name[: -len(".nii.gz")] + ".json")
            save_image(image, out_file)
            write_json(sidecar, {"Description": description, **common})
            self._results[field] = str(out_file)
            out_files.append(str(out_file))
            out_sidecars.append(str(sidecar))
        self._results["out_files"] = out_files
        self._results["out_sidecars"] = out_sidecars
        self._results["out_image_sidecar"], self._results["out_displacement_sidecar"] = \
            out_sidecars[:2]
        self._results["out_maps"] = out_files[2:]
        self._results["out_map_sidecars"] = out_sidecars[2:]
        return runtime
