"""Model specs and loading, reference 3D CNNs, and preprocessing to the model grid (SPEC §4).

>>> from nipype_xai.models import load_model, load_model_spec, to_model_grid
>>> spec = load_model_spec("model.json")          # doctest: +SKIP
>>> model = load_model(spec)                      # doctest: +SKIP
>>> x, grid = to_model_grid(img, spec)            # doctest: +SKIP
"""

from .architectures import SFCN, MonaiResNet, TinyCNN3D
from .preprocessing import ModelGrid, from_model_grid, normalize_intensity, to_model_grid
from .spec import (
    InputSpec,
    ModelSpec,
    ModelSpecError,
    check_output_count,
    load_model,
    load_model_spec,
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
    "TinyCNN3D",
    "check_output_count",
    "from_model_grid",
    "load_model",
    "load_model_spec",
    "normalize_intensity",
    "save_model_spec",
    "to_model_grid",
    "weights_sha256",
]
