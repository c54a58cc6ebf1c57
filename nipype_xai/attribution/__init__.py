"""The attribution engine: pure torch, no files, no Nipype.

>>> from nipype_xai.attribution import attribute, available_methods
>>> maps = attribute(model, x, "smoothgrad", target=None, seed=0)   # doctest: +SKIP
"""

from .engine import (
    METHOD_NAMES,
    attribute,
    attribute_many,
    available_methods,
    method_defaults,
    resolve_params,
)
from .model_state import TargetError

__all__ = [
    "METHOD_NAMES",
    "TargetError",
    "attribute",
    "attribute_many",
    "available_methods",
    "method_defaults",
    "resolve_params",
]
