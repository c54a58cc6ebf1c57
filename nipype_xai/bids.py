"""BIDS derivative names, ``dataset_description.json`` and sidecars (SPEC §6).

Paths are built with pybids' ``build_path`` and our own patterns: niworkflows' DerivativesDataSink
would pull in its whole stack and index TemplateFlow at import. Every write is atomic (temp file in
the same folder, then ``os.replace``), so a crash never leaves a half-written derivative.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from . import __version__
from .atomic import STATE_DIR, atomic_write

PathLike = Union[str, os.PathLike]

#: Path patterns of every derivative nipype-xai writes (pybids ``build_path`` syntax).
PATH_PATTERNS: tuple[str, ...] = (
    # per-subject images and sidecars: attribution maps, masks, model-grid T1w, probseg
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "[_space-{space}][_res-{res}][_label-{label}][_desc-{desc}]"
    "_{suffix<attribution|mask|T1w|probseg|dseg>}{extension<.nii.gz|.nii|.json>|.nii.gz}",
    # transforms: sub-X_from-T1w_to-<tpl>_mode-image_xfm.h5
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "_from-{from}_to-{to}_mode-{mode<image|points>|image}_{suffix<xfm>}{extension<.h5|.txt|.mat|.nii.gz>|.h5}",
    # per-subject tables: predictions and overlap metrics
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "[_space-{space}][_res-{res}][_desc-{desc}]_{suffix<predictions|metrics>}{extension<.tsv|.json>|.tsv}",
    # group level, at the root
    "[space-{space}_][res-{res}_][desc-{desc}_]{suffix<attribution|metrics|ranking|mask>}"
    "{extension<.nii.gz|.tsv|.json>|.tsv}",
)


def method_to_desc(method: str) -> str:
    """BIDS ``desc`` label of a method: lowerCamelCase, since ``_`` would split the entity.

    >>> method_to_desc("lrp_epsilon_plus_flat")
    'lrpEpsilonPlusFlat'
    """
    head, *rest = method.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def desc_to_method(desc: str, known: Optional[Iterable[str]] = None) -> str:
    """Inverse of :func:`method_to_desc`; ``known`` defaults to the registered methods.

    Group-mean labels (``smoothgradMean``) are not methods: pass the label without the suffix.
    """
    if known is None:
        from .attribution import available_methods

        known = available_methods()
    for name in known:
        if method_to_desc(name) == desc:
            return name
    # A name outside the registry (a baseline such as ``sobel``): undo the camel case.
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), desc)


def resolution_label(resolution_mm: float) -> str:
    """``res-`` label of a grid: ``2`` for 2 mm, ``1p5`` for 1.5 mm (alphanumeric)."""
    text = f"{float(resolution_mm):g}"
    return text.replace(".", "p")


def derivative_path(entities: Mapping[str, Any], root: Optional[PathLike] = None) -> Path:
    """Path of a derivative from BIDS entities, e.g. ``subject``, ``space``, ``desc``, ``suffix``.

    Raises
    ------
    ValueError
        When a label is not alphanumeric or no pattern fits the entities.
    """
    from bids.layout.writing import build_path

    clean = {key: value for key, value in entities.items() if value not in (None, "")}
    for key, value in clean.items():
        if key in ("extension", "datatype", "suffix"):
            continue
        if not re.fullmatch(r"[A-Za-z0-9]+", str(value)):
            raise ValueError(f"BIDS label {key}-{value!r} must be alphanumeric")
    path = build_path(clean, list(PATH_PATTERNS), strict=True)
    if path is None:
        raise ValueError(f"no derivative name pattern fits entities {dict(clean)}")
    return Path(root, path) if root is not None else Path(path)


def write_json(path: PathLike, content: Mapping[str, Any]) -> Path:
    """Write a JSON sidecar atomically (sorted keys, indented, trailing newline)."""
    text = json.dumps(content, indent=2, sort_keys=True, default=_json_default) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class OutputFolderError(ValueError):
    """An output folder nipype-xai must not write to (the input, a raw dataset, ...)."""


def _dataset_type(root: Path) -> Optional[str]:
    """``DatasetType`` of the BIDS dataset at ``root``: ``"raw"`` (the BIDS default), ``"derivative"``,
    or None when ``root`` has no ``dataset_description.json``. An unreadable description counts as
    raw: nipype-xai must not overwrite what it cannot read."""
    description = root / "dataset_description.json"
    if not description.is_file():
        return None
    try:
        value = json.loads(description.read_text(encoding="utf-8")).get("DatasetType", "raw")
    except (OSError, ValueError, AttributeError):
        return "raw"
    return value if value in ("raw", "derivative") else "raw"


def check_output_folder(output_dir: PathLike, input_dir: Optional[PathLike] = None) -> Path:
    """Check that derivatives may be written to ``output_dir``; return its resolved path.

    Both paths are resolved first (symlinks and ``..``: ``bids/sub-01/..`` *is* ``bids``). Refused:
    the input dataset itself; any folder inside the input dataset other than under its
    ``derivatives/`` (a subject folder, ``code/``, ...); a folder that contains the input dataset
    (its ``dataset_description.json`` and ``.bidsignore`` would describe the raw data's parent);
    and any folder holding a raw (non-derivative) BIDS dataset, the input or another. The folder
    (created if missing) must be writable: a probe file is created and removed now, so an
    unwritable folder is one error before anything runs rather than a crash in every subject.

    Raises
    ------
    OutputFolderError
        One line naming the folder and what is wrong.
    """
    given = Path(output_dir)
    out = Path(os.path.realpath(given))
    if input_dir is not None:
        raw = Path(os.path.realpath(input_dir))
        if out == raw:
            raise OutputFolderError(
                f"{given}: the output folder is the input dataset itself ({raw}); a raw dataset "
                "is never written to (use e.g. BIDS_DIR/derivatives/nipype-xai)")
        if raw in out.parents:
            inside = out.relative_to(raw).parts
            if inside[0] != "derivatives" or len(inside) < 2:
                raise OutputFolderError(
                    f"{given}: the output folder is inside the input dataset ({raw}) but not in "
                    "its derivatives/ folder; a raw dataset is never written to (use e.g. "
                    "BIDS_DIR/derivatives/nipype-xai)")
        if out in raw.parents:
            raise OutputFolderError(
                f"{given}: the output folder contains the input dataset ({raw}); choose a "
                "folder of its own (e.g. BIDS_DIR/derivatives/nipype-xai)")
    if _dataset_type(out) == "raw":
        raise OutputFolderError(
            f"{given}: the output folder holds a raw BIDS dataset (its dataset_description.json "
            "is not DatasetType 'derivative'); nipype-xai writes only derivative datasets")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".nipype-xai-write-probe.")
        probe.close()
    except OSError as error:
        raise OutputFolderError(
            f"{given}: the output folder cannot be written to ({error.strerror or error})"
        ) from None
    return out


def write_dataset_description(
    root: PathLike,
    *,
    name: str = "nipype-xai attribution maps",
    source_datasets: Iterable[str] = (),
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a derivative ``dataset_description.json`` and a ``.bidsignore`` listing our suffixes.

    ``attribution`` is not a BIDS suffix yet (no BEP covers it), so it goes to ``.bidsignore``.
    """
    root = Path(root)
    if _dataset_type(Path(os.path.realpath(root))) == "raw":
        # The last line of defence: a raw dataset's description is never replaced.
        raise OutputFolderError(f"{root}: holds a raw BIDS dataset; its dataset_description.json "
                                "is not replaced by a derivative one")
    description: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {"Name": "nipype-xai", "Version": __version__}
        ],
    }
    sources = [str(s) for s in source_datasets]
    if sources:
        description["SourceDatasets"] = [{"URL": s} for s in sources]
    if extra:
        description.update(extra)
    path = write_json(root / "dataset_description.json", description)
    ignore = root / ".bidsignore"
    wanted = ["*_attribution.nii.gz", "*_attribution.json", "*_predictions.tsv", "*_metrics.tsv",
              "*_ranking.tsv", "figures/", "*.html"]
    existing = ignore.read_text().splitlines() if ignore.exists() else []
    lines = existing + [w for w in wanted if w not in existing]
    atomic_write(ignore, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return path


# ---- a subject's derivatives appear complete or not at all ---------------------------------------
#
# A subject's files are written first into a staging folder inside the derivatives dataset (the
# same file system, so moving a file into place is one rename), then committed by
# :func:`commit_subject`: the subject's completion record is removed, every staged file is
# renamed into place, and a new record listing every file with its size and SHA-256 is written
# last, atomically. A run killed at any point leaves either the previous complete state (killed
# before the commit) or a subject without a record (killed during it), which the group level
# skips and the next run completes. A record, not a folder swap: a subject's files live in
# several places (``sub-X/anat``, ``sub-X/figures``, ``sub-X.html`` at the root, as fMRIPrep
# writes them), which no single rename can replace.


def staging_folder(root: PathLike, label: str) -> Path:
    """Where the subject ``label`` (``sub-X[_ses-Y]``)'s derivatives are written before commit."""
    return Path(root) / STATE_DIR / "staging" / label


def completion_record_path(root: PathLike, label: str) -> Path:
    """The completion record of subject ``label`` (``sub-X[_ses-Y]``) in a derivatives dataset."""
    return Path(root) / STATE_DIR / "complete" / f"{label}.json"


def _sha256(path: Path) -> str:
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
        files[relative] = {"size": target.stat().st_size, "sha256": _sha256(target)}
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
        if check_hashes and _sha256(target) != entry.get("sha256"):
            return f"{relative} has changed since it was written"
    return None


def recorded_files(root: PathLike, label: str) -> list[Path]:
    """The files the completion record of ``label`` lists (empty without a record)."""
    root = Path(root)
    return [root / relative for relative in _read_record(completion_record_path(root, label))]
