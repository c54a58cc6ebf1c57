"""The attribution engine: pure torch, no files, no Nipype.

>>> from nipype_xai.attribution import attribute, available_methods
>>> maps = attribute(model, x, "smoothgrad", target=None, seed=0)   # doctest: +SKIP

The model-free baselines a method must beat (sobel, laplace, random) are in the same registry,
with kind ``"baseline"``: :func:`available_baselines`, :func:`is_baseline`. A method that cannot
keep its own axiom on a model (DeepLIFT's summation-to-delta, integrated gradients'
completeness) returns its map and warns with :class:`AttributionWarning`, which the
``Attribution`` interface writes into that map's sidecar.
"""

from .baselines import available_baselines, is_baseline
from .engine import (
    METHOD_NAMES,
    AttributionWarning,
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
    "AttributionWarning",
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
