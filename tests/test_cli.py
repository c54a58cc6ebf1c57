"""The ``nipype-xai`` command: help and version, one-line errors for bad input, failing subjects,
resuming from the work directory, ``synth``, ``train`` and a smallest ``demo`` (CPU, ~2 min)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nipype_xai import __version__
from nipype_xai.bids import group_metrics_path
from nipype_xai.cli import main
from nipype_xai.synth import generate_cohort

from tiny_model import TPL, write_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    bids_dir = generate_cohort(root / "bids", "lesion", 4, seed=0, resolution_mm=4.0,
                               progress=False)
    return {"root": root, "bids": bids_dir, "model": write_tiny_model(root / "model"),
            "gt": bids_dir / "derivatives" / "groundtruth"}


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---- help, version, bad input -------------------------------------------------------------------


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "BIDS_DIR OUTPUT_DIR {participant,group}" in out and "--participant-label" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nipype-xai {__version__}"
    for command in ("demo", "synth", "train", "background"):
        assert main([command, "--help"]) == 0
        assert f"nipype-xai {command}" in capsys.readouterr().out


def test_console_script_bad_bids_dir_is_one_line(tmp_path):
    script = Path(sys.executable).parent / "nipype-xai"
    if not script.is_file():
        pytest.skip("the nipype-xai entry point is not installed next to this interpreter")
    missing = tmp_path / "no-such-dataset"
    result = subprocess.run([str(script), str(missing), str(tmp_path / "out"), "participant"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"nipype-xai: error: {missing}: BIDS_DIR is not a folder"]
    assert not (tmp_path / "out").exists()


def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys, cohort):
    bids_dir, model = str(cohort["bids"]), str(cohort["model"])
    out = str(tmp_path / "out")
    not_bids = tmp_path / "plain"
    not_bids.mkdir()
    broken_spec = tmp_path / "broken.json"
    spec = json.loads(Path(model).read_text())
    spec["weights"] = "missing.pt"  # inside the spec's folder, but not there
    broken_spec.write_text(json.dumps(spec))
    cases = [
        ([str(not_bids), out, "participant", "--model", model],
         f"{not_bids}: not a BIDS dataset (no dataset_description.json at its root)"),
        ([bids_dir, out, "participant", "--model", str(broken_spec)],
         "broken.json: weights file not found"),
        ([bids_dir, out, "participant", "--model", model, "--methods", "gradient", "sharpgrad"],
         "--methods: unknown method(s) ['sharpgrad']"),
        ([bids_dir, out, "participant", "--model", model, "--participant-label", "09"],
         "no subject sub-09 in the dataset"),
        ([bids_dir, out, "participant", "--model", model, "--plugin-args", "{oops"],
         "--plugin-args: not valid JSON"),
        ([bids_dir, out, "participant", "--model", model, "--ground-truth", str(not_bids)],
         f"{not_bids}: not a BIDS dataset"),
        ([bids_dir, out], "the following arguments are required: analysis_level"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        lines = _error_lines(capsys)
        assert len(lines) == 1, lines
        assert lines[0].startswith("nipype-xai: error: ") and message in lines[0], lines
    assert not Path(out, "sub-01").exists()
    # -v adds the traceback.
    assert main([str(not_bids), out, "participant", "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_dataset_without_any_t1w(tmp_path, capsys, cohort):
    empty = tmp_path / "empty"
    shutil.copytree(cohort["bids"], empty, ignore=shutil.ignore_patterns("*_T1w.nii.gz"))
    assert main([str(empty), str(tmp_path / "out"), "participant",
                 "--model", str(cohort["model"])]) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"nipype-xai: error: {empty}: no T1w images")


# ---- failing subjects ---------------------------------------------------------------------------


def test_failing_subjects_do_not_stop_the_others(tmp_path, capsys, cohort):
    """A truncated T1w (sub-03) and a subject without T1w (sub-04) among good ones."""
    bids_dir = tmp_path / "bids"
    shutil.copytree(cohort["bids"], bids_dir)
    corrupt = bids_dir / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    (bids_dir / "sub-04" / "anat" / "sub-04_T1w.nii.gz").unlink()
    out, work = tmp_path / "out", tmp_path / "work"

    code = main([str(bids_dir), str(out), "participant", "--model", str(cohort["model"]),
                 "--methods", "gradient", "sobel", "--ground-truth",
                 str(bids_dir / "derivatives" / "groundtruth"), "-w", str(work),
                 "--nprocs", "2"])
    assert code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "sub-03 failed" in captured.err and "sub-03_T1w.nii.gz" in captured.err
    assert "2 of 4 subject(s) done" in captured.out

    # The good subjects are complete; the bad ones have nothing at all.
    for sub in ("sub-01", "sub-02"):
        maps = list((out / sub / "anat").glob(f"{sub}_space-{TPL}_res-8_desc-*_attribution.nii.gz"))
        assert len(maps) == 2
        assert (out / f"{sub}.html").is_file()
    assert (out / "sub-02" / "anat" / "sub-02_desc-overlap_metrics.tsv").is_file()
    assert not (out / "sub-03").exists() and not (out / "sub-03.html").exists()
    assert not (out / "sub-04").exists()

    failures = pd.read_csv(out / "failures.tsv", sep="\t", keep_default_na=False)
    assert list(failures.columns) == ["participant_id", "session_id", "reason", "node", "crashfile"]
    assert set(failures["session_id"]) == {"n/a"}
    failures = failures.set_index("participant_id")
    assert list(failures.index) == ["sub-03", "sub-04"]
    assert "sub-03_T1w.nii.gz" in failures.loc["sub-03", "reason"]
    assert "truncated" in failures.loc["sub-03", "reason"]
    assert Path(failures.loc["sub-03", "crashfile"]).is_file()
    assert failures.loc["sub-04", "reason"] == "no T1w image found under sub-04/anat"
    assert "failures.tsv" in (out / ".bidsignore").read_text()

    # The group level summarises the good subjects and its report names the failed ones.
    assert main([str(bids_dir), str(out), "group", "-w", str(work), "--n-boot", "100",
                 "--nprocs", "2"]) == 0
    report = (out / "group.html").read_text()
    assert "sub-03" in report and "truncated" in report and "sub-04" in report
    table = pd.read_csv(group_metrics_path(out), sep="\t")
    assert set(table["participant_id"]) == {"sub-02"}


# ---- resuming -----------------------------------------------------------------------------------


def test_rerun_resumes_from_the_work_dir(tmp_path, capsys, cohort):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(cohort["bids"]), str(out), "participant", "--model", str(cohort["model"]),
            "--participant-label", "01", "sub-02", "--methods", "gradient", "--no-reports",
            "--transforms-from", str(cohort["gt"]), "--ground-truth", str(cohort["gt"]),
            "-w", str(work), "--nprocs", "2"]
    assert main(argv) == 0
    capsys.readouterr()
    node_dir = work / "participant_wf" / "sub_02_wf" / "attribution"
    result_file = node_dir / "result_attribution.pklz"
    computed = {p: p.stat().st_mtime_ns for p in [result_file, *node_dir.glob("*.nii.gz")]}
    metrics_result = work / "participant_wf" / "sub_02_wf" / "overlap" / "result_overlap.pklz"
    metrics_mtime = metrics_result.stat().st_mtime_ns
    derivative = (out / "sub-02" / "anat"
                  / f"sub-02_space-{TPL}_res-8_desc-gradient_attribution.nii.gz")
    kept = out / "sub-02" / "anat" / "sub-02_desc-overlap_metrics.tsv"
    kept_mtime = kept.stat().st_mtime_ns
    derivative.unlink()  # a derivative lost after the first run comes back from the cache

    assert main(argv) == 0
    # Nipype found the attribution and metrics nodes in its cache: not run again.
    assert {p: p.stat().st_mtime_ns for p in computed} == computed
    assert metrics_result.stat().st_mtime_ns == metrics_mtime
    assert derivative.is_file()
    # An unchanged derivative is not rewritten: the group level's cache (timestamps) stays valid.
    assert kept.stat().st_mtime_ns == kept_mtime
    # Reused transforms are not copied into the outputs.
    assert not list((out / "sub-02" / "anat").glob("*_xfm.*"))
    assert not (out / "failures.tsv").exists()


# ---- synth, train, demo -------------------------------------------------------------------------


def test_synth_and_train(tmp_path, capsys, cohort):
    cohort_dir = tmp_path / "cohort"
    assert main(["synth", str(cohort_dir), "--task", "lesion", "--n-subjects", "2",
                 "--seed", "3", "--resolution", "8"]) == 0
    assert (cohort_dir / "participants.tsv").is_file()
    assert len(list(cohort_dir.glob("sub-*/anat/*_T1w.nii.gz"))) == 2
    capsys.readouterr()
    assert main(["synth", str(cohort_dir), "--task", "lesion", "--n-subjects", "2"]) == 1
    lines = _error_lines(capsys)
    assert lines == [f"nipype-xai: error: {cohort_dir}: folder is not empty; choose a new "
                     "OUTPUT_DIR"]

    pytest.importorskip("nipype_xai.synth.train")
    assert main(["train", str(cohort_dir), str(tmp_path / "model"), "--spec",
                 str(cohort["model"]), "--name", "retrained", "--epochs", "1"]) == 0
    spec = json.loads((tmp_path / "model" / "retrained.json").read_text())
    assert spec["name"] == "retrained" and (tmp_path / "model" / spec["weights"]).is_file()


def test_demo_at_its_smallest(tmp_path, capsys):
    """The demo with the bundled model, at its smallest size (2 subjects, 4 mm images)."""
    out = tmp_path / "demo"
    code = main(["demo", str(out), "--n-subjects", "2", "--methods", "gradient", "sobel",
                 "--nprocs", "2", "--resolution", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = out / "derivatives" / "nipype-xai" / "group.html"
    assert f"open the report: {report}" in captured.out
    assert report.is_file()
    assert (out / "bids" / "participants.tsv").is_file()
    assert list((out / "derivatives" / "nipype-xai").glob("sub-*/anat/*_attribution.nii.gz"))


def test_failed_registration_qc_fails_the_subject(tmp_path, capsys, cohort):
    """A T1w stored with its front-back axis flipped (a wrong affine): the registration cannot
    recover it, QC flags it, the subject fails with the reason; --keep-failed-qc publishes it,
    flagged."""
    import nibabel as nib

    bids_dir = tmp_path / "bids"
    shutil.copytree(cohort["bids"], bids_dir)
    t1w = bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    img = nib.load(t1w)
    nib.save(nib.Nifti1Image(np.flip(np.asarray(img.dataobj), axis=1), img.affine, img.header),
             t1w)
    argv = [str(bids_dir), str(tmp_path / "out"), "participant", "--model", str(cohort["model"]),
            "--participant-label", "01", "--methods", "gradient", "--skull-stripped",
            "--no-reports", "-w", str(tmp_path / "work"), "--nprocs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "sub-01 failed" in err and "failed QC" in err and "ncc" in err
    failures = pd.read_csv(tmp_path / "out" / "failures.tsv", sep="\t")
    assert "--keep-failed-qc" in failures.loc[0, "reason"]
    assert not (tmp_path / "out" / "sub-01").exists()

    assert main(argv + ["--keep-failed-qc"]) == 0
    qc = pd.read_csv(tmp_path / "out" / "sub-01" / "anat" / "sub-01_desc-registration_metrics.tsv",
                     sep="\t")
    assert not bool(qc.loc[0, "passed"]) and "ncc" in qc.loc[0, "reasons"]


# ---- progress on a terminal ---------------------------------------------------------------------


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _node(name: str, workflow: str = "", base_dir: str = "", interface=None):
    from types import SimpleNamespace

    fullname = f"participant_wf.{workflow}.{name}" if workflow else f"participant_wf.{name}"
    return SimpleNamespace(name=name, fullname=fullname, base_dir=base_dir, interface=interface)


def _commit(workflow: str):
    """A subject's last node, as Nipype reports it: the one that runs CommitDerivatives."""
    from nipype_xai.cli.execution import SUBJECT_DONE_NODE
    from nipype_xai.interfaces.bids import CommitDerivatives

    return _node(SUBJECT_DONE_NODE, workflow, interface=CommitDerivatives())


def test_progress_counts_subjects_done_failed_and_remaining():
    from nipype_xai.cli.execution import RunProgress, progress_wanted
    from nipype_xai.workflows import subject_workflow_name

    assert progress_wanted(stream=_Terminal())
    assert not progress_wanted(quiet=True, stream=_Terminal())
    assert not progress_wanted(stream=io.StringIO())  # a pipe or a log file: nothing drawn

    labels = {subject_workflow_name(s): f"sub-{s}" for s in ("01", "02", "03")}
    screen = _Terminal()
    progress = RunProgress(labels, stream=screen)
    progress(_node("register", "sub_01_wf.registration_wf"), "start")
    progress(_node("register", "sub_01_wf.registration_wf"), "end")
    # A MapNode's subnode knows only its folder.
    progress(_node("_maps_to_native0", base_dir="/w/participant_wf/sub_02_wf/maps_to_native"),
             "start")
    # Running: the subjects with a node running now (sub-01's register ended: it waits).
    assert progress.running == {"sub-02": "_maps_to_native0"}
    progress(_node("n4", "sub_01_wf.anat_wf"), "start")
    progress(_node("report", "sub_01_wf"), "start")
    progress(_node("report", "sub_01_wf"), "end")
    assert progress.running == {"sub-01": "n4", "sub-02": "_maps_to_native0"}
    progress(_node("n4", "sub_01_wf.anat_wf"), "end")
    assert progress.running == {"sub-02": "_maps_to_native0"}
    progress(_node("commit_derivatives", "sub_01_wf"), "end")  # named so, but no commit: not done
    assert progress.done == set()
    progress(_commit("sub_01_wf"), "end")
    progress(_node("attribution", "sub_02_wf"), "exception")
    progress(_commit("sub_02_wf"), "end")  # MultiProc ends it after too
    progress(_node("select_template"), "start")  # shared: no subject's
    assert progress.done == {"sub-01"} and progress.failed == {"sub-02"}
    assert progress.status_text() == "done 1, failed 1, remaining 1"
    progress.close()
    drawn = screen.getvalue()
    assert "nipype-xai: participant level |" in drawn
    assert "2/3 subjects: done 1, failed 1, remaining 1" in drawn
    assert "elapsed 00:0" in drawn and "ETA 00:0" in drawn

    # Disabled: nothing drawn, the counts kept all the same.
    silent = io.StringIO()
    quiet = RunProgress(labels, enabled=False, stream=silent)
    quiet(_commit("sub_03_wf"), "end")
    quiet.close()
    assert quiet.done == {"sub-03"} and silent.getvalue() == ""

    # Nipype pickles the plugin arguments for its workers: a copy draws nothing.
    import pickle

    copy = pickle.loads(pickle.dumps(RunProgress(labels, stream=_Terminal())))
    copy(_commit("sub_01_wf"), "end")
    copy.close()


def test_progress_status_file_is_kept_for_polling(tmp_path):
    import pickle

    from nipype_xai.cli.execution import RunProgress, status_file_path
    from nipype_xai.workflows import subject_workflow_name

    labels = {subject_workflow_name(s): f"sub-{s}" for s in ("01", "02", "03")}
    path = tmp_path / "status" / "participant.json"
    progress = RunProgress(labels, enabled=False, status_file=path)
    first = json.loads(path.read_text())  # written at once: a poller sees the run has started
    assert (first["Total"], first["Done"], first["Failed"], first["Remaining"]) == (3, 0, 0, 3)
    assert first["ETASeconds"] is None and first["Finished"] is False
    assert first["Subjects"]["Remaining"] == ["sub-01", "sub-02", "sub-03"]

    progress(_node("register", "sub_02_wf.registration_wf"), "start")
    assert json.loads(path.read_text())["Subjects"]["Running"] == {"sub-02": "register"}
    progress(_commit("sub_01_wf"), "end")
    progress(_node("attribution", "sub_02_wf"), "exception")
    status = json.loads(path.read_text())
    assert (status["Done"], status["Failed"], status["Remaining"]) == (1, 1, 1)
    assert status["Subjects"] == {"Done": ["sub-01"], "Failed": ["sub-02"], "Running": {},
                                  "Remaining": ["sub-03"]}
    assert status["ETASeconds"] is not None and status["ETASeconds"] >= 0
    assert not list(path.parent.glob(".*tmp*"))  # atomic: no temporary file left

    # A worker's pickled copy writes nothing (the head process keeps the file).
    copy = pickle.loads(pickle.dumps(progress))
    path.unlink()
    copy(_commit("sub_03_wf"), "end")
    copy.close()
    assert not path.exists()

    # The outcome as the failure records have it (graph plugins report no node at all).
    progress.finish(["sub-01", "sub-03"], ["sub-02"])
    progress.close()
    final = json.loads(path.read_text())
    assert final["Finished"] is True and final["ETASeconds"] is None
    assert (final["Done"], final["Failed"], final["Remaining"]) == (2, 1, 0)

    # One file per job: SLURM's job (and array task) id, else host and process.
    out = tmp_path / "out"
    assert status_file_path(out).parent == out / ".nipype-xai" / "status"
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"SLURM_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "3"}):
        assert status_file_path(out, "group").name == "group-812_3.json"


def test_progress_of_a_real_run_on_a_terminal_only(tmp_path, capsys, monkeypatch, cohort):
    argv = [str(cohort["bids"]), str(tmp_path / "out"), "participant", "--model",
            str(cohort["model"]), "--participant-label", "01", "02", "--methods", "gradient",
            "--no-reports", "--transforms-from", str(cohort["gt"]), "-w", str(tmp_path / "work"),
            "--nprocs", "2"]
    assert main(argv) == 0  # stderr is not a terminal here (captured): no progress
    captured = capsys.readouterr()
    assert "participant level |" not in captured.err
    assert "2 of 2 subject(s) done" in captured.out
    # The status file is kept all the same, and named on stdout.
    named = captured.out.split("progress kept in ")[1].split(" (JSON)")[0]
    status = json.loads(Path(named).read_text())
    assert status["Finished"] is True and status["Subjects"]["Done"] == ["sub-01", "sub-02"]
    assert Path(named).parent == (tmp_path / "out" / ".nipype-xai" / "status").resolve()

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "nipype-xai: participant level |" in err
    assert "2/2 subjects: done 2, failed 0, remaining 0" in err and "ETA" in err

    assert main(argv + ["--quiet"]) == 0
    assert "participant level |" not in capsys.readouterr().err

    assert main([str(cohort["bids"]), str(tmp_path / "out"), "group", "-w",
                 str(tmp_path / "work"), "--n-boot", "50", "--nprocs", "2"]) == 0
    err = capsys.readouterr().err
    assert "nipype-xai: group level |" in err and " steps: done " in err


# ---- the work directory -------------------------------------------------------------------------


def test_work_dir_is_temporary_unless_given(tmp_path, capsys, monkeypatch, cohort):
    import tempfile

    assert main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: a new temporary folder under $TMPDIR" in help_text
    assert "nothing is written to the current folder" in help_text

    here, scratch = tmp_path / "project", tmp_path / "tmp"
    here.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    argv = ["participant", "--model", str(cohort["model"]), "--participant-label", "01",
            "--methods", "gradient", "--no-reports", "--transforms-from", str(cohort["gt"]),
            "--nprocs", "1"]
    assert main([str(cohort["bids"]), str(tmp_path / "out"), *argv]) == 0
    assert list(here.iterdir()) == []  # no ./work
    assert list(scratch.iterdir()) == []  # used, then removed: nothing to resume or read

    # A failed subject keeps the work directory, with its crash file, and says where it is.
    bids_dir = tmp_path / "bids"
    shutil.copytree(cohort["bids"], bids_dir)
    t1w = bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    data = t1w.read_bytes()
    t1w.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main([str(bids_dir), str(tmp_path / "out2"), *argv]) == 2
    [kept] = list(scratch.iterdir())
    assert kept.name.startswith("nipype-xai-work-")
    assert f"the work directory is kept: {kept}" in capsys.readouterr().err
    failures = pd.read_csv(tmp_path / "out2" / "failures.tsv", sep="\t")
    assert Path(failures.loc[0, "crashfile"]).is_relative_to(kept)
    assert Path(failures.loc[0, "crashfile"]).is_file()
    assert list(here.iterdir()) == []


# ---- background: a background set for gradient_shap / deeplift_shap ----------------------------


def _template_images(folder: Path, n: int) -> list[Path]:
    """``n`` noisy copies of the template brain at the registration resolution of the tiny model
    (its 2 mm grid): images in the model's template space, on the field of view the participant
    level's model grid is made from."""
    import nibabel as nib

    from nipype_xai.templates import get_template

    template = nib.load(str(get_template(TPL, resolution=2, suffix="T1w", desc="brain")))
    data = np.asarray(template.dataobj, dtype=np.float32)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(n):
        path = folder / f"sub-{index + 1:02d}_space-{TPL}_desc-preproc_T1w.nii.gz"
        noisy = np.where(data > 0, data + rng.normal(0, 5, data.shape), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(noisy, template.affine), path)
        paths.append(path)
    return paths


def test_background_command(tmp_path, capsys, cohort):
    import nibabel as nib

    from nipype_xai.models import load_model_spec, to_model_grid
    from nipype_xai.images import load_volume

    images = _template_images(tmp_path, 4)
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tlabel\nsub-01\tcontrol\nsub-02\tlesion\nsub-03\tcontrol\n"
        "sub-04\tcontrol\n")
    out = tmp_path / "bg" / "controls.nii.gz"
    argv = ["background", "--model", str(cohort["model"]), "--images", *map(str, images),
            "-n", "2", "--seed", "1", "--participants", str(tmp_path / "participants.tsv"),
            "--only", "label=control", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "2 volume(s) on the tiny model grid (24x28x24)" in capsys.readouterr().out
    sidecar = json.loads(out.with_name("controls.json").read_text())
    assert sidecar["N"] == 2 and sidecar["NAvailable"] == 3 and sidecar["Seed"] == 1
    assert sidecar["Selection"]["Column"] == "label" and sidecar["Selection"]["Value"] == "control"
    sources = [Path(p) for p in sidecar["Sources"]]
    assert len(sources) == 2 and not {p.name for p in sources} & {images[1].name}  # no lesion
    # Each volume is its image prepared as an explained image is.
    spec = load_model_spec(cohort["model"])
    volumes = np.asarray(nib.load(out).dataobj)
    assert volumes.shape == (24, 28, 24, 2)
    for index, source in enumerate(sources):
        x, _ = to_model_grid(load_volume(source), spec)
        np.testing.assert_array_equal(volumes[..., index], x[0, 0].numpy())
    # The same seed draws the same background.
    assert main(argv[:-1] + [str(tmp_path / "again.nii.gz")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["Sources"] == sidecar["Sources"]

    capsys.readouterr()
    cases = [
        (argv[:-5] + [str(out)], None),  # no selection: fine
        (["background", "--model", str(cohort["model"]), "--images", str(images[0]), "--only",
          "label=control", str(out)], "--only needs --participants"),
        (argv[:-2] + ["label=atrophy", str(out)], "--only label=atrophy: no input with label "
                                                  "'atrophy'"),
        (["background", "--model", str(cohort["model"]), "--images", str(images[0]),
          str(tmp_path / "missing.nii.gz"), str(out)], "missing.nii.gz: image not found"),
        (["background", "--images", str(images[0]), str(tmp_path / "bg.txt")],
         "bg.txt: the background file must end in .nii.gz or .nii"),
    ]
    for case, message in cases:
        code = main(case)
        lines = _error_lines(capsys)
        if message is None:
            assert code == 0
            continue
        assert code == 1 and len(lines) == 1, lines
        assert lines[0].startswith("nipype-xai: error: ") and message in lines[0], lines


@pytest.fixture
def captured(monkeypatch):
    """The keyword arguments the command passes to run_participant_level, which stops there:
    only the options are under test."""
    from nipype_xai.cli import execution

    arguments = {}

    def run_participant_level(**kwargs):
        arguments.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(execution, "run_participant_level", run_participant_level)
    return arguments


def test_participant_level_takes_a_background(tmp_path, capsys, captured, cohort):
    """--background is checked before any subject runs and reaches the pipeline options."""
    images = _template_images(tmp_path, 2)
    background = tmp_path / "bg.nii.gz"
    assert main(["background", "--model", str(cohort["model"]), "--images",
                 *map(str, images), str(background)]) == 0
    base = [str(cohort["bids"]), str(tmp_path / "out"), "participant", "--model",
            str(cohort["model"])]
    assert main(base + ["--methods", "gradient", "deeplift_shap", "--background",
                        str(background)]) == 0
    assert captured["options"].background == background
    capsys.readouterr()

    # A background no method takes, and one on another model's grid: refused before any work.
    other_model = write_tiny_model(tmp_path / "other", shape=(20, 24, 20))
    cases = [
        (base + ["--methods", "gradient", "--background", str(background)],
         f"--background {background}: none of the --methods takes a background"),
        ([str(cohort["bids"]), str(tmp_path / "out"), "participant", "--model", str(other_model),
          "--methods", "gradient_shap", "--background", str(background)],
         "bg.nii.gz: background grid 24x28x24 is not the model's input grid 20x24x20"),
    ]
    for argv, message in cases:
        captured.clear()
        assert main(argv) == 1
        lines = _error_lines(capsys)
        assert len(lines) == 1 and message in lines[0], lines
        assert not captured



def test_participant_level_takes_method_params(tmp_path, capsys, captured, cohort):
    """--method-params reaches the pipeline options (and so every map's sidecar); a method not
    requested, a parameter the method does not take, a background in JSON and bad JSON are one
    line each, before any subject runs. A warning that says "raise n_steps" has a way to do it."""
    base = [str(cohort["bids"]), str(tmp_path / "out"), "participant", "--model",
            str(cohort["model"]), "--methods", "gradient", "integrated_gradients", "sobel"]
    assert main(base + ["--method-params", '{"integrated_gradients": {"n_steps": 128}}']) == 0
    assert captured["options"].method_params == {"integrated_gradients": {"n_steps": 128}}
    params_file = tmp_path / "params.json"
    params_file.write_text('{"gradient": {"batch_size": 2}}')
    captured.clear()
    assert main(base + ["--method-params", str(params_file)]) == 0
    assert captured["options"].method_params == {"gradient": {"batch_size": 2}}
    captured.clear()
    assert main(base) == 0
    assert captured["options"].method_params == {}
    capsys.readouterr()

    cases = [
        ('{"smoothgrad": {"n_samples": 8}}',
         "--method-params: method_params given for 'smoothgrad', which was not requested"),
        ('{"integrated_gradients": {"n_step": 128}}',
         "--method-params: integrated_gradients does not accept ['n_step']"),
        ('{"integrated_gradients": {"batch_size": 0}}',
         "--method-params: integrated_gradients: batch_size must be a positive integer"),
        ('{"gradient": {"background": "bg.nii.gz"}}',
         "--method-params: gradient: give the background set with --background FILE"),
        ('{"gradient": 3}', '--method-params: expected {"method": {"parameter": value}}'),
        ("{oops", "--method-params: not a JSON object or a JSON file"),
    ]
    for params, message in cases:
        captured.clear()
        assert main(base + ["--method-params", params]) == 1, params
        lines = _error_lines(capsys)
        assert len(lines) == 1 and message in lines[0], lines
        assert not captured
    only_baselines = [*base[:5], "--methods", "sobel", "--method-params", '{"sobel": {}}']
    assert main(only_baselines) == 1
    assert "--methods names no attribution method" in _error_lines(capsys)[0]


def _chain(value):
    return value


def test_multiproc_runs_subjects_one_after_the_other(tmp_path):
    """With the subjects' priority MultiProc hands ready nodes to its workers subject by subject:
    each subject's second step runs before the next subject's first, so subjects complete in
    turn. Nipype's own order (the topological sort) runs every first step before any second."""
    import gc

    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from nipype_xai.cli.execution import _frozen_plugin, subject_priority

    def workflow(base):
        top = pe.Workflow("participant_wf", base_dir=str(base))
        for label in ("01", "02", "03"):
            sub = pe.Workflow(f"sub_{label}_wf")
            first = pe.Node(Function(["value"], ["value"], _chain), name="first")
            first.inputs.value = label
            second = pe.Node(Function(["value"], ["value"], _chain), name="second")
            sub.connect(first, "value", second, "value")
            top.add_nodes([sub])
        return top

    subjects = {f"sub_{label}_wf": f"sub-{label}" for label in ("01", "02", "03")}

    def started(priority, base):
        order = []

        def callback(node, status):
            if status == "start":
                order.append(f"{subjects[node.fullname.split('.')[1]]} {node.name}")

        runner = _frozen_plugin("MultiProc", {"n_procs": 1, "status_callback": callback},
                                priority)
        try:
            workflow(base).run(plugin=runner)
        finally:
            gc.unfreeze()
        return order

    assert started(subject_priority(subjects), tmp_path / "priority") == [
        "sub-01 first", "sub-01 second", "sub-02 first", "sub-02 second",
        "sub-03 first", "sub-03 second"]
    nipype_order = started(None, tmp_path / "nipype")
    assert sorted(nipype_order) == sorted(started(subject_priority(subjects), tmp_path / "again"))
    assert nipype_order.index("sub-01 second") > nipype_order.index("sub-02 first")


def test_the_plugin_freezes_the_execution_graph_before_it_runs(monkeypatch):
    """Nipype collects garbage at every scheduling step; the execution graph that Workflow.run
    builds (deep copies of every node) is frozen out of the collector's reach before the
    plugin runs it (at 200 subjects the collections of that graph kept the head process busy
    while the workers idled)."""
    import gc

    from nipype.pipeline.plugins import LinearPlugin

    from nipype_xai.cli.execution import _frozen_plugin

    class Graph:
        pass

    seen = {}

    def run(self, graph, config, updatehash=False):
        # gc.get_objects() lists what the collector walks; frozen objects are not among them.
        seen["walked"] = any(o is graph for o in gc.get_objects())

    monkeypatch.setattr(LinearPlugin, "run", run)
    graph = Graph()
    assert any(o is graph for o in gc.get_objects())
    runner = _frozen_plugin("Linear", {"status_callback": None})
    try:
        runner.run(graph, {})
    finally:
        gc.unfreeze()
    assert seen == {"walked": False}
    assert isinstance(runner, LinearPlugin)
