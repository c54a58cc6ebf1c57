"""Trust boundaries and crash safety of the BIDS-App (issue 11, SPEC §10): the output folder is
never the input (paths resolved first), shared files survive concurrent runs, re-runs with a seed
are byte-identical, and a killed run never leaves an incomplete subject that looks complete."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nipype_xai.bids import (
    OutputFolderError,
    check_output_folder,
    commit_subject,
    completion_record_path,
    staging_folder,
    subject_status,
    write_dataset_description,
)
from nipype_xai.cli import main
from nipype_xai.synth import generate_cohort

from tiny_model import write_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    bids_dir = generate_cohort(root / "bids", "lesion", 2, seed=0, resolution_mm=4.0,
                               progress=False)
    return {"root": root, "bids": bids_dir, "model": write_tiny_model(root / "model"),
            "gt": bids_dir / "derivatives" / "groundtruth"}


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones too), by relative path, less the lock
    and the runs' status files (a log of the run: its host, process and times, by design)."""
    status = folder / ".nipype-xai" / "status"
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock" and status not in p.parents}


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. the output folder is never the input ----------------------------------------------------


@pytest.fixture
def raw_dataset(tmp_path):
    bids_dir = tmp_path / "bad"
    (bids_dir / "sub-01" / "anat").mkdir(parents=True)
    (bids_dir / "dataset_description.json").write_text(json.dumps(
        {"Name": "a lab's raw data", "BIDSVersion": "1.10.0", "License": "CC0"}))
    (bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"not read")
    return bids_dir


@pytest.mark.parametrize("output", [
    "bad/sub-01/..",            # the input itself, spelled with ..
    "link-to-bad",              # the input through a symlink
    "bad/sub-01",               # a subject folder
    "bad/sub-01/anat/out",      # inside a subject folder
    "bad/code/xai",             # inside the raw dataset, outside derivatives/
    ".",                        # a folder that contains the input
])
def test_output_inside_or_equal_to_the_input_is_refused(tmp_path, raw_dataset, output, capsys,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link-to-bad").symlink_to(raw_dataset, target_is_directory=True)
    before = _tree(raw_dataset)
    code = main([str(raw_dataset), output, "participant", "-w", str(tmp_path / "work")])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("nipype-xai: error: ") and output in err[0]
    assert _tree(raw_dataset) == before  # not one byte of the raw dataset changed
    assert not (tmp_path / "work").exists()


def test_output_under_derivatives_of_the_input_is_accepted(raw_dataset):
    out = check_output_folder(raw_dataset / "derivatives" / "nipype-xai", raw_dataset)
    assert out == (raw_dataset / "derivatives" / "nipype-xai").resolve() and out.is_dir()
    assert not list(out.iterdir())  # the write probe is gone


def test_another_raw_dataset_and_an_unwritable_folder_are_refused(tmp_path, raw_dataset):
    with pytest.raises(OutputFolderError, match="holds a raw BIDS dataset"):
        check_output_folder(raw_dataset)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputFolderError, match="cannot be written to"):
        check_output_folder(blocker / "out")
    # The core writer refuses too: a raw dataset's description is never replaced.
    with pytest.raises(OutputFolderError):
        write_dataset_description(raw_dataset)
    assert json.loads((raw_dataset / "dataset_description.json").read_text())["License"] == "CC0"


def test_group_level_refuses_a_raw_dataset_as_output(tmp_path, raw_dataset, capsys):
    assert main([str(raw_dataset), str(raw_dataset), "group", "-w", str(tmp_path / "w")]) == 1
    assert "raw BIDS dataset" in capsys.readouterr().err


# ---- 7. shared files under concurrent runs ------------------------------------------------------


def _record_failures_many(output_dir: str, worker: int, n: int) -> None:
    from nipype_xai.cli.execution import Failure, _add_to_bidsignore, _write_failures

    for i in range(n):
        label = f"sub-w{worker}x{i}"
        _write_failures(Path(output_dir), [Failure(label, "boom")], [label])
        _add_to_bidsignore(Path(output_dir), f"w{worker}x{i}.tsv")


def test_concurrent_runs_lose_no_failure_record(tmp_path):
    """Eight runs record failures into one output folder at once (one job per subject on a
    cluster): every row and every .bidsignore entry is there afterwards."""
    workers, n = 8, 15
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_record_failures_many, args=(str(tmp_path), w, n))
                 for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    table = pd.read_csv(tmp_path / "failures.tsv", sep="\t", dtype=str)
    assert len(table) == workers * n and table["participant_id"].is_unique
    ignored = (tmp_path / ".bidsignore").read_text().splitlines()
    assert {f"w{w}x{i}.tsv" for w in range(workers) for i in range(n)} <= set(ignored)


# ---- 5. commit: complete or not at all ----------------------------------------------------------


def _stage(root: Path, label: str, files: dict[str, bytes]) -> list[Path]:
    staged = []
    for relative, content in files.items():
        path = staging_folder(root, label) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        staged.append(path)
    return staged


SUBJECT_FILES = {f"sub-02/anat/sub-02_desc-m{i}_attribution.nii.gz": bytes([i]) * (100 + i)
                 for i in range(6)} | {"sub-02.html": b"<html></html>"}


@pytest.mark.parametrize("crash_after", [0, 1, 3, 6])
def test_a_commit_killed_midway_leaves_no_complete_looking_subject(tmp_path, monkeypatch,
                                                                    crash_after):
    root = tmp_path / "out"
    # A complete earlier run of the subject, with other contents.
    commit_subject(root, "sub-02", _stage(root, "sub-02", {k: b"old" for k in SUBJECT_FILES}))
    assert subject_status(root, "sub-02") is None

    real_replace, moved = os.replace, []

    def dying_replace(src, dst):
        if len(moved) == crash_after:
            raise KeyboardInterrupt("killed")  # as a SIGKILL: nothing after this runs
        moved.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        commit_subject(root, "sub-02", _stage(root, "sub-02", SUBJECT_FILES))
    monkeypatch.setattr(os, "replace", real_replace)
    # Some files are new, some old: the subject must not look complete.
    assert subject_status(root, "sub-02") is not None
    assert not completion_record_path(root, "sub-02").exists()

    # The next run stages everything again and completes the subject.
    commit_subject(root, "sub-02", _stage(root, "sub-02", SUBJECT_FILES))
    assert subject_status(root, "sub-02", check_hashes=True) is None
    assert {k: (root / k).read_bytes() for k in SUBJECT_FILES} == SUBJECT_FILES
    assert not (root / ".nipype-xai" / "staging").exists()


def test_a_changed_or_missing_file_makes_a_subject_incomplete(tmp_path):
    root = tmp_path / "out"
    commit_subject(root, "sub-02", _stage(root, "sub-02", SUBJECT_FILES))
    first = root / next(iter(SUBJECT_FILES))
    first.write_bytes(b"truncated")
    assert "changed" in subject_status(root, "sub-02")
    first.unlink()
    assert "missing" in subject_status(root, "sub-02")


# ---- 4 and 5 end to end: fresh runs equal; killed runs resume to the same bytes -----------------


def _command(cohort, out: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "nipype_xai.cli.run", str(cohort["bids"]), str(out),
            "participant", "--model", str(cohort["model"]), "--methods", "gradient",
            "smoothgrad", "random", "--ground-truth", str(cohort["gt"]), "-w", str(work),
            "--nprocs", "2"]


def _environment() -> dict[str, str]:
    # SOURCE_DATE_EPOCH fixes the reports' "generated" time, the only timestamp in the outputs.
    return {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def reference_run(cohort):
    out, work = cohort["root"] / "reference" / "out", cohort["root"] / "reference" / "work"
    started = time.perf_counter()
    subprocess.run(_command(cohort, out, work), env=_environment(), check=True,
                   capture_output=True, timeout=900)
    return {"out": out, "files": _snapshot(out), "seconds": time.perf_counter() - started}


def test_two_fresh_runs_are_byte_identical(cohort, reference_run):
    out, work = cohort["root"] / "fresh" / "out", cohort["root"] / "fresh" / "work"
    subprocess.run(_command(cohort, out, work), env=_environment(), check=True,
                   capture_output=True, timeout=900)
    files = _snapshot(out)
    # Every file: maps, transforms (.h5), predictions, sidecars, reports, figures, records.
    assert len(files) > 40
    equal = sum(files.get(k) == v for k, v in reference_run["files"].items())
    print(f"fresh runs: {len(reference_run['files'])} files compared, {equal} equal")
    assert files == reference_run["files"]


def _complete_subjects_are_right(out: Path, reference: dict[str, str]) -> list[str]:
    """Labels that look complete; each must be complete and equal to the reference run."""
    complete = []
    for record in sorted((out / ".nipype-xai" / "complete").glob("sub-*.json")):
        label = record.stem
        assert subject_status(out, label, check_hashes=True) is None, label
        listed = json.loads(record.read_text())["files"]
        prefix = label.split("_")[0]
        expected = {k for k in reference if k.startswith((f"{prefix}/", f"{prefix}."))}
        assert set(listed) == expected, label
        for relative in listed:
            digest = hashlib.sha256((out / relative).read_bytes()).hexdigest()
            assert digest == reference[relative], relative
        complete.append(label)
    return complete


def _run_until(command, condition, timeout: float) -> bool:
    """Start ``command``; SIGKILL it (and its workers) once ``condition()`` holds."""
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if condition():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_killed_runs_resume_to_the_uninterrupted_result(cohort, reference_run):
    """SIGKILL at several points (while computing, as soon as a subject starts staging, as soon
    as its first file reaches the output), re-run with the same work directory each time: no
    state in between has an incomplete subject that looks complete, and the end result equals an
    uninterrupted run byte for byte."""
    out, work = cohort["root"] / "killed" / "out", cohort["root"] / "killed" / "work"
    reference = reference_run["files"]
    command = _command(cohort, out, work)
    staging = out / ".nipype-xai" / "staging"

    def new_file_in(folder: Path, since: float) -> bool:
        return folder.is_dir() and any(p.stat().st_mtime > since for p in folder.rglob("*")
                                       if p.is_file())

    kill_points = [
        lambda since: time.time() - since > 0.35 * reference_run["seconds"],
        lambda since: new_file_in(staging, since),
        lambda since: new_file_in(out / "sub-02", since),
    ]
    kills = 0
    for point, condition in enumerate(kill_points, start=1):
        since = time.time()
        killed = _run_until(command, lambda: condition(since),
                            timeout=3 * reference_run["seconds"] + 60)
        kills += killed
        complete = _complete_subjects_are_right(out, reference)
        present = sorted(p.name for p in out.glob("sub-*") if p.is_dir())
        print(f"kill point {point}: {'killed' if killed else 'finished first'}; subject folders "
              f"{present}; complete (recorded, checked against the reference) {complete}")
    assert kills >= 2  # the run was really interrupted (the last point may come too late)
    subprocess.run(command, env=_environment(), check=True, capture_output=True, timeout=900)
    assert _complete_subjects_are_right(out, reference) == ["sub-01", "sub-02"]
    final = _snapshot(out)
    equal = sum(final.get(k) == v for k, v in reference.items())
    print(f"after {kills} kills and a resume: {len(reference)} files compared, {equal} equal, "
          f"{len(set(final) - set(reference))} extra")
    assert final == reference


def test_group_level_leaves_out_a_subject_without_its_record(tmp_path, reference_run):
    import shutil

    from nipype_xai.workflows import collect_group_inputs

    out = tmp_path / "out"
    shutil.copytree(reference_run["out"], out)
    assert collect_group_inputs(out).subjects == ["01", "02"]
    completion_record_path(out, "sub-02").unlink()  # as after a kill during sub-02's commit
    inputs = collect_group_inputs(out)
    assert inputs.subjects == ["01"]
    assert all("sub-02" not in str(p) for p in [*inputs.maps, *inputs.metrics_tsvs])
    assert [label for label, _ in inputs.incomplete] == ["sub-02"]
    assert "no completion record" in inputs.incomplete[0][1]


def test_failures_table_is_bids_shaped_and_upgrades_an_old_one(tmp_path):
    # participant_id / session_id as BIDS spells them; a table from before (a `subject` column)
    # is read, its rows kept or replaced, and rewritten in the new shape.
    from nipype_xai.cli.execution import Failure, _write_failures

    (tmp_path / "failures.tsv").write_text("subject\treason\tnode\tcrashfile\n"
                                           "sub-01\told\tn1\t\nsub-02\tkept\tn2\t\n")
    _write_failures(tmp_path, [Failure("sub-01_ses-2", "new", "n3")], ["sub-01"])
    table = pd.read_csv(tmp_path / "failures.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert table.to_dict("records") == [
        {"participant_id": "sub-01", "session_id": "ses-2", "reason": "new", "node": "n3",
         "crashfile": ""},
        {"participant_id": "sub-02", "session_id": "n/a", "reason": "kept", "node": "n2",
         "crashfile": ""},
    ]
