"""The validation benchmark (nipype_xai.benchmark): a tiny end-to-end run, its statistics, and its
sanity check against the metrics core's reference implementation."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from nipype_xai.benchmark import (
    BASELINES,
    GROUNDTRUTHS,
    METRICS,
    BenchmarkSettings,
    cohort_seeds,
    model_randomization_check,
    read_table,
    run_validation_benchmark,
    subject_maps,
    summarize_benchmark,
)
from nipype_xai.cli.benchmark import add_arguments, benchmark_parser, main, run_from_argv
from nipype_xai.cli.parser import UsageError
from nipype_xai.metrics.group import bootstrap_ci
from nipype_xai.metrics.sanity import cascade_steps, cascading_randomization

# gradient_shap and pattern_attribution take data from the training inputs (a background set,
# patterns): the run must provide it (tests/test_benchmark_method_data.py checks what it is).
METHODS = ["gradient", "smoothgrad", "gradcam", "gradient_shap", "pattern_attribution"]
PARAMS = {"smoothgrad": {"n_samples": 4}, "gradient_shap": {"n_samples": 4}}
SUMMARY_COLUMNS = ["task", "groundtruth", "architecture", "label", "correct", "method", "metric",
                   "mean", "sd", "ci_low", "ci_high", "n", "rank", "n_subjects", "n_seeds"]
#: The tiny run's settings, also those of its resumed re-runs.
TINY = {"tasks": ("lesion", "atrophy"), "n_train": 12, "n_test": 8, "n_easy": 4,
        "architectures": ("tinycnn",), "methods": METHODS, "method_params": PARAMS, "seed": 3,
        "resolution_mm": 8.0, "epochs": 2, "n_sanity": 1, "sanity_max_steps": 3, "n_boot": 200,
        # Two epochs at 8 mm learn nothing: keep the models in the summaries all the same.
        "min_balanced_accuracy": 0.0, "progress": False, "command": "pytest"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Both tasks at 8 mm, 12 training / 8 test subjects, TinyCNN3D for 2 epochs (~40 s)."""
    out = tmp_path_factory.mktemp("benchmark")
    table = run_validation_benchmark(out, **TINY)
    return out, table


def test_tiny_benchmark_writes_every_output(tiny_run):
    out, table = tiny_run
    assert table == out / "benchmark.tsv"
    for name in ("subjects.tsv", "sanity.tsv", "models.tsv", "provenance.json",
                 "benchmark.html"):
        assert (out / name).is_file(), name
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert "task-lesion_model-tinycnn_desc-sanity_plot.png" in figures
    assert "task-atrophy_model-tinycnn_desc-sanity_plot.png" in figures
    assert any("task-lesion_model-tinycnn_label-lesion_desc-ranking_metric-precisionAtK" in f
               for f in figures)
    # The exact ground truth keeps the figures' names; the anatomical ROI is named in its own.
    assert "task-atrophy_model-tinycnn_label-atrophy_desc-ranking_metric-auroc_plot.png" in figures
    assert ("task-atrophy_groundtruth-roi_model-tinycnn_label-atrophy_desc-ranking_metric-auroc_"
            "plot.png") in figures
    assert not any("groundtruth-roi" in f and "task-lesion" in f for f in figures)

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["command"] == "pytest"
    assert provenance["seed"] == 3
    assert provenance["cohort_seeds"] == dict(zip(("train", "test", "easy"), cohort_seeds(3)))
    assert provenance["settings"]["model_resolution_mm"] == 8.0
    assert provenance["versions"]["torch"] == torch.__version__
    assert {"platform", "cpu_count", "torch_threads"} <= set(provenance["machine"])
    # The instruction set is recorded, for the run and for each model trained (weights are
    # bit-reproducible on the same one only).
    capability = torch.backends.cpu.get_cpu_capability()
    assert provenance["machine"]["cpu_capability"] == capability
    for model, record in provenance["models"].items():
        assert (record["cpu_capability"], record["torch"]) == (capability, torch.__version__)
        data = record["method_data"]
        assert data["background"]["Methods"] == ["gradient_shap"], model
        assert data["background"]["N"] == len(data["background"]["Indices"]) >= 1
        assert data["patterns"]["Methods"] == ["pattern_attribution"]
        assert data["patterns"]["N"] == record["n_train"] or record.get("reused")
    assert provenance["settings"]["groundtruths"] == {
        "lesion": {"signal": "label-lesion"},
        "atrophy": {"signal": "label-atrophy", "roi": "label-caudate"}}
    html = (out / "benchmark.html").read_text()
    assert "data:image/png;base64," in html and "random_model_gradient" in html
    # The exact ground truth's tables first, each section saying which definition it is.
    assert html.index("<h2>Ground truth: signal</h2>") < html.index("<h2>Ground truth: roi</h2>")
    assert "groundtruth = roi: anatomical region" in html
    markdown = (out / "benchmark.md").read_text()
    assert markdown.index("## Ground truth: signal") < markdown.index("## Ground truth: roi")
    assert markdown.index("### atrophy / GT signal / tinycnn") < markdown.index(
        "### atrophy / GT roi / tinycnn")


def test_models_train_on_the_training_and_the_easy_cohort(tiny_run):
    out, _ = tiny_run
    train_seed, _, easy_seed = cohort_seeds(3)
    for task, column, default_high in (("lesion", "lesion_volume_mm3", None),
                                       ("atrophy", "atrophy_fraction", 0.3)):
        record = json.loads((out / "models" / f"{task}_tinycnn_seed-3.json").read_text())[
            "training"]
        assert record["train_cohorts"] == [f"{task}_train_seed-{train_seed}_n-12_res-8",
                                           f"{task}-easy_train_seed-{easy_seed}_n-4_res-8"]
        assert record["n_train"] == 16
        # Shifts teach a position-aware atrophy model to ignore the place: none for atrophy.
        assert record["settings"]["max_shift"] == {"lesion": 2, "atrophy": 0}[task]
        # Optimiser defaults per task (the atrophy model's recipe differs).
        assert (record["settings"]["lr"], record["settings"]["weight_decay"]) == {
            "lesion": (3e-3, 1e-4), "atrophy": (1e-3, 1e-2)}[task]
        easy = pd.read_csv(out / "cohorts" / record["train_cohorts"][1] / "participants.tsv",
                           sep="\t")
        positives = easy[easy["label"] == task]
        assert len(positives) == 2
        if default_high is not None:  # the easy cohort's volume loss is beyond the default range
            assert (positives[column] >= 0.35).all() and (positives[column] <= 0.45).all()
        else:  # lesions of radius >= 8 mm: at least a 8 mm ball each
            assert (positives[column] >= 4 / 3 * np.pi * 8 ** 3 * 0.5).all()


def test_benchmark_table_has_every_column_method_and_baseline(tiny_run):
    out, _ = tiny_run
    summary = read_table(out / "benchmark.tsv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert set(summary["metric"]) == set(METRICS)
    expected = set(METHODS) | set(BASELINES) | {"random_model_gradient",
                                                "random_model_smoothgrad"}
    for (task, _gt, _arch, _label, _correct), group in summary.groupby(
            ["task", "groundtruth", "architecture", "label", "correct"]):
        assert set(group["method"]) == expected, task
    # Both definitions for atrophy, the exact one alone for lesions; the exact one's rows first.
    assert set(zip(summary["task"], summary["groundtruth"])) == {
        ("lesion", "signal"), ("atrophy", "signal"), ("atrophy", "roi")}
    assert list(dict.fromkeys(summary["groundtruth"])) == ["signal", "roi"]
    assert list(read_table(out / "subjects.tsv").columns[:2]) == ["task", "groundtruth"]
    with_values = summary[summary["n"] > 0]
    assert len(with_values) and np.isfinite(with_values["mean"]).all()
    spread = with_values[with_values["n"] > 1]
    assert np.isfinite(spread[["sd", "ci_low", "ci_high"]].to_numpy()).all()
    assert (spread["ci_low"] <= spread["mean"] + 1e-12).all()
    assert (spread["mean"] <= spread["ci_high"] + 1e-12).all()


def test_correct_and_incorrect_subjects_are_kept_apart(tiny_run):
    out, _ = tiny_run
    subjects = read_table(out / "subjects.tsv")
    summary = read_table(out / "benchmark.tsv")
    # The flag is the model's decision against the truth, per subject.
    assert (subjects["correct"] == (subjects["predicted"] == subjects["label"])).all()
    keys = ["task", "groundtruth", "label"]
    for (task, gt, label, correct), group in subjects.groupby([*keys, "correct"]):
        rows = summary[(summary["task"] == task) & (summary["groundtruth"] == gt)
                       & (summary["label"] == label) & (summary["correct"] == correct)
                       & (summary["metric"] == "auroc")]
        assert set(rows["n"]) == {group["subject"].nunique()}
    # No summary row mixes both: each (task, groundtruth, label) has one group per correct value.
    counts = summary.groupby([*keys, "method", "metric"])["correct"].nunique()
    observed = subjects.groupby(keys)["correct"].nunique()
    for (task, gt, label, _m, _metric), n in counts.items():
        assert n == observed[(task, gt, label)]


def test_controls_skipped_under_the_signal_scored_under_the_atrophy_roi(tiny_run):
    out, _ = tiny_run
    subjects = read_table(out / "subjects.tsv")
    models = pd.read_csv(out / "models.tsv", sep="\t")
    provenance = json.loads((out / "provenance.json").read_text())
    participants = {
        task: pd.read_csv(next((out / "cohorts").glob(f"{task}_test_*")) / "participants.tsv",
                          sep="\t")
        for task in ("lesion", "atrophy")
    }
    lesion = subjects[subjects["task"] == "lesion"]
    assert set(lesion["label"]) == {"lesion"} and set(lesion["groundtruth"]) == {"signal"}
    n_controls = int((participants["lesion"]["label"] == "control").sum())
    row = models[models["task"] == "lesion"].iloc[0]
    assert row["n_skipped"] == n_controls
    assert row["n_scored"] == 8 - n_controls
    atrophy = subjects[subjects["task"] == "atrophy"]
    signal = atrophy[atrophy["groundtruth"] == "signal"]
    roi = atrophy[atrophy["groundtruth"] == "roi"]
    # A control's exact ground truth is empty: only the positives are scored against it.
    cohort = participants["atrophy"]
    positives = set(cohort.loc[cohort["label"] == "atrophy", "participant_id"])
    assert set(signal["subject"]) == positives and set(signal["label"]) == {"atrophy"}
    assert set(roi["label"]) == {"control", "atrophy"} and roi["subject"].nunique() == 8
    assert models[models["task"] == "atrophy"].iloc[0]["n_skipped"] == 0
    skipped = [item for item in provenance["skipped_subjects"] if item["task"] == "atrophy"]
    assert {item["groundtruth"] for item in skipped} == {"signal"}
    assert {item["subject"] for item in skipped} == set(roi["subject"]) - positives
    assert all(item["reason"] == "no label-atrophy mask (control)" for item in skipped)


def test_atrophy_maps_are_scored_against_the_exact_signal(tiny_run, tmp_path, monkeypatch):
    """A map that equals a subject's label-atrophy mask has all its mass in the ``signal`` ground
    truth and only part of it in the caudate ``roi``: each row is scored against its own mask."""
    import nibabel as nib

    from nipype_xai.benchmark import scoring
    from nipype_xai.models import load_model_spec
    from nipype_xai.synth.train import load_cohort_arrays

    out, _ = tiny_run
    rerun = tmp_path / "rerun"  # the same cohorts and models, no cached scores
    for name in ("cohorts", "models"):
        shutil.copytree(out / name, rerun / name)
    test_root = next((rerun / "cohorts").glob("atrophy_test_*"))
    spec = load_model_spec(rerun / "models" / "atrophy_tinycnn_seed-3.json")
    X, _, subjects = load_cohort_arrays(test_root, spec, to_template="affine", progress=False)
    masks = {}
    for i, subject in enumerate(subjects):
        anat = test_root / "derivatives" / "groundtruth" / subject / "anat"
        found = list(anat.glob(f"{subject}_space-MNI152NLin2009aSym_res-8_label-atrophy_mask.nii*"))
        if found:  # positives only; the cohort's 8 mm grid is the model grid
            masks[X[i].numpy().tobytes()] = np.asarray(nib.load(found[0]).dataobj, float)
            assert masks[X[i].numpy().tobytes()].shape == tuple(X.shape[2:])
    assert len(masks) == 4
    noise = np.random.default_rng(0).random(tuple(X.shape[2:]))

    def oracle(model, x, *args, **kwargs):
        yield "oracle", masks.get(x.cpu().numpy()[0].tobytes(), noise), 0.0

    monkeypatch.setattr(scoring, "subject_maps", oracle)
    run_validation_benchmark(rerun, **{**TINY, "tasks": ("atrophy",), "n_sanity": 0})
    rows = read_table(rerun / "subjects.tsv")
    positives = rows[rows["label"] == "atrophy"].set_index(["groundtruth", "subject"])
    signal = positives.loc["signal", "relevance_mass_accuracy"]
    roi = positives.loc["roi", "relevance_mass_accuracy"]
    assert len(signal) == len(roi) == 4
    np.testing.assert_allclose(signal, 1.0, rtol=0, atol=1e-12)
    assert (roi < 0.9).all() and (roi > 0).all()  # the caudate is a small part of the signal
    summary = read_table(rerun / "benchmark.tsv")
    rma = summary[(summary["metric"] == "relevance_mass_accuracy")
                  & (summary["label"] == "atrophy")]
    assert set(rma["groundtruth"]) == {"signal", "roi"}
    assert np.allclose(rma.loc[rma["groundtruth"] == "signal", "mean"], 1.0)
    assert (rma.loc[rma["groundtruth"] == "roi", "mean"] < 0.9).all()


def test_roi_ranking_with_a_parcellation(tiny_run, tmp_path, monkeypatch):
    """With an atlas, each map also ranks the ground truth's parcel (Siegel et al.'s ROI
    analysis): a map equal to the lesion mask puts its parcel first; a subject is scored per
    parcel of the atlas given in template space."""
    import nibabel as nib

    from nipype_xai.benchmark import scoring
    from nipype_xai.synth import load_template_anatomy

    out, _ = tiny_run
    rerun = tmp_path / "rerun"
    for name in ("cohorts", "models"):
        shutil.copytree(out / name, rerun / name)
    anatomy = load_template_anatomy(8.0)
    slabs = np.zeros(anatomy.shape, dtype=np.int16)  # 6 slabs along x, labels 1..6
    slabs[...] = 1 + np.arange(anatomy.shape[0])[:, None, None] * 6 // anatomy.shape[0]
    atlas = tmp_path / "slabs.nii.gz"
    nib.save(nib.Nifti1Image(slabs, anatomy.affine), atlas)
    noise = np.random.default_rng(1).random(anatomy.shape)

    def oracle(model, x, target, methods, **kwargs):
        yield "oracle", masks.pop(0), 0.0
        yield "noise", noise, 0.0

    truth = read_table(out / "subjects.tsv")
    lesion_subjects = sorted(set(truth.loc[truth["task"] == "lesion", "subject"]))
    masks = []
    test_root = next((rerun / "cohorts").glob("lesion_test_*"))
    for subject in lesion_subjects:
        found = next((test_root / "derivatives" / "groundtruth" / subject / "anat").glob(
            "*_res-8_label-lesion_mask.nii.gz"))
        masks.append(np.asarray(nib.load(found).dataobj, dtype=float))
    monkeypatch.setattr(scoring, "subject_maps", oracle)
    run_validation_benchmark(rerun, **{**TINY, "tasks": ("lesion",), "n_sanity": 0,
                                       "parcellation": atlas})
    rows = read_table(rerun / "subjects.tsv")
    assert {"roi_rank", "roi_top1", "roi_top3"} <= set(rows.columns)
    oracle_rows = rows[rows["method"] == "oracle"]
    assert len(oracle_rows) == len(lesion_subjects)
    assert (oracle_rows["roi_rank"] == 1).all() and (oracle_rows["roi_top1"] == 1).all()
    assert rows.loc[rows["method"] == "noise", "roi_rank"].between(1, 6).all()
    summary = read_table(rerun / "benchmark.tsv")
    assert {"roi_rank", "roi_top3"} <= set(summary["metric"])
    provenance = json.loads((rerun / "provenance.json").read_text())
    assert provenance["settings"]["parcellation"]["sha256"]
    # Without the atlas no ROI column is written.
    assert "roi_rank" not in read_table(out / "subjects.tsv").columns


def test_sanity_table(tiny_run):
    out, _ = tiny_run
    sanity = read_table(out / "sanity.tsv")
    for (_task, method), rows in sanity.groupby(["task", "method"]):
        assert method in METHODS
        n_layers = int(rows["n_layers"].iloc[0])
        # sanity_max_steps=3: the output layer, the middle, the whole model.
        assert list(rows["n_randomized"]) == cascade_steps(n_layers, 3)
        assert rows["n_randomized"].iloc[-1] == n_layers
    finite = sanity["spearman"].dropna()
    assert len(finite) and ((finite >= -1) & (finite <= 1)).all()


def test_rerun_resumes_with_identical_tables(tiny_run, monkeypatch):
    out, _ = tiny_run
    names = ("benchmark.tsv", "subjects.tsv", "sanity.tsv", "models.tsv")
    before = {name: (out / name).read_text() for name in names}
    from nipype_xai.benchmark import scoring

    def fail(*args, **kwargs):
        raise AssertionError("finished work was recomputed")

    monkeypatch.setattr(scoring, "subject_maps", fail)
    monkeypatch.setattr(scoring, "model_randomization_check", fail)
    run_validation_benchmark(out, BenchmarkSettings(**TINY))
    assert {name: (out / name).read_text() for name in names} == before


def _count_subject_maps(monkeypatch) -> list:
    """Record every call of ``scoring.subject_maps`` (its methods) in the list returned."""
    from nipype_xai.benchmark import scoring

    calls = []
    real = scoring.subject_maps

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "subject_maps", counting)
    return calls


def test_killed_run_resumes_from_finished_subjects(tiny_run, monkeypatch):
    """A run killed during a subject left every earlier subject's result: only that one is
    computed again, and the tables come out the same."""
    out, _ = tiny_run
    before = {name: (out / name).read_text() for name in ("benchmark.tsv", "sanity.tsv")}
    subjects_before = read_table(out / "subjects.tsv")
    finished = sorted((out / "work").rglob("_score_subject/*/output.pkl"))
    # One cached result per scored (task, model, subject).
    assert len(finished) == subjects_before.groupby(["task", "architecture", "subject"]).ngroups
    shutil.rmtree(finished[0].parent)  # the subject the run was killed in
    calls = _count_subject_maps(monkeypatch)
    run_validation_benchmark(out, **TINY)
    assert len(calls) == 1
    assert {name: (out / name).read_text() for name in before} == before
    subjects = read_table(out / "subjects.tsv")  # the same, but for the recomputed timings
    pd.testing.assert_frame_equal(subjects.drop(columns="seconds"),
                                  subjects_before.drop(columns="seconds"))


# --------------------------------------------------------------------------------------------
# Statistics through the benchmark's code path
# --------------------------------------------------------------------------------------------


def _percentile_bootstrap(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Textbook percentile bootstrap of the mean, written out independently."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[draws].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def test_summarize_benchmark_matches_direct_bootstrap():
    rng = np.random.default_rng(7)
    rows = []
    # Two groups of different subjects (one task, correct / incorrect), three methods each.
    for correct, subjects in ((True, [f"sub-{i:02d}" for i in range(1, 9)]),
                              (False, ["sub-09", "sub-10", "sub-11"])):
        for method in ("gradient", "smoothgrad", "sobel"):
            for subject in subjects:
                rows.append({"task": "lesion", "groundtruth": "signal", "architecture": "tinycnn",
                             "label": "lesion", "correct": correct, "subject": subject,
                             "method": method, "precision_at_k": rng.uniform(),
                             "emd": rng.uniform(5, 50)})
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # order must not matter
    summary = summarize_benchmark(table, n_boot=500, seed=11)
    assert list(summary.columns) == SUMMARY_COLUMNS
    for correct, n in ((True, 8), (False, 3)):
        for method in ("gradient", "smoothgrad", "sobel"):
            for metric in ("precision_at_k", "emd"):
                part = table[(table["correct"] == correct) & (table["method"] == method)]
                values = part.sort_values("subject")[metric].to_numpy()
                row = summary[(summary["correct"] == correct) & (summary["method"] == method)
                              & (summary["metric"] == metric)].iloc[0]
                low, high = _percentile_bootstrap(values, 500, 11)
                assert row["n"] == n
                assert row["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert row["sd"] == pytest.approx(values.std(ddof=1), abs=1e-12)
                assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-12)
                assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(
                    bootstrap_ci(values, n_boot=500, seed=11), abs=1e-12)
    # Ranks are within a group and metric; emd is lower-is-better.
    emd = summary[(summary["correct"]) & (summary["metric"] == "emd")]
    assert emd.sort_values("mean")["rank"].tolist() == [1, 2, 3]


def _crossed_table(n_seeds: int, n_subjects: int, seed_sd: float) -> pd.DataFrame:
    """One group, two methods, scores = seed effect + subject effect + noise (crossed)."""
    rng = np.random.default_rng(5)
    seed_effect = rng.normal(0, seed_sd, n_seeds)
    subject_effect = rng.normal(0, 0.1, n_subjects)
    rows = []
    for t in range(n_seeds):
        for j in range(n_subjects):
            for method, shift in (("gradient", 0.0), ("sobel", -0.2)):
                rows.append({"task": "lesion", "groundtruth": "signal", "architecture": "tinycnn",
                             "training_seed": t, "label": "lesion", "correct": True,
                             "subject": f"sub-{j:02d}", "method": method,
                             "auroc": 0.7 + shift + seed_effect[t] + subject_effect[j]
                             + rng.normal(0, 0.02)})
    return pd.DataFrame(rows)


def test_confidence_intervals_resample_training_seeds_and_subjects():
    """The summary's bootstrap is the crossed (pigeonhole) one over seeds and subjects, written
    out here independently; seeds that disagree widen the interval."""
    table = _crossed_table(3, 12, seed_sd=0.3)
    summary = summarize_benchmark(table, metrics=["auroc"], n_boot=400, seed=2)
    row = summary[summary["method"] == "gradient"].iloc[0]
    assert (row["n"], row["n_subjects"], row["n_seeds"]) == (36, 12, 3)
    part = table[table["method"] == "gradient"]
    matrix = part.pivot(index="training_seed", columns="subject", values="auroc").to_numpy()
    subject_draws = np.random.default_rng(2).integers(0, 12, size=(400, 12))
    seed_draws = np.random.default_rng([2, 1]).integers(0, 3, size=(400, 3))
    means = [matrix[np.ix_(seed_draws[b], subject_draws[b])].mean() for b in range(400)]
    low, high = np.percentile(means, [2.5, 97.5])
    assert row["mean"] == pytest.approx(matrix.mean(), abs=1e-12)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    # Against the subjects of one seed alone, the seeds' spread widens the interval.
    one = summarize_benchmark(table[table["training_seed"] == 0], metrics=["auroc"], n_boot=400,
                              seed=2)
    one = one[one["method"] == "gradient"].iloc[0]
    assert row["ci_high"] - row["ci_low"] > 1.5 * (one["ci_high"] - one["ci_low"])
    assert one["n_seeds"] == 1


def test_part_coverage_names_the_missing_parts_of_each_run():
    from nipype_xai.benchmark.provenance import coverage_lines, part_coverage

    def record(task, name, part, seeds=(0, 1, 2)):
        return f"{task}-{name}", {"settings": {"tasks": [task], "name": name, "part": part,
                                               "training_seeds": list(seeds)}}

    records = [record("lesion", "main", [k, 8]) for k in (1, 2, 3, 7, 8)]
    records += [record("lesion", "main", [5, 8], seeds=(0,))]  # an interim part
    records += [record("lesion", "main", [2, 8], seeds=(0,))]  # and one re-run since: 0, 1, 2
    records += [record("lesion", "perturbation", [k, 8], seeds=(0,)) for k in (1, 2)]
    records += [record("atrophy", "main", None)]  # a whole run
    coverage = part_coverage(records)
    assert coverage == {
        "atrophy/main": {"parts": None, "of": None, "missing": [], "training_seeds": [0, 1, 2],
                         "fewer_seeds": {}},
        "lesion/main": {"parts": [1, 2, 3, 5, 7, 8], "of": 8, "missing": [4, 6],
                        "training_seeds": [0, 1, 2], "fewer_seeds": {"5": [0]}},
        "lesion/perturbation": {"parts": [1, 2], "of": 8, "missing": [3, 4, 5, 6, 7, 8],
                                "training_seeds": [0], "fewer_seeds": {}},
    }
    assert coverage_lines(coverage) == [
        "atrophy/main: a whole run, training seeds 0, 1, 2",
        "lesion/main: parts 1-3, 5, 7-8 of 8, training seeds 0, 1, 2 (missing 4, 6: its rows "
        "cover the subjects of the parts present only; part 5: training seed 0 only)",
        "lesion/perturbation: parts 1-2 of 8, training seed 0 (missing 3-8: its rows cover the "
        "subjects of the parts present only)",
    ]
    # Parts of two different splits of one run: nothing to count missing against.
    mixed = part_coverage([record("lesion", "main", [1, 8]), record("lesion", "main", [1, 4])])
    assert mixed["lesion/main"]["missing"] == [] and mixed["lesion/main"]["of"] is None
    assert coverage_lines(mixed) == ["lesion/main: part 1, training seeds 0, 1, 2"]


def test_models_that_did_not_learn_are_left_out_of_the_summary():
    table = _crossed_table(3, 6, seed_sd=0.0)
    table["learned"] = table["training_seed"] != 1
    summary = summarize_benchmark(table, metrics=["auroc"], n_boot=50)
    assert set(summary["n_seeds"]) == {2} and set(summary["n"]) == {12}
    kept = table[table["learned"] & (table["method"] == "sobel")]["auroc"].mean()
    assert summary.loc[summary["method"] == "sobel", "mean"].item() == pytest.approx(kept)


def test_parts_merge_into_the_tables_of_one_run(tiny_run, tmp_path):
    """Two parts of the lesion task with two training seeds, merged: the seed-3 rows are the
    tiny run's, each subject is scored in exactly one part, the models agree across parts, and
    the summary counts both seeds."""
    out, _ = tiny_run
    split = tmp_path / "split"
    for name in ("cohorts", "models"):  # the same cohorts; seed 3's model is reused
        shutil.copytree(out / name, split / name)
    settings = {**TINY, "tasks": ("lesion",), "training_seeds": (3, 4), "n_sanity": 2}
    parts = [run_validation_benchmark(split, **settings, part=(k, 2)).parent for k in (1, 2)]
    assert [p.name for p in parts] == ["part-1-of-2", "part-2-of-2"]
    assert {p.parent for p in parts} == {split / "parts" / "main"}
    assert not (split / "benchmark.tsv").exists()  # a part is not summarised
    first, second = (read_table(p / "subjects.tsv") for p in parts)
    assert not set(first["subject"]) & set(second["subject"])

    merged = tmp_path / "merged"
    from nipype_xai.benchmark import merge_benchmark

    # A part given twice (its scores again, their timings changed) merges to the same tables.
    again = tmp_path / "again"
    shutil.copytree(parts[0], again)
    repeated = read_table(again / "subjects.tsv")
    repeated["seconds"] += 1.0
    from nipype_xai.tables import write_tsv

    write_tsv(repeated, again / "subjects.tsv")
    merge_benchmark(merged, [*parts, again], n_boot=200, seed=3)
    subjects = read_table(merged / "subjects.tsv")
    assert set(subjects["training_seed"]) == {3, 4}
    keys = ["groundtruth", "subject", "method"]
    ours = subjects[subjects["training_seed"] == 3].drop(columns="seconds").sort_values(keys)
    whole = read_table(out / "subjects.tsv")
    whole = whole[whole["task"] == "lesion"].drop(columns="seconds").sort_values(keys)
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), whole.reset_index(drop=True))
    models = read_table(merged / "models.tsv")
    assert len(models) == 2 and set(models["training_seed"]) == {3, 4}
    tiny_models = read_table(out / "models.tsv")
    tiny_lesion = tiny_models[tiny_models["task"] == "lesion"].iloc[0]
    seed3 = models[models["training_seed"] == 3].iloc[0]
    assert (seed3["n_scored"], seed3["weights_sha256"]) == (tiny_lesion["n_scored"],
                                                            tiny_lesion["weights_sha256"])
    summary = read_table(merged / "benchmark.tsv")
    assert set(summary["n_seeds"]) == {2}
    # The sanity subjects are chosen once for all parts: two per model, one row per depth each.
    sanity = read_table(merged / "sanity.tsv")
    assert sanity.groupby("training_seed")["subject"].nunique().tolist() == [2, 2]
    sanity_summary = read_table(merged / "sanity_summary.tsv")
    assert set(sanity_summary["n"]) == {4}
    assert (sanity_summary["ci_low"] <= sanity_summary["spearman"] + 1e-12).all()
    provenance = json.loads((merged / "provenance.json").read_text())
    assert [p["part"] for p in provenance["parts"]] == [[1, 2], [2, 2], [1, 2]]
    assert provenance["coverage"] == {"lesion/main": {
        "parts": [1, 2], "of": 2, "missing": [], "training_seeds": [3, 4], "fewer_seeds": {}}}
    assert (merged / "benchmark.md").read_text().startswith(
        "Parts merged (run: parts of its split):\n\n"
        "- lesion/main: parts 1-2 of 2, training seeds 3, 4\n")
    assert (merged / "benchmark.html").is_file()
    # A merge of fewer parts than the run has says so, in the record and the Markdown.
    merge_benchmark(tmp_path / "half", [parts[1]], n_boot=50, seed=3)
    half = json.loads((tmp_path / "half" / "provenance.json").read_text())
    assert half["coverage"]["lesion/main"]["missing"] == [1]
    assert ("- lesion/main: part 2 of 2, training seeds 3, 4 (missing 1: its rows cover the "
            "subjects of the part present only)") in (tmp_path / "half" / "benchmark.md").read_text()
    # A part of another cohort does not merge.
    other = tmp_path / "other"
    shutil.copytree(parts[0], other)
    record = json.loads((other / "provenance.json").read_text())
    record["cohort_seeds"]["test"] += 1
    (other / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="different test cohorts"):
        merge_benchmark(tmp_path / "bad", [parts[1], other])
    # A run of a given model (--model) records no training cohorts: on the same test cohort it
    # merges with the parts of trained models, and the merged record keeps every cohort seed.
    given = tmp_path / "given"
    shutil.copytree(parts[0], given)
    record_given = json.loads((given / "provenance.json").read_text())
    record_given["cohort_seeds"] = {"test": record_given["cohort_seeds"]["test"]}
    (given / "provenance.json").write_text(json.dumps(record_given))
    merge_benchmark(tmp_path / "with-given", [given, parts[1]], n_boot=50, seed=3)
    assert (json.loads((tmp_path / "with-given" / "provenance.json").read_text())["cohort_seeds"]
            == provenance["cohort_seeds"])
    # Nor a part computed by other code (a method fixed in between).
    record["cohort_seeds"]["test"] -= 1
    record["code_digest"] = "0" * 64
    (other / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="different code"):
        merge_benchmark(tmp_path / "bad", [parts[1], other])
    # Another run (method set, --name) may come from other code: a method added later runs on
    # its own. Its scores of this run's subjects must then agree (here: the same rows).
    record["settings"]["name"] = "added"
    (other / "provenance.json").write_text(json.dumps(record))
    merge_benchmark(tmp_path / "runs", [*parts, other], n_boot=200, seed=3)
    runs = json.loads((tmp_path / "runs" / "provenance.json").read_text())
    assert runs["code_digests"] == {"added": "0" * 64,
                                    "main": provenance["code_digests"]["main"]}
    assert runs["code_digest"] == "per run, see code_digests"
    assert runs["coverage"]["lesion/added"]["missing"] == [2]
    assert provenance["code_digest"] == provenance["code_digests"]["main"]
    changed = read_table(other / "subjects.tsv")
    changed.loc[changed.index[0], "auroc"] = 0.123456
    write_tsv(changed, other / "subjects.tsv")
    with pytest.raises(ValueError, match="two different results"):
        merge_benchmark(tmp_path / "bad", [*parts, other])
    # Nor a part whose model was retrained to other weights (on another CPU, say): the message
    # says where such weights come from.
    retrained = tmp_path / "retrained"
    shutil.copytree(parts[1], retrained)
    models_of_part = read_table(retrained / "models.tsv")
    models_of_part["weights_sha256"] = "f" * 64
    write_tsv(models_of_part, retrained / "models.tsv")
    with pytest.raises(ValueError, match="different weights .* another instruction set"):
        merge_benchmark(tmp_path / "bad", [parts[0], retrained])


def test_changed_code_is_not_served_from_the_cache(tiny_run, monkeypatch):
    """The resume cache's key names the code that computes the maps: after a change, finished
    subjects are computed again."""
    out, _ = tiny_run
    from nipype_xai.benchmark import scoring

    calls = _count_subject_maps(monkeypatch)
    monkeypatch.setattr(scoring, "code_digest", lambda: "f" * 64)
    run_validation_benchmark(out, **{**TINY, "tasks": ("lesion",), "n_sanity": 0})
    assert len(calls) == read_table(out / "models.tsv")["n_scored"].sum()


def test_table_headers_state_each_metrics_convention():
    from nipype_xai.benchmark.report import markdown_tables, metric_header
    from nipype_xai.metrics.overlap import METRIC_CONVENTIONS

    assert metric_header("relevance_mass_accuracy") == "relevance_mass_accuracy (max(a, 0); ↑)"
    assert metric_header("emd") == "emd (|a|; ↓)"
    assert metric_header("method") == "method"
    table = _crossed_table(2, 4, seed_sd=0.1)
    table["relevance_mass_accuracy"] = 0.5
    text = markdown_tables(summarize_benchmark(table, n_boot=20))
    assert "| method | precision_at_k" not in text
    assert "relevance_mass_accuracy (max(a, 0); ↑)" in text
    # Every table row has as many cells as its separator: the |a| in a header is escaped.
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = {len(re.split(r"(?<!\\)\|", line)) for line in rows}
    assert len(cells) == 1, cells
    assert "auroc (\\|a\\|; ↑)" in text
    assert METRIC_CONVENTIONS["abs"]["relevance_mass_accuracy"] in text
    assert "(n = 4 subjects x 2 training seeds (8 cells))" in text



def test_ci_reading_claims_a_difference_only_where_the_intervals_do_not_overlap():
    from nipype_xai.benchmark.report import ci_reading, markdown_tables

    def row(method, metric, mean, low, high):
        return {"method": method, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high}

    group = pd.DataFrame([
        row("lrp", "precision_at_k", 0.50, 0.40, 0.60),
        row("smoothgrad", "precision_at_k", 0.45, 0.35, 0.55),   # overlaps the best
        row("gradient", "precision_at_k", 0.20, 0.15, 0.39),     # below the best, above sobel
        row("gradcam", "precision_at_k", 0.05, 0.01, 0.12),      # level with sobel
        row("occlusion", "precision_at_k", 0.01, 0.0, 0.02),     # below sobel
        row("sobel", "precision_at_k", 0.08, 0.06, 0.10),
        row("random", "precision_at_k", 0.03, 0.02, 0.04),
        # Lower is better: the best is the smallest, and "above" the baseline means below it.
        row("lrp", "emd", 10.0, 8.0, 12.0),
        row("gradient", "emd", 20.0, 18.0, 22.0),
        row("sobel", "emd", 30.0, 28.0, 32.0),
    ])
    reading = ci_reading(group, "precision_at_k")
    assert reading["best"] == "lrp" and reading["tied"] == ["smoothgrad"]
    assert reading["baseline"] == "sobel"
    assert reading["above"] == ["lrp", "smoothgrad", "gradient"]
    assert reading["level"] == ["gradcam"] and reading["below"] == ["occlusion"]
    emd = ci_reading(group, "emd")
    assert emd["best"] == "lrp" and emd["tied"] == []
    assert emd["above"] == ["lrp", "gradient"] and emd["below"] == []
    assert ci_reading(group, "auroc") is None
    assert ci_reading(group.loc[group["method"] == "sobel"], "emd") is None

    # In the Markdown, after each table: the same reading in words.
    table = _crossed_table(2, 4, seed_sd=0.1)
    text = markdown_tables(summarize_benchmark(table, n_boot=20))
    assert "What this table shows (a difference only where the 95 % CIs do not overlap):" in text
    assert "- **auroc** (↑): best `gradient`" in text and "Best baseline *sobel*" in text

def test_summarize_benchmark_requires_the_group_columns():
    with pytest.raises(ValueError, match="correct"):
        summarize_benchmark(pd.DataFrame({"task": ["lesion"], "groundtruth": ["signal"],
                                          "architecture": ["x"], "label": ["lesion"],
                                          "subject": ["sub-01"], "method": ["gradient"],
                                          "auroc": [0.5]}))
    with pytest.raises(ValueError, match="groundtruth"):
        summarize_benchmark(pd.DataFrame({"task": ["lesion"], "architecture": ["x"],
                                          "label": ["lesion"], "correct": [True],
                                          "subject": ["sub-01"], "method": ["gradient"],
                                          "auroc": [0.5]}))


def test_summary_groups_by_ground_truth_exact_signal_first():
    rows = [{"task": "atrophy", "groundtruth": gt, "architecture": "tinycnn", "label": "atrophy",
             "correct": True, "subject": f"sub-0{i}", "method": "gradient",
             "auroc": value + 0.01 * i}
            for gt, value in (("roi", 0.6), ("signal", 0.9)) for i in range(1, 4)]
    summary = summarize_benchmark(pd.DataFrame(rows), n_boot=50)
    assert list(summary["groundtruth"]) == ["signal", "roi"]  # not as first seen
    assert summary["mean"].tolist() == pytest.approx([0.92, 0.62])
    assert set(summary["n"]) == {3}


# --------------------------------------------------------------------------------------------
# Cores: maps of a subject, the randomisation check
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_model_randomization_check_equals_cascading_randomization(tiny_net, volume, masked):
    mask = None
    if masked:
        mask = np.zeros(volume.shape[2:], dtype=bool)
        mask[2:-2, 1:-1, 2:-3] = True
    rows = model_randomization_check(tiny_net, volume, ["gradient", "smoothgrad"],
                                     method_params={"smoothgrad": {"n_samples": 3}}, seed=0,
                                     randomization_seed=5, mask=mask)
    for method, params in (("gradient", {}), ("smoothgrad", {"n_samples": 3, "seed": 0})):
        reference = cascading_randomization(tiny_net, volume, method, similarity="spearman",
                                            randomization_seed=5, mask=mask, **params)
        ours = [r for r in rows if r["method"] == method]
        assert [r["layer"] for r in ours] == [r["layer"] for r in reference]
        assert [r["n_randomized"] for r in ours] == [r["n_randomized"] for r in reference]
        np.testing.assert_allclose([r["spearman"] for r in ours],
                                   [r["spearman"] for r in reference], rtol=0, atol=1e-12)


def test_cascade_steps_keep_first_and_last():
    assert cascade_steps(5, None) == [1, 2, 3, 4, 5]
    assert cascade_steps(5, 9) == [1, 2, 3, 4, 5]
    assert cascade_steps(32, 4) == [1, 11, 22, 32]
    with pytest.raises(ValueError, match="at least 2"):
        cascade_steps(10, 1)


def test_subject_maps_yields_methods_and_baselines(tiny_net):
    from nipype_xai.attribution.baselines import sobel
    from nipype_xai.metrics import randomize_model

    x = torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    randomized = randomize_model(tiny_net, 0)
    maps = {name: volume for name, volume, _ in subject_maps(
        tiny_net, x, 1, ["gradient", "saliency", "smoothgrad"],
        method_params={"smoothgrad": {"n_samples": 3}}, random_model=randomized,
        random_model_methods=["gradient"], random_seed=4)}
    assert list(maps) == ["gradient", "saliency", "smoothgrad", "random_model_gradient",
                          "sobel", "laplace", "random"]
    assert all(m.shape == (12, 12, 12) and m.dtype == np.float64 for m in maps.values())
    np.testing.assert_allclose(maps["saliency"], np.abs(maps["gradient"]), atol=1e-7)
    np.testing.assert_allclose(maps["sobel"], sobel(x)[0, 0].double().numpy(), atol=1e-6)
    assert not np.allclose(maps["random_model_gradient"], maps["gradient"])
    again = {n: v for n, v, _ in subject_maps(tiny_net, x, 1, ["gradient"], random_seed=4)}
    np.testing.assert_array_equal(again["random"], maps["random"])


# --------------------------------------------------------------------------------------------
# Bad input: a clear error before any work
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"tasks": ["tumour"]}, "unknown task"),
    ({"architectures": ["vit"]}, "unknown architecture"),
    ({"methods": ["gradient", "magic"]}, "unknown method"),
    ({"method_params": {"magic": {}}}, "unknown method"),
    ({"architectures": ["sfcn"], "resolution_mm": 8.0}, "finer --model-resolution"),
    ({"architectures": ["sfcn"], "resolution_mm": 2.0, "model_resolution_mm": 8.0},
     "finer --model-resolution"),
    ({"n_easy": 1}, "n_easy"),
    ({"train_options": {"epochs": 3}}, "not accepted"),
    ({"sanity_max_steps": 1}, "sanity_max_steps"),
    ({"groundtruths": ["signal", "caudate"]}, "unknown ground-truth definition"),
    ({"groundtruths": []}, "unknown ground-truth definition"),
    ({"tasks": ["lesion", "atrophy"], "groundtruths": ["roi"]},
     r"none applies to task\(s\) \['lesion'\]"),
    ({"n_sanity": -1}, "n_sanity"),
    ({"part": (3, 2)}, "part must be k/n"),
    ({"name": "a/b"}, "name must be"),
    ({"training_seeds": []}, "training_seeds"),
    ({"min_balanced_accuracy": 1.5}, "min_balanced_accuracy"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, message):
    arguments = {"n_train": 4, "n_test": 2, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        run_validation_benchmark(tmp_path / "out", **arguments)
    assert not (tmp_path / "out" / "cohorts").exists()


def test_command_line_parses_and_reports_errors(tmp_path, capsys):
    import argparse

    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(tmp_path), "--task", "lesion", "atrophy", "--n-train", "50",
                              "--architectures", "tinycnn", "densenet", "--methods", "gradient",
                              "--method-params", '{"smoothgrad": {"n_samples": 8}}',
                              "--resolution", "4", "--epochs", "3", "--seed", "2",
                              "--train-options", '{"augment": false}'])
    assert args.task == ["lesion", "atrophy"] and args.architectures == ["tinycnn", "densenet"]
    assert args.method_params == {"smoothgrad": {"n_samples": 8}} and args.resolution == 4.0
    assert args.train_options == {"augment": False}
    assert main([str(tmp_path / "out"), "--architectures", "sfcn", "--resolution", "8",
                 "--no-progress"]) == 1
    error = capsys.readouterr().err
    # The command line's one error format, as every other subcommand's.
    assert error.startswith("nipype-xai: error: architecture 'sfcn' cannot run")
    assert error.count("\n") == 1
    # The same sub-command through the nipype-xai entry point.
    from nipype_xai.cli.run import main as cli_main

    assert cli_main(["benchmark", str(tmp_path / "out2"), "--architectures", "sfcn",
                     "--resolution", "8", "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("nipype-xai: error:") and error.count("\n") == 1
    assert not (tmp_path / "out2" / "cohorts").exists()
    with pytest.raises(UsageError, match="n_easy"):
        run_from_argv([str(tmp_path / "out3"), "--n-easy", "1"])
    with pytest.raises(UsageError, match="invalid choice.*see 'nipype-xai benchmark --help'"):
        benchmark_parser().parse_args([str(tmp_path), "--task", "tumour"])


def test_command_line_help_is_the_benchmark_parser(capsys):
    from nipype_xai.cli.run import main as cli_main

    assert cli_main(["benchmark", "--help"]) == 0
    assert capsys.readouterr().out == benchmark_parser().format_help()


def test_benchmark_package_imports_nothing_from_the_command_line():
    code = ("import sys, nipype_xai.benchmark; "
            "print([m for m in sys.modules if m.startswith('nipype_xai.cli')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_settings_resolve_their_defaults_once(tmp_path):
    from nipype_xai.attribution import available_methods

    settings = BenchmarkSettings(n_train=10, methods=["gradient", "gradient", "smoothgrad"])
    assert settings.methods == ("gradient", "smoothgrad") == settings.sanity_methods
    assert (settings.n_easy, settings.model_resolution_mm) == (5, 4.0)
    assert settings.groundtruths == GROUNDTRUTHS == ("signal", "roi")
    assert BenchmarkSettings(groundtruths=["roi", "roi"], tasks=["atrophy"]).groundtruths == (
        "roi",)
    assert BenchmarkSettings().methods == tuple(available_methods())
    assert settings.training == {"epochs": 30, "batch_size": 4, "lr": None,
                                 "weight_decay": None, "seed": 0, "augment": True,
                                 "max_shift": None, "intensity_jitter": 0.1, "flip_x": True}
    assert BenchmarkSettings(train_options={"weight_decay": 0.5}).training["weight_decay"] == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1
    with pytest.raises(TypeError, match="settings given"):
        run_validation_benchmark(tmp_path, settings, seed=1)


def test_position_aware_architecture_is_built_for_the_model_grid():
    from nipype_xai.benchmark import architecture_spec
    from nipype_xai.synth.train import build_model

    spec = architecture_spec("tinycnn-flat", "atrophy", 8.0)
    assert spec.kwargs["input_shape"] == list(spec.input.shape)
    model = build_model(spec).eval()
    assert model(torch.zeros(2, 1, *spec.input.shape)).shape == (2, 2)
    assert "input_shape" not in architecture_spec("tinycnn", "atrophy", 8.0).kwargs


def _two_architecture_summary() -> pd.DataFrame:
    rows = []
    values = {("tinycnn", "smoothgrad"): 0.4, ("tinycnn", "gradcam"): 0.02,
              ("tinycnn", "random"): 0.0, ("resnet", "smoothgrad"): 0.5,
              ("resnet", "gradcam"): 0.1, ("resnet", "random"): 0.0}
    for (architecture, method), value in values.items():
        for metric, offset in (("precision_at_k", 0.0), ("auroc", 0.5)):
            for correct, n in ((True, 7), (False, 2)):
                mean = value + offset
                rows.append({"task": "lesion", "groundtruth": "signal",
                             "architecture": architecture, "label": "lesion",
                             "correct": correct, "method": method, "metric": metric,
                             "mean": mean, "sd": 0.1, "ci_low": mean - 0.05,
                             "ci_high": mean + 0.05, "n": n + (architecture == "resnet"),
                             "rank": 1})
    return pd.DataFrame(rows)


def test_architecture_comparison_table_figure_and_report(tmp_path):
    from nipype_xai.benchmark.report import (
        architecture_table,
        markdown_tables,
        write_figures,
        write_report,
    )

    summary = _two_architecture_summary()
    table = architecture_table(summary, "precision_at_k")
    assert list(table.columns) == ["method", "tinycnn", "resnet"]
    # Best mean over the architectures first; correctly classified subjects only.
    assert list(table["method"]) == ["smoothgrad", "gradcam", "random", "n"]
    assert table.iloc[0]["resnet"] == "0.5 [0.45, 0.55]"
    assert table.iloc[-1]["tinycnn"] == "7" and table.iloc[-1]["resnet"] == "8"

    figures = write_figures(summary, pd.DataFrame(), tmp_path / "figures")
    for metric in ("precision_at_k", "auroc"):
        paths = figures[f"compare/lesion/signal/lesion/{metric}"]
        assert paths["png"].is_file() and paths["svg"].is_file()
    text = markdown_tables(summary)
    assert text.index("precision_at_k by architecture") < text.index(
        "### lesion / GT signal / tinycnn")
    assert "| smoothgrad | 0.4 [0.35, 0.45] | 0.5 [0.45, 0.55] |" in text
    page = write_report(tmp_path / "b.html", summary=summary, models=pd.DataFrame(),
                        sanity=pd.DataFrame(), figures=figures, provenance={})
    assert "how much the verdict depends on the model" in page.read_text()
    # One architecture: no comparison.
    single = summary[summary["architecture"] == "tinycnn"]
    assert not any(k.startswith("compare/") for k in write_figures(single, pd.DataFrame(),
                                                                 tmp_path / "f1"))
    assert "by architecture" not in markdown_tables(single)


def test_report_shows_the_exact_ground_truth_first_and_names_each(tmp_path):
    from nipype_xai.benchmark.report import markdown_tables, write_figures, write_report

    signal = _two_architecture_summary()
    summary = pd.concat([signal.assign(groundtruth="roi"), signal], ignore_index=True)
    figures = write_figures(summary, pd.DataFrame(), tmp_path / "figures")
    assert figures["compare/lesion/signal/lesion/auroc"]["png"].name == (
        "task-lesion_label-lesion_desc-architectures_metric-auroc_plot.png")
    assert figures["compare/lesion/roi/lesion/auroc"]["png"].name == (
        "task-lesion_groundtruth-roi_label-lesion_desc-architectures_metric-auroc_plot.png")
    assert figures["ranking/lesion/roi/resnet/lesion/auroc"]["png"].name == (
        "task-lesion_groundtruth-roi_model-resnet_label-lesion_desc-ranking_metric-auroc_plot.png")
    text = markdown_tables(summary)
    assert text.index("## Ground truth: signal") < text.index("## Ground truth: roi")
    assert "groundtruth = signal: exact ground truth, where the signal changes the image" in text
    assert text.index("### lesion / GT signal / resnet") < text.index(
        "### lesion / GT roi / tinycnn")
    page = write_report(tmp_path / "b.html", summary=summary, models=pd.DataFrame(),
                        sanity=pd.DataFrame(), figures=figures, provenance={}).read_text()
    assert page.index("<h2>Ground truth: signal</h2>") < page.index("<h2>Ground truth: roi</h2>")
    assert page.index("lesion / GT signal / tinycnn") < page.index("lesion / GT roi / tinycnn")


def test_task_settings_fill_only_what_was_not_given():
    from nipype_xai.benchmark.training import task_settings as _task_settings

    given = {"lr": None, "weight_decay": None, "max_shift": None, "epochs": 3}
    assert _task_settings(given, "atrophy") == {"lr": 1e-3, "weight_decay": 1e-2,
                                                "max_shift": 0, "epochs": 3}
    explicit = {"lr": 0.01, "weight_decay": 0.0, "max_shift": 1, "epochs": 3}
    assert _task_settings(explicit, "atrophy") == explicit  # 0.0 is a value, not "unset"
    assert _task_settings(given, "lesion")["lr"] == 3e-3


def test_sanity_summary_is_per_model_whatever_was_merged_beside_it():
    """Each model's randomisation-check CIs come from its own training seeds and subjects: the
    same with a given model (--model: no training seed) merged beside it, which once stopped the
    merge (a missing seed did not sort beside the others)."""
    from nipype_xai.benchmark.validation import summarize_sanity

    rng = np.random.default_rng(0)
    rows = []
    for architecture, seeds in (("tinycnn", (0, 1, 2)), ("tinycnn-retrained", (None,))):
        for training_seed in seeds:
            for j in range(6):
                for depth in (1, 2):
                    rows.append({"task": "lesion", "architecture": architecture,
                                 "training_seed": training_seed, "learned": True,
                                 "subject": f"sub-{j:02d}", "correct": True, "method": "gradient",
                                 "n_randomized": depth, "layer": f"layer{depth}", "n_layers": 2,
                                 "spearman": rng.uniform(-1.0, 1.0)})
    sanity = pd.DataFrame(rows)
    both = summarize_sanity(sanity, n_boot=200, seed=1)
    for architecture in ("tinycnn", "tinycnn-retrained"):
        alone = summarize_sanity(sanity[sanity["architecture"] == architecture], n_boot=200,
                                 seed=1)
        pd.testing.assert_frame_equal(
            both[both["architecture"] == architecture].reset_index(drop=True),
            alone.reset_index(drop=True))
    assert sorted(set(both["n"])) == [6, 18]
    assert (both["ci_low"] <= both["spearman"] + 1e-12).all()


def test_a_given_model_counts_one_training_seed():
    """A model given with --model has no training seed (missing): its rows count one seed,
    summarised over its subjects, not zero seeds."""
    table = _crossed_table(1, 6, seed_sd=0.0).assign(training_seed=np.nan,
                                                     architecture="given")
    summary = summarize_benchmark(table, metrics=["auroc"], n_boot=50)
    assert set(summary["n_seeds"]) == {1} and set(summary["n"]) == {6}


def test_a_given_model_takes_background_and_patterns_from_the_training_cohorts(tiny_run,
                                                                               tmp_path):
    """--model with a method that takes data (a background set, patterns): the run generates the
    task's training cohorts (the data the benchmark trains on) and records them; without such a
    method it generates none. Before, a given model had no training inputs at all and the
    data-taking methods could not run on it."""
    out, _ = tiny_run
    given = out / "models" / "lesion_tinycnn_seed-3.json"
    settings = {key: value for key, value in TINY.items()
                if key not in ("tasks", "architectures", "methods", "epochs")}
    run_validation_benchmark(tmp_path / "data", tasks=("lesion",), model_spec=given,
                             methods=["gradient", "gradient_shap", "pattern_attribution"],
                             **settings)
    record = json.loads((tmp_path / "data" / "provenance.json").read_text())
    assert record["cohort_seeds"] == dict(zip(("train", "test", "easy"), cohort_seeds(3)))
    data = record["models"]["lesion/lesion_tinycnn_seed-3"]["method_data"]
    trained_on = json.loads(given.read_text())["training"]["train_cohorts"]
    # The given model was trained on these very cohorts: the background is its own controls.
    assert data["background"]["Source"] == "training cohorts " + ", ".join(trained_on)
    assert data["patterns"]["N"] == TINY["n_train"] + TINY["n_easy"]
    scores = pd.read_csv(tmp_path / "data" / "subjects.tsv", sep="\t")
    assert {"gradient_shap", "pattern_attribution"} <= set(scores["method"])
    # Identical to the trained run's maps of the same model: same background, same patterns.
    both = scores.merge(pd.read_csv(out / "subjects.tsv", sep="\t"),
                        on=["task", "groundtruth", "subject", "method"], suffixes=("", "_trained"))
    both = both[both["architecture_trained"] == "tinycnn"]
    assert set(both["method"]) >= {"gradient_shap", "pattern_attribution"}
    np.testing.assert_allclose(both["auroc"], both["auroc_trained"], rtol=1e-6)

    run_validation_benchmark(tmp_path / "plain", tasks=("lesion",), model_spec=given,
                             methods=["gradient"], **settings)
    record = json.loads((tmp_path / "plain" / "provenance.json").read_text())
    assert record["cohort_seeds"] == {"test": cohort_seeds(3)[1]}
    assert [p.name for p in (tmp_path / "plain" / "cohorts").iterdir()] == [
        f"lesion_test_seed-{cohort_seeds(3)[1]}_n-8_res-8"]
