"""``BaselineMaps``: the model-free baseline maps of one image (sobel, laplace, random; SPEC §3).

A baseline is scored exactly like an attribution method, so it is written exactly like one: a map
on the input image's grid named ``<in_file stem>_desc-<baseline>_attribution.nii.gz`` with a JSON
sidecar. A method that does not beat these maps has not shown that it explains the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from ..attribution.baselines import available_baselines
from ..attribution.registry import get_method, registered_methods
from ..bids import method_to_desc, write_json
from ..images import load_volume, save_image
from ..models.preprocessing import from_model_grid, to_model_grid
from .model import external_weights_input, read_model_spec, trust_model_code_input

__all__ = ["BASELINE_DESCRIPTIONS", "BaselineMaps"]

#: What each baseline is, for its sidecar (the registry's descriptions, in its order).
BASELINE_DESCRIPTIONS = {baseline.name: baseline.description
                         for baseline in registered_methods("baseline")}


class _BaselineMapsInputSpec(BaseInterfaceInputSpec):
    # Not the model interfaces' shared inputs: the weights are never read here, so a new
    # checkpoint must not invalidate the cached baselines.
    in_file = File(exists=True, mandatory=True, desc="3D image (NIfTI) in the model's space")
    model_spec = File(exists=True, mandatory=True,
                      desc="model spec JSON: its grid and normalisation define the model input")
    baselines = traits.List(
        traits.Enum(*available_baselines()), mandatory=True, minlen=1,
        desc=f"baselines to compute: {', '.join(available_baselines())}",
    )
    seed = traits.Int(0, usedefault=True, desc="seed of the random baseline")
    # The model is never imported here, so trust_model_code has no effect; it is an input so that
    # a workflow sets the same two flags on every spec-reading node.
    trust_model_code = trust_model_code_input()
    external_weights = external_weights_input()


class _BaselineMapsOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="one map per baseline, on in_file's grid")
    out_sidecars = traits.List(File(exists=True), desc="one JSON sidecar per map")


class BaselineMaps(SimpleInterface):
    """Baseline maps of one image, computed on the model's input as the methods see it.

    The image is resampled to the model grid and normalised as the spec says (the very tensor the
    attribution methods explain), each registered baseline asked for
    (:mod:`nipype_xai.attribution.baselines`) runs on it, and the maps are put back on ``in_file``'s
    grid. The model itself is not loaded: only its spec's grid and normalisation are used.
    """

    input_spec = _BaselineMapsInputSpec
    output_spec = _BaselineMapsOutputSpec

    def _run_interface(self, runtime):
        img = load_volume(self.inputs.in_file)
        spec = read_model_spec(self.inputs)
        x, grid = to_model_grid(img, spec)
        out_files, out_sidecars = [], []
        for name in dict.fromkeys(self.inputs.baselines):
            baseline = get_method(name, kind="baseline")
            params: dict[str, Any] = ({"seed": int(self.inputs.seed)}
                                      if "seed" in baseline.defaults else {})
            tensor = baseline.function(x, **params)
            # Channels are copies of one volume: sum them, as explain_image does for the methods.
            map_img = from_model_grid(tensor[0].sum(dim=0), grid, img)
            out_file = Path(fname_presuffix(
                self.inputs.in_file, suffix=f"_desc-{method_to_desc(name)}_attribution.nii.gz",
                newpath=runtime.cwd, use_ext=False,
            ))
            save_image(map_img, out_file)
            sidecar = out_file.with_name(out_file.name[: -len(".nii.gz")] + ".json")
            write_json(sidecar, {
                "Method": name,
                "Baseline": True,
                "Description": baseline.description,
                "Parameters": params,
                "ModelSpec": spec.name,
                "Space": spec.input.space,
                "ModelGrid": {"ResolutionMM": [float(r) for r in spec.input.resolution_mm],
                              "Shape": list(grid.shape)},
                "Resolution": (
                    "the input image's grid; computed on the model grid from the normalised "
                    "model input and resampled with linear interpolation"
                ),
            })
            out_files.append(str(out_file))
            out_sidecars.append(str(sidecar))
        self._results["out_files"] = out_files
        self._results["out_sidecars"] = out_sidecars
        return runtime
