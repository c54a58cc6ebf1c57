"""The attribution engine: pure torch, no files, no Nipype.

>>> from nipype_xai.attribution import attribute, available_methods
>>> maps = attribute(model, x, "smoothgrad", target=None, seed=0)   # doctest: +SKIP

The model-free baselines a method must beat (sobel, laplace, random) are in the same registry,
with kind ``"baseline"``: :func:`available_baselines`, :func:`is_baseline`.
"""

from .baselines import available_baselines, is_baseline
from .engine import (
    METHOD_NAMES,
    attribute,
    attribute_many,
    available_methods,
    method_defaults,
    resolve_params,
    split_methods,
)
from .model_state import TargetError

__all__ = [
    "METHOD_NAMES",
    "TargetError",
    "attribute",
    "attribute_many",
    "available_baselines",
    "available_methods",
    "is_baseline",
    "method_defaults",
    "resolve_params",
    "split_methods",
]
