"""What the participant level computes, stated once: :class:`PipelineOptions`.

The command line (:func:`nipype_xai.cli.execution.run_participant_level`), the participant workflow
(:func:`~nipype_xai.workflows.base.init_participant_wf`) and each subject's workflow
(:func:`~nipype_xai.workflows.xai.init_xai_wf`) take one frozen options object and pass it down,
so every option and its default exists here only. Each layer also accepts the options as keyword
arguments (``methods=..., seed=...``), which :func:`pipeline_options` turns into the object.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..attribution.precision import PRECISIONS, check_precision

__all__ = ["PipelineOptions", "pipeline_options"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class PipelineOptions:
    """How every subject is processed (the participant level's options).

    Attributes
    ----------
    model_spec
        Model spec JSON (SPEC §4); made absolute, since nodes run in their own folders.
    methods
        Attribution methods and baselines (``sobel``, ``laplace``, ``random``), all computed.
    template
        TemplateFlow identifier of the space to work in; None: the model spec's space.
    registration
        Registration preset: ``"affine"`` (default), ``"syn"`` or ``"rigid"``.
    brain_extraction, bias_correction
        How the raw T1w becomes a brain before registration
        (:func:`~nipype_xai.workflows.anatomy.init_anat_wf`): ``"deepbet"`` or ``"none"`` for
        skull-stripped inputs; N4 first unless ``bias_correction`` is off.
    keep_failed_qc
        Publish the maps of a subject that fails registration quality control (its QC table and
        report say it failed); default: such a subject fails, with a row in ``failures.tsv``.
    restrict_maps
        Keep the maps on the subject's data (:mod:`nipype_xai.attribution.restriction`);
        ``False``: the raw maps (``--unrestricted-maps``).
    method_params
        Per-method parameter overrides, e.g. ``{"smoothgrad": {"n_samples": 20}}``; recorded in
        the sidecars.
    seed
        Seed of the stochastic methods, the random baseline and the registration.
    deterministic
        Register on one ITK thread, so that a seed gives byte-identical outputs; ``False``: ITK's
        own thread count (faster; transforms differ slightly between runs).
    device
        Torch device of the model nodes (``"cpu"``, ``"cuda"``); not part of the cache hash.
    precision
        Numeric precision of the attribution passes (:mod:`nipype_xai.attribution.precision`):
        ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only: refused here with another ``device``).
    trust_model_code, external_weights
        Opt-ins of the model spec's trust boundary (:mod:`nipype_xai.models.spec`).
    reports
        Make the subject HTML reports.
    background
        Background set of the methods that take one (``gradient_shap``, ``deeplift_shap``): a
        file from ``nipype-xai background`` (:mod:`nipype_xai.models.background`); None: their
        fallback. Made absolute.
    subjects_per_job
        Subjects explained together by one model node (:func:`~nipype_xai.workflows.base.
        init_participant_wf`): the model is loaded once per batch, and prediction and
        attribution run batched across its subjects. 1: a model node per subject. None: chosen
        by :func:`nipype_xai.cli.execution.run_participant_level` for the plugin and the number
        of subjects (:func:`~nipype_xai.cli.execution.default_subjects_per_job`); 1 for a
        workflow built directly.
    counterfactual
        A simulator spec (``nipype-xai train-simulator``) for the model: each subject also gets
        its counterfactual (:class:`~nipype_xai.interfaces.Counterfactual`) for the class the
        model does not predict; None: none.
    """

    model_spec: Path
    methods: tuple[str, ...]
    template: Optional[str] = None
    registration: str = "affine"
    brain_extraction: str = "deepbet"
    bias_correction: bool = True
    keep_failed_qc: bool = False
    restrict_maps: bool = True
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed: int = 0
    deterministic: bool = True
    device: str = "cpu"
    precision: str = PRECISIONS[0]
    trust_model_code: bool = False
    external_weights: bool = False
    reports: bool = True
    background: Optional[Path] = None
    counterfactual: Optional[Path] = None
    subjects_per_job: Optional[int] = None

    def __post_init__(self) -> None:
        if self.subjects_per_job is not None and int(self.subjects_per_job) < 1:
            raise ValueError(f"subjects_per_job must be >= 1, got {self.subjects_per_job}")
        # Frozen: normalised through object.__setattr__, once, here.
        object.__setattr__(self, "model_spec", Path(self.model_spec).absolute())
        if self.background is not None:
            object.__setattr__(self, "background", Path(self.background).absolute())
        if self.counterfactual is not None:
            object.__setattr__(self, "counterfactual", Path(self.counterfactual).absolute())
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "method_params",
                           {m: dict(p) for m, p in (self.method_params or {}).items()})
        # Before any subject runs: fp16 on a CPU would fail in every subject's attribution node.
        check_precision(self.precision, self.device)

    @property
    def trust(self) -> dict[str, bool]:
        """The trust-boundary opt-ins as the model interfaces take them."""
        return {"trust_model_code": self.trust_model_code,
                "external_weights": self.external_weights}

    @property
    def precision_inputs(self) -> dict[str, str]:
        """The ``Attribution`` node's precision input: none for fp32, which is what an unset
        input means, so that nodes cached before the input existed keep their hash."""
        return {} if self.precision == PRECISIONS[0] else {"precision": self.precision}


def pipeline_options(options: Optional[PipelineOptions] = None, **values: Any
                     ) -> PipelineOptions:
    """``options`` with ``values`` replaced, or new options from ``values`` alone.

    Raises
    ------
    TypeError
        A value that is not an option (its name is in the message).
    """
    names = {f.name for f in dataclasses.fields(PipelineOptions)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"not a pipeline option: {', '.join(unknown)}")
    if options is None:
        return PipelineOptions(**values)
    return dataclasses.replace(options, **values) if values else options
