"""The validation benchmark: which attribution method finds a *known* signal (SPEC §8, issue 6).

For each synthetic task (:mod:`nipype_xai.synth`) it generates a training and a test cohort, trains
(or loads) each architecture, runs every attribution method and the baselines on every test
subject that has a ground-truth mask, scores each map against that mask with every overlap metric
of :func:`nipype_xai.metrics.overlap_metrics` -- against each ground-truth definition that applies
(the ``groundtruth`` column, :data:`~nipype_xai.benchmark.settings.GROUNDTRUTHS`) -- and summarises
over subjects with paired bootstrap confidence intervals
(:func:`nipype_xai.metrics.group.summarize_methods`). A cascading
model-randomisation check (Adebayo et al. 2018) runs on a few test subjects per method.

Design decisions (each is reported in ``provenance.json`` and the HTML report)
-----------------------------------------------------------------------------
* **Space and grid.** Everything is scored in template space on the model grid: the test T1w is
  brought into the template with the cohort's known transform (:func:`~nipype_xai.synth.train.
  load_cohort_arrays`, the same loader as training), the template-space ground-truth mask and the
  template brain mask are resampled onto the model grid with nearest-neighbour interpolation. No
  registration error enters the scores; it is a benchmark of the explanation, not of ANTs.
* **Which ground truth.** Every map is scored against the *exact* ground truth, where the signal
  changes the image (``groundtruth = signal``: the lesion mask; the atrophy task's
  ``label-atrophy``, which reaches far beyond the caudate), and for the atrophy task also against
  the anatomical region the signal is placed in (``groundtruth = roi``: ``label-caudate``), the
  definition used before the exact one existed. Each is summarised on its own; the reports show
  the ``signal`` tables first.
* **Which subjects are scored.** Only subjects with a ground-truth mask of that definition.
  Controls have no signal (lesion controls no lesion, atrophy controls no ``label-atrophy``), so
  no ``signal`` metric is defined for them and they are skipped there (listed in
  ``provenance.json``; ``models.tsv`` counts the subjects scored against no definition).
  ``roi``: every atrophy subject has the caudate mask, and both classes are scored -- a correct
  "control" decision also rests on the (normal) caudate -- but the ``label`` column keeps the
  classes apart in every summary.
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
  (:func:`~nipype_xai.metrics.sanity.forward_order`; the core is
  :func:`~nipype_xai.metrics.sanity.randomization_similarities`), Spearman rank correlation of
  ``|map|`` between the trained and the randomised model, averaged over the sanity subjects. With
  ``sanity_max_steps`` only that many evenly spaced depths of the cascade are computed (always
  the first and the full randomisation); with all steps the rows equal
  :func:`~nipype_xai.metrics.sanity.cascading_randomization`'s.

Output layout (``OUTPUT_DIR``)::

    benchmark.tsv   task x groundtruth x architecture x label x correct x method x metric: mean,
                    sd, CI, n, rank
    subjects.tsv    one row per task x groundtruth x architecture x subject x method: every metric
    sanity.tsv      task x architecture x method x randomised layers: Spearman
    models.tsv      per task x architecture: test balanced accuracy, subjects scored / skipped
    provenance.json command, seeds, versions, machine, settings
    benchmark.html  the report (self-contained)
    benchmark.md    the headline tables (mean [95% CI]) as Markdown
    figures/        ranking plots per task x architecture, sanity-check plots (PNG + SVG)
    cohorts/        the generated BIDS cohorts (reused when present: same seed, same bytes)
    models/         trained weights + spec JSON (reused when trained with the same settings)
    work/           finished (model, task, subject) results and sanity checks (joblib.Memory),
                    reused by a re-run (see :mod:`nipype_xai.benchmark.scoring`)

The parts: :mod:`.settings` (what is asked, checked), :mod:`.training` (cohorts and models),
:mod:`.scoring` (maps, metrics, sanity check of one model), :mod:`.provenance` (what is recorded),
:mod:`.report` (figures and pages); this module runs them in order and summarises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd

from ..atomic import atomic_write
from ..tables import read_tsv, write_tsv
from .provenance import provenance_record, write_json
from .scoring import score_model
from .settings import GROUNDTRUTHS, METRICS, BenchmarkSettings
from .training import (
    BenchmarkModel,
    architecture_spec,
    check_runs,
    cohort,
    cohort_seeds,
    task_settings,
    train_or_load,
)

PathLike = Union[str, os.PathLike]

# Columns that identify one summarised group of subjects in benchmark.tsv.
_SUBSET_COLUMNS = ("task", "groundtruth", "architecture", "label", "correct")


def run_validation_benchmark(output_dir: PathLike, settings: Optional[BenchmarkSettings] = None,
                             **options: Any) -> Path:
    """Run the validation benchmark and write its tables, figures and report.

    Parameters
    ----------
    output_dir
        Where everything is written (created if needed; see the module docstring for the layout).
        Cohorts, trained models and finished (model, task, subject) results already there are
        reused when they were made with the same settings, so an interrupted run resumes.
    settings
        What to run (:class:`~nipype_xai.benchmark.BenchmarkSettings`, which states every
        default and checks every value).
    **options
        Or the settings' fields as keyword arguments (``tasks=["lesion"], n_train=100, ...``),
        made into :class:`~nipype_xai.benchmark.BenchmarkSettings`; not both.

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
    from joblib import Memory

    from ..models import load_model, load_model_spec
    from .report import markdown_tables, write_figures, write_report

    if settings is None:
        settings = BenchmarkSettings(**options)
    elif options:
        raise TypeError(f"run_validation_benchmark: settings given, and options {sorted(options)}")
    s = settings
    started = time.time()
    out = Path(output_dir).absolute()

    # The models to benchmark, checked before any cohort is generated.
    if s.model_spec is not None:
        given = load_model_spec(s.model_spec, external_weights=s.external_weights)
        names = [given.name]
    else:
        names = list(s.architectures)
        for name in names:
            check_runs(architecture_spec(name, s.tasks[0], s.model_resolution_mm), name)

    seeds = cohort_seeds(s.seed)
    memory = Memory(str(out / "work"), verbose=0)  # results under work/joblib/
    parts: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    model_rows, skipped = [], []
    records: dict[str, Any] = {}
    for task in s.tasks:
        test_root, train_roots = _cohorts(out / "cohorts", task, s, seeds)
        arrays: dict = {}
        for name in names:
            if s.model_spec is not None:
                bundle = BenchmarkModel(
                    name, given, load_model(given, device=s.device, trust_code=s.trust_model_code),
                    {"loaded_from": str(Path(s.model_spec).absolute()),
                     "weights_sha256": given.weights_sha256})
            else:
                bundle = train_or_load(name, architecture_spec(name, task, s.model_resolution_mm),
                                       train_roots, task, out / "models",
                                       task_settings(s.training, task), arrays, s.device,
                                       s.progress)
            records[f"{task}/{name}"] = bundle.record
            subjects, sanity, result = score_model(bundle, task, test_root, s, memory)
            parts.append((subjects, sanity))
            model_rows.append(result["summary"])
            skipped += [{"task": task, "architecture": name, **item}
                        for item in result["skipped"]]
            bundle.model.cpu()

    subjects = _concat([p[0] for p in parts])
    if subjects.empty:
        raise ValueError("no test subject had a ground-truth mask on the model grid; "
                         "increase --n-test or use a finer --resolution")
    sanity = _concat([p[1] for p in parts])
    summary = summarize_benchmark(subjects, n_boot=s.n_boot, seed=s.seed)

    write_tsv(subjects, out / "subjects.tsv")
    if len(sanity):
        write_tsv(sanity, out / "sanity.tsv")
    write_tsv(pd.DataFrame(model_rows), out / "models.tsv")
    benchmark_tsv = write_tsv(summary, out / "benchmark.tsv", float_format="%.6g")
    text = markdown_tables(summary)
    atomic_write(out / "benchmark.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    figures = write_figures(summary, sanity, out / "figures")

    provenance = provenance_record(s, seeds=seeds, names=names, models=records, skipped=skipped,
                                   started=started, finished=time.time())
    write_json(out / "provenance.json", provenance)
    write_report(out / "benchmark.html", summary=summary, models=pd.DataFrame(model_rows),
                 sanity=sanity, figures=figures, provenance=provenance)
    return benchmark_tsv


def _cohorts(root: Path, task: str, s: BenchmarkSettings,
             seeds: tuple[int, int, int]) -> tuple[Path, list[Path]]:
    """The task's test cohort and training cohorts (none for a given model), made or reused."""
    train_seed, test_seed, easy_seed = seeds
    res = f"{s.resolution_mm:g}"
    test_root = cohort(root / f"{task}_test_seed-{test_seed}_n-{s.n_test}_res-{res}", task,
                       s.n_test, test_seed, s.resolution_mm, s.progress)
    train_roots = []
    if s.model_spec is None:
        train_roots.append(cohort(root / f"{task}_train_seed-{train_seed}_n-{s.n_train}_res-{res}",
                                  task, s.n_train, train_seed, s.resolution_mm, s.progress))
        if s.n_easy:
            train_roots.append(cohort(
                root / f"{task}-easy_train_seed-{easy_seed}_n-{s.n_easy}_res-{res}",
                task, s.n_easy, easy_seed, s.resolution_mm, s.progress, easy=True))
    return test_root, train_roots


def _concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The non-empty frames one after the other (an empty frame when none has rows)."""
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summarize_benchmark(
    table: pd.DataFrame,
    *,
    metrics: Sequence[str] = METRICS,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """``benchmark.tsv`` from ``subjects.tsv``: per group of subjects, per method and metric.

    Each group of subjects -- one task, ground-truth definition, architecture, class ``label``
    and ``correct`` value -- is summarised on its own with
    :func:`~nipype_xai.metrics.group.summarize_methods`: the bootstrap resamples exactly that
    group's subjects, with the same resamples for every method (paired). Groups come in the order
    of :data:`~nipype_xai.benchmark.settings.GROUNDTRUTHS` (the exact ``signal`` first), then as
    first seen in ``table``.

    Parameters
    ----------
    table
        One row per subject x definition x method with the columns ``task``, ``groundtruth``,
        ``architecture``, ``label``, ``correct``, ``subject``, ``method`` and the metric columns.
    metrics
        Metric columns to summarise (those absent from ``table`` are left out).
    n_boot, ci, seed
        The bootstrap.

    Returns
    -------
    pandas.DataFrame
        Columns ``task, groundtruth, architecture, label, correct, method, metric, mean, sd,
        ci_low, ci_high, n, rank`` (rank within the group and metric; 1 = best). ``attrs`` hold
        ``ci``, ``n_boot`` and ``seed``.
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
    rank = {name: i for i, name in enumerate(GROUNDTRUTHS)}
    out = out.sort_values("groundtruth", key=lambda c: c.map(rank).fillna(len(rank)),
                          kind="stable", ignore_index=True)
    out.attrs.update(ci=float(ci), n_boot=int(n_boot), seed=int(seed))
    return out


def read_table(path: PathLike) -> pd.DataFrame:
    """Read a benchmark TSV back (:func:`nipype_xai.tables.read_tsv`)."""
    return read_tsv(path)
