"""Model specs and loading, reference 3D CNNs, and preprocessing to the model grid (SPEC §4).

>>> from nipype_xai.models import load_model, load_model_spec, to_model_grid
>>> spec = load_model_spec("model.json")          # doctest: +SKIP
>>> model = load_model(spec)                      # doctest: +SKIP
>>> x, grid = to_model_grid(img, spec)            # doctest: +SKIP

A spec's architecture is imported only from :data:`TRUSTED_ARCHITECTURE_MODULES` and its weights
are read only from the spec's folder, unless ``trust_code=True`` / ``external_weights=True`` say
otherwise (the trust boundary, :mod:`nipype_xai.models.spec`).
"""

from .architectures import SFCN, MonaiResNet, TinyCNN3D
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
    "InputSpec",
    "ModelGrid",
    "ModelSpec",
    "ModelSpecError",
    "MonaiResNet",
    "SFCN",
    "TRUSTED_ARCHITECTURE_MODULES",
    "TinyCNN3D",
    "check_output_count",
    "from_model_grid",
    "load_model",
    "load_model_spec",
    "model_output_count",
    "normalize_intensity",
    "save_model_spec",
    "to_model_grid",
    "weights_sha256",
]
