"""What a validation benchmark run is asked to do: its vocabularies and one frozen settings object.

:class:`BenchmarkSettings` states every default of
:func:`~nipype_xai.benchmark.run_validation_benchmark` once and checks every value when it is
made, so a bad argument fails with one clear message before any cohort is generated. Checks that
need a model or a file (an architecture that cannot run on the model grid, a model spec that does
not load) run first thing in the benchmark, still before any cohort.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from ..attribution.baselines import available_baselines
from ..synth import groundtruth_label, signal_label
from ..synth.atrophy import SIGNAL_MIN_DISPLACEMENT_VOXELS, SIGNAL_MIN_LOG_JACOBIAN
from ..synth.train import TASK_TO_TEMPLATE

PathLike = Union[str, os.PathLike]

#: Every overlap metric of SPEC §3 that needs no parcellation, in the order of the tables.
METRICS: tuple[str, ...] = (
    "precision_at_k", "relevance_mass_accuracy", "relevance_mass_accuracy_siegel",
    "pointing_game", "auroc", "average_precision", "dice_at_k", "emd", "emd_score",
)

#: The region metrics of SPEC §3 (Siegel et al.'s ROI ranking), scored when a parcellation is
#: given (``BenchmarkSettings.parcellation``): the rank of the ground truth's parcel among all
#: parcels by mean |map|, and whether it is first / in the top 3.
ROI_METRICS: tuple[str, ...] = ("roi_rank", "roi_top1", "roi_top3")

#: The model-free baselines (SPEC §3), as the attribution registry lists them
#: (:func:`~nipype_xai.attribution.available_baselines`); ``random_model_<method>`` are added per
#: method.
BASELINES: tuple[str, ...] = tuple(available_baselines())

#: A model whose test balanced accuracy is below this did not learn its task: it is reported
#: (``models.tsv``, the report) and its maps are left out of every summary (``learned`` column):
#: a map of a model that guesses explains nothing a lab would care about.
MIN_BALANCED_ACCURACY: float = 0.7

#: Methods run on the fully randomised model by default (``random_model_<method>``).
DEFAULT_RANDOM_MODEL_METHODS: tuple[str, ...] = ("gradient", "smoothgrad")

#: The ground-truth definitions every map is scored against, in the order of the reports (the
#: ``groundtruth`` column of ``subjects.tsv`` and ``benchmark.tsv``):
#:
#: * ``signal``: the exact ground truth, where the task's signal changes the image
#:   (:func:`~nipype_xai.synth.signal_label`: the lesion mask, soft border included; for atrophy
#:   ``label-atrophy``, where the contraction moves tissue or changes its volume, positives only:
#:   a control's is empty, so controls are not scored against it);
#: * ``roi``: the anatomical region the signal is placed in (:func:`~nipype_xai.synth.
#:   groundtruth_label`: the caudate for atrophy, in every subject). Only for tasks where it is
#:   not the signal mask already: the lesion task has ``signal`` alone.
GROUNDTRUTHS: tuple[str, ...] = ("signal", "roi")

#: What each ground-truth definition is, in words (the reports' legend).
GROUNDTRUTH_DESCRIPTIONS: dict[str, str] = {
    "signal": (f"exact ground truth, where the signal changes the image: lesion task, the lesion "
               f"mask with its soft border (label-{signal_label('lesion')}); atrophy task, "
               f"label-{signal_label('atrophy')}, where the contraction moves tissue by more than "
               f"{SIGNAL_MIN_DISPLACEMENT_VOXELS:g} voxel or changes |log det| of its Jacobian by "
               f"more than {SIGNAL_MIN_LOG_JACOBIAN:g} (positives only: a control's is empty)"),
    "roi": (f"anatomical region the signal is placed in: atrophy task, the caudate mask "
            f"(label-{groundtruth_label('atrophy')}) in every subject, while the signal reaches "
            f"well beyond it; the lesion task has none (its lesion mask is the signal's)"),
}


def groundtruth_mask_label(task: str, groundtruth: str) -> Optional[str]:
    """The ``label-`` of the mask a ground-truth definition names for a task, or None when the
    definition does not apply (``roi`` of the lesion task: the lesion mask is the signal's).

    Raises
    ------
    ValueError
        An unknown definition (see :data:`GROUNDTRUTHS`).
    """
    if groundtruth == "signal":
        return signal_label(task)
    if groundtruth == "roi":
        region = groundtruth_label(task)
        return None if region == signal_label(task) else region
    raise ValueError(f"unknown ground truth {groundtruth!r}; choose among "
                     f"{', '.join(GROUNDTRUTHS)}")


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

#: The training settings besides epochs, batch size, learning rate and seed (which have their own
#: fields), with the benchmark's values; ``None``: the task's default (``_task_settings``).
TRAIN_OPTIONS: dict[str, Any] = {"weight_decay": None, "augment": True, "max_shift": None,
                                 "intensity_jitter": 0.1, "flip_x": True}


def _unique(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _chosen(values: Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``values`` without repeats; a ``ValueError`` when empty or one is not ``allowed``."""
    chosen = _unique(values)
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise ValueError(f"unknown {what}(s) {unknown}; choose among {', '.join(allowed)}")
    return chosen


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkSettings:
    """The settings of one benchmark run, checked when made (a ``ValueError`` per bad value).

    Defaults left open (``None``) are resolved here, so the object holds what the run uses:
    ``methods``, ``sanity_methods``, ``n_easy`` and ``model_resolution_mm`` are never None after
    construction; lists become tuples without repeats.

    Parameters
    ----------
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
        Master seed: the cohorts (:func:`~nipype_xai.benchmark.cohort_seeds`), every stochastic
        method, the baselines, the randomised models and the bootstrap.
    training_seeds
        One model is trained per seed and architecture (on the same cohorts; the seed sets the
        initial weights, the batches and the augmentation), and every model is scored on the same
        test subjects: the summaries' confidence intervals resample seeds and subjects (the
        ``training_seed`` column; :func:`~nipype_xai.metrics.group.summarize_methods` with
        ``cluster``). None: ``(seed,)``, one model.
    min_balanced_accuracy
        A model below this test balanced accuracy did not learn (:data:`MIN_BALANCED_ACCURACY`):
        reported, and left out of the summaries.
    part
        ``(k, n)``: compute the k-th of n parts of the test subjects (those at positions
        ``i % n == k - 1`` of the cohort), with the sanity subjects that fall in it, and write
        that part's tables under ``OUTPUT_DIR/parts/part-<k>-of-<n>/`` without a summary; the
        parts are merged by :func:`~nipype_xai.benchmark.merge_benchmark`
        (``nipype-xai benchmark OUTPUT_DIR --merge PART_DIR...``). Every part trains (or reuses)
        the same models and cohorts. None: the whole run, summarised.
    name
        The name of this set of parts: they go to ``OUTPUT_DIR/parts/<name>/part-<k>-of-<n>/``,
        so that runs of other methods (a costly method on fewer subjects) share one
        ``OUTPUT_DIR``, its cohorts and its models without overwriting each other's parts.
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
        (:data:`TRAIN_OPTIONS`: ``weight_decay`` per task, 1e-4 for lesions and 1e-2 for atrophy;
        augmentation on; ``max_shift`` per task (:data:`~nipype_xai.synth.train.TASK_MAX_SHIFT`:
        2 voxels for lesions, 0 for atrophy), ``intensity_jitter=0.1``, ``flip_x=True``: both
        tasks are bilateral on a symmetric template, so a flip keeps the label).
    model_spec
        A trained model's spec JSON instead of training (its input space must be
        MNI152NLin2009aSym and its outputs the task's classes, ``["control", "<task>"]``). The
        training cohorts are generated only when a method takes data from them
        (:attr:`uses_training_cohorts`). Only one task then makes sense.
    trust_model_code, external_weights
        The trust-boundary opt-ins for ``model_spec`` (:mod:`nipype_xai.models.spec`).
    method_params
        Per-method parameter overrides, e.g. ``{"shapley_sampling": {"n_samples": 2}}``; also
        used for the sanity check and the ``random_model_`` baselines.
    parcellation
        An atlas (integer labels, 0 = background) in the template space of the cohorts
        (MNI152NLin2009aSym, any grid; resampled nearest-neighbour onto the model grid): adds the
        ROI ranking (:data:`ROI_METRICS`). The ground truth's parcel is the one holding most of
        its voxels; a subject whose ground truth lies in no parcel gets NaN there.
    groundtruths
        The ground-truth definitions each map is scored against (:data:`GROUNDTRUTHS`; a
        definition that does not apply to a task, ``roi`` for lesions, is left out there).
    random_model_methods
        Methods run on the fully randomised model as baselines (``random_model_<method>``).
    n_sanity
        Test subjects in the cascading randomisation check, per model: correctly classified
        ones first, then in cohort order (one ``sanity.tsv`` row per subject and depth; the
        summary's CIs resample them).
    sanity_methods
        Methods checked (default: ``methods``).
    sanity_max_steps
        None: every layer of the cascade; else that many evenly spaced depths (at least 2).
    n_boot
        Bootstrap replicates of the confidence intervals (95 %, percentile, over subjects).
    device
        ``"cpu"`` or a CUDA device.
    progress
        tqdm progress bars.
    command
        The command line recorded in ``provenance.json`` (default: ``sys.argv``).
    """

    tasks: Sequence[str] = ("lesion",)
    n_train: int = 200
    n_test: int = 40
    n_easy: Optional[int] = None
    architectures: Sequence[str] = ("tinycnn",)
    methods: Optional[Sequence[str]] = None
    seed: int = 0
    training_seeds: Optional[Sequence[int]] = None
    min_balanced_accuracy: float = MIN_BALANCED_ACCURACY
    part: Optional[tuple[int, int]] = None
    name: str = "main"
    resolution_mm: float = 2.0
    model_resolution_mm: Optional[float] = None
    epochs: int = 30
    batch_size: int = 4
    lr: Optional[float] = None
    train_options: Optional[Mapping[str, Any]] = dataclasses.field(default=None, hash=False)
    model_spec: Optional[PathLike] = None
    trust_model_code: bool = False
    external_weights: bool = False
    method_params: Optional[Mapping[str, Mapping[str, Any]]] = dataclasses.field(
        default=None, hash=False)
    parcellation: Optional[PathLike] = None
    groundtruths: Sequence[str] = GROUNDTRUTHS
    random_model_methods: Sequence[str] = DEFAULT_RANDOM_MODEL_METHODS
    n_sanity: int = 10
    sanity_methods: Optional[Sequence[str]] = None
    sanity_max_steps: Optional[int] = None
    n_boot: int = 2000
    device: str = "cpu"
    progress: bool = True
    command: Optional[str] = None

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: only construction resolves values

    def __post_init__(self) -> None:
        from ..attribution import available_methods
        from ..synth import TASKS

        tasks = _chosen(self.tasks, TASKS, "task")
        self._set("tasks", tasks)
        groundtruths = _chosen(self.groundtruths, GROUNDTRUTHS, "ground-truth definition")
        self._set("groundtruths", groundtruths)
        bare = [t for t in tasks
                if all(groundtruth_mask_label(t, g) is None for g in groundtruths)]
        if bare:
            raise ValueError(f"groundtruths {list(groundtruths)}: none applies to task(s) {bare} "
                             f"(the lesion task has 'signal' only)")

        known = available_methods()
        methods = _unique(self.methods if self.methods is not None else known)
        self._set("methods", methods)
        self._set("sanity_methods", _unique(self.sanity_methods if self.sanity_methods is not None
                                            else methods))
        self._set("random_model_methods", _unique(self.random_model_methods))
        for label in ("methods", "sanity_methods", "random_model_methods"):
            bad = [m for m in getattr(self, label) if m not in known]
            if bad:
                raise ValueError(f"{label}: unknown method(s) {bad}; available: "
                                 f"{', '.join(known)}")
        if not methods:
            raise ValueError("no attribution method requested")
        method_params = {k: dict(v) for k, v in (self.method_params or {}).items()}
        bad = [m for m in method_params if m not in known]
        if bad:
            raise ValueError(f"method_params: unknown method(s) {bad}")
        self._set("method_params", method_params)

        self._check_sizes()
        if self.parcellation is not None and not os.path.isfile(self.parcellation):
            raise ValueError(f"parcellation {self.parcellation}: no such file")
        seeds = _unique([int(t) for t in (self.training_seeds if self.training_seeds is not None
                                          else (self.seed,))])
        if not seeds:
            raise ValueError("training_seeds: give at least one seed")
        self._set("training_seeds", seeds)
        if not 0.0 <= float(self.min_balanced_accuracy) <= 1.0:
            raise ValueError(f"min_balanced_accuracy must be in [0, 1], got "
                             f"{self.min_balanced_accuracy}")
        self._set("min_balanced_accuracy", float(self.min_balanced_accuracy))
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ValueError(f"name must be letters, digits, '-' or '_', got {self.name!r}")
        if self.part is not None:
            k, n = (int(v) for v in self.part)
            if not 1 <= k <= n:
                raise ValueError(f"part must be k/n with 1 <= k <= n, got {k}/{n}")
            self._set("part", (k, n))
        if self.model_spec is not None:
            if len(tasks) > 1:
                raise ValueError("--model gives one trained model: benchmark one task with it")
        else:
            self._set("architectures", _chosen(self.architectures, ARCHITECTURES,
                                               "architecture"))
        extra = sorted(set(self.train_options or {}) - set(TRAIN_OPTIONS))
        if extra:
            raise ValueError(f"train_options: {extra} not accepted; accepted: "
                             f"{sorted(TRAIN_OPTIONS)} (epochs, batch_size, lr and seed have "
                             "their own arguments)")
        self._set("train_options", dict(self.train_options or {}))

    def _check_sizes(self) -> None:
        """Cohort sizes, grids and the randomisation check's sizes, resolved and checked."""
        if int(self.n_test) < 1 or (self.uses_training_cohorts and int(self.n_train) < 2):
            raise ValueError(f"n_test must be >= 1 and n_train >= 2, got {self.n_test} and "
                             f"{self.n_train}")
        n_easy = int(self.n_train) // 2 if self.n_easy is None else int(self.n_easy)
        if n_easy < 0 or n_easy == 1:
            raise ValueError(f"n_easy must be 0 or >= 2, got {n_easy}")
        if int(self.n_sanity) < 0:
            raise ValueError(f"n_sanity must be >= 0, got {self.n_sanity}")
        if self.sanity_max_steps is not None and int(self.sanity_max_steps) < 2:
            raise ValueError(f"sanity_max_steps must be at least 2 (first and last), got "
                             f"{self.sanity_max_steps}")
        model_resolution_mm = (max(float(self.resolution_mm), 4.0)
                               if self.model_resolution_mm is None
                               else float(self.model_resolution_mm))
        for name, value in (("n_train", int(self.n_train)), ("n_test", int(self.n_test)),
                            ("n_easy", n_easy), ("n_sanity", int(self.n_sanity)),
                            ("n_boot", int(self.n_boot)), ("seed", int(self.seed)),
                            ("epochs", int(self.epochs)), ("batch_size", int(self.batch_size)),
                            ("resolution_mm", float(self.resolution_mm)),
                            ("model_resolution_mm", model_resolution_mm),
                            ("lr", None if self.lr is None else float(self.lr))):
            self._set(name, value)

    @property
    def data_methods(self) -> tuple[str, ...]:
        """The methods of the run (its scores, baselines and sanity check) that take data from
        the training inputs: a background set or signal patterns
        (:mod:`~nipype_xai.benchmark.method_data`)."""
        from .method_data import takers

        asked = [*self.methods, *self.random_model_methods, *self.sanity_methods]
        return tuple(dict.fromkeys(takers(asked, "background") + takers(asked, "patterns")))

    @property
    def uses_training_cohorts(self) -> bool:
        """Whether the run generates the training cohorts: to train its models, or, for a given
        model (``model_spec``), when a method takes its background or patterns from them (the
        task's own training distribution, the data a benchmark model is trained on)."""
        return self.model_spec is None or bool(self.data_methods)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics of the run: :data:`METRICS`, and :data:`ROI_METRICS` with a
        parcellation."""
        return METRICS + (ROI_METRICS if self.parcellation is not None else ())

    @property
    def training(self) -> dict[str, Any]:
        """The training settings before the task's defaults fill the ``None`` values
        (:data:`TRAIN_OPTIONS` overridden by ``train_options``)."""
        options = {**TRAIN_OPTIONS, **self.train_options}
        # The key order of models/*.json and provenance.json since the first release.
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": options.pop("weight_decay"), "seed": self.seed, **options}
