"""``ModelGridReference``: an image on a model spec's input grid in template space.

It is the reference grid a subject's T1w is resampled onto (one interpolation, straight from the
native T1w through the registration), so the model input, every template-space map and the group
means share exactly one grid: the spec's shape and voxel size, centred on the template's field of
view (:func:`nipype_xai.models.preprocessing.model_grid_for`, the grid ``to_model_grid`` uses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
)

from ..images import load_volume, save_image
from ..models.preprocessing import model_grid_for
from .model import external_weights_input, read_model_spec, trust_model_code_input

__all__ = ["ModelGridReference"]


class _ModelGridReferenceInputSpec(BaseInterfaceInputSpec):
    template = File(exists=True, mandatory=True,
                    desc="template image (e.g. TemplateFlowSelect.t1w_file) in the spec's space")
    model_spec = File(exists=True, mandatory=True, desc="model spec JSON")
    # The model is never imported here (only the spec's grid is read), so trust_model_code has no
    # effect; it is an input so that a workflow sets the same two flags on every spec-reading node.
    trust_model_code = trust_model_code_input()
    external_weights = external_weights_input()


class _ModelGridReferenceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the template resampled onto the model grid (float32)")


class ModelGridReference(SimpleInterface):
    """Resample the template onto the model grid: a reference image and a report background.

    The template's own values (linear interpolation, 0 outside its field of view) make the
    reference useful as the background of template-space figures on the model grid.
    """

    input_spec = _ModelGridReferenceInputSpec
    output_spec = _ModelGridReferenceOutputSpec

    def _run_interface(self, runtime):
        from nilearn.image import resample_img

        template = load_volume(self.inputs.template)
        spec = read_model_spec(self.inputs)
        grid = model_grid_for(template, spec)
        resampled = resample_img(
            template, target_affine=grid.affine, target_shape=grid.shape,
            interpolation="linear", fill_value=0.0, force_resample=True, copy_header=True,
        )
        data = np.asarray(resampled.get_fdata(dtype=np.float32))
        out = grid.to_image(data)
        out.header.set_xyzt_units("mm")
        name = f"{spec.input.space}_modelgrid.nii.gz"
        self._results["out_file"] = str(save_image(out, Path(runtime.cwd, name)))
        return runtime
