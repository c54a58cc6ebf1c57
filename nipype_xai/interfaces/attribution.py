"""``Attribution``: attribution maps of one image, one NIfTI and one JSON sidecar per method;
``RestrictMaps``: maps kept on their domain (a mask), the mass outside recorded in the sidecars."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from ..attribution import method_defaults
from ..attribution.precision import FP32_ONLY, PRECISIONS, method_precision
from ..attribution.restriction import restrict_to_mask
from ..attribution.shap_gradients import BACKGROUND_FALLBACK
from ..bids import method_to_desc, write_json
from ..images import ImageError, image_like, load_volume, save_image
from ..models.background import background_description, load_background
from ..models.batching import gpu_batch_size
from ..models.inference import Explanation, explain_image
from ..models.preprocessing import model_grid_for
from ..models.spec import ModelSpec, load_model, weights_sha256
from .model import _ModelInputSpec, _ModelSpecInputSpec, read_model_spec, resolve_device

__all__ = ["Attribution", "RestrictMaps"]


class _AttributionSettingsSpec(_ModelSpecInputSpec):
    """How maps are computed: shared by ``Attribution`` (one image) and ``ModelBatch`` (a batch
    of subjects)."""

    target = traits.Int(
        desc="index into the spec's outputs of the output to explain; default: the predicted class"
    )
    method_params = traits.Dict(
        traits.Str,
        traits.Dict,
        desc="per-method parameter overrides, e.g. {'occlusion': {'window': 4}}",
    )
    seed = traits.Int(desc="seed of the stochastic methods (default: each method's default)")
    batch_size = traits.Int(
        desc="perturbed copies per forward pass, for the methods that take it (default: on a "
        "CUDA device, as many as fit its free memory, nipype_xai.models.batching; elsewhere, "
        "each method's own); a method's batch_size in method_params wins over both"
    )
    # Hashed: the precision changes the maps. Unset means fp32 (and keeps the hash of nodes
    # cached before the input existed).
    precision = traits.Enum(
        *PRECISIONS,
        desc="numeric precision of the attribution passes (nipype_xai.attribution.precision): "
        "fp32 (default), bf16, or fp16 (CUDA only); the prediction is always fp32",
    )
    background = File(
        exists=True,
        desc="background set of the methods that take one (gradient_shap, deeplift_shap): a 4D "
        "NIfTI on the model grid with its JSON sidecar, from 'nipype-xai background' "
        "(nipype_xai.models.background); default: each method's fallback",
    )

    def explain_arguments(self, model: torch.nn.Module, spec: ModelSpec) -> dict[str, Any]:
        """The target, seed, batch size and precision as
        :func:`~nipype_xai.models.inference.explain_images` takes them for ``model`` (None
        where not set). Without a batch size, a model on a CUDA device gets as many copies per
        pass as fit its free memory (:func:`~nipype_xai.models.batching.gpu_batch_size`)."""
        precision = self.precision if isdefined(self.precision) else PRECISIONS[0]
        batch_size = self.batch_size if isdefined(self.batch_size) else gpu_batch_size(
            model, spec.input.shape, channels=spec.input.channels, precision=precision)
        return {"target": self.target if isdefined(self.target) else None,
                "seed": self.seed if isdefined(self.seed) else None,
                "batch_size": batch_size, "precision": precision}


class _AttributionInputSpec(_ModelInputSpec, _AttributionSettingsSpec):
    methods = traits.List(
        traits.Str,
        mandatory=True,
        minlen=1,
        desc="attribution methods (nipype_xai.attribution.available_methods()); all are computed "
        "in one call, sharing passes where they can",
    )


class _AttributionOutputSpec(TraitedSpec):
    # Lists even for a single method (OutputMultiObject would unwrap one file to a string), so
    # downstream nodes can zip them with ``methods`` without special cases.
    out_files = traits.List(
        File(exists=True),
        desc="one map per method, in the order of methods, on the input image's grid",
    )
    out_sidecars = traits.List(
        File(exists=True), desc="one JSON sidecar per map: method, parameters, target, prediction "
        "(and Warnings, where the map does not satisfy its method's axiom on this model)"
    )


class Attribution(SimpleInterface):
    """Attribution maps of a model's prediction for one image (SPEC §3, §6).

    The model is loaded once; the image is resampled to the model grid, every method runs in one
    :func:`~nipype_xai.attribution.attribute_many` call, and each map is resampled back onto the
    input image's grid (same affine and shape as ``in_file``). Maps are signed and raw.

    Files are named ``<in_file stem>_desc-<method in lowerCamelCase>_attribution.nii.gz`` (e.g.
    ``desc-smoothgradSq``), each with a ``.json`` sidecar. A map whose method raised an
    :class:`~nipype_xai.attribution.engine.AttributionWarning` (e.g. DeepLIFT's
    summation-to-delta failing on this model) has its messages under ``"Warnings"`` in its
    sidecar; the warnings are also issued as usual, for the node's log.

    ``background`` (a file from ``nipype-xai background``) goes to the methods that take one
    (``gradient_shap``, ``deeplift_shap``), after a check that it lies on the image's model grid;
    their sidecars describe it (file, SHA-256, size, how it was drawn) or the fallback used
    without one. No parameter's values are written into a sidecar when they are data (a tensor
    is described by its shape, dtype and checksum).

    Examples
    --------
    >>> attribution = Attribution(
    ...     in_file="sub-01_T1w.nii.gz", model_spec="model.json", methods=["gradient", "smoothgrad"]
    ... )
    >>> attribution.run()  # doctest: +SKIP
    """

    input_spec = _AttributionInputSpec
    output_spec = _AttributionOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        img = load_volume(inputs.in_file)
        spec = read_model_spec(inputs)
        method_params = dict(inputs.method_params) if isdefined(inputs.method_params) else {}
        # The background is read (and checked against the image's model grid) before the model.
        described = _background_params(
            list(inputs.methods), spec, img,
            inputs.background if isdefined(inputs.background) else None, method_params)
        # The output count is checked on the real prediction (no separate shape-only pass).
        model = load_model(spec, device=resolve_device(inputs), check_outputs=False,
                           trust_code=inputs.trust_model_code)
        arguments = inputs.explain_arguments(model, spec)
        explanation = explain_image(model, spec, img, list(inputs.methods),
                                    method_params=method_params or None, **arguments)
        out_files, out_sidecars = write_maps(explanation, inputs.in_file, runtime.cwd, spec,
                                             described, precision=arguments["precision"])
        self._results["out_files"] = out_files
        self._results["out_sidecars"] = out_sidecars
        return runtime


def write_maps(explanation: Explanation, in_file: str, folder: str, spec: ModelSpec,
               described: Mapping[str, Mapping[str, Any]], *, precision: str = PRECISIONS[0],
               ) -> tuple[list[str], list[str]]:
    """Write each map of ``explanation`` and its JSON sidecar into ``folder``; return the paths.

    Named ``<in_file stem>_desc-<method>_attribution.nii.gz`` (+ ``.json``); the sidecars carry
    the explanation's warnings about each map (:attr:`Explanation.notes`), ``described``'s
    entries for the parameters that are data (a background) and the precision each map was
    computed in when ``precision`` was asked for.
    """
    sha256 = weights_sha256(spec.weights)
    out_files, out_sidecars = [], []
    for method, map_img in explanation.maps.items():
        out_file = Path(fname_presuffix(in_file, suffix=f"_desc-{method_to_desc(method)}"
                                        "_attribution.nii.gz", newpath=folder, use_ext=False))
        sidecar = out_file.with_name(out_file.name[: -len(".nii.gz")] + ".json")
        save_image(map_img, out_file)
        write_json(sidecar, _sidecar(method, explanation, spec, sha256, map_img.header,
                                     explanation.notes.get(method, ()),
                                     described.get(method, {}), precision))
        out_files.append(str(out_file))
        out_sidecars.append(str(sidecar))
    return out_files, out_sidecars


class _RestrictMapsInputSpec(BaseInterfaceInputSpec):
    in_files = traits.List(File(exists=True), mandatory=True, minlen=1,
                           desc="maps, all on the mask's grid")
    in_sidecars = traits.List(File(exists=True), desc="their JSON sidecars, in the same order")
    mask = File(exists=True, mandatory=True,
                desc="the domain: voxels > 0 are kept (a brain mask, or the model input itself)")
    description = traits.Str(mandatory=True, desc="what the domain is, for the sidecars")
    sidecar_key = traits.Str("Restriction", usedefault=True,
                             desc="sidecar key of the record (one per space a map went through)")


class _RestrictMapsOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="the maps, 0 outside the mask")
    out_sidecars = traits.List(File(exists=True),
                               desc="sidecars with {sidecar_key: {Domain, MassOutside}} added")


class RestrictMaps(SimpleInterface):
    """Keep maps on their domain (:func:`~nipype_xai.attribution.restriction.restrict_to_mask`).

    Each output map has its input's name, grid and dtype; each sidecar gains
    ``{sidecar_key: {"Domain": description, "MassOutside": share of sum|a| that was outside}}``.
    """

    input_spec = _RestrictMapsInputSpec
    output_spec = _RestrictMapsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        sidecars = list(inputs.in_sidecars) if isdefined(inputs.in_sidecars) else []
        if sidecars and len(sidecars) != len(inputs.in_files):
            raise ValueError(f"{len(sidecars)} sidecars for {len(inputs.in_files)} maps")
        mask_img = load_volume(inputs.mask)
        mask = np.asanyarray(mask_img.dataobj)
        out_files, out_sidecars = [], []
        for index, in_file in enumerate(inputs.in_files):
            map_img = load_volume(in_file)
            if map_img.shape != mask_img.shape or not np.allclose(map_img.affine, mask_img.affine,
                                                                  atol=1e-4):
                raise ImageError(f"{Path(inputs.mask).name}: not on the grid of "
                                 f"{Path(in_file).name} (shape {mask_img.shape} vs "
                                 f"{map_img.shape}, or another affine)")
            values = np.asanyarray(map_img.dataobj).astype(np.float32)
            restricted, outside = restrict_to_mask(values, mask)
            out_file = Path(runtime.cwd) / Path(in_file).name
            save_image(image_like(map_img, restricted), out_file)
            out_files.append(str(out_file))
            if sidecars:
                content = json.loads(Path(sidecars[index]).read_text(encoding="utf-8"))
                content[inputs.sidecar_key] = {"Domain": inputs.description,
                                               "MassOutside": round(outside, 6)}
                out_sidecar = Path(runtime.cwd) / Path(sidecars[index]).name
                write_json(out_sidecar, content)
                out_sidecars.append(str(out_sidecar))
        self._results["out_files"] = out_files
        if sidecars:
            self._results["out_sidecars"] = out_sidecars
        return runtime


def _background_params(
    methods: Sequence[str], spec: ModelSpec, img, background: Optional[str],
    method_params: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Give the background file's volumes to every method in ``methods`` that takes a
    ``background`` (in ``method_params``, in place), and say how each map's sidecar describes
    it: ``{method: {"background": description}}``, also for the fallback when no file is given.

    Raises
    ------
    ValueError
        A background file, but no method that takes one.
    nipype_xai.images.ImageError
        The file does not fit the model spec or the image's model grid.
    """
    takers = [m for m in methods if "background" in method_defaults(m)]
    if background is None:
        return {m: {"background": BACKGROUND_FALLBACK} for m in takers
                if method_params.get(m, {}).get("background") is None}
    if not takers:
        raise ValueError(
            f"{Path(background).name}: a background was given, but none of the methods "
            f"{list(methods)} takes one (gradient_shap and deeplift_shap do)")
    loaded = load_background(background, spec, model_grid_for(img, spec))
    for method in takers:
        method_params[method] = {**method_params.get(method, {}), "background": loaded.volumes}
    description = background_description(loaded)
    return {m: {"background": description} for m in takers}


def _sidecar(
    method: str, explanation: Explanation, spec: ModelSpec, sha256: str, header,
    notes: Sequence[str] = (), described: Optional[Mapping[str, Any]] = None,
    precision: str = PRECISIONS[0],
) -> dict[str, Any]:
    """The JSON sidecar of one map (SPEC §6): what was explained, how, and by which model; and,
    under ``"Warnings"``, where the map does not keep its method's promise (``notes``).

    ``described`` gives the sidecar's entry of parameters that are data, not settings (a
    background: its file, checksum and size), in place of the value. ``"Precision"`` is the one
    the map was computed in; where that is not the ``precision`` asked for, ``"PrecisionNote"``
    says why."""
    prediction = explanation.prediction
    grid = explanation.grid
    zooms = [round(float(z), 6) for z in header.get_zooms()[:3]]
    model_res = [float(r) for r in spec.input.resolution_mm]
    described = described or {}
    sidecar: dict[str, Any] = {
        "Method": method,
        "Parameters": {k: described[k] if k in described else _json_safe(v)
                       for k, v in explanation.parameters[method].items()},
        "Target": explanation.target,
        "TargetLabel": explanation.target_label,
        "ModelSpec": spec.name,
        "ModelWeightsSHA256": sha256,
        "Space": spec.input.space,
        "Resolution": (
            f"{'x'.join(f'{z:g}' for z in zooms)} mm voxels: the input image's grid. Computed on "
            f"the model grid ({'x'.join(f'{r:g}' for r in model_res)} mm, shape "
            f"{'x'.join(str(n) for n in grid.shape)}) and resampled with linear interpolation."
        ),
        "ModelGrid": {"ResolutionMM": model_res, "Shape": list(grid.shape)},
        "Precision": method_precision(method, precision),
    }
    if sidecar["Precision"] != precision:
        sidecar["PrecisionNote"] = (f"{precision} was asked for; {method} runs in "
                                    f"{sidecar['Precision']}: {FP32_ONLY[method]}")
    if prediction.task == "classification":
        sidecar.update(
            PredictedClass=prediction.predicted_index,
            PredictedLabel=prediction.predicted_label,
            Probability=prediction.probability,
            TargetProbability=prediction.probabilities[explanation.target],
        )
    else:
        sidecar["Prediction"] = dict(zip(spec.outputs, prediction.outputs))
    if notes:
        sidecar["Warnings"] = list(notes)
    return sidecar


def _json_safe(value: Any) -> Any:
    """Parameters as JSON: numbers, strings, lists; an array or tensor described by its shape,
    dtype and checksum, never dumped; anything else by its repr.

    Never an error: a sidecar must not stop a map from being written.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        return _json_safe(value.item())
    if isinstance(value, (torch.Tensor, np.ndarray)):
        # A parcellation, a baseline or background volume: data, not a setting. Its values would
        # bloat every sidecar; its shape, dtype and checksum say which data it was.
        array = (value.detach().cpu().contiguous().numpy() if isinstance(value, torch.Tensor)
                 else np.ascontiguousarray(value))
        return {"Type": type(value).__name__, "Shape": [int(n) for n in array.shape],
                "DType": str(array.dtype), "SHA256": hashlib.sha256(array.tobytes()).hexdigest()}
    return repr(value)
