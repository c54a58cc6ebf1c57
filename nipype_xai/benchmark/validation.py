"""The validation benchmark: which attribution method finds a *known* signal (SPEC §8, issue 6).

For each synthetic task (:mod:`nipype_xai.synth`) it generates a training and a test cohort, trains
(or loads) each architecture, runs every attribution method and the baselines on every test
subject that has a ground-truth mask, scores each map against that mask with every overlap metric
of :func:`nipype_xai.metrics.overlap_metrics`, and summarises over subjects with paired bootstrap
confidence intervals (:func:`nipype_xai.metrics.group.summarize_methods`). A cascading
model-randomisation check (Adebayo et al. 2018) runs on a few test subjects per method.

Design decisions (each is reported in ``provenance.json`` and the HTML report)
-----------------------------------------------------------------------------
* **Space and grid.** Everything is scored in template space on the model grid: the test T1w is
  brought into the template with the cohort's known transform (:func:`~nipype_xai.synth.train.
  load_cohort_arrays`, the same loader as training), the template-space ground-truth mask and the
  template brain mask are resampled onto the model grid with nearest-neighbour interpolation. No
  registration error enters the scores; it is a benchmark of the explanation, not of ANTs.
* **Which subjects are scored.** Only subjects with a ground-truth mask. Lesion task: the
  controls have no lesion, so no metric is defined for them and they are skipped (counted in
  ``models.tsv``). Atrophy task: every subject has the caudate region mask, and both classes are
  scored -- a correct "control" decision also rests on the (normal) caudate -- but the ``label``
  column keeps the classes apart in every summary.
* **Correct and incorrect predictions are kept apart** (the ``correct`` column; as Oliveira et al.
  did): a map of a misclassified subject explains a wrong decision, and pooling it with the
  correct ones would blur both.
* **Target.** Each map explains the class the trained model *predicts* (``target=None`` in
  :func:`nipype_xai.attribution.attribute`, what the pipeline does for a lab's data).
* **Score.** ``score="abs"`` for every metric: signed maps are compared by their magnitude, as in
  the papers this benchmark reproduces.
* **Baselines** (SPEC §3): ``sobel`` and ``laplace`` edge maps of the input and seeded ``random``
  noise (model-free), and ``random_model_<method>``: a method run on the fully weight-randomised
  model (:func:`~nipype_xai.metrics.randomize_model`, the last step of the cascade), explaining the
  trained model's predicted class. By default for ``gradient`` and ``smoothgrad``; every method is
  accepted.
* **Sanity check.** Cascading randomisation from the output layer down, in forward order
  (:func:`~nipype_xai.metrics.sanity.forward_order`), Spearman rank correlation of ``|map|``
  between the trained and the randomised model, averaged over the sanity subjects. With
  ``sanity_max_steps`` only that many evenly spaced depths of the cascade are computed (always
  the first and the full randomisation); with all steps the rows equal
  :func:`~nipype_xai.metrics.sanity.cascading_randomization`'s.

Output layout (``OUTPUT_DIR``)::

    benchmark.tsv   task x architecture x label x correct x method x metric: mean, sd, CI, n, rank
    subjects.tsv    one row per task x architecture x subject x method: every metric
    sanity.tsv      task x architecture x method x randomised layers: Spearman
    models.tsv      per task x architecture: test balanced accuracy, subjects scored / skipped
    provenance.json command, seeds, versions, machine, settings
    benchmark.html  the report (self-contained)
    benchmark.md    the headline tables (mean [95% CI]) as Markdown
    figures/        ranking plots per task x architecture, sanity-check plots (PNG + SVG)
    cohorts/        the generated BIDS cohorts (reused when present: same seed, same bytes)
    models/         trained weights + spec JSON (reused when trained with the same settings)
    work/           finished task x architecture results, reused by a re-run with the same settings
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_write
from ..bids import derivative_path, resolution_label
from ..tables import read_tsv, write_tsv
from ..synth.train import EASY_COHORT_OPTIONS, TASK_MAX_SHIFT, TASK_OPTIMIZER, TASK_TO_TEMPLATE

__all__ = [
    "ARCHITECTURES",
    "BASELINES",
    "DEFAULT_RANDOM_MODEL_METHODS",
    "METRICS",
    "TO_TEMPLATE",
    "architecture_spec",
    "cohort_seeds",
    "model_randomization_check",
    "read_table",
    "run_validation_benchmark",
    "subject_maps",
    "summarize_benchmark",
]

PathLike = Union[str, os.PathLike]

#: Every overlap metric of SPEC §3 that needs no parcellation, in the order of the tables.
METRICS: tuple[str, ...] = (
    "precision_at_k", "relevance_mass_accuracy", "pointing_game", "auroc", "average_precision",
    "dice_at_k", "emd", "emd_score",
)

#: The model-free baselines (SPEC §3); ``random_model_<method>`` are added per method.
BASELINES: tuple[str, ...] = ("sobel", "laplace", "random")

#: Methods run on the fully randomised model by default (``random_model_<method>``).
DEFAULT_RANDOM_MODEL_METHODS: tuple[str, ...] = ("gradient", "smoothgrad")

#: How each task's T1w images reach template space (see :mod:`nipype_xai.synth.train`): lesions
#: survive any warp, so the full known transform; the atrophy task's signal *is* a deformation,
#: which a perfect nonlinear registration would undo, so only the affine part.
TO_TEMPLATE: dict[str, str] = TASK_TO_TEMPLATE

#: The architectures by their command-line name: ``(class path, kwargs)``. Sizes are chosen so that
#: each trains on a CPU in minutes on the 4 mm grid (50 x 59 x 48 voxels):
#:
#: * ``tinycnn``: :class:`~nipype_xai.models.TinyCNN3D`, width 8, 4 blocks, global max pooling
#:   (the bundled reference model's architecture; ~73k parameters).
#: * ``tinycnn-flat``: :class:`~nipype_xai.models.TinyCNN3D`, width 8, 2 blocks, no global pooling:
#:   the 8 mm x 16-channel feature grid is flattened into the classifier (``pooling="none"``;
#:   ``input_shape`` is the model grid; ~68k parameters). A position-aware model for the atrophy
#:   task, whose signal is a small change of shape at one fixed place: the global pooling models
#:   stayed at chance on it. On 300 atrophy subjects (200 + 100 easy) with ``lr=1e-3``,
#:   ``weight_decay=1e-2`` and no shifts it reached balanced accuracy 0.75 on a fresh cohort
#:   (dropout 0.5 before the classifier: 0.52; three blocks, lr 3e-3, 15 epochs: 0.60).
#: * ``sfcn``: :class:`~nipype_xai.models.SFCN` at a quarter of the published widths,
#:   ``channel_number = [8, 16, 32, 64, 64, 16]`` instead of ``[32, 64, 128, 256, 256, 64]``
#:   (~185k parameters); it pools five times, so it needs at least 32 voxels per axis (4 mm or
#:   finer for the whole brain).
#: * ``resnet``: MONAI ``ResNet`` (3D; :class:`~nipype_xai.models.MonaiResNet`), basic blocks,
#:   one per stage, widths 8-16-32-64, a 3^3 stride-1 stem followed by MONAI's max pool, global
#:   *max* pooling instead of MONAI's average (~225k parameters). Its residual blocks are what
#:   the LRP canonizer for MONAI ResNet blocks handles. With a stride-2 stem and no stem pooling
#:   (global average or max pooling) it stayed at chance for 12 epochs on the lesion task.
#: * ``densenet``: MONAI ``DenseNet`` (3D), ``init_features=8``, ``growth_rate=8``,
#:   ``block_config=[2, 2, 2]``, ``bn_size=2`` (~26k parameters); ReLUs not in place, so that
#:   hook-based methods (guided backprop, DeepLift, LRP) see each module's input and output. Its
#:   stem (7^3 convolution with stride 2, then a stride-2 max pool) leaves 16 mm features on the
#:   4 mm grid, too coarse for the lesions: it stayed at chance (balanced accuracy 0.50-0.55) with
#:   the curriculum; use it on 1-2 mm model grids (``--model-resolution``), e.g. on a GPU.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    # The bundled model's architecture (see scripts/train_bundled_model.py).
    "tinycnn": ("nipype_xai.models.architectures:TinyCNN3D",
                {"n_outputs": 2, "width": 8, "n_blocks": 4, "pooling": "max"}),
    "sfcn": ("nipype_xai.models.architectures:SFCN",
             {"channel_number": [8, 16, 32, 64, 64, 16], "n_outputs": 2, "dropout": 0.5}),
    "tinycnn-flat": ("nipype_xai.models.architectures:TinyCNN3D",
                     {"n_outputs": 2, "width": 8, "n_blocks": 2, "pooling": "none"}),
    "resnet": ("nipype_xai.models.architectures:MonaiResNet",
               {"pooling": "max", "block": "basic", "layers": [1, 1, 1, 1],
                "block_inplanes": [8, 16, 32, 64], "spatial_dims": 3, "n_input_channels": 1,
                "conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": False, "num_classes": 2,
                "act": ["relu", {"inplace": False}]}),
    "densenet": ("monai.networks.nets:DenseNet",
                 {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 8,
                  "growth_rate": 8, "block_config": [2, 2, 2], "bn_size": 2,
                  "act": ["relu", {"inplace": False}]}),
}

# Columns that identify one summarised group of subjects in benchmark.tsv.
_SUBSET_COLUMNS = ("task", "architecture", "label", "correct")
_GROUNDTRUTH = Path("derivatives", "groundtruth")


# --------------------------------------------------------------------------------------------
# Specs and cohorts
# --------------------------------------------------------------------------------------------


def cohort_seeds(seed: int) -> tuple[int, int, int]:
    """Seeds of the training, the test and the easy training cohort for a benchmark ``seed``.

    Three different words of ``numpy.random.SeedSequence(seed)``: the test subjects are never
    training subjects, and the same benchmark seed always draws the same cohorts.
    """
    train, test, easy = np.random.SeedSequence(int(seed)).generate_state(3)
    return int(train), int(test), int(easy)


def architecture_spec(architecture: str, task: str, resolution_mm: float):
    """The model spec an architecture is trained under: whole-brain template grid at a resolution.

    Parameters
    ----------
    architecture
        A key of :data:`ARCHITECTURES`.
    task
        ``"lesion"`` or ``"atrophy"``: the outputs are ``("control", task)``.
    resolution_mm
        Isotropic voxel size of the model grid. The shape is the template's own grid at that
        resolution (the grid the cohort is written on), so going to the model grid is an exact
        copy with no interpolation.

    Returns
    -------
    nipype_xai.models.ModelSpec
        A spec with ``weights`` set to ``<task>_<architecture>.pt`` (relative; not written yet).
    """
    from ..models import InputSpec, ModelSpec
    from ..synth import TEMPLATE_SPACE, load_template_anatomy

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose among "
                         f"{', '.join(ARCHITECTURES)}")
    class_path, kwargs = ARCHITECTURES[architecture]
    shape = load_template_anatomy(float(resolution_mm)).shape
    name = f"{task}_{architecture}"
    kwargs = json.loads(json.dumps(kwargs))  # a private copy, JSON-shaped like a loaded spec
    if kwargs.get("pooling") == "none":  # a position-aware head is built for the grid
        kwargs["input_shape"] = list(shape)
    return ModelSpec(
        architecture=class_path,
        kwargs=kwargs,
        weights=Path(f"{name}.pt"),
        input=InputSpec(space=TEMPLATE_SPACE, resolution_mm=(float(resolution_mm),) * 3,
                        shape=tuple(shape), normalization="zscore", mask="nonzero"),
        outputs=("control", task),
        task="classification",
        name=name,
    )


def _check_runs(spec, name: str) -> None:
    """Fail before any cohort is generated when the architecture cannot take the grid."""
    from ..synth.train import build_model

    model = build_model(spec).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, spec.input.channels, *spec.input.shape))
    except RuntimeError as error:
        raise ValueError(
            f"architecture {name!r} cannot run on the {spec.input.resolution_mm[0]:g} mm grid "
            f"{tuple(spec.input.shape)} ({str(error).splitlines()[0]}); use a finer "
            "--model-resolution"
        ) from error


def _cohort(root: Path, task: str, n_subjects: int, seed: int, resolution_mm: float,
            progress: bool, easy: bool = False) -> Path:
    """Generate a cohort, or reuse a complete one (same seed and size: the same bytes).

    ``easy``: with :data:`~nipype_xai.synth.train.EASY_COHORT_OPTIONS` (a stronger signal).
    """
    from ..synth import generate_cohort

    if (root / "participants.tsv").is_file():
        return root
    options = EASY_COHORT_OPTIONS[task] if easy else {}
    return generate_cohort(root, task, n_subjects, seed=seed, resolution_mm=resolution_mm,
                           overwrite=True, progress=progress, **options)


def _groundtruth_path(cohort: Path, participant_id: str, task: str,
                      resolution_mm: float) -> Path:
    from ..synth import TEMPLATE_SPACE, groundtruth_label

    entities = {"subject": participant_id.removeprefix("sub-"), "space": TEMPLATE_SPACE,
                "label": groundtruth_label(task), "suffix": "mask", "extension": ".nii.gz"}
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

    Yields
    ------
    tuple
        ``(name, map, seconds)``: the map as a float64 ``(X, Y, Z)`` array (signed, channels
        summed), and the wall time of the call that produced it (shared by the members of a
        family, which come from one call).
    """
    from ..attribution import attribute_many
    from ..metrics import laplace, random, sobel

    method_params = dict(method_params or {})
    jobs: list[tuple[nn.Module, list[str], str]] = [(model, group, "") for group in
                                                    _method_groups(methods)]
    if random_model is not None:
        jobs += [(random_model, group, "random_model_")
                 for group in _method_groups(random_model_methods)]
    for net, group, prefix in jobs:
        started = time.perf_counter()
        maps = attribute_many(net, x, group, target,
                              method_params=_params_for(group, method_params, seed))
        seconds = time.perf_counter() - started
        for name in group:
            yield prefix + name, _volume(maps.pop(name)), seconds
    for name, baseline in (("sobel", sobel), ("laplace", laplace),
                           ("random", lambda v: random(v, seed=random_seed))):
        started = time.perf_counter()
        volume = _volume(baseline(x))
        yield name, volume, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Model-randomisation sanity check
# --------------------------------------------------------------------------------------------


def _cascade_steps(n_layers: int, max_steps: Optional[int]) -> list[int]:
    """Numbers of randomised layers to compute: all, or ``max_steps`` evenly spaced ones.

    The first step (output layer only) and the last (the whole model) are always included: the
    first shows how fast a map reacts, the last is the fully randomised model.
    """
    if max_steps is None or max_steps >= n_layers:
        return list(range(1, n_layers + 1))
    if max_steps < 2:
        raise ValueError(f"sanity_max_steps must be at least 2 (first and last), got {max_steps}")
    return sorted({round(float(v)) for v in np.linspace(1, n_layers, max_steps)})


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
) -> list[dict[str, Any]]:
    """Cascading model randomisation (Adebayo et al. 2018) for several methods at once.

    The same computation as :func:`nipype_xai.metrics.sanity.cascading_randomization` (cascade
    mode, Spearman of ``|map|``, target fixed to the trained model's predicted class), organised
    so that each randomised copy of the model is made once and shared by all methods, families
    share their passes, and only ``max_steps`` depths may be computed.

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

    Returns
    -------
    list of dict
        One row per method x depth: ``method``, ``n_randomized`` (layers randomised, from the
        output layer down), ``layer`` (the deepest randomised layer), ``n_layers`` and
        ``spearman`` (mean over the samples; NaN when a map is constant).
    """
    from tqdm.auto import tqdm

    from ..attribution import attribute_many
    from ..metrics import randomize_model
    from ..metrics.sanity import forward_order, sample_masks, spearman

    method_params = dict(method_params or {})
    groups = _method_groups(methods)
    target = _predicted_classes(model, x)

    def all_maps(net: nn.Module) -> dict[str, np.ndarray]:
        out = {}
        for group in groups:
            maps = attribute_many(net, x, group, target,
                                  method_params=_params_for(group, method_params, seed))
            out.update({name: np.abs(maps[name].detach().to("cpu", torch.float64).numpy())
                        for name in group})
        return out

    original = all_maps(model)
    inside = sample_masks(mask, x.shape)
    order = forward_order(model, x)
    rows = []
    for step in tqdm(_cascade_steps(len(order), max_steps), desc="sanity", unit="depth",
                     disable=not progress, leave=False):
        randomized = randomize_model(model, randomization_seed, layers=order[len(order) - step:])
        maps = all_maps(randomized)
        for name in dict.fromkeys(methods):
            with np.errstate(invalid="ignore", divide="ignore"):
                value = float(np.mean([spearman(o[:, m], r[:, m]) for o, r, m in
                                       zip(original[name], maps[name], inside)]))
            rows.append({"method": name, "n_randomized": step, "layer": order[len(order) - step],
                         "n_layers": len(order), "spearman": value})
    return rows


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def summarize_benchmark(
    table: pd.DataFrame,
    *,
    metrics: Sequence[str] = METRICS,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """``benchmark.tsv`` from ``subjects.tsv``: per group of subjects, per method and metric.

    Each group of subjects -- one task, architecture, class ``label`` and ``correct`` value -- is
    summarised on its own with :func:`~nipype_xai.metrics.group.summarize_methods`: the bootstrap
    resamples exactly that group's subjects, with the same resamples for every method (paired).

    Parameters
    ----------
    table
        One row per subject x method with the columns ``task``, ``architecture``, ``label``,
        ``correct``, ``subject``, ``method`` and the metric columns.
    metrics
        Metric columns to summarise (those absent from ``table`` are left out).
    n_boot, ci, seed
        The bootstrap.

    Returns
    -------
    pandas.DataFrame
        Columns ``task, architecture, label, correct, method, metric, mean, sd, ci_low, ci_high,
        n, rank`` (rank within the group and metric; 1 = best). ``attrs`` hold ``ci``, ``n_boot``
        and ``seed``.
    """
    from ..metrics.group import SUMMARY_COLUMNS, summarize_methods

    missing = [c for c in (*_SUBSET_COLUMNS, "subject", "method") if c not in table.columns]
    if missing:
        raise ValueError(f"subjects table: missing column(s) {missing}")
    metrics = [m for m in metrics if m in table.columns]
    columns = [*_SUBSET_COLUMNS, "method", *SUMMARY_COLUMNS]
    parts = []
    for key, part in table.groupby(list(_SUBSET_COLUMNS), sort=False):
        summary = summarize_methods(part, metrics=metrics, n_boot=n_boot, ci=ci, seed=seed,
                                    group_by=("method",))
        for column, value in zip(_SUBSET_COLUMNS, key):
            summary[column] = value
        parts.append(summary[columns])
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    out.attrs.update(ci=float(ci), n_boot=int(n_boot), seed=int(seed))
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_table(path: PathLike) -> pd.DataFrame:
    """Read a benchmark TSV back (:func:`nipype_xai.tables.read_tsv`)."""
    return read_tsv(path)


def _write_json(path: Path, content: Mapping[str, Any]) -> Path:
    text = json.dumps(content, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"nipype_xai": __version__, "torch": torch.__version__,
                "python": platform.python_version()}
    for package in ("numpy", "scipy", "pandas", "nibabel", "nilearn", "captum", "zennit", "monai",
                    "pot"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            names = [line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# --------------------------------------------------------------------------------------------
# One task x architecture
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Model:
    """A trained (or loaded) model and how it came about."""

    name: str
    spec: Any
    model: nn.Module
    record: dict[str, Any]


def _task_settings(settings: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The training settings of one task: ``None`` for ``max_shift``, ``lr`` or ``weight_decay``
    becomes the task's default (:data:`~nipype_xai.synth.train.TASK_MAX_SHIFT`,
    :data:`~nipype_xai.synth.train.TASK_OPTIMIZER`)."""
    resolved = dict(settings)
    if resolved.get("max_shift") is None:
        resolved["max_shift"] = TASK_MAX_SHIFT[task]
    for key, value in TASK_OPTIMIZER[task].items():
        if resolved.get(key) is None:
            resolved[key] = value
    return resolved


def _train_or_load(name: str, spec, train_roots: Sequence[Path], task: str, out_dir: Path,
                   settings: Mapping[str, Any], arrays: dict, device: str,
                   progress: bool) -> _Model:
    """Train ``spec`` on the training cohorts (pooled), or reuse weights trained the same way."""
    from ..models import load_model, load_model_spec
    from ..synth.train import load_cohort_arrays, save_trained_model, train_model

    spec_path = out_dir / f"{spec.name}.json"
    wanted = {"train_cohorts": [root.name for root in train_roots],
              "to_template": TO_TEMPLATE[task],
              "settings": dict(settings), "architecture": spec.architecture,
              "kwargs": dict(spec.kwargs)}
    if spec_path.is_file():
        stored = json.loads(spec_path.read_text()).get("training", {})
        if all(stored.get(k) == json.loads(json.dumps(v)) for k, v in wanted.items()):
            loaded = load_model_spec(spec_path)
            return _Model(name, loaded, load_model(loaded, device=device),
                          {**stored, "reused": True})
    key = (spec.input, TO_TEMPLATE[task], tuple(str(root) for root in train_roots))
    if key not in arrays:
        arrays.clear()  # one training set in memory at a time
        parts = [load_cohort_arrays(root, spec, to_template=TO_TEMPLATE[task],
                                    progress=progress)[:2] for root in train_roots]
        arrays[key] = (torch.cat([X for X, _ in parts]), torch.cat([y for _, y in parts]))
    X, y = arrays[key]
    model, history = train_model(spec, X, y, device=device, progress=progress, **settings)
    record = {**wanted, "final_loss": history["loss"][-1] if history["loss"] else None,
              "train_seconds": round(history["seconds"], 1),
              "n_parameters": history["n_parameters"], "n_train": len(y)}
    saved = save_trained_model(model, spec, out_dir, name=spec.name, metadata=record)
    return _Model(name, load_model_spec(saved), model, {**record, "reused": False})


def _run_one(bundle: _Model, task: str, test_root: Path, resolution_mm: float, *,
             methods: Sequence[str], method_params: Mapping[str, Mapping[str, Any]], seed: int,
             random_model_methods: Sequence[str], n_sanity: int,
             sanity_methods: Sequence[str], sanity_max_steps: Optional[int], device: str,
             progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Score every test subject with a ground truth, and run the sanity check, for one model."""
    from tqdm.auto import tqdm

    from ..images import load_volume
    from ..metrics import overlap_metrics_report, randomize_model
    from ..models.preprocessing import model_grid_for
    from ..synth import load_template_anatomy
    from ..synth.train import evaluate, load_cohort_arrays, read_participants

    spec, model = bundle.spec, bundle.model.to(device).eval()
    X, y, subjects = load_cohort_arrays(test_root, spec, to_template=TO_TEMPLATE[task],
                                        progress=False)
    scores = evaluate(model, X, y, device=device)
    predicted = scores["predictions"]
    labels = dict(read_participants(test_root))

    # The test images are on the cohort's template grid (load_cohort_arrays took them from there
    # to the model grid), as are the template brain mask and the ground-truth masks.
    template_mask = load_template_anatomy(resolution_mm).brain_mask
    grid = model_grid_for(template_mask, spec)
    brain = _mask_on_grid(template_mask, grid)
    random_model = randomize_model(model, seed) if random_model_methods else None

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    scored: list[int] = []
    bar = tqdm(range(len(subjects)), desc=f"{task}/{bundle.name}", unit="subject",
               disable=not progress)
    for i in bar:
        subject = subjects[i]
        path = _groundtruth_path(test_root, subject, task, resolution_mm)
        if not path.is_file():
            skipped.append({"subject": subject, "reason": f"no ground-truth mask "
                                                          f"({labels[subject]})"})
            continue
        gt = _mask_on_grid(load_volume(path), grid) & brain
        if not gt.any():
            skipped.append({"subject": subject, "reason": "ground truth empty on the model grid"})
            continue
        scored.append(i)
        x = X[i:i + 1].to(device)
        target = int(predicted[i])
        common = {"task": task, "architecture": bundle.name, "subject": subject,
                  "label": labels[subject], "predicted": spec.outputs[target],
                  "correct": bool(target == int(y[i]))}
        for name, volume, seconds in subject_maps(
                model, x, target, methods, method_params=method_params, seed=seed,
                random_model=random_model, random_model_methods=random_model_methods,
                random_seed=seed + i):
            bar.set_postfix_str(name)
            values, notes = overlap_metrics_report(volume, gt, brain, score="abs",
                                                   affine=grid.affine)
            rows.append({**common, "method": name,
                         "kind": "baseline" if name in BASELINES or name.startswith(
                             "random_model_") else "method",
                         **{metric: values.get(metric, float("nan")) for metric in METRICS},
                         "emd_method": notes.get("emd_method"), "seconds": round(seconds, 3)})

    # Sanity subjects: correctly classified first (a check of maps that explain a right decision).
    chosen = sorted(scored, key=lambda i: (int(predicted[i]) != int(y[i]), i))[:n_sanity]
    sanity_rows: list[dict[str, Any]] = []
    if chosen and sanity_methods:
        for row in model_randomization_check(
                model, X[chosen].to(device), sanity_methods, method_params=method_params,
                seed=seed, randomization_seed=seed, max_steps=sanity_max_steps,
                mask=brain, progress=progress):
            sanity_rows.append({"task": task, "architecture": bundle.name, **row,
                                "n_subjects": len(chosen)})

    n_correct = sum(1 for i in scored if int(predicted[i]) == int(y[i]))
    summary = {
        "task": task, "architecture": bundle.name, "spec": spec.name,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "test_balanced_accuracy": scores["balanced_accuracy"], "test_accuracy": scores["accuracy"],
        "n_test": scores["n"], "confusion": json.dumps(scores["confusion"]),
        "n_scored": len(scored), "n_scored_correct": n_correct,
        "n_scored_incorrect": len(scored) - n_correct, "n_skipped": len(skipped),
        "sanity_subjects": ",".join(subjects[i] for i in chosen),
    }
    return pd.DataFrame(rows), pd.DataFrame(sanity_rows), {"summary": summary,
                                                            "skipped": skipped}


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def run_validation_benchmark(
    output_dir: PathLike,
    *,
    tasks: Sequence[str] = ("lesion",),
    n_train: int = 200,
    n_test: int = 40,
    n_easy: Optional[int] = None,
    architectures: Sequence[str] = ("tinycnn",),
    methods: Optional[Sequence[str]] = None,
    seed: int = 0,
    resolution_mm: float = 2.0,
    model_resolution_mm: Optional[float] = None,
    epochs: int = 30,
    batch_size: int = 4,
    lr: Optional[float] = None,
    train_options: Optional[Mapping[str, Any]] = None,
    model_spec: Optional[PathLike] = None,
    trust_model_code: bool = False,
    external_weights: bool = False,
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    random_model_methods: Sequence[str] = DEFAULT_RANDOM_MODEL_METHODS,
    n_sanity: int = 2,
    sanity_methods: Optional[Sequence[str]] = None,
    sanity_max_steps: Optional[int] = None,
    n_boot: int = 2000,
    device: str = "cpu",
    progress: bool = True,
    command: Optional[str] = None,
) -> Path:
    """Run the validation benchmark and write its tables, figures and report.

    Parameters
    ----------
    output_dir
        Where everything is written (created if needed; see the module docstring for the layout).
        Cohorts, trained models and finished task x architecture results already there are
        reused when they were made with the same settings, so an interrupted run resumes.
    tasks
        Synthetic tasks: ``"lesion"`` and/or ``"atrophy"``.
    n_train, n_test
        Sizes of the training and the test cohort of each task (half of each positive).
    n_easy
        Size of the auxiliary "easy" training cohort of each task (a stronger signal, see
        :data:`~nipype_xai.synth.train.EASY_COHORT_OPTIONS`), pooled with the training cohort:
        the curriculum that makes the small models learn the default tasks on a CPU (the bundled
        model's recipe). None: ``n_train // 2``; 0: none. Test cohorts always have the default
        signal.
    architectures
        Keys of :data:`ARCHITECTURES` (ignored with ``model_spec``).
    methods
        Attribution methods (default: :func:`~nipype_xai.attribution.available_methods`).
    seed
        Master seed: the cohorts (:func:`cohort_seeds`), the training, every stochastic method,
        the baselines, the randomised models and the bootstrap.
    resolution_mm
        Voxel size of the generated cohorts (the images; 2 mm as the bundled model's recipe:
        small lesions generated directly at 4 mm look like grey matter).
    model_resolution_mm
        Voxel size of the trained models' grid (the template's own grid at that resolution).
        None: ``max(resolution_mm, 4)``, the bundled model's 4 mm, which trains on a CPU.
    epochs, batch_size, lr
        Training settings (:func:`~nipype_xai.synth.train.train_model`; AdamW, cosine decay,
        class-balanced batches, shifts, intensity jitter and left-right flips). ``lr=None``: the
        task's default (:data:`~nipype_xai.synth.train.TASK_OPTIMIZER`: 3e-3 for lesions, 1e-3
        for atrophy).
    train_options
        Other keyword arguments of :func:`~nipype_xai.synth.train.train_model` (``weight_decay``,
        ``augment``, ``max_shift``, ``intensity_jitter``, ``flip_x``), overriding the benchmark's
        (``weight_decay`` per task, 1e-4 for lesions and 1e-2 for atrophy; augmentation on;
        ``max_shift`` per task
        (:data:`~nipype_xai.synth.train.TASK_MAX_SHIFT`: 2 voxels for lesions, 0 for atrophy),
        ``intensity_jitter=0.1``,
        ``flip_x=True``: both tasks are bilateral on a symmetric template, so a flip keeps the
        label).
    model_spec
        A trained model's spec JSON instead of training (its input space must be
        MNI152NLin2009aSym and its outputs the task's classes, ``["control", "<task>"]``); no
        training cohort is generated. Only one task then makes sense.
    method_params
        Per-method parameter overrides, e.g. ``{"shapley_sampling": {"n_samples": 2}}``; also
        used for the sanity check and the ``random_model_`` baselines.
    random_model_methods
        Methods run on the fully randomised model as baselines (``random_model_<method>``).
    n_sanity
        Test subjects in the cascading randomisation check (correctly classified first).
    sanity_methods
        Methods checked (default: ``methods``).
    sanity_max_steps
        None: every layer of the cascade; else that many evenly spaced depths.
    n_boot
        Bootstrap replicates of the confidence intervals (95 %, percentile, over subjects).
    device
        ``"cpu"`` or a CUDA device.
    trust_model_code, external_weights
        The trust-boundary opt-ins for ``model_spec`` (:mod:`nipype_xai.models.spec`).
    progress
        tqdm progress bars.
    command
        The command line recorded in ``provenance.json`` (default: ``sys.argv``).

    Returns
    -------
    pathlib.Path
        ``benchmark.tsv``.

    Raises
    ------
    ValueError
        An unknown task, architecture or method, bad sizes, or an architecture that cannot run on
        the grid.
    """
    from ..attribution import available_methods
    from ..models import load_model, load_model_spec
    from ..synth import TASKS
    from .report import markdown_tables, write_figures, write_report

    started = time.time()
    out = Path(output_dir).absolute()
    tasks = list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task(s) {unknown}; choose among {', '.join(TASKS)}")
    known = available_methods()
    methods = list(dict.fromkeys(methods if methods is not None else known))
    sanity_methods = list(dict.fromkeys(sanity_methods if sanity_methods is not None
                                        else methods))
    random_model_methods = list(dict.fromkeys(random_model_methods))
    for label, names in (("methods", methods), ("sanity_methods", sanity_methods),
                         ("random_model_methods", random_model_methods)):
        bad = [m for m in names if m not in known]
        if bad:
            raise ValueError(f"{label}: unknown method(s) {bad}; available: {', '.join(known)}")
    if not methods:
        raise ValueError("no attribution method requested")
    method_params = {k: dict(v) for k, v in (method_params or {}).items()}
    bad = [m for m in method_params if m not in known]
    if bad:
        raise ValueError(f"method_params: unknown method(s) {bad}")
    if int(n_test) < 1 or (model_spec is None and int(n_train) < 2):
        raise ValueError(f"n_test must be >= 1 and n_train >= 2, got {n_test} and {n_train}")
    n_easy = int(n_train) // 2 if n_easy is None else int(n_easy)
    if n_easy < 0 or n_easy == 1:
        raise ValueError(f"n_easy must be 0 or >= 2, got {n_easy}")
    if model_resolution_mm is None:
        model_resolution_mm = max(float(resolution_mm), 4.0)
    model_resolution_mm = float(model_resolution_mm)
    if int(n_sanity) < 0:
        raise ValueError(f"n_sanity must be >= 0, got {n_sanity}")

    # The models to benchmark: (name, spec or None to train, loaded spec path or None).
    if model_spec is not None:
        given = load_model_spec(model_spec, external_weights=external_weights)
        names = [given.name]
        if len(tasks) > 1:
            raise ValueError("--model gives one trained model: benchmark one task with it")
    else:
        architectures = list(dict.fromkeys(architectures))
        bad = [a for a in architectures if a not in ARCHITECTURES]
        if bad or not architectures:
            raise ValueError(f"unknown architecture(s) {bad}; choose among "
                             f"{', '.join(ARCHITECTURES)}")
        names = architectures
        for name in architectures:
            _check_runs(architecture_spec(name, tasks[0], model_resolution_mm), name)

    train_seed, test_seed, easy_seed = cohort_seeds(seed)
    # None: the task's default (_task_settings).
    settings = {"epochs": int(epochs), "batch_size": int(batch_size),
                "lr": None if lr is None else float(lr), "weight_decay": None, "seed": int(seed), "augment": True, "max_shift": None,
                "intensity_jitter": 0.1, "flip_x": True}
    allowed = {"weight_decay", "augment", "max_shift", "intensity_jitter", "flip_x"}
    extra = sorted(set(train_options or {}) - allowed)
    if extra:
        raise ValueError(f"train_options: {extra} not accepted; accepted: {sorted(allowed)} "
                         "(epochs, batch_size, lr and seed have their own arguments)")
    settings.update(train_options or {})
    res = f"{float(resolution_mm):g}"
    all_rows, all_sanity, model_rows, skipped = [], [], [], []
    records: dict[str, Any] = {}
    for task in tasks:
        test_root = _cohort(out / "cohorts" / f"{task}_test_seed-{test_seed}_n-{n_test}_res-{res}",
                            task, int(n_test), test_seed, resolution_mm, progress)
        train_roots = []
        if model_spec is None:
            train_roots.append(_cohort(
                out / "cohorts" / f"{task}_train_seed-{train_seed}_n-{n_train}_res-{res}",
                task, int(n_train), train_seed, resolution_mm, progress))
            if n_easy:
                train_roots.append(_cohort(
                    out / "cohorts" / f"{task}-easy_train_seed-{easy_seed}_n-{n_easy}_res-{res}",
                    task, n_easy, easy_seed, resolution_mm, progress, easy=True))
        arrays: dict = {}
        for name in names:
            if model_spec is not None:
                bundle = _Model(name, given, load_model(given, device=device,
                                                        trust_code=trust_model_code),
                                {"loaded_from": str(Path(model_spec).absolute()),
                                 "weights_sha256": given.weights_sha256})
            else:
                bundle = _train_or_load(name, architecture_spec(name, task, model_resolution_mm),
                                        train_roots, task, out / "models",
                                        _task_settings(settings, task), arrays,
                                        device, progress)
            records[f"{task}/{name}"] = bundle.record

            key = {"task": task, "model": name, "test_cohort": test_root.name,
                   "weights": bundle.record.get("weights_sha256")
                   or _state_digest(bundle.model), "methods": methods,
                   "method_params": method_params, "seed": int(seed),
                   "random_model_methods": random_model_methods, "n_sanity": int(n_sanity),
                   "sanity_methods": sanity_methods, "sanity_max_steps": sanity_max_steps,
                   "version": __version__}
            stem = out / "work" / f"task-{task}_model-{_label(name)}"
            done = stem.with_name(stem.name + "_done.json")
            if done.is_file() and json.loads(done.read_text()).get("key") == _key_digest(key):
                stored = json.loads(done.read_text())
                subjects = read_table(stem.with_name(stem.name + "_subjects.tsv"))
                sanity_path = stem.with_name(stem.name + "_sanity.tsv")
                sanity = read_table(sanity_path) if sanity_path.is_file() else pd.DataFrame()
                result = {"summary": stored["summary"], "skipped": stored["skipped"]}
            else:
                subjects, sanity, result = _run_one(
                    bundle, task, test_root, resolution_mm, methods=methods,
                    method_params=method_params, seed=int(seed),
                    random_model_methods=random_model_methods, n_sanity=int(n_sanity),
                    sanity_methods=sanity_methods, sanity_max_steps=sanity_max_steps,
                    device=device, progress=progress)
                write_tsv(subjects, stem.with_name(stem.name + "_subjects.tsv"))
                if len(sanity):
                    write_tsv(sanity, stem.with_name(stem.name + "_sanity.tsv"))
                _write_json(done, {"key": _key_digest(key), **result})
            all_rows.append(subjects)
            all_sanity.append(sanity)
            model_rows.append(result["summary"])
            skipped += [{"task": task, "architecture": name, **item}
                        for item in result["skipped"]]
            bundle.model.cpu()

    subjects = pd.concat([f for f in all_rows if len(f)], ignore_index=True) if any(
        len(f) for f in all_rows) else pd.DataFrame()
    if subjects.empty:
        raise ValueError("no test subject had a ground-truth mask on the model grid; "
                         "increase --n-test or use a finer --resolution")
    sanity = pd.concat([f for f in all_sanity if len(f)], ignore_index=True) if any(
        len(f) for f in all_sanity) else pd.DataFrame()
    summary = summarize_benchmark(subjects, n_boot=n_boot, seed=int(seed))

    write_tsv(subjects, out / "subjects.tsv")
    if len(sanity):
        write_tsv(sanity, out / "sanity.tsv")
    write_tsv(pd.DataFrame(model_rows), out / "models.tsv")
    benchmark_tsv = write_tsv(summary, out / "benchmark.tsv", float_format="%.6g")
    text = markdown_tables(summary)
    atomic_write(out / "benchmark.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))

    figures = write_figures(summary, sanity, out / "figures")

    finished = time.time()
    provenance = {
        "command": command if command is not None else shlex.join(sys.argv),
        "seed": int(seed),
        "cohort_seeds": {"train": train_seed, "test": test_seed,
                         **({"easy": easy_seed} if n_easy and model_spec is None else {})},
        "versions": _versions(),
        "machine": _machine(device),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "finished": datetime.fromtimestamp(finished, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(finished - started, 1),
        "settings": {
            "tasks": tasks, "n_train": int(n_train), "n_test": int(n_test),
            "n_easy": n_easy, "easy_cohort_options": {t: EASY_COHORT_OPTIONS[t] for t in tasks},
            "resolution_mm": float(resolution_mm), "model_resolution_mm": model_resolution_mm,
            "to_template": {t: TO_TEMPLATE[t] for t in tasks},
            "methods": methods, "method_params": method_params,
            "random_model_methods": random_model_methods, "baselines": list(BASELINES),
            "n_sanity": int(n_sanity), "sanity_methods": sanity_methods,
            "sanity_max_steps": sanity_max_steps, "n_boot": int(n_boot), "ci": 0.95,
            "score": "abs", "target": "predicted class", "training": settings,
        },
        "architectures": ({name: {"architecture": ARCHITECTURES[name][0],
                                  "kwargs": ARCHITECTURES[name][1]} for name in names}
                          if model_spec is None else {names[0]: {"spec": str(model_spec)}}),
        "models": records,
        "skipped_subjects": skipped,
    }
    _write_json(out / "provenance.json", provenance)
    write_report(out / "benchmark.html", summary=summary, models=pd.DataFrame(model_rows),
                 sanity=sanity, figures=figures, provenance=provenance)
    return benchmark_tsv


def _predicted_classes(model: nn.Module, x: torch.Tensor) -> Optional[list[int]]:
    """The trained model's class per sample, kept fixed for its randomised copies (None: one
    output, nothing to choose)."""
    model.eval()
    with torch.no_grad():
        output = model(x)
    output = output.reshape(output.shape[0], -1)
    return None if output.shape[1] == 1 else [int(k) for k in output.argmax(dim=1)]


def _label(text: str) -> str:
    """An alphanumeric BIDS-style label from a model or class name."""
    cleaned = "".join(ch for ch in str(text) if ch.isalnum())
    return cleaned or "model"


def _state_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
