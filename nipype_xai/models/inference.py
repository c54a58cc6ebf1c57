"""Running a model spec's model on an image: predictions and attribution maps (no files, no Nipype).

These are the cores the ``ModelInference`` and ``Attribution`` interfaces call: the interfaces only
load the inputs and write what comes back. What the model returns is checked here, where the spec
and the image are both known: a NaN output is reported as the model's, not found later by whatever
reads the maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import nibabel as nib
import numpy as np
import torch
from torch import nn

from ..attribution import TargetError, attribute_many, method_defaults, resolve_params
from ..attribution.model_state import forward, model_device
from ..images import check_not_constant, format_bytes, usable_memory_bytes
from .preprocessing import ModelGrid, from_model_grid, to_model_grid
from .spec import ModelSpec, ModelSpecError, check_output_count

__all__ = [
    "Explanation",
    "ModelOutputError",
    "Prediction",
    "check_input_memory",
    "explain_image",
    "input_memory_bytes",
    "predict",
    "predict_image",
    "resolve_method_params",
]


class ModelOutputError(ValueError):
    """The model's output, or an attribution map, for an image is not finite (NaN or Inf).

    The message names the model spec and the image.
    """


# ---- before anything runs: does one model input fit in memory? ---------------------------------


def input_memory_bytes(spec: ModelSpec) -> int:
    """The least memory (bytes) explaining one image needs on the spec's grid.

    ``2 * channels + 2`` float32 volumes of ``input.shape``: the image resampled onto the grid,
    the model input and its gradient (``channels`` volumes each), and the map. Activations and
    batches of perturbed copies come on top, so this is a lower bound: a spec that exceeds the
    memory cannot run; one within it may still need more. A pure function of the spec.
    """
    n_voxels = 1
    for n in spec.input.shape:  # Python ints: no overflow for absurd shapes
        n_voxels *= int(n)
    return (2 * int(spec.input.channels) + 2) * n_voxels * np.dtype(np.float32).itemsize


def check_input_memory(spec: ModelSpec, memory_bytes: Optional[int] = None) -> None:
    """Refuse a spec whose one input cannot fit in memory, before a model is built or run.

    Parameters
    ----------
    spec
        The parsed model spec.
    memory_bytes
        The memory to compare with; default :func:`nipype_xai.images.usable_memory_bytes` (this
        machine's physical memory or cgroup limit; nothing is checked where it is unknown).

    Raises
    ------
    ModelSpecError
        :func:`input_memory_bytes` exceeds the memory; the message names the spec, the shape and
        the GiB needed.
    """
    memory = usable_memory_bytes() if memory_bytes is None else memory_bytes
    needed = input_memory_bytes(spec)
    if memory is None or needed <= memory:
        return
    channels = int(spec.input.channels)
    raise ModelSpecError(
        f"{spec.source}: input.shape {'x'.join(str(n) for n in spec.input.shape)} needs at least "
        f"{format_bytes(needed)} of memory per image (float32 volumes on the model grid: the "
        f"image, the {channels}-channel input, its gradient and the map), more than this "
        f"machine's memory ({format_bytes(memory)})"
    )


# ---- running the model -------------------------------------------------------------------------


def _image_name(img: nib.spatialimages.SpatialImage, name: Optional[str]) -> str:
    if name:
        return name
    filename = img.get_filename()  # load_volume keeps it
    return Path(filename).name if filename else "the image"


def _not_finite(values: torch.Tensor) -> str:
    """``"NaN"``, ``"Inf"`` or ``"NaN and Inf"``: what ``values`` holds besides finite numbers."""
    kinds = [kind for kind, test in (("NaN", torch.isnan), ("Inf", torch.isinf))
             if bool(test(values).any())]
    return " and ".join(kinds)


@dataclass(frozen=True)
class Prediction:
    """One sample's model output, read through the spec.

    Attributes
    ----------
    task
        ``"classification"`` or ``"regression"``.
    names
        The spec's output names.
    outputs
        The raw model outputs (logits, or regression values).
    probabilities
        Classification: one probability per name (softmax; for a single-logit binary classifier,
        ``(1 − σ(z), σ(z))``). ``None`` for regression.
    predicted_index, predicted_label
        Classification: the most probable class. ``None`` for regression.
    """

    task: str
    names: tuple[str, ...]
    outputs: tuple[float, ...]
    probabilities: Optional[tuple[float, ...]]
    predicted_index: Optional[int]
    predicted_label: Optional[str]

    @property
    def probability(self) -> Optional[float]:
        """Probability of the predicted class (``None`` for regression)."""
        if self.probabilities is None or self.predicted_index is None:
            return None
        return self.probabilities[self.predicted_index]

    def as_row(self) -> dict[str, Any]:
        """One predictions-TSV row.

        Classification: a probability column per output name, ``predicted_label``,
        ``predicted_index``. Regression: ``prediction`` for a single output, else a column per name.
        """
        if self.task == "classification":
            row: dict[str, Any] = dict(zip(self.names, self.probabilities))
            row["predicted_label"] = self.predicted_label
            row["predicted_index"] = self.predicted_index
            return row
        if len(self.outputs) == 1:
            return {"prediction": self.outputs[0]}
        return dict(zip(self.names, self.outputs))


def predict(
    model: nn.Module,
    x: torch.Tensor,
    spec: ModelSpec,
    batch_size: int = 8,
    *,
    names: Optional[Sequence[str]] = None,
) -> list[Prediction]:
    """Predictions for a batch ``x`` (B, C, X, Y, Z) already on the model grid.

    Parameters
    ----------
    model
        The model (in eval mode, as :func:`~nipype_xai.models.load_model` returns it).
    x
        Normalised input batch.
    spec
        Gives the task and the output names.
    batch_size
        Samples per forward pass.
    names
        What each sample is (its file name), for messages; default ``sample <i>``.

    Returns
    -------
    list of Prediction
        One per sample.

    Raises
    ------
    ModelSpecError
        The model's number of outputs does not fit ``spec.outputs``.
    ModelOutputError
        An output is NaN or infinite (broken weights, an overflow); the message names the spec and
        the sample.
    """
    device = model_device(model)
    with torch.no_grad():
        outputs = torch.cat(
            [forward(model, chunk.to(device)).float().cpu() for chunk in x.split(batch_size)]
        )
    check_output_count(spec, outputs.shape[1])
    for index, row in enumerate(outputs):
        if not bool(torch.isfinite(row).all()):
            name = names[index] if names is not None else f"sample {index}"
            raise ModelOutputError(
                f"{spec.source}: the model's output for {name} is not finite ({_not_finite(row)})"
            )
    predictions = []
    for row in outputs:
        values = tuple(float(v) for v in row)
        if spec.task == "regression":
            predictions.append(Prediction(spec.task, spec.outputs, values, None, None, None))
            continue
        if row.numel() == 1:
            # One logit scores the positive class, outputs[1] (see ModelSpec.outputs).
            positive = float(torch.sigmoid(row[0]))
            probabilities = (1.0 - positive, positive)
        else:
            probabilities = tuple(float(p) for p in torch.softmax(row.double(), dim=0))
        index = int(np.argmax(probabilities))
        predictions.append(
            Prediction(spec.task, spec.outputs, values, probabilities, index, spec.outputs[index])
        )
    return predictions


def predict_image(
    model: nn.Module,
    spec: ModelSpec,
    img: nib.spatialimages.SpatialImage,
    *,
    name: Optional[str] = None,
) -> Prediction:
    """Prediction for one 3D image in the spec's space (resampled and normalised as it says).

    ``name`` names the image in messages (default: its file name, which
    :func:`~nipype_xai.images.load_volume` keeps). Raises :class:`~nipype_xai.images.ImageError`
    for an empty or constant image and :class:`ModelOutputError` for a NaN or infinite output.
    """
    name = _image_name(img, name)
    check_not_constant(img, name)
    x, _ = to_model_grid(img, spec)
    return predict(model, x, spec, names=[name])[0]


def resolve_method_params(
    methods: Sequence[str],
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    **shared: Any,
) -> dict[str, dict[str, Any]]:
    """Every parameter each method will run with (:func:`nipype_xai.attribution.resolve_params`).

    ``shared`` values (``seed``, ``batch_size``) that are not ``None`` go only to the methods
    that accept them, so a deterministic method is not handed a seed it would reject. The result
    is what the sidecar records and exactly what is passed to
    :func:`~nipype_xai.attribution.attribute_many`.
    """
    accepted = set().union(*(method_defaults(method) for method in dict.fromkeys(methods)))
    return resolve_params(methods, method_params,
                          **{k: v for k, v in shared.items() if v is not None and k in accepted})


@dataclass(frozen=True)
class Explanation:
    """Attribution maps of one image, with what they explain.

    Attributes
    ----------
    maps
        ``{method: map}`` on the input image's grid (float32 NIfTI, signed, raw).
    prediction
        The model's prediction for the image.
    target
        Index of the explained output (``outputs[target]``; for a single-logit model, the logit's
        class).
    target_label
        Name of the explained output.
    parameters
        ``{method: every parameter used}``.
    grid
        The model grid the maps were computed on.
    """

    maps: dict[str, nib.Nifti1Image]
    prediction: Prediction
    target: int
    target_label: str
    parameters: dict[str, dict[str, Any]]
    grid: ModelGrid


def explain_image(
    model: nn.Module,
    spec: ModelSpec,
    img: nib.spatialimages.SpatialImage,
    methods: Sequence[str],
    target: Optional[int] = None,
    *,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    name: Optional[str] = None,
) -> Explanation:
    """Predict and explain one 3D image with every method in one ``attribute_many`` call.

    Parameters
    ----------
    model
        The spec's model (see :func:`~nipype_xai.models.load_model`).
    spec
        Its model spec: the image is resampled to the spec's grid and normalised as it says.
    img
        A 3D image in the spec's space.
    methods
        Attribution method names.
    target
        Index into ``spec.outputs`` of the output to explain; ``None``: the predicted class (for a
        single-output regression, its output; a multi-output regression needs a target). A
        single-output model can only explain its one output.
    method_params
        Per-method overrides, ``{"occlusion": {"window": 4}}``. PatternNet and
        PatternAttribution get the spec's ``patterns`` unless given their own.
    seed, batch_size
        Passed to the methods that accept them.
    name
        Names the image in messages (default: its file name, which
        :func:`~nipype_xai.images.load_volume` keeps).

    Returns
    -------
    Explanation
        Maps on ``img``'s grid (mapped back from the model grid by resampling).

    Raises
    ------
    nipype_xai.attribution.TargetError
        ``target`` is out of range, or not the one output of a single-output model.
    nipype_xai.images.ImageError
        The image is empty or constant.
    ModelOutputError
        The model's output, or a map, is NaN or infinite.
    """
    name = _image_name(img, name)
    check_not_constant(img, name)
    x, grid = to_model_grid(img, spec)
    x = x.to(model_device(model))
    prediction = predict(model, x, spec, names=[name])[0]

    n_outputs = len(prediction.outputs)
    if n_outputs == 1:
        # The engine ignores the target of a single-output model: it explains that output, which is
        # outputs[1] for a single-logit binary classifier and outputs[0] for a regression.
        explained = len(spec.outputs) - 1
        if target is not None and int(target) != explained:
            raise TargetError(
                f"{spec.source}: target {target} cannot be explained: the model has a single "
                f"output, which scores {spec.outputs[explained]!r} (target {explained})"
            )
        engine_target = None
    else:
        if target is None:
            if prediction.predicted_index is None:
                # The largest of several regression outputs is no "prediction" to explain.
                raise TargetError(
                    f"{spec.source}: the model has {n_outputs} regression outputs "
                    f"{list(spec.outputs)}; give the target to explain"
                )
            explained = prediction.predicted_index
        else:
            explained = int(target)
            if not 0 <= explained < n_outputs:
                raise TargetError(
                    f"{spec.source}: target {explained} out of range for outputs "
                    f"{list(spec.outputs)} (valid: 0..{n_outputs - 1})"
                )
        engine_target = explained

    if spec.patterns is not None:
        # PatternNet / PatternAttribution use the patterns fitted for the spec's weights, unless
        # the caller gives others (or asks for None explicitly).
        from ..attribution.patterns import PATTERN_METHODS

        method_params = {name: dict(values) for name, values in (method_params or {}).items()}
        for method in dict.fromkeys(methods):
            if method in PATTERN_METHODS:
                method_params.setdefault(method, {}).setdefault("patterns", spec.patterns)
    parameters = resolve_method_params(
        methods, method_params, seed=seed, batch_size=batch_size
    )
    tensors = attribute_many(model, x, list(parameters), engine_target, method_params=parameters)
    for method, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            n_bad = int((~torch.isfinite(tensor)).sum())
            raise ModelOutputError(
                f"{spec.source}: the {method} map for {name} is not finite "
                f"({n_bad} {_not_finite(tensor)} voxels of {tensor[0].numel()})"
            )
    # One volume fed as C identical channels: by the chain rule its attribution is the sum over
    # channels (a no-op for the usual single channel).
    maps = {
        method: from_model_grid(tensor[0].sum(dim=0), grid, img)
        for method, tensor in tensors.items()
    }
    return Explanation(
        maps=maps,
        prediction=prediction,
        target=explained,
        target_label=spec.outputs[explained],
        parameters=parameters,
        grid=grid,
    )
