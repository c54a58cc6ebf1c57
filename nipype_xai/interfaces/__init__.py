"""Nipype interfaces: file I/O and traits around the pure cores (one core call each)."""

from .attribution import Attribution
from .model import ModelInference
from .registration import ApplyTransforms, RegisterToTemplate, TemplateFlowSelect

__all__ = [
    "ApplyTransforms",
    "Attribution",
    "ModelInference",
    "RegisterToTemplate",
    "TemplateFlowSelect",
]
