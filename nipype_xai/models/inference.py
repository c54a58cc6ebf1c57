"""Running a model spec's model on an image: predictions and attribution maps (no files, no Nipype).

These are the cores the ``ModelInference`` and ``Attribution`` interfaces call: the interfaces only
load the inputs and write what comes back. What the model returns is checked here, where the spec
and the image are both known: a NaN output is reported as the model's, not found later by whatever
reads the maps.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np
import torch
from torch import nn

from ..attribution import (
    AttributionWarning,
    TargetError,
    attribute_many,
    method_defaults,
    resolve_params,
)
from ..attribution.model_state import forward, model_device
from ..attribution.precision import PRECISIONS
from ..images import ImageError, check_not_constant, format_bytes, usable_memory_bytes
from .domain import InputDistance, input_distance
from .preprocessing import ModelGrid, from_model_grid, to_model_grid
from .spec import ModelSpec, ModelSpecError, check_output_count

__all__ = [
    "Explanation",
    "ModelOutputError",
    "Prediction",
    "check_input_memory",
    "explain_image",
    "explain_images",
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
    outputs = _outputs(model, x, batch_size)
    check_output_count(spec, outputs.shape[1])
    for index, row in enumerate(outputs):
        if not bool(torch.isfinite(row).all()):
            name = names[index] if names is not None else f"sample {index}"
            raise ModelOutputError(
                f"{spec.source}: the model's output for {name} is not finite ({_not_finite(row)})"
            )
    return [_prediction(row, spec) for row in outputs]


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
        class); ``None`` when no method was asked for.
    target_label
        Name of the explained output (``None`` likewise).
    parameters
        ``{method: every parameter used}``.
    grid
        The model grid the maps were computed on.
    notes
        ``{method: messages}`` of the :class:`~nipype_xai.attribution.AttributionWarning`
        records that concern this image's map of that method (its axiom fails on this model).
    domain
        The input-domain check of the model input (:func:`~nipype_xai.models.domain.
        input_distance`), when asked for and the spec has a training-input summary.
    """

    maps: dict[str, nib.Nifti1Image]
    prediction: Prediction
    target: Optional[int]
    target_label: Optional[str]
    parameters: dict[str, dict[str, Any]]
    grid: ModelGrid
    notes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    domain: Optional[InputDistance] = None


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
    input_domain: bool = False,
    precision: str = PRECISIONS[0],
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
        Attribution methods (none: the prediction alone).
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
    input_domain
        Also measure the model input against the spec's training-input summary
        (:attr:`Explanation.domain`).
    precision
        Of the attribution passes (:mod:`nipype_xai.attribution.precision`); the prediction is
        float32 whatever it is.

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
    result = explain_images(model, spec, [img], methods, target, method_params=method_params,
                            seed=seed, batch_size=batch_size,
                            names=None if name is None else [name],
                            input_domain=input_domain, precision=precision)[0]
    if isinstance(result, Exception):
        raise result
    return result


def explain_images(
    model: nn.Module,
    spec: ModelSpec,
    imgs: Sequence[nib.spatialimages.SpatialImage],
    methods: Sequence[str],
    target: Optional[int] = None,
    *,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
    input_domain: bool = False,
    precision: str = PRECISIONS[0],
) -> list[Union[Explanation, Exception]]:
    """Predict and explain several 3D images (subjects) as one batch: one forward pass for the
    predictions and one :func:`~nipype_xai.attribution.attribute_many` call for every map.

    What comes back for an image is what it gets alone (:func:`explain_image` is this function
    on one image): every method treats the samples of a batch independently, and the stochastic
    ones restart their seeded stream at every sample. Batched convolutions may round differently
    from a batch of one (a relative 1e-6 on this CPU), so a fixed batch composition is what makes
    re-runs byte-identical. An image that cannot be explained (empty or constant; a NaN or
    infinite output or map) gets its exception in its place and the others go on.

    Parameters
    ----------
    imgs
        3D images in the spec's space.
    names
        What each image is, for messages (default: their file names).
    input_domain
        Also measure each model input against the spec's training-input summary
        (:attr:`Explanation.domain`; ``None`` where the spec has none).
    model, spec, methods, target, method_params, seed, batch_size, precision
        As for :func:`explain_image` (one target for every image).

    Returns
    -------
    list
        Per image, in order: its :class:`Explanation`, or the exception that stopped it.

    Raises
    ------
    nipype_xai.attribution.TargetError
        ``target`` is out of range, or not the one output of a single-output model (every image
        would fail alike).
    """
    names = list(names) if names is not None else [_image_name(img, None) for img in imgs]
    results: list[Union[Explanation, Exception, None]] = [None] * len(imgs)
    inputs: dict[int, tuple[torch.Tensor, ModelGrid]] = {}
    for index, img in enumerate(imgs):
        try:
            check_not_constant(img, names[index])
            inputs[index] = to_model_grid(img, spec)
        except (ImageError, ValueError) as error:
            results[index] = error
    if not inputs:
        return results
    device = model_device(model)
    outputs = _outputs(model, torch.cat([x for x, _ in inputs.values()]))
    check_output_count(spec, outputs.shape[1])
    predictions: dict[int, Prediction] = {}
    for index, row in zip(list(inputs), outputs):
        if bool(torch.isfinite(row).all()):
            predictions[index] = _prediction(row, spec)
        else:
            results[index] = ModelOutputError(
                f"{spec.source}: the model's output for {names[index]} is not finite "
                f"({_not_finite(row)})")
            del inputs[index]
    parameters = _method_parameters(spec, methods, method_params, seed=seed,
                                    batch_size=batch_size)
    # Without methods nothing is explained (a multi-output regression needs no target then).
    explained = {index: _explained_output(spec, prediction, target) if parameters else None
                 for index, prediction in predictions.items() if index in inputs}
    tensors: dict[str, torch.Tensor] = {}
    notes: dict[int, dict[str, list[str]]] = {index: {} for index in inputs}
    if parameters and inputs:
        order = list(inputs)
        x = torch.cat([inputs[index][0] for index in order]).to(device)
        # A single-output model's one output is explained whatever the target (see below).
        engine_target = (None if len(spec.outputs) == 1 or outputs.shape[1] == 1
                         else [explained[index] for index in order])
        with warnings.catch_warnings(record=True) as caught:
            # Every occurrence, not Python's once per code location: each map gets its own.
            warnings.simplefilter("always", AttributionWarning)
            tensors = attribute_many(model, x, list(parameters), engine_target,
                                     method_params=parameters, precision=precision)
        for record in caught:
            if isinstance(record.message, AttributionWarning):
                samples = record.message.samples
                for position, index in enumerate(order):
                    if samples is None or position in samples:
                        # A warning about this image alone names it, not its batch position.
                        text = record.message.naming(names[index])
                        for method in record.message.methods:
                            listed = notes[index].setdefault(method, [])
                            if text not in listed:
                                listed.append(text)
            # Issued again, with its origin: recording the warnings hides none from the log.
            warnings.warn_explicit(record.message, record.category, record.filename,
                                   record.lineno, source=record.source)
        tensors = {method: tensor.detach() for method, tensor in tensors.items()}
        positions = {index: position for position, index in enumerate(order)}
    for index in list(inputs):
        x_index, grid = inputs[index]
        maps = {}
        try:
            for method, tensor in tensors.items():
                sample = tensor[positions[index]]
                if not bool(torch.isfinite(sample).all()):
                    n_bad = int((~torch.isfinite(sample)).sum())
                    raise ModelOutputError(
                        f"{spec.source}: the {method} map for {names[index]} is not finite "
                        f"({n_bad} {_not_finite(sample)} voxels of {sample[0].numel()})")
                # One volume fed as C identical channels: by the chain rule its attribution is
                # the sum over channels (a no-op for the usual single channel).
                maps[method] = from_model_grid(sample.sum(dim=0), grid, imgs[index])
        except ModelOutputError as error:
            results[index] = error
            continue
        domain = None
        if input_domain and spec.input_summary is not None:
            domain = input_distance(x_index[0, 0], spec.input_summary, what=names[index])
        results[index] = Explanation(
            maps=maps,
            prediction=predictions[index],
            target=explained[index],
            target_label=None if explained[index] is None else spec.outputs[explained[index]],
            parameters=parameters,
            grid=grid,
            notes=notes[index],
            domain=domain,
        )
    return results


def _outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The model's raw outputs (B, K) for ``x``, ``batch_size`` samples per pass, float32 on CPU."""
    device = model_device(model)
    with torch.no_grad():
        return torch.cat(
            [forward(model, chunk.to(device)).float().cpu() for chunk in x.split(batch_size)]
        )


def _prediction(row: torch.Tensor, spec: ModelSpec) -> Prediction:
    """One sample's (finite) outputs read through the spec."""
    values = tuple(float(v) for v in row)
    if spec.task == "regression":
        return Prediction(spec.task, spec.outputs, values, None, None, None)
    if row.numel() == 1:
        # One logit scores the positive class, outputs[1] (see ModelSpec.outputs).
        positive = float(torch.sigmoid(row[0]))
        probabilities = (1.0 - positive, positive)
    else:
        probabilities = tuple(float(p) for p in torch.softmax(row.double(), dim=0))
    index = int(np.argmax(probabilities))
    return Prediction(spec.task, spec.outputs, values, probabilities, index, spec.outputs[index])


def _explained_output(spec: ModelSpec, prediction: Prediction, target: Optional[int]) -> int:
    """The index into ``spec.outputs`` of the output explained for ``prediction``."""
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
        return explained
    if target is None:
        if prediction.predicted_index is None:
            # The largest of several regression outputs is no "prediction" to explain.
            raise TargetError(
                f"{spec.source}: the model has {n_outputs} regression outputs "
                f"{list(spec.outputs)}; give the target to explain"
            )
        return prediction.predicted_index
    explained = int(target)
    if not 0 <= explained < n_outputs:
        raise TargetError(
            f"{spec.source}: target {explained} out of range for outputs "
            f"{list(spec.outputs)} (valid: 0..{n_outputs - 1})"
        )
    return explained


def _method_parameters(spec: ModelSpec, methods: Sequence[str],
                       method_params: Optional[Mapping[str, Mapping[str, Any]]], *,
                       seed: Optional[int], batch_size: Optional[int]
                       ) -> dict[str, dict[str, Any]]:
    """Every parameter each method runs with; PatternNet and PatternAttribution get the spec's
    patterns unless the caller gives others (or asks for None explicitly)."""
    if not methods:
        return {}
    if spec.patterns is not None:
        from ..attribution.patterns import PATTERN_METHODS

        method_params = {name: dict(values) for name, values in (method_params or {}).items()}
        for method in dict.fromkeys(methods):
            if method in PATTERN_METHODS:
                method_params.setdefault(method, {}).setdefault("patterns", spec.patterns)
    return resolve_method_params(methods, method_params, seed=seed, batch_size=batch_size)
