"""``ModelInference``: a model spec's predictions for one image, as a TSV row, with the
input-domain check (how far the image, as the model saw it, lies from the model's training inputs).

Also holds the inputs every model-running interface shares (image, model spec, device, and the two
trust-boundary flags ``trust_model_code`` and ``external_weights``), so that ``Attribution`` hashes
and schedules the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
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

from ..images import load_volume
from ..models.inference import Explanation, explain_image
from ..models.spec import (
    TRUSTED_ARCHITECTURE_MODULES,
    ModelSpec,
    ModelSpecError,
    load_model,
    load_model_spec,
)
from ..tables import write_tsv

__all__ = ["ModelInference"]

# nipype-xai's own logger, not Nipype's "nipype.interface": the command line silences Nipype's
# log without -v, and this warning must reach the user.
_LOGGER = logging.getLogger(__name__)


def _trust_boundary_opt_in(desc: str):
    # Not hashed: an opt-in decides whether the node may run, not what it computes.
    return traits.Bool(False, usedefault=True, nohash=True, desc=desc)


def trust_model_code_input():
    """The ``trust_model_code`` input of every interface that reads a model spec (SPEC §10)."""
    return _trust_boundary_opt_in(
        "import the spec's architecture even from outside the packages nipype-xai imports by "
        f"default ({', '.join(TRUSTED_ARCHITECTURE_MODULES)}) or from the current directory; only "
        "for a model spec whose code you trust (--trust-model-code)")


def external_weights_input():
    """The ``external_weights`` input of every interface that reads a model spec (SPEC §10)."""
    return _trust_boundary_opt_in(
        "accept a spec whose weights lie outside its folder (an absolute path, '~', or '..' or a "
        "symbolic link leading out); only if you trust where the spec points "
        "(--allow-external-weights)")


def read_model_spec(inputs) -> ModelSpec:
    """The model spec of an interface's ``model_spec`` input, read under its ``external_weights``
    opt-in (:func:`nipype_xai.models.spec.load_model_spec`)."""
    return load_model_spec(inputs.model_spec, external_weights=inputs.external_weights)


class _ModelSpecInputSpec(BaseInterfaceInputSpec):
    """Inputs shared by the interfaces that run a model: the spec, where, and the trust opt-ins."""

    model_spec = File(exists=True, mandatory=True, desc="model spec JSON (see nipype_xai.models)")
    model_weights = File(
        exists=True,
        desc="the weights file model_spec names; filled in when model_spec is set (do not set "
        "it): it is an input only so that Nipype's cache, which hashes it by timestamp, reruns "
        "the node when the weights change while the spec JSON does not",
    )
    device = traits.Str(
        nohash=True,
        desc="torch device ('cpu', 'cuda', 'cuda:1'); default 'cuda' if use_gpu else 'cpu'",
    )
    use_gpu = traits.Bool(
        False,
        usedefault=True,
        nohash=True,
        desc="run on the GPU; Nipype's MultiProc schedules such nodes against n_gpu_procs",
    )
    trust_model_code = trust_model_code_input()
    external_weights = external_weights_input()

    def _model_spec_changed(self, new):
        # Traits calls this whenever model_spec is set (also when a workflow connection sets it).
        # A spec that cannot be read is left for _run_interface to report with its full message.
        # Only the weights' path is needed here, for the cache's timestamp hash (nothing is read),
        # so they are located wherever they are; _run_interface applies external_weights.
        try:
            weights = load_model_spec(new, external_weights=True).weights
        except (ModelSpecError, TypeError):
            return
        if weights.is_file():
            self.model_weights = str(weights)


class _ModelInputSpec(_ModelSpecInputSpec):
    """Inputs shared by the interfaces that run a model on one image."""

    # File inputs are hashed by Nipype's default hash_method, "timestamp" (size + mtime), so a
    # large image is not re-read to decide whether a node must rerun.
    in_file = File(exists=True, mandatory=True, desc="3D image (NIfTI) in the model's space")


def resolve_device(inputs) -> str:
    """The torch device of a model-running interface: ``device`` if set, else from ``use_gpu``."""
    if isdefined(inputs.device) and inputs.device:
        return inputs.device
    if inputs.use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError("use_gpu=True but torch finds no CUDA device on this node")
        return "cuda"
    return "cpu"


def write_prediction(explanation: Explanation, spec: ModelSpec, in_file: str, folder: str
                     ) -> Path:
    """Write one image's prediction as a one-row TSV in ``folder``
    (``<in_file stem>_predictions.tsv``); return its path.

    With the input-domain check (:attr:`Explanation.domain`) the row gets its columns, and an
    input outside the training inputs is also logged as a warning that names the image.
    """
    name = Path(in_file).name
    row = explanation.prediction.as_row()
    domain = explanation.domain
    if domain is not None:
        row.update(domain.as_row())
        if domain.outside:
            _LOGGER.warning(
                "%s: the model's input lies outside %s's training inputs (distance %.1f > "
                "threshold %.1f: intensity quantiles z %.1f, dissimilarity to their mean "
                "image z %.1f, non-zero fraction z %.1f); its prediction and explanations "
                "are for an input unlike the model's training data",
                name, spec.name, domain.distance, domain.threshold, domain.quantile_z,
                domain.dissimilarity_z, domain.nonzero_fraction_z)
    out_tsv = Path(fname_presuffix(in_file, suffix="_predictions.tsv", newpath=folder,
                                   use_ext=False))
    write_tsv(pd.DataFrame([row]), out_tsv)
    return out_tsv


class _ModelInferenceInputSpec(_ModelInputSpec):
    pass


class _ModelInferenceOutputSpec(TraitedSpec):
    out_tsv = File(
        exists=True,
        desc="predictions, one row: a probability column per output name, predicted_label and "
        "predicted_index (classification), or prediction (regression); when the spec carries a "
        "training-input summary, the input-domain check's input_distance, "
        "input_distance_threshold, outside_training_inputs and its three z-scores",
    )


class ModelInference(SimpleInterface):
    """Run a model spec's model on one image and write its prediction as a one-row TSV.

    The image is resampled to the spec's grid and normalised as the spec says
    (:func:`nipype_xai.models.to_model_grid`). Classification outputs are probabilities (softmax, or
    a sigmoid for a single-logit binary classifier) with the predicted class; regression outputs are
    written as they come.

    When the spec carries a summary of its training inputs, the very array the model saw is
    compared with it (:func:`nipype_xai.models.domain.input_distance`) and the check's columns are
    added to the row; an input outside the training inputs is also logged as a warning that names
    the image. Without a summary the row has no such columns (the check is not available).

    Examples
    --------
    >>> inference = ModelInference(in_file="sub-01_T1w.nii.gz", model_spec="model.json")
    >>> inference.run()  # doctest: +SKIP
    """

    input_spec = _ModelInferenceInputSpec
    output_spec = _ModelInferenceOutputSpec

    def _run_interface(self, runtime):
        img = load_volume(self.inputs.in_file)
        spec = read_model_spec(self.inputs)
        # The output count is checked on the real prediction (no separate shape-only pass).
        model = load_model(spec, device=resolve_device(self.inputs), check_outputs=False,
                           trust_code=self.inputs.trust_model_code)
        explanation = explain_image(model, spec, img, (), input_domain=True)
        out_tsv = write_prediction(explanation, spec, self.inputs.in_file, runtime.cwd)
        self._results["out_tsv"] = str(out_tsv)
        return runtime
