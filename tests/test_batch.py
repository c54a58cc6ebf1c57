"""Subjects batched per model node (``ModelBatch`` / ``BatchItem``, SPEC §9): a batch gives each
subject what ``ModelInference`` and ``Attribution`` give it alone, and an image the batch cannot
explain fails only its own item."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nipype_xai.attribution import available_methods
from nipype_xai.images import ImageError
from nipype_xai.interfaces import Attribution, BatchItem, ModelBatch, ModelInference

from test_interfaces import AFFINE_4MM, brain_volume, write_model  # noqa: E402

#: Batched convolutions round differently from a batch of one: measured on this CPU with
#: attribute_many, every method's batched map lay within 4.6e-7 of the largest |value| of its
#: one-by-one map (TinyCNN3D, 24x28x24 grid, 3 samples; the largest, lrp_alpha2_beta1); 1e-5
#: leaves room for other CPUs' kernels.
MAP_ATOL_SHARE = 1e-5
PREDICTION_RTOL = 1e-6


def write_subjects(folder: Path, n: int, constant: tuple[int, ...] = ()) -> list[str]:
    paths = []
    for index in range(n):
        data = brain_volume(seed=index) * (1 + 0.1 * index)
        if index in constant:
            data[:] = 7.0
        path = folder / f"sub-{index:02d}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(data, AFFINE_4MM), path)
        paths.append(str(path))
    return paths


def run_node(interface, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    try:
        import os

        os.chdir(folder)
        return interface.run()
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def batch_and_alone(tmp_path_factory):
    """Three subjects through one ModelBatch, and each alone through ModelInference and
    Attribution, with every registered method (seeded)."""
    root = tmp_path_factory.mktemp("batch")
    spec = write_model(root, shape=(12, 12, 12))
    subjects = write_subjects(root, 3)
    methods = list(available_methods())
    batch = run_node(ModelBatch(in_files=subjects, model_spec=str(spec), methods=methods,
                                seed=3), root / "batch")
    alone = []
    for index, in_file in enumerate(subjects):
        prediction = run_node(ModelInference(in_file=in_file, model_spec=str(spec)),
                              root / f"inference-{index}")
        maps = run_node(Attribution(in_file=in_file, model_spec=str(spec), methods=methods,
                                    seed=3), root / f"attribution-{index}")
        alone.append((prediction.outputs.out_tsv, maps.outputs.out_files,
                      maps.outputs.out_sidecars))
    return batch.outputs.out_items, alone, methods


def test_a_batch_gives_each_subject_what_it_gets_alone(batch_and_alone):
    items, alone, methods = batch_and_alone
    assert len(items) == 3
    for index, (tsv, maps, sidecars) in enumerate(alone):
        item = BatchItem(items=items, index=index).run().outputs
        ours, theirs = pd.read_csv(item.out_tsv, sep="\t"), pd.read_csv(tsv, sep="\t")
        assert list(ours.columns) == list(theirs.columns)
        assert ours["predicted_label"].tolist() == theirs["predicted_label"].tolist()
        numeric = ours.select_dtypes("number").columns
        np.testing.assert_allclose(ours[numeric].to_numpy(float), theirs[numeric].to_numpy(float),
                                   rtol=PREDICTION_RTOL)
        # The same files, named alike, in the order of the methods.
        assert [Path(p).name for p in item.out_files] == [Path(p).name for p in maps]
        assert len(item.out_files) == len(methods)
        for method, mine, reference in zip(methods, item.out_files, maps):
            a = np.asanyarray(nib.load(mine).dataobj)
            b = np.asanyarray(nib.load(reference).dataobj)
            assert np.abs(b).max() > 0, method
            np.testing.assert_allclose(a, b, rtol=0, atol=MAP_ATOL_SHARE * np.abs(b).max(),
                                       err_msg=method)
        for method, mine, reference in zip(methods, item.out_sidecars, sidecars):
            a, b = json.loads(Path(mine).read_text()), json.loads(Path(reference).read_text())
            # A warning's figures may differ in their last digit (batched rounding).
            assert len(a.pop("Warnings", [])) == len(b.pop("Warnings", [])), method
            for key in ("Probability", "TargetProbability"):
                assert a.pop(key) == pytest.approx(b.pop(key), rel=PREDICTION_RTOL)
            assert a == b, method


def test_a_warning_about_one_image_names_it_not_its_batch_position(tmp_path, monkeypatch):
    """A warning about one sample of the batch reaches that subject's sidecar alone, naming its
    file (not "sample 1", its position in someone else's batch); one about every sample
    reaches every subject as it is."""
    import warnings

    import torch

    from nipype_xai.attribution.engine import AttributionWarning, _computing
    from nipype_xai.models import inference

    def warning_attribute_many(model, x, methods, target=None, **kwargs):
        with _computing(["gradient"]):
            warnings.warn(AttributionWarning(
                f"axiom off ({AttributionWarning.SAMPLE}: 1 vs 2)", samples=(1,)))
            warnings.warn(AttributionWarning("every map is odd"))
        return {"gradient": torch.ones_like(x)}

    monkeypatch.setattr(inference, "attribute_many", warning_attribute_many)
    spec = write_model(tmp_path, shape=(12, 12, 12))
    subjects = write_subjects(tmp_path, 3)
    items = run_node(ModelBatch(in_files=subjects, model_spec=str(spec), methods=["gradient"]),
                     tmp_path / "batch").outputs.out_items
    for index, in_file in enumerate(subjects):
        sidecar, = BatchItem(items=items, index=index).run().outputs.out_sidecars
        found = json.loads(Path(sidecar).read_text()).get("Warnings", [])
        expected = ["every map is odd"]
        if index == 1:
            expected.insert(0, f"axiom off ({Path(in_file).name}: 1 vs 2)")
        assert found == expected, index


def test_stochastic_maps_do_not_depend_on_the_batch(batch_and_alone):
    # Not the trivial agreement of maps that ignore their seed: two subjects' SmoothGrad maps
    # differ, and each equals its own map alone (checked above).
    items, _, methods = batch_and_alone
    files = [BatchItem(items=items, index=i).run().outputs.out_files for i in (0, 1)]
    position = methods.index("smoothgrad")
    first, second = (np.asanyarray(nib.load(f[position]).dataobj) for f in files)
    assert not np.allclose(first, second)


def test_an_image_the_batch_cannot_explain_fails_its_item_alone(tmp_path):
    spec = write_model(tmp_path, shape=(12, 12, 12))
    subjects = write_subjects(tmp_path, 3, constant=(1,))
    batch = run_node(ModelBatch(in_files=subjects, model_spec=str(spec),
                                methods=["gradient", "smoothgrad"]), tmp_path / "batch")
    items = batch.outputs.out_items
    with pytest.raises(ImageError, match="sub-01_T1w.nii.gz"):
        BatchItem(items=items, index=1).run()
    for index in (0, 2):
        outputs = BatchItem(items=items, index=index, in_file=subjects[index]).run().outputs
        assert len(outputs.out_files) == 2 and Path(outputs.out_tsv).is_file()
    # An item read for another subject's input is refused, not silently swapped; and so is one
    # whose input changed after the batch read it.
    with pytest.raises(ValueError, match="sub-02_T1w.nii.gz"):
        BatchItem(items=items, index=2, in_file=subjects[0]).run()
    nib.save(nib.Nifti1Image(brain_volume(seed=9), AFFINE_4MM), subjects[2])
    with pytest.raises(ValueError, match="changed after the batch read it"):
        BatchItem(items=items, index=2, in_file=subjects[2]).run()


def test_a_batch_without_methods_predicts(tmp_path):
    spec = write_model(tmp_path, shape=(12, 12, 12))
    subjects = write_subjects(tmp_path, 2)
    batch = run_node(ModelBatch(in_files=subjects, model_spec=str(spec)), tmp_path / "batch")
    outputs = BatchItem(items=batch.outputs.out_items, index=1).run().outputs
    assert outputs.out_files == [] and Path(outputs.out_tsv).is_file()


# ---- the participant level in batches ------------------------------------------------------------


def test_subject_batches_are_even_and_in_order():
    from nipype_xai.workflows.base import subject_batches

    subjects = list(range(7))
    assert subject_batches(subjects, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert subject_batches(subjects, 8) == [subjects]
    assert subject_batches(subjects, 1) == [[s] for s in subjects]
    with pytest.raises(ValueError, match="subjects_per_job"):
        subject_batches(subjects, 0)


def test_default_subjects_per_job_keeps_every_process_busy():
    from nipype_xai.cli.execution import default_subjects_per_job
    from nipype_xai.cli.parser import MAX_SUBJECTS_PER_JOB

    assert default_subjects_per_job(3, "MultiProc", {"n_procs": 2}) == 2
    assert default_subjects_per_job(3, "MultiProc", {"n_procs": 4}) == 1
    assert default_subjects_per_job(100, "MultiProc", {"n_procs": 4}) == MAX_SUBJECTS_PER_JOB
    assert default_subjects_per_job(5, "Linear", {}) == 5
    assert default_subjects_per_job(200, "SLURM", {}) == MAX_SUBJECTS_PER_JOB
    assert default_subjects_per_job(0, "SLURM", {}) == 1


class Node:
    """A stand-in for a Nipype node, as crash files and the status callback see it."""

    def __init__(self, fullname):
        self.fullname, self.name = fullname, fullname.rsplit(".", 1)[-1]


def test_a_failing_batch_node_fails_its_own_subjects_only(tmp_path):
    import gzip
    import pickle

    from nipype_xai.cli.execution import RunProgress, _crash_failures

    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    with gzip.open(crash_dir / "crash-1-model.pklz", "wb") as handle:
        pickle.dump({"node": Node("participant_wf.model_batch_0001_wf.model"),
                     "traceback": ["RuntimeError: out of memory\n"]}, handle)
    workflows = {f"sub_0{i}_wf": f"sub-0{i}" for i in range(1, 5)}
    groups = {"model_batch_0000_wf": ("sub-01", "sub-02"),
              "model_batch_0001_wf": ("sub-03", "sub-04")}
    failures = _crash_failures(crash_dir, workflows, groups)
    assert sorted(failures) == ["sub-03", "sub-04"]
    assert "out of memory" in failures["sub-03"].reason

    tracker = RunProgress(workflows, enabled=False)
    tracker.groups = groups
    tracker(Node("participant_wf.model_batch_0001_wf.model"), "start")
    assert tracker.running == {"sub-03": "model", "sub-04": "model"}
    tracker(Node("participant_wf.model_batch_0001_wf.model"), "exception")
    assert tracker.failed == {"sub-03", "sub-04"} and not tracker.running


def test_batched_participant_level_equals_one_subject_per_model_node(tmp_path):
    import os
    import subprocess
    import sys

    from nipype_xai.synth import generate_cohort

    from tiny_model import write_tiny_model  # noqa: E402

    bids_dir = generate_cohort(tmp_path / "bids", "lesion", 3, seed=0, resolution_mm=4.0,
                               progress=False)
    model = write_tiny_model(tmp_path / "model")
    outputs = {}
    for per_job in (1, 2):
        out = tmp_path / f"out-{per_job}"
        # A fresh process per run, as a user's: ITK reads its thread count once per process, and
        # this one may have imported it earlier under another.
        command = [sys.executable, "-m", "nipype_xai.cli.run", str(bids_dir), str(out),
                   "participant", "--model", str(model), "--methods", "gradient", "smoothgrad",
                   "random", "--no-reports", "--ground-truth",
                   str(bids_dir / "derivatives" / "groundtruth"), "-w",
                   str(tmp_path / f"work-{per_job}"), "--nprocs", "2",
                   "--subjects-per-job", str(per_job)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1500,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "3 of 3 subject(s) done" in done.stdout
        outputs[per_job] = {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*"))
                            if p.is_file() and ".nipype-xai" not in p.relative_to(out).parts}
    # Batches of 2 + 1 subjects: the model nodes ran per batch.
    assert sorted(p.name for p in (tmp_path / "work-2" / "participant_wf").glob("model_batch_*")) \
        == ["model_batch_0000_wf", "model_batch_0001_wf"]
    assert set(outputs[1]) == set(outputs[2]) and len(outputs[1]) > 30
    for relative, path in outputs[1].items():
        other = outputs[2][relative]
        if relative.endswith(".nii.gz"):
            a, b = (np.asanyarray(nib.load(p).dataobj, dtype=np.float64) for p in (path, other))
            np.testing.assert_allclose(b, a, rtol=0,
                                       atol=MAP_ATOL_SHARE * max(np.abs(a).max(), 1e-30),
                                       err_msg=relative)
        elif relative.endswith(".tsv"):
            a, b = (pd.read_csv(p, sep="\t") for p in (path, other))
            assert list(a.columns) == list(b.columns), relative
            numeric = a.select_dtypes("number").columns
            np.testing.assert_allclose(b[numeric].to_numpy(float), a[numeric].to_numpy(float),
                                       rtol=1e-5, atol=1e-12, err_msg=relative)
        elif not relative.endswith(".json"):  # sidecars: probabilities may round differently
            assert path.read_bytes() == other.read_bytes(), relative


@pytest.mark.parametrize("extra, message", [
    ([], "give -w on a filesystem the compute nodes share"),
    (["-w", "WORK", "--subjects-per-job", "2"], "--subjects-per-job 1"),
])
def test_a_submitting_plugin_is_refused_what_it_cannot_do(tmp_path, capsys, extra, message):
    from nipype_xai.cli.execution import default_subjects_per_job
    from nipype_xai.cli.run import main

    extra = [str(tmp_path / "work") if arg == "WORK" else arg for arg in extra]
    code = main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--plugin",
                 "SLURMGraph", *extra])
    assert code == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert default_subjects_per_job(200, "SLURMGraph", {}) == 1
