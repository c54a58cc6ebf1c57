"""One model's scores: every test subject's maps against its ground truths, and the sanity check.

Each map is scored against every ground-truth definition of the run that applies to the subject
(:data:`~nipype_xai.benchmark.settings.GROUNDTRUTHS`: the exact ``signal`` mask, and for the atrophy
task also the anatomical ``roi``), one row per definition; the maps are computed once.

Resume: the results of one (model, task, subject) -- its maps scored with every metric -- and of
one model's randomisation check are cached with :class:`joblib.Memory` under ``OUTPUT_DIR/work``,
so a killed run starts again from the last finished subject. The cache key is what decides a
result: the subject's model-grid input, ground-truth masks and brain mask (their values, so a
different cohort can never match), the model's weights (a digest: :func:`joblib.hash` of a
``torch.nn.Module`` goes through pickle, whose bytes are not a stable name for the weights, so the
model itself is not hashed, its weights digest is), methods, parameters, seeds, the package
version and a digest of the code that computes and scores the maps
(:func:`~nipype_xai.benchmark.provenance.code_digest`: a fixed method never serves a stale map).
The models themselves, the device and progress reporting are left out of the key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import __version__
from ..bids import derivative_path, resolution_label
from .method_data import MethodData, NetParams, merge_params
from .provenance import code_digest, state_digest
from .settings import (
    BASELINES,
    DEFAULT_RANDOM_MODEL_METHODS,
    GROUNDTRUTHS,
    TO_TEMPLATE,
    groundtruth_mask_label,
)

_GROUNDTRUTH = Path("derivatives", "groundtruth")


# --------------------------------------------------------------------------------------------
# Maps of one subject
# --------------------------------------------------------------------------------------------


def _method_groups(methods: Sequence[str]) -> list[list[str]]:
    """Methods grouped by attribution family (members share passes), in first-seen order."""
    from ..attribution.registry import get_method

    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(methods):
        family = get_method(name).family or f"single:{name}"
        groups.setdefault(family, []).append(name)
    return list(groups.values())


def _params_for(methods: Sequence[str], method_params: Mapping[str, Mapping[str, Any]],
                seed: int) -> dict[str, dict[str, Any]]:
    """Per-method parameters: the benchmark seed for every stochastic method, then overrides."""
    from ..attribution import method_defaults

    out = {}
    for name in methods:
        params = {"seed": int(seed)} if "seed" in method_defaults(name) else {}
        params.update(method_params.get(name, {}))
        out[name] = params
    return out


def _family_maps(net: nn.Module, x: torch.Tensor, groups: Sequence[Sequence[str]], target: Any,
                 method_params: Mapping[str, Mapping[str, Any]],
                 seed: int) -> Iterator[tuple[list[str], dict[str, torch.Tensor], float]]:
    """``(group, maps, seconds)`` per attribution family: one shared call each."""
    from ..attribution import attribute_many

    for group in groups:
        started = time.perf_counter()
        maps = attribute_many(net, x, group, target,
                              method_params=_params_for(group, method_params, seed))
        yield list(group), maps, time.perf_counter() - started


def _volume(maps: torch.Tensor) -> np.ndarray:
    # The channels of a model input are copies of one volume (to_model_grid repeats it), so the
    # attribution of a voxel is the sum over its channels (chain rule for gradients).
    return maps.detach().to("cpu", torch.float64).sum(dim=1)[0].numpy()


def subject_maps(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[int],
    methods: Sequence[str],
    *,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    seed: int = 0,
    random_model: Optional[nn.Module] = None,
    random_model_methods: Sequence[str] = DEFAULT_RANDOM_MODEL_METHODS,
    random_seed: int = 0,
    net_params: Optional[NetParams] = None,
) -> Iterator[tuple[str, np.ndarray, float]]:
    """Every map of one subject, one attribution family at a time.

    Parameters
    ----------
    model
        The trained model.
    x
        The subject on the model grid, ``(1, C, X, Y, Z)``.
    target
        The class to explain (None: the predicted class).
    methods
        Attribution methods; members of one family are computed together
        (:func:`~nipype_xai.attribution.attribute_many`).
    method_params
        Per-method parameter overrides, ``{"smoothgrad": {"n_samples": 20}}``.
    seed
        Seed of every stochastic method that is not given one in ``method_params``.
    random_model
        The weight-randomised model for the ``random_model_<method>`` baselines (None: none).
    random_model_methods
        Methods run on ``random_model``; ``target`` is the *trained* model's class.
    random_seed
        Seed of the ``random`` baseline.
    net_params
        The data parameters of ``random_model``'s methods (its own patterns;
        :attr:`~nipype_xai.benchmark.method_data.MethodData.for_net`); the trained model's are in
        ``method_params``.

    Yields
    ------
    tuple
        ``(name, map, seconds)``: the map as a float64 ``(X, Y, Z)`` array (signed, channels
        summed), and the wall time of the call that produced it (shared by the members of a
        family, which come from one call).
    """
    from ..attribution.registry import get_method

    method_params = dict(method_params or {})
    jobs: list[tuple[nn.Module, list[list[str]], str, Mapping[str, Mapping[str, Any]]]] = [
        (model, _method_groups(methods), "", method_params)]
    if random_model is not None:
        own = merge_params(method_params, net_params(random_model)) if net_params else \
            method_params
        jobs.append((random_model, _method_groups(random_model_methods), "random_model_", own))
    for net, groups, prefix, params in jobs:
        for group, maps, seconds in _family_maps(net, x, groups, target, params, seed):
            for name in group:
                yield prefix + name, _volume(maps.pop(name)), seconds
    for name in BASELINES:
        baseline = get_method(name, kind="baseline")
        params = {"seed": int(random_seed)} if "seed" in baseline.defaults else {}
        started = time.perf_counter()
        volume = _volume(baseline.function(x, **params))
        yield name, volume, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Model-randomisation sanity check
# --------------------------------------------------------------------------------------------


def model_randomization_check(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str],
    *,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    seed: int = 0,
    randomization_seed: int = 0,
    max_steps: Optional[int] = None,
    mask: Optional[np.ndarray] = None,
    progress: bool = False,
    net_params: Optional[NetParams] = None,
) -> list[dict[str, Any]]:
    """Cascading model randomisation (Adebayo et al. 2018) for several methods at once.

    :func:`nipype_xai.metrics.sanity.randomization_similarities`, the core behind
    :func:`~nipype_xai.metrics.sanity.cascading_randomization` (cascade mode, Spearman of
    ``|map|``, target fixed to the trained model's predicted class), with every method's maps of
    one model computed together: each randomised copy is made once for all methods and families
    share their passes.

    Parameters
    ----------
    model
        The trained model; never modified.
    x
        The sanity subjects, ``(B, C, X, Y, Z)``.
    methods
        Attribution methods.
    method_params, seed
        As for :func:`subject_maps`.
    randomization_seed
        Seed of the weight re-initialisation (:func:`~nipype_xai.metrics.randomize_model`).
    max_steps
        None: every depth of the cascade; else that many evenly spaced depths (at least 2).
    mask
        Brain mask on the model grid (``(X, Y, Z)`` or ``(B, X, Y, Z)``): Spearman is computed
        over its voxels only. None: the whole grid.
    progress
        A tqdm bar over the depths.
    net_params
        Data parameters that belong to a network (patterns), made for each network of the
        cascade, the trained one included, and laid over ``method_params``
        (:attr:`~nipype_xai.benchmark.method_data.MethodData.for_net`).

    Returns
    -------
    list of dict
        One row per method x depth: ``method``, ``n_randomized`` (layers randomised, from the
        output layer down), ``layer`` (the deepest randomised layer), ``n_layers`` and
        ``spearman`` (mean over the samples; NaN when a map is constant).
    """
    from ..metrics.sanity import randomization_similarities

    method_params = dict(method_params or {})
    names = list(dict.fromkeys(methods))
    groups = _method_groups(names)

    def maps_of(net: nn.Module, target: Any) -> dict[str, torch.Tensor]:
        params = merge_params(method_params, net_params(net)) if net_params else method_params
        maps: dict[str, torch.Tensor] = {}
        for _group, family, _seconds in _family_maps(net, x, groups, target, params, seed):
            maps.update(family)
        return {name: maps[name] for name in names}

    rows = randomization_similarities(model, x, maps_of, None, "spearman", "abs",
                                      max_steps=max_steps, randomization_seed=randomization_seed,
                                      mask=mask, progress=progress)
    keys = ("method", "n_randomized", "layer", "n_layers", "spearman")  # sanity.tsv's columns
    return [{key: row[key] for key in keys} for row in rows]


# --------------------------------------------------------------------------------------------
# Cached units of work (see the module docstring)
# --------------------------------------------------------------------------------------------


def _score_subject(model: nn.Module, random_model: Optional[nn.Module], x: np.ndarray,
                   target: int, groundtruths: Mapping[str, np.ndarray], brain: np.ndarray,
                   affine: np.ndarray, identity: Mapping[str, Any], *, methods: Sequence[str],
                   metrics: Sequence[str], parcellation: Optional[np.ndarray],
                   method_params: Mapping[str, Mapping[str, Any]], seed: int,
                   random_model_methods: Sequence[str], random_seed: int, weights: str,
                   version: str, code: str, device: str,
                   on_map: Callable[[str], None], data: MethodData,
                   data_digest: str) -> list[dict[str, Any]]:
    """``subjects.tsv``'s rows of one subject: every map scored with every metric against each of
    ``groundtruths`` (definition -> mask on the model grid), definition by definition; with a
    ``parcellation`` on the model grid also the ROI ranking (NaN where the mask lies in no parcel).

    ``weights``, ``version`` and ``code`` are not used here: they are the cache key's name for
    ``model`` (and ``random_model``, made from it) and for the code that computes and scores the
    maps (:func:`~nipype_xai.benchmark.provenance.code_digest`). ``data`` (background, patterns)
    is laid over ``method_params``; ``data_digest`` is its name in the cache key.
    """
    from ..attribution import is_baseline

    rows: dict[str, list[dict[str, Any]]] = {groundtruth: [] for groundtruth in groundtruths}
    for name, volume, seconds in subject_maps(
            model, torch.from_numpy(x).to(device), target, methods,
            method_params=merge_params(method_params, data.params), seed=seed,
            random_model=random_model, random_model_methods=random_model_methods,
            random_seed=random_seed, net_params=data.for_net):
        on_map(name)
        for groundtruth, mask in groundtruths.items():
            values, notes = _scores(volume, mask, brain, affine, parcellation)
            rows[groundtruth].append({
                "task": identity["task"], "groundtruth": groundtruth, **identity, "method": name,
                "kind": "baseline" if is_baseline(name) else "method",
                **{metric: values.get(metric, float("nan")) for metric in metrics},
                "emd_method": notes.get("emd_method"), "seconds": round(seconds, 3)})
    return [row for part in rows.values() for row in part]


def _scores(volume: np.ndarray, mask: np.ndarray, brain: np.ndarray, affine: np.ndarray,
            parcellation: Optional[np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    """Every metric of one map against one mask (score ``abs``); the ROI metrics are left out
    (NaN in the table) when the mask lies in no parcel of ``parcellation``."""
    from ..metrics import overlap_metrics_report
    from ..metrics.inputs import MetricsError

    if parcellation is not None and (parcellation[mask] != 0).any():
        try:
            return overlap_metrics_report(volume, mask, brain, score="abs", affine=affine,
                                          parcellation=parcellation, parcellation_affine=affine)
        except MetricsError as error:
            if "parcellation" not in str(error):
                raise
    return overlap_metrics_report(volume, mask, brain, score="abs", affine=affine)


def _sanity_rows(model: nn.Module, x: np.ndarray, methods: Sequence[str], *,
                 method_params: Mapping[str, Mapping[str, Any]], seed: int,
                 max_steps: Optional[int], mask: np.ndarray, weights: str, version: str,
                 code: str, device: str, progress: bool, data: MethodData,
                 data_digest: str) -> list[dict[str, Any]]:
    """:func:`model_randomization_check` of the sanity subjects ``x`` (``weights``, ``version``,
    ``data_digest``: the cache key, as for :func:`_score_subject`)."""
    return model_randomization_check(
        model, torch.from_numpy(x).to(device), methods,
        method_params=merge_params(method_params, data.params), seed=seed,
        randomization_seed=seed, max_steps=max_steps, mask=mask, progress=progress,
        net_params=data.for_net)


# --------------------------------------------------------------------------------------------
# One task x model
# --------------------------------------------------------------------------------------------


def _groundtruth_path(cohort: Path, participant_id: str, label: str,
                      resolution_mm: float) -> Path:
    """A template-space ``label-<label>`` mask of the cohort's ground truth."""
    from ..synth import TEMPLATE_SPACE

    entities = {"subject": participant_id.removeprefix("sub-"), "space": TEMPLATE_SPACE,
                "label": label, "suffix": "mask", "extension": ".nii.gz"}
    if float(resolution_mm) != 1.0:
        entities["res"] = resolution_label(resolution_mm)
    return derivative_path(entities, cohort / _GROUNDTRUTH)


def _mask_on_grid(image: nib.spatialimages.SpatialImage, grid) -> np.ndarray:
    """A template-space mask on the model grid, nearest neighbour (a mask stays a mask)."""
    from nilearn.image import resample_img

    resampled = resample_img(image, target_affine=grid.affine, target_shape=grid.shape,
                             interpolation="nearest", fill_value=0, force_resample=True,
                             copy_header=True)
    return np.asarray(resampled.dataobj) > 0.5


def groundtruth_masks(cohort: Path, participant_id: str, task: str, groundtruths: Sequence[str],
                      resolution_mm: float, grid, brain: np.ndarray,
                      ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """One test subject's ground-truth masks on the model grid, per definition.

    Parameters
    ----------
    cohort
        The test cohort (its ``derivatives/groundtruth``).
    participant_id
        ``sub-XX``.
    task
        The cohort's task.
    groundtruths
        Definitions (:data:`~nipype_xai.benchmark.settings.GROUNDTRUTHS`); one that does not
        apply to the task (:func:`~nipype_xai.benchmark.settings.groundtruth_mask_label`) is
        left out silently.
    resolution_mm
        The cohort's voxel size (which ``res-`` the template-space masks carry).
    grid, brain
        The model grid and the brain mask on it: a mask is resampled there (nearest neighbour)
        and restricted to the brain.

    Returns
    -------
    tuple
        ``{definition: boolean mask}`` of the definitions the subject is scored against, and
        ``{definition: reason}`` of those it is not (no mask file: a control has no signal; or
        a mask empty on the model grid).
    """
    from ..images import load_volume

    masks: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    for groundtruth in groundtruths:
        label = groundtruth_mask_label(task, groundtruth)
        if label is None:
            continue
        path = _groundtruth_path(cohort, participant_id, label, resolution_mm)
        if not path.is_file():
            missing[groundtruth] = f"no label-{label} mask"
            continue
        mask = _mask_on_grid(load_volume(path), grid) & brain
        if mask.any():
            masks[groundtruth] = mask
        else:
            missing[groundtruth] = f"label-{label} mask empty on the model grid"
    return masks, missing


def score_model(bundle, task: str, test_root: Path, settings, memory,
                training_seed: Optional[int] = None, data: Optional[MethodData] = None,
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Score every test subject against its ground truths, and run the sanity check, for one
    model (the subjects of ``settings.part`` only, when it is set).

    Parameters
    ----------
    bundle
        The model (:class:`~nipype_xai.benchmark.training.BenchmarkModel`).
    task
        Its task.
    test_root
        The task's test cohort.
    settings
        The run's :class:`~nipype_xai.benchmark.BenchmarkSettings`.
    memory
        The :class:`joblib.Memory` of finished subjects and sanity checks.
    training_seed
        The seed the model was trained with (the ``training_seed`` column; None for a given
        model).
    data
        The background and patterns of the methods that take them
        (:func:`~nipype_xai.benchmark.method_data.method_data`); None: none (those methods then
        run with their defaults).

    Returns
    -------
    tuple
        ``subjects.tsv``'s rows of this model (definition by definition, in the order of
        :data:`~nipype_xai.benchmark.settings.GROUNDTRUTHS`) and ``sanity.tsv``'s, and
        ``{"summary": its models.tsv row, "skipped": (subject, groundtruth) pairs not scored,
        with the reason}``. ``models.tsv`` counts a subject as scored when it is scored against
        at least one definition. The sanity subjects are chosen among all test subjects with a
        ground truth (correctly classified first, then in cohort order), so every part agrees on
        them; a part checks those among its own subjects.
    """
    from tqdm.auto import tqdm

    from ..metrics import randomize_model
    from ..models.preprocessing import model_grid_for
    from ..synth import load_template_anatomy
    from ..synth.train import evaluate, load_cohort_arrays, read_participants

    s = settings
    data = data or MethodData.none()
    spec, model = bundle.spec, bundle.model.to(s.device).eval()
    X, y, subjects = load_cohort_arrays(test_root, spec, to_template=TO_TEMPLATE[task],
                                        progress=False)
    scores = evaluate(model, X, y, device=s.device)
    predicted = scores["predictions"]
    learned = bool(scores["balanced_accuracy"] >= s.min_balanced_accuracy)
    k, n_parts = s.part or (1, 1)
    labels = dict(read_participants(test_root))
    # The cache's name for the weights and the code (see the module docstring).
    key = {"weights": bundle.record.get("weights_sha256") or state_digest(model),
           "version": __version__, "code": code_digest()}

    # The test images are on the cohort's template grid (load_cohort_arrays took them from there
    # to the model grid), as are the template brain mask and the ground-truth masks (the atrophy
    # signal's for the T1w moved by the affine alone, as TO_TEMPLATE["atrophy"] moves it).
    template_mask = load_template_anatomy(s.resolution_mm).brain_mask
    grid = model_grid_for(template_mask, spec)
    brain = _mask_on_grid(template_mask, grid)
    random_model = randomize_model(model, s.seed) if s.random_model_methods else None
    parcellation = None
    if s.parcellation is not None:  # integer labels on the model grid, nearest neighbour
        from nilearn.image import resample_img

        from ..images import load_volume

        parcels = resample_img(load_volume(s.parcellation), target_affine=grid.affine,
                               target_shape=grid.shape, interpolation="nearest", fill_value=0,
                               force_resample=True, copy_header=True)
        parcellation = np.rint(np.asarray(parcels.dataobj)).astype(np.int32) * brain
    score_subject = memory.cache(_score_subject,
                                 ignore=["model", "random_model", "device", "on_map", "data"])

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    scored: list[int] = []
    with_groundtruth: list[int] = []
    ours = [i for i in range(len(subjects)) if i % n_parts == k - 1]
    bar = tqdm(range(len(subjects)), desc=f"{task}/{spec.name}", unit="subject",
               disable=not s.progress)
    for i in bar:
        subject = subjects[i]
        masks, missing = groundtruth_masks(test_root, subject, task, s.groundtruths,
                                           s.resolution_mm, grid, brain)
        if masks:
            with_groundtruth.append(i)
        if i not in ours:
            continue
        skipped += [{"subject": subject, "groundtruth": groundtruth,
                     "reason": f"{reason} ({labels[subject]})"}
                    for groundtruth, reason in missing.items()]
        if not masks:
            continue
        scored.append(i)
        target = int(predicted[i])
        identity = {"task": task, "architecture": bundle.name, "training_seed": training_seed,
                    "learned": learned, "subject": subject, "label": labels[subject],
                    "predicted": spec.outputs[target], "correct": bool(target == int(y[i]))}
        rows += score_subject(
            model, random_model, X[i:i + 1].numpy(), target, masks, brain, grid.affine,
            identity, methods=s.methods, metrics=s.metrics, parcellation=parcellation,
            method_params=s.method_params, seed=s.seed,
            random_model_methods=s.random_model_methods, random_seed=s.seed + i,
            device=s.device, on_map=bar.set_postfix_str, data=data, data_digest=data.digest,
            **key)

    # Sanity subjects: correctly classified first (a check of maps that explain a right decision),
    # chosen among all subjects so that every part agrees; each part checks its own, one subject
    # at a time (one cached result each, one row per subject and depth).
    chosen = sorted(with_groundtruth,
                    key=lambda i: (int(predicted[i]) != int(y[i]), i))[:s.n_sanity]
    sanity_rows: list[dict[str, Any]] = []
    if s.sanity_methods:
        check = memory.cache(_sanity_rows, ignore=["model", "device", "progress", "data"])
        for i in (i for i in chosen if i in ours):
            for row in check(model, X[i:i + 1].numpy(), s.sanity_methods,
                             method_params=s.method_params, seed=s.seed,
                             max_steps=s.sanity_max_steps, mask=brain, device=s.device,
                             progress=s.progress, data=data, data_digest=data.digest, **key):
                sanity_rows.append({
                    "task": task, "architecture": bundle.name, "training_seed": training_seed,
                    "learned": learned, "subject": subjects[i],
                    "correct": bool(int(predicted[i]) == int(y[i])), **row})

    # Definition by definition (a stable sort keeps the subjects' order within each).
    rows.sort(key=lambda row: GROUNDTRUTHS.index(row["groundtruth"]))
    n_correct = sum(1 for i in scored if int(predicted[i]) == int(y[i]))
    summary = {
        "task": task, "architecture": bundle.name, "training_seed": training_seed,
        "spec": spec.name, "learned": learned,
        "weights_sha256": key["weights"],
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "test_balanced_accuracy": scores["balanced_accuracy"], "test_accuracy": scores["accuracy"],
        "n_test": scores["n"], "confusion": json.dumps(scores["confusion"]),
        "n_scored": len(scored), "n_scored_correct": n_correct,
        "n_scored_incorrect": len(scored) - n_correct, "n_skipped": len(ours) - len(scored),
        "sanity_subjects": ",".join(subjects[i] for i in chosen if i in ours),
    }
    return pd.DataFrame(rows), pd.DataFrame(sanity_rows), {"summary": summary,
                                                            "skipped": skipped}
