"""Nipype interfaces: file I/O and traits around the pure cores (one core call each)."""

from .anatomy import (
    BrainExtraction,
    CheckRegistrationQC,
    MaskImage,
    N4BiasFieldCorrection,
    RegistrationQC,
)
from .attribution import Attribution, RestrictMaps
from .baselines import BaselineMaps
from .batch import BatchItem, ModelBatch
from .bids import DerivativesDataSink, ReportsSink
from .counterfactual import Counterfactual
from .grids import ModelGridReference
from .metrics import GroundTruthOverlap, GroupMeanMaps, GroupOverlapTable, MethodRanking
from .model import ModelInference
from .registration import ApplyTransforms, RegisterToTemplate, TemplateFlowSelect
from .reports import GroupReport, SubjectReport

__all__ = [
    "ApplyTransforms",
    "Attribution",
    "BaselineMaps",
    "BatchItem",
    "BrainExtraction",
    "CheckRegistrationQC",
    "Counterfactual",
    "DerivativesDataSink",
    "GroundTruthOverlap",
    "GroupMeanMaps",
    "GroupOverlapTable",
    "GroupReport",
    "MaskImage",
    "MethodRanking",
    "ModelGridReference",
    "ModelBatch",
    "ModelInference",
    "N4BiasFieldCorrection",
    "RegisterToTemplate",
    "RegistrationQC",
    "RestrictMaps",
    "ReportsSink",
    "SubjectReport",
    "TemplateFlowSelect",
]
