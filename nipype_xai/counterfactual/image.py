"""One image's counterfactual as images on the model grid (nibabel objects in and out, no files).

The image is brought onto the classifier's grid exactly as for a prediction or an attribution
(:func:`~nipype_xai.models.to_model_grid`); the outputs stay on that grid, where the simulator
computed them (the deformation is a property of the model's input; resampling it elsewhere would
change its Jacobian).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import nibabel as nib
import numpy as np
import torch
from torch import nn

from ..attribution.model_state import forward, model_device, model_guard
from ..models.preprocessing import ModelGrid, to_model_grid
from ..models.spec import ModelSpec
from ..synth.warps import displacement_field_image
from .simulator import Simulator
from .training import CounterfactualResult, class_log_probabilities, counterfactual

__all__ = ["ImageCounterfactual", "counterfactual_of_image", "default_target"]


@dataclass(frozen=True)
class ImageCounterfactual:
    """The counterfactual of one image, on the model grid.

    Attributes
    ----------
    image
        The counterfactual (float32; intensities as the model's input, i.e. normalised as the
        spec says).
    displacement
        The ITK/ANTs displacement field (``(X, Y, Z, 1, 3)``, LPS vectors) that resamples the
        subject's model-grid image onto the counterfactual
        (:func:`~nipype_xai.synth.warps.displacement_field_image`).
    log_jacobian
        Subject-to-counterfactual log-Jacobian determinant (> 0: expansion).
    intensity_difference
        Counterfactual minus input.
    record
        What the sidecars say: target, probabilities before and after, folded voxels, grid.
    grid
        The model grid.
    """

    image: nib.Nifti1Image
    displacement: nib.Nifti1Image
    log_jacobian: nib.Nifti1Image
    intensity_difference: nib.Nifti1Image
    record: dict[str, Any]
    grid: ModelGrid


def default_target(spec: ModelSpec, predicted: int) -> int:
    """The class a counterfactual asks for by default: a binary classifier's other class.

    Raises
    ------
    ValueError
        More than two classes: which one to ask for is the user's choice.
    """
    if len(spec.outputs) != 2:
        raise ValueError(f"{spec.source}: {len(spec.outputs)} classes {list(spec.outputs)}; give "
                         f"the class the counterfactual should reach (target)")
    return 1 - int(predicted)


def _xform_code(space: str) -> int:
    return 4 if space.upper().startswith("MNI") else 2  # NIfTI: 4 = MNI152, 2 = aligned


def _image(grid: ModelGrid, data: np.ndarray, code: int) -> nib.Nifti1Image:
    img = grid.to_image(data)
    img.set_qform(grid.affine, code=code)
    img.set_sform(grid.affine, code=code)
    return img


def counterfactual_of_image(
    classifier: nn.Module,
    spec: ModelSpec,
    simulator: Simulator,
    img: nib.spatialimages.SpatialImage,
    target: Optional[int] = None,
    *,
    n_squarings: int = 7,
) -> ImageCounterfactual:
    """Counterfactual of a 3D image in the spec's space, for the requested class ``target``.

    Parameters
    ----------
    classifier, spec
        The classifier and its model spec.
    simulator
        A simulator trained for that classifier (:func:`~nipype_xai.counterfactual.spec.
        load_simulator` checks the pairing).
    img
        The image, in the spec's template space.
    target
        Index into ``spec.outputs`` of the requested class; None: :func:`default_target` of the
        classifier's prediction.
    n_squarings
        As the simulator was trained with.
    """
    x, grid = to_model_grid(img, spec)
    x = x.to(model_device(classifier))
    if target is None:
        # The default asks for the class the classifier does not predict.
        with model_guard(classifier), torch.no_grad():
            predicted = int(class_log_probabilities(forward(classifier, x)).argmax(dim=1)[0])
        target = default_target(spec, predicted)
    if not 0 <= int(target) < len(spec.outputs):
        raise ValueError(f"{spec.source}: target {target} out of range for outputs "
                         f"{list(spec.outputs)}")
    result: CounterfactualResult = counterfactual(simulator, classifier, x, int(target),
                                                  affine=grid.affine, n_squarings=n_squarings)
    code = _xform_code(spec.input.space)
    before = result.probabilities_before[0].tolist()
    after = result.probabilities_after[0].tolist()
    record = {
        "Target": int(target),
        "TargetLabel": spec.outputs[int(target)],
        "PredictedLabelBefore": spec.outputs[int(result.predicted_before[0])],
        "PredictedLabelAfter": spec.outputs[int(result.predicted_after[0])],
        "ProbabilitiesBefore": dict(zip(spec.outputs, [round(p, 6) for p in before])),
        "ProbabilitiesAfter": dict(zip(spec.outputs, [round(p, 6) for p in after])),
        "FoldedVoxels": int(result.n_folded),
        "Space": spec.input.space,
        "ModelGrid": {"ResolutionMM": [float(r) for r in spec.input.resolution_mm],
                      "Shape": list(grid.shape)},
    }
    field = displacement_field_image(result.displacement[0].numpy().astype(np.float64),
                                     grid.affine, xform_code=code)
    return ImageCounterfactual(
        image=_image(grid, result.image[0].sum(dim=0).numpy() / result.image.shape[1], code),
        displacement=field,
        log_jacobian=_image(grid, result.log_jacobian[0].numpy(), code),
        intensity_difference=_image(
            grid, result.intensity_difference[0].sum(dim=0).numpy()
            / result.intensity_difference.shape[1], code),
        record=record,
        grid=grid,
    )
