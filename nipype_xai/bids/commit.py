"""A subject's derivatives appear complete or not at all.

A subject's files are written first into a staging folder inside the derivatives dataset (the
same file system, so moving a file into place is one rename), then committed by
:func:`commit_subject`: the subject's completion record is removed, every staged file is
renamed into place, and a new record listing every file with its size and SHA-256 is written
last, atomically. A run killed at any point leaves either the previous complete state (killed
before the commit) or a subject without a record (killed during it), which the group level
skips and the next run completes. A record, not a folder swap: a subject's files live in
several places (``sub-X/anat``, ``sub-X/figures``, ``sub-X.html`` at the root, as fMRIPrep
writes them), which no single rename can replace.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .. import __version__
from ..atomic import STATE_DIR
from .dataset import write_json

PathLike = Union[str, os.PathLike]


def staging_folder(root: PathLike, label: str) -> Path:
    """Where the subject ``label`` (``sub-X[_ses-Y]``)'s derivatives are written before commit."""
    return Path(root) / STATE_DIR / "staging" / label


def completion_record_path(root: PathLike, label: str) -> Path:
    """The completion record of subject ``label`` (``sub-X[_ses-Y]``) in a derivatives dataset."""
    return Path(root) / STATE_DIR / "complete" / f"{label}.json"


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record.get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _same_file(a: Path, b: Path) -> bool:
    import filecmp

    return b.is_file() and filecmp.cmp(a, b, shallow=False)


def commit_subject(root: PathLike, label: str, staged_files: Iterable[PathLike]) -> list[Path]:
    """Move a subject's staged derivatives into place; write its completion record last.

    Parameters
    ----------
    root
        The derivatives dataset.
    label
        ``sub-X[_ses-Y]``.
    staged_files
        Files under :func:`staging_folder` (``root``-relative layout below it), all of them.

    Returns
    -------
    list of pathlib.Path
        The committed files, in ``root``.

    Files of earlier runs that this run did not produce again (e.g. maps of another method) stay,
    and stay in the record while they are unchanged. A committed file identical to the one in
    place is not replaced, so its modification time (what Nipype's cache hashes) is kept. The
    staging folder is removed.
    """
    root = Path(root).absolute()
    staging = staging_folder(root, label)
    record_path = completion_record_path(root, label)
    previous = _read_record(record_path)
    moves = []
    for staged in staged_files:
        staged = Path(staged).absolute()
        try:
            relative = staged.relative_to(staging)
        except ValueError:
            raise ValueError(f"{staged}: not in {label}'s staging folder {staging}") from None
        moves.append((staged, root / relative, relative.as_posix()))
    # From here until the new record exists, the subject is incomplete.
    record_path.unlink(missing_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for relative, entry in previous.items():
        target = root / relative
        if (isinstance(entry, dict) and target.is_file()
                and target.stat().st_size == entry.get("size")):
            files[relative] = entry
    for staged, target, relative in moves:
        if staged.is_file():
            if _same_file(staged, target):
                staged.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
        elif not target.is_file():
            # Neither staged nor in place: a previous attempt cannot have moved it either.
            raise FileNotFoundError(f"{staged}: staged derivative of {label} is missing")
        files[relative] = {"size": target.stat().st_size, "sha256": file_sha256(target)}
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.parent.rmdir()  # the last subject to commit leaves no empty staging folder
    except OSError:
        pass  # other subjects are staging now
    write_json(record_path, {"Subject": label, "GeneratedBy": {"Name": "nipype-xai",
                                                              "Version": __version__},
                             "files": dict(sorted(files.items()))})
    return [target for _, target, _ in moves]


def subject_status(root: PathLike, label: str, *, check_hashes: bool = False) -> Optional[str]:
    """None when subject ``label``'s derivatives in ``root`` are complete, else why not.

    Complete: a completion record exists and every file it lists is there with its recorded size
    (and SHA-256 with ``check_hashes``).
    """
    root = Path(root)
    path = completion_record_path(root, label)
    if not path.is_file():
        return ("no completion record (the run that wrote it was interrupted or failed); re-run "
                "the participant level for it")
    for relative, entry in _read_record(path).items():
        target = root / relative
        if not target.is_file():
            return f"{relative} is missing"
        if not isinstance(entry, dict) or target.stat().st_size != entry.get("size"):
            return f"{relative} has changed since it was written"
        if check_hashes and file_sha256(target) != entry.get("sha256"):
            return f"{relative} has changed since it was written"
    return None


def recorded_files(root: PathLike, label: str) -> list[Path]:
    """The files the completion record of ``label`` lists (empty without a record)."""
    root = Path(root)
    return [root / relative for relative in _read_record(completion_record_path(root, label))]
