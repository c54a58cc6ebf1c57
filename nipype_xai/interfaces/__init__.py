"""Nipype interfaces: file I/O and traits around the pure cores (one core call each)."""

from .attribution import Attribution
from .baselines import BaselineMaps
from .bids import DerivativesDataSink, ReportsSink
from .grids import ModelGridReference
from .metrics import GroundTruthOverlap, GroupMeanMaps, GroupOverlapTable, MethodRanking
from .model import ModelInference
from .registration import ApplyTransforms, RegisterToTemplate, TemplateFlowSelect
from .reports import GroupReport, SubjectReport

__all__ = [
    "ApplyTransforms",
    "Attribution",
    "BaselineMaps",
    "DerivativesDataSink",
    "GroundTruthOverlap",
    "GroupMeanMaps",
    "GroupOverlapTable",
    "GroupReport",
    "MethodRanking",
    "ModelGridReference",
    "ModelInference",
    "RegisterToTemplate",
    "ReportsSink",
    "SubjectReport",
    "TemplateFlowSelect",
]
