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
* **Score.** ``score="abs"`` for the rank metrics and the EMD: signed maps are ranked by their
  magnitude. The two relevance mass accuracies read the map their own way, whatever the score:
  ``relevance_mass_accuracy`` is Arras et al.'s (the positive part, as Quantus), and
  ``relevance_mass_accuracy_siegel`` Siegel et al.'s procedure (|a| smoothed with FWHM 2 voxels,
  values below the 99th percentile in the brain set to 0, GT dilated by 2 voxels). Every table
  header states how its metric reads the map and which way is better
  (:data:`~nipype_xai.metrics.overlap.METRIC_CONVENTIONS`).
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
    sanity.tsv      task x architecture x training seed x subject x method x randomised
                    layers: Spearman
    sanity_summary.tsv  the same per task x architecture x method x depth: mean, 95 % CI
    models.tsv      per task x architecture x training seed: test balanced accuracy, learned
                    (>= min_balanced_accuracy), subjects scored / skipped
    provenance.json command, seeds, versions, machine, settings
    benchmark.html  the report (self-contained)
    benchmark.md    the headline tables (mean [95% CI]) as Markdown
    figures/        ranking plots per task x architecture, sanity-check plots (PNG + SVG)
    cohorts/        the generated BIDS cohorts (reused when present: same seed, same bytes)
    models/         trained weights + spec JSON (reused when trained with the same settings)
    work/           finished (model, task, subject) results and sanity checks (joblib.Memory),
                    reused by a re-run (see :mod:`nipype_xai.benchmark.scoring`)
    parts/<name>/part-<k>-of-<n>/  with ``part``: that part's subjects.tsv, sanity.tsv,
                    models.tsv and provenance.json, merged by :func:`merge_benchmark` (``--merge``)

Long runs: ``part=(k, n)`` splits the test subjects round-robin into n parts that can run one
after the other (or on several machines, each training or reusing the same models); each part's
tables are small enough to commit, and :func:`merge_benchmark` makes the summary, figures and
report of the whole from them, computing nothing again. Several training seeds per architecture
(``training_seeds``) give crossed seed x subject confidence intervals; models below
``min_balanced_accuracy`` are reported and left out of every summary.

The parts: :mod:`.settings` (what is asked, checked), :mod:`.training` (cohorts and models),
:mod:`.scoring` (maps, metrics, sanity check of one model), :mod:`.provenance` (what is recorded),
:mod:`.report` (figures and pages); this module runs them in order and summarises.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd

from ..atomic import atomic_write
from ..tables import read_tsv, write_tsv
from .method_data import MethodData, method_data
from .provenance import (
    coverage_lines,
    merged_provenance,
    provenance_record,
    run_name,
    write_json,
)
from .scoring import score_model
from .settings import GROUNDTRUTHS, METRICS, ROI_METRICS, BenchmarkSettings
from .training import (
    BenchmarkModel,
    architecture_spec,
    check_runs,
    cohort,
    cohort_seeds,
    seeded_spec,
    task_settings,
    train_or_load,
    training_arrays,
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
        ``benchmark.tsv`` (with ``settings.part``: the part's ``subjects.tsv``).

    Raises
    ------
    ValueError
        An unknown task, architecture or method, bad sizes, or an architecture that cannot run on
        the grid.
    """
    from joblib import Memory

    from ..models import load_model, load_model_spec

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
            for training_seed in (s.training_seeds if s.model_spec is None else (None,)):
                if s.model_spec is not None:
                    bundle = BenchmarkModel(
                        name, given,
                        load_model(given, device=s.device, trust_code=s.trust_model_code),
                        {"loaded_from": str(Path(s.model_spec).absolute()),
                         "weights_sha256": given.weights_sha256})
                else:
                    spec = seeded_spec(architecture_spec(name, task, s.model_resolution_mm),
                                       training_seed)
                    bundle = train_or_load(name, spec, train_roots, task, out / "models",
                                           {**task_settings(s.training, task),
                                            "seed": training_seed},
                                           arrays, s.device, s.progress)
                data = _method_data(bundle, task, train_roots, s, arrays, memory)
                records[f"{task}/{bundle.spec.name}"] = {
                    **bundle.record, **({"method_data": data.record} if data.record else {})}
                subjects, sanity, result = score_model(bundle, task, test_root, s, memory,
                                                       training_seed=training_seed, data=data)
                parts.append((subjects, sanity))
                model_rows.append(result["summary"])
                skipped += [{"task": task, "architecture": name, "training_seed": training_seed,
                             **item} for item in result["skipped"]]
                bundle.model.cpu()

    subjects = _concat([p[0] for p in parts])
    sanity = _concat([p[1] for p in parts])
    models = pd.DataFrame(model_rows)
    provenance = provenance_record(s, seeds=seeds, names=names, models=records, skipped=skipped,
                                   started=started, finished=time.time())
    if s.part is not None:
        return write_part(out / "parts" / s.name / part_label(*s.part), subjects=subjects,
                          sanity=sanity,
                          models=models, provenance=provenance)
    if subjects.empty:
        raise ValueError("no test subject had a ground-truth mask on the model grid; "
                         "increase --n-test or use a finer --resolution")
    return write_results(out, subjects=subjects, sanity=sanity, models=models,
                         provenance=provenance, n_boot=s.n_boot, seed=s.seed)


def part_label(k: int, n: int) -> str:
    """The directory name of part k of n (``part-02-of-08``; sorts in order)."""
    width = len(str(int(n)))
    return f"part-{int(k):0{width}d}-of-{int(n)}"


def write_part(part_dir: Path, *, subjects: pd.DataFrame, sanity: pd.DataFrame,
               models: pd.DataFrame, provenance: dict[str, Any]) -> Path:
    """One part's tables (``subjects.tsv``, ``sanity.tsv``, ``models.tsv``) and provenance, without
    a summary: what :func:`merge_benchmark` reads. Returns ``subjects.tsv``."""
    part_dir.mkdir(parents=True, exist_ok=True)
    if len(sanity):  # none when no sanity subject fell in this part
        write_tsv(sanity, part_dir / "sanity.tsv")
    else:
        (part_dir / "sanity.tsv").unlink(missing_ok=True)
    write_tsv(models, part_dir / "models.tsv")
    write_json(part_dir / "provenance.json", provenance)
    return write_tsv(subjects, part_dir / "subjects.tsv")


def write_results(out: Path, *, subjects: pd.DataFrame, sanity: pd.DataFrame,
                  models: pd.DataFrame, provenance: dict[str, Any], n_boot: int,
                  seed: int) -> Path:
    """Summarise and write everything of a finished run (or of merged parts): the tables, the
    Markdown, the figures, ``provenance.json`` and the report. Returns ``benchmark.tsv``."""
    from .report import markdown_tables, write_figures, write_report

    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_benchmark(subjects, n_boot=n_boot, seed=seed)
    sanity_summary = summarize_sanity(sanity, n_boot=n_boot, seed=seed)
    write_tsv(subjects, out / "subjects.tsv")
    if len(sanity):
        write_tsv(sanity, out / "sanity.tsv")
        write_tsv(sanity_summary, out / "sanity_summary.tsv", float_format="%.6g")
    write_tsv(models, out / "models.tsv")
    benchmark_tsv = write_tsv(summary, out / "benchmark.tsv", float_format="%.6g")
    text = markdown_tables(summary)
    if provenance.get("coverage"):
        text = "\n".join(["Parts merged (run: parts of its split):", "",
                          *[f"- {line}" for line in coverage_lines(provenance["coverage"])],
                          "", text])
    atomic_write(out / "benchmark.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    figures = write_figures(summary, sanity_summary, out / "figures")
    write_json(out / "provenance.json", provenance)
    write_report(out / "benchmark.html", summary=summary, models=models, sanity=sanity_summary,
                 figures=figures, provenance=provenance)
    return benchmark_tsv


#: Columns that name one (task, model) in models.tsv, and one score in subjects.tsv.
_MODEL_COLUMNS = ("task", "architecture", "training_seed")
_SCORE_COLUMNS = (*_MODEL_COLUMNS, "groundtruth", "subject", "method")


def merge_benchmark(output_dir: PathLike, sources: Sequence[PathLike], *, n_boot: int = 2000,
                    seed: int = 0) -> Path:
    """Merge benchmark parts (or whole runs) into one summary, report and set of tables.

    Each source is a directory with ``subjects.tsv``, ``models.tsv`` and ``provenance.json`` (and
    ``sanity.tsv`` when it checked subjects): a part written with ``part`` (``OUTPUT_DIR/parts/
    <name>/part-<k>-of-<n>``), or a whole run. Sources may run different methods (a costly method on
    fewer subjects): each method is summarised over the subjects it has.

    Parameters
    ----------
    output_dir
        Where the merged tables, report and figures are written.
    sources
        The part directories.
    n_boot, seed
        The bootstrap of the summaries.

    Returns
    -------
    pathlib.Path
        The merged ``benchmark.tsv``.

    Raises
    ------
    ValueError
        A source without its tables; parts of one run (``name``) computed by different code;
        sources with different test cohorts; one model (task, architecture, training seed) with
        different weights in two sources; one score (model, ground truth, subject, method) with
        two different values.
    """
    subjects, sanity, models, records = [], [], [], []
    for source in sources:
        source = Path(source)
        missing = [n for n in ("subjects.tsv", "models.tsv", "provenance.json")
                   if not (source / n).is_file()]
        if missing:
            raise ValueError(f"{source}: not a benchmark part (no {', '.join(missing)})")
        subjects.append(read_tsv(source / "subjects.tsv"))
        models.append(read_tsv(source / "models.tsv"))
        if (source / "sanity.tsv").is_file():
            sanity.append(read_tsv(source / "sanity.tsv"))
        records.append((source, json.loads((source / "provenance.json").read_text("utf-8"))))
    if not records:
        raise ValueError("merge: no source given")
    # One run (its name: one method set) is computed by one code; runs of different method sets
    # may come from different code (a method added later is run on its own), each named in the
    # merged provenance, and a score both computed must agree (the clash check below).
    codes: dict[str, set] = {}
    for _, record in records:
        codes.setdefault(run_name(record), set()).add(record.get("code_digest"))
    stale = {name: sorted(map(str, found)) for name, found in codes.items() if len(found) > 1}
    if stale:
        raise ValueError("merge: the parts of one run were computed by different code "
                         f"(code_digest {stale}); re-run the stale parts")
    # One test cohort for all. The training cohorts are not compared: a run of a given model
    # (--model) has none, and a trained model's are named by its weights (checked below).
    tests = {((r.get("cohort_seeds") or {}).get("test"), r["settings"]["n_test"],
              r["settings"]["resolution_mm"]) for _, r in records}
    if len(tests) > 1:
        raise ValueError(f"merge: the sources scored different test cohorts (test seed, n_test, "
                         f"resolution: {sorted(tests, key=str)})")

    models_table = _concat(models)
    by_model = models_table.groupby(list(_MODEL_COLUMNS), sort=False, dropna=False)
    weights = by_model["weights_sha256"].nunique()
    if (weights > 1).any():
        raise ValueError(f"merge: model(s) {list(weights[weights > 1].index)} have different "
                         "weights in different sources (retrained with other settings, or on "
                         "another kind of CPU, e.g. another instruction set: training reproduces "
                         "its weights on the same kind only; give every part the same trained "
                         "models, e.g. committed ones)")
    table = _concat(subjects)
    # The same score from two sources (the baselines of one model and subject, computed by every
    # method set's run; a part given twice) is kept once; only its timing may differ.
    values = [c for c in table.columns if c != "seconds"]
    table = table.drop_duplicates(subset=values, ignore_index=True)
    clash = table.duplicated(list(_SCORE_COLUMNS), keep=False)
    if clash.any():
        first = table.loc[clash, list(_SCORE_COLUMNS)].iloc[0].to_dict()
        raise ValueError(f"merge: two different results for {first}")
    sanity_table = _concat(sanity).drop_duplicates(ignore_index=True)

    # One row per model; its counts are those of the merged tables (not sums over sources, which
    # would count a subject twice when two method sets scored it).
    merged_models = by_model.first().reset_index()[list(models_table.columns)]
    merged_models["sanity_subjects"] = merged_models["sanity_subjects"].astype(object)
    skipped = [item for _, r in records for item in r.get("skipped_subjects", [])]
    for i, row in merged_models.iterrows():
        mine = _rows_of(table, row)
        correct = mine.loc[mine["correct"].astype(str).str.lower() == "true", "subject"]
        merged_models.loc[i, "n_scored"] = mine["subject"].nunique()
        merged_models.loc[i, "n_scored_correct"] = correct.nunique()
        merged_models.loc[i, "n_scored_incorrect"] = (mine["subject"].nunique()
                                                      - correct.nunique())
        # Skipped: listed as not scored by a source, and scored by none.
        merged_models.loc[i, "n_skipped"] = len(
            {item["subject"] for item in skipped
             if all(_same(item.get(c), row[c]) for c in _MODEL_COLUMNS)}
            - set(mine["subject"]))
        checked = _rows_of(sanity_table, row) if len(sanity_table) else sanity_table
        merged_models.loc[i, "sanity_subjects"] = ",".join(
            sorted(set(checked["subject"]))) if len(checked) else ""
    provenance = merged_provenance(records)
    return write_results(Path(output_dir).absolute(), subjects=table, sanity=sanity_table,
                         models=merged_models, provenance=provenance, n_boot=n_boot, seed=seed)


def _same(a: Any, b: Any) -> bool:
    """Two identifiers as read from JSON or a TSV: ``3 == 3.0``; None, NaN and ``n/a`` agree."""
    def norm(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v) or v == "n/a":
            return "n/a"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)
    return norm(a) == norm(b)


def _rows_of(table: pd.DataFrame, model: pd.Series) -> pd.DataFrame:
    """The rows of ``table`` of one model (task, architecture, training seed; a missing seed
    matches a missing seed)."""
    keep = pd.Series(True, index=table.index)
    for column in _MODEL_COLUMNS:
        keep &= table[column].map(lambda v, m=model[column]: _same(v, m))
    return table[keep]


def summarize_sanity(sanity: pd.DataFrame, *, n_boot: int = 2000, ci: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """The randomisation check per task x architecture x method x depth: mean Spearman over the
    sanity subjects (and training seeds) of the models that learned, with its bootstrap CI.

    Returns
    -------
    pandas.DataFrame
        Columns ``task, architecture, method, n_randomized, layer, n_layers, spearman`` (the
        mean), ``ci_low``, ``ci_high``, ``n`` (subject x seed cells) -- empty without rows.
    """
    from ..metrics.group import summarize_methods

    columns = ["task", "architecture", "method", "n_randomized", "layer", "n_layers",
               "spearman", "ci_low", "ci_high", "n"]
    if sanity.empty:
        return pd.DataFrame(columns=columns)
    rows = sanity[_learned(sanity)]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    keys = ["task", "architecture", "method", "n_randomized", "layer", "n_layers"]
    # One bootstrap per model (task x architecture), over its own training seeds and subjects,
    # as summarize_benchmark does: a model's interval does not depend on which other models were
    # merged beside it (a given model, --model, has no training seed at all).
    summary = pd.concat(
        [summarize_methods(part, metrics=["spearman"], n_boot=n_boot, ci=ci, seed=seed,
                           group_by=keys, cluster="training_seed")
         for _, part in rows.groupby(["task", "architecture"], sort=True)], ignore_index=True)
    summary = summary.rename(columns={"mean": "spearman"})
    order = {m: i for i, m in enumerate(dict.fromkeys(rows["method"]))}
    summary = summary.sort_values(["task", "architecture", "method", "n_randomized"],
                                  key=lambda c: c.map(order) if c.name == "method" else c,
                                  kind="stable", ignore_index=True)
    return summary[columns]


def _learned(table: pd.DataFrame) -> pd.Series:
    """Rows of models that learned their task (all rows of a table without the column)."""
    if "learned" not in table.columns:
        return pd.Series(True, index=table.index)
    return table["learned"].astype(str).str.lower().isin(["true", "1"])


def _method_data(bundle, task: str, train_roots, settings, arrays: dict, memory):
    """The background and patterns of the run's methods that take them, from the model's
    training inputs (:mod:`~nipype_xai.benchmark.method_data`); cached like the scores (every
    part of a run needs them, and the training inputs take minutes to load)."""
    from .. import __version__
    from .provenance import code_digest, state_digest

    s = settings
    methods = list(s.data_methods)
    if not methods:
        return MethodData.none()
    fitted = memory.cache(_fitted_method_data, ignore=["model", "load", "device"])
    return fitted(
        bundle.model, lambda: training_arrays(bundle.spec, train_roots, task, arrays, s.progress),
        methods=methods, seed=s.seed,
        source="training cohorts " + ", ".join(root.name for root in train_roots),
        weights=bundle.record.get("weights_sha256") or state_digest(bundle.model),
        version=__version__, code=code_digest(), device=s.device)


def _fitted_method_data(model, load, *, methods, seed: int, source: str, weights: str,
                        version: str, code: str, device: str) -> MethodData:
    """:func:`~nipype_xai.benchmark.method_data.method_data` of ``model`` on the training inputs
    ``load()`` gives (``weights``, ``version``, ``code``: the cache key's name for the model and
    the code; ``source`` names the inputs)."""
    X, y = load()
    return method_data(model.to(device).eval(), methods, X.to(device), y, seed=seed,
                       source=source)


def _cohorts(root: Path, task: str, s: BenchmarkSettings,
             seeds: tuple[int, int, int]) -> tuple[Path, list[Path]]:
    """The task's test cohort and training cohorts (for a given model only when a method takes
    data from them), made or reused."""
    train_seed, test_seed, easy_seed = seeds
    res = f"{s.resolution_mm:g}"
    test_root = cohort(root / f"{task}_test_seed-{test_seed}_n-{s.n_test}_res-{res}", task,
                       s.n_test, test_seed, s.resolution_mm, s.progress)
    train_roots = []
    if s.uses_training_cohorts:
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
    metrics: Sequence[str] = METRICS + ROI_METRICS,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """``benchmark.tsv`` from ``subjects.tsv``: per group of subjects, per method and metric.

    Each group of subjects -- one task, ground-truth definition, architecture, class ``label``
    and ``correct`` value -- is summarised on its own with
    :func:`~nipype_xai.metrics.group.summarize_methods`: the bootstrap resamples exactly that
    group's subjects and the architecture's training seeds (crossed: the same test subjects are
    scored under every seed's model), with the same resamples for every method (paired). Rows
    of models that did not learn (``learned`` false) are left out. Groups come in the order
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
        ci_low, ci_high, n, rank, n_subjects, n_seeds`` (rank within the group and metric;
        1 = best; ``n``: subject x seed cells with a value). ``attrs`` hold
        ``ci``, ``n_boot`` and ``seed``.
    """
    from ..metrics.group import SUMMARY_COLUMNS, cluster_labels, summarize_methods

    missing = [c for c in (*_SUBSET_COLUMNS, "subject", "method") if c not in table.columns]
    if missing:
        raise ValueError(f"subjects table: missing column(s) {missing}")
    metrics = [m for m in metrics if m in table.columns]
    columns = [*_SUBSET_COLUMNS, "method", *SUMMARY_COLUMNS, "n_subjects", "n_seeds"]
    table = table[_learned(table)]
    if "training_seed" not in table.columns:
        table = table.assign(training_seed=pd.NA)
    parts = []
    for key, part in table.groupby(list(_SUBSET_COLUMNS), sort=False):
        summary = summarize_methods(part, metrics=metrics, n_boot=n_boot, ci=ci, seed=seed,
                                    group_by=("method",), cluster="training_seed")
        for column, value in zip(_SUBSET_COLUMNS, key):
            summary[column] = value
        sizes = part.groupby("method").agg(
            n_subjects=("subject", "nunique"),
            n_seeds=("training_seed", lambda v: cluster_labels(v).nunique()))
        summary = summary.join(sizes, on="method")
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
