"""``ModelBatch``: one model load, one batched prediction and one batched attribution call for a
batch of subjects; ``BatchItem``: one subject's results out of it, or that subject's own error.

The participant level batches subjects per model node (``--subjects-per-job``,
:func:`nipype_xai.workflows.base.init_participant_wf`): a node per subject would load the model,
and on a cluster start a Python process with torch, once per subject. A batch node cannot be told
that one of its inputs failed upstream (Nipype would skip it for everyone), so the participant
level first prepares every subject's model input and batches only the subjects that got one; and
an error that concerns one image (a constant image, a NaN output or map) is kept as data in that
image's item and raised by its ``BatchItem``, inside the subject's own workflow, so it fails that
subject alone, with its own message.
"""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..attribution import TargetError
from ..bids.commit import file_sha256
from ..images import ImageError, load_volume
from ..models.inference import ModelOutputError, explain_images
from ..models.spec import ModelSpecError, load_model
from .attribution import _AttributionSettingsSpec, _background_params, write_maps
from .model import read_model_spec, resolve_device, write_prediction

__all__ = ["BatchItem", "BatchItemError", "ModelBatch"]

#: The file in each item folder that says what the item holds.
ITEM_MANIFEST = "item.json"

#: Errors an item may carry, by name: raised again as themselves by its ``BatchItem``.
_ITEM_ERRORS = {error.__name__: error
                for error in (ImageError, ModelOutputError, ModelSpecError, TargetError,
                              ValueError)}


class BatchItemError(RuntimeError):
    """An item's error of a type not in :data:`_ITEM_ERRORS` (its type is in the message)."""


class _ModelBatchInputSpec(_AttributionSettingsSpec):
    in_files = traits.List(File(exists=True), mandatory=True, minlen=1,
                           desc="3D images (NIfTI) in the model's space, one per subject")
    methods = traits.List(
        traits.Str, value=[], usedefault=True,
        desc="attribution methods (nipype_xai.attribution.available_methods()); none: the "
        "predictions alone")


class _ModelBatchOutputSpec(TraitedSpec):
    out_items = traits.List(
        Directory(exists=True),
        desc="one folder per image, in the order of in_files: its prediction TSV, its maps and "
        "sidecars, and item.json listing them (or the error that stopped that image)")


class ModelBatch(SimpleInterface):
    """Predict and explain a batch of images with one model load (SPEC §9).

    The images go through :func:`~nipype_xai.models.inference.explain_images` together: one
    forward pass for the predictions (with the input-domain check) and one
    :func:`~nipype_xai.attribution.attribute_many` call for the maps, whose results for each image
    are what ``ModelInference`` and ``Attribution`` give it alone (up to float rounding of
    batched passes, ~1e-6 relative). Each image's files go to ``item-<i>/`` under the node's
    folder, named and written as those interfaces name and write them.
    """

    input_spec = _ModelBatchInputSpec
    output_spec = _ModelBatchOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        spec = read_model_spec(inputs)
        methods = list(inputs.methods)
        imgs = [load_volume(path) for path in inputs.in_files]
        method_params = dict(inputs.method_params) if isdefined(inputs.method_params) else {}
        background = inputs.background if isdefined(inputs.background) else None
        # The background is read and checked against every image's model grid before the model.
        described = _background_params(methods, spec, imgs[0], background, method_params)
        for img in imgs[1:]:
            _background_params(methods, spec, img, background, dict(method_params))
        model = load_model(spec, device=resolve_device(inputs), check_outputs=False,
                           trust_code=inputs.trust_model_code)
        arguments = inputs.explain_arguments(model, spec)
        results = explain_images(model, spec, imgs, methods, method_params=method_params or None,
                                 input_domain=True, **arguments)
        items = []
        for index, (in_file, result) in enumerate(zip(inputs.in_files, results)):
            folder = Path(runtime.cwd) / f"item-{index:04d}"
            folder.mkdir(exist_ok=True)
            # The input's checksum: its item is refused if the file changes after it was read.
            source = {"source": in_file, "source_sha256": file_sha256(in_file)}
            if isinstance(result, Exception):
                manifest = {**source, "error_type": type(result).__name__,
                            "error": str(result)}
            else:
                maps, sidecars = write_maps(result, in_file, str(folder), spec, described,
                                            precision=arguments["precision"])
                predictions = write_prediction(result, spec, in_file, str(folder))
                manifest = {**source, "predictions": predictions.name,
                            "maps": [Path(p).name for p in maps],
                            "sidecars": [Path(p).name for p in sidecars]}
            (folder / ITEM_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            items.append(str(folder))
        self._results["out_items"] = items
        return runtime


class _BatchItemInputSpec(BaseInterfaceInputSpec):
    items = traits.List(Directory(exists=True), mandatory=True, minlen=1,
                        desc="a ModelBatch's out_items")
    index = traits.Int(mandatory=True, desc="the subject's position in the batch")
    in_file = File(exists=True, desc="the subject's model input: checked against the item's")


class _BatchItemOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="the prediction TSV (as ModelInference's)")
    out_files = traits.List(File(exists=True),
                            desc="one map per method, in the order of methods (as Attribution's)")
    out_sidecars = traits.List(File(exists=True), desc="one JSON sidecar per map")


class BatchItem(SimpleInterface):
    """One subject's prediction and maps out of a ``ModelBatch``'s items; a subject the batch
    could not explain fails here, in its own workflow, with the batch's error for it."""

    input_spec = _BatchItemInputSpec
    output_spec = _BatchItemOutputSpec

    def _run_interface(self, runtime):
        items = list(self.inputs.items)
        if not 0 <= self.inputs.index < len(items):
            raise IndexError(f"item {self.inputs.index} of a batch of {len(items)}")
        folder = Path(items[self.inputs.index])
        manifest = json.loads((folder / ITEM_MANIFEST).read_text())
        if isdefined(self.inputs.in_file):
            if manifest["source"] != self.inputs.in_file:
                raise ValueError(f"item {self.inputs.index} of the batch is "
                                 f"{Path(manifest['source']).name}, not "
                                 f"{Path(self.inputs.in_file).name}")
            if file_sha256(self.inputs.in_file) != manifest["source_sha256"]:
                raise ValueError(f"{Path(self.inputs.in_file).name} changed after the batch "
                                 f"read it ({folder.parent}): its maps are not of this input; "
                                 "run again (the batch reruns on the new input)")
        if "error" in manifest:
            kind = manifest["error_type"]
            error = _ITEM_ERRORS.get(kind)
            if error is None:
                raise BatchItemError(f"{kind}: {manifest['error']}")
            raise error(manifest["error"])
        self._results["out_tsv"] = str(folder / manifest["predictions"])
        self._results["out_files"] = [str(folder / name) for name in manifest["maps"]]
        self._results["out_sidecars"] = [str(folder / name) for name in manifest["sidecars"]]
        return runtime
