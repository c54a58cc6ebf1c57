"""Model specs and loading, reference 3D CNNs, and preprocessing to the model grid (SPEC §4).

>>> from nipype_xai.models import load_model, load_model_spec, to_model_grid
>>> spec = load_model_spec("model.json")          # doctest: +SKIP
>>> model = load_model(spec)                      # doctest: +SKIP
>>> x, grid = to_model_grid(img, spec)            # doctest: +SKIP

A spec may carry a summary of its training inputs; :func:`input_distance` then says how far a
subject's input lies from them (the input-domain check, :mod:`nipype_xai.models.domain`).

A spec's architecture is imported only from :data:`TRUSTED_ARCHITECTURE_MODULES` and its weights
are read only from the spec's folder, unless ``trust_code=True`` / ``external_weights=True`` say
otherwise (the trust boundary, :mod:`nipype_xai.models.spec`).
"""

from .architectures import SFCN, MonaiResNet, TinyCNN3D
from .domain import InputDistance, InputSummary, input_distance, summarize_inputs
from .preprocessing import ModelGrid, from_model_grid, normalize_intensity, to_model_grid
from .spec import (
    TRUSTED_ARCHITECTURE_MODULES,
    InputSpec,
    ModelSpec,
    ModelSpecError,
    check_output_count,
    load_model,
    load_model_spec,
    model_output_count,
    save_model_spec,
    weights_sha256,
)

__all__ = [
    "InputDistance",
    "InputSpec",
    "InputSummary",
    "ModelGrid",
    "ModelSpec",
    "ModelSpecError",
    "MonaiResNet",
    "SFCN",
    "TRUSTED_ARCHITECTURE_MODULES",
    "TinyCNN3D",
    "check_output_count",
    "from_model_grid",
    "input_distance",
    "load_model",
    "load_model_spec",
    "model_output_count",
    "normalize_intensity",
    "save_model_spec",
    "summarize_inputs",
    "to_model_grid",
    "weights_sha256",
]
