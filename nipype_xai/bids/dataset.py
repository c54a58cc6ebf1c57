"""A derivatives dataset: ``dataset_description.json``, ``.bidsignore``, ``README.md``, sidecars,
and the checks of the folder it is written to.

Every write is atomic (temp file in the same folder, then ``os.replace``), so a crash never leaves
a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from .. import __version__
from ..atomic import atomic_write
from .naming import FAILURES_FILE, GROUP_DIR
from .provenance import _dataset_type, _description, _link_location, read_dataset_links

PathLike = Union[str, os.PathLike]

#: ``.bidsignore`` of a nipype-xai derivatives dataset: each pattern, and why the BIDS
#: specification has no place for what it matches. Directory patterns have no trailing slash:
#: the schema validator (3.x) does not match ``figures/`` against the folder ``figures``
#: (bids-standard/bids-validator#291), while ``figures`` matches the folder at any depth.
BIDSIGNORE: tuple[tuple[str, str], ...] = (
    ("*_attribution.nii.gz", "attribution maps: no BIDS suffix for them yet (no BEP covers them)"),
    ("*_attribution.json", "their sidecars"),
    ("*_counterfactual.nii.gz", "a counterfactual's log-Jacobian and intensity-difference maps: "
                                "no BIDS suffix for them"),
    ("*_counterfactual.json", "their sidecars"),
    ("*_xfm.*", "transforms, named as sMRIPrep names them: BIDS has no transforms yet (BEP014); "
                "fMRIPrep and sMRIPrep ignore them the same way"),
    ("*_predictions.tsv", "the model's predictions: no BIDS suffix for model outputs"),
    ("*_predictions.json", "their sidecars (a sidecar is valid only where its table is)"),
    ("*_metrics.tsv", "overlap and registration metrics: no BIDS suffix for derived tables"),
    ("*_metrics.json", "their sidecars"),
    (GROUP_DIR, "group-level derivatives: BIDS has no group-level naming yet "
                "(bids-standard/bids-specification#163)"),
    ("figures", "report figures (sub-X/figures, as fMRIPrep writes them)"),
    ("*.html", "HTML reports (sub-X.html and group.html at the root, as fMRIPrep writes them)"),
    (FAILURES_FILE, "the participant level's failed subjects and why: a run log, not a "
                     "derivative"),
)


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
    dataset_links: Optional[Mapping[str, PathLike]] = None,
    source_datasets: Iterable[Union[str, Mapping[str, str]]] = (),
    authors: Optional[Sequence[str]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a derivative ``dataset_description.json``, its ``.bidsignore`` and a ``README.md``.

    Parameters
    ----------
    root
        The derivatives dataset.
    name
        Its ``Name``.
    dataset_links
        Name -> folder of the datasets its ``Sources`` point into (``raw``: the input; see
        :func:`input_dataset_links`). Written as ``DatasetLinks`` (relative locations where one
        exists); the links of an existing description are kept unless renamed here. Each linked
        dataset is also a ``SourceDatasets`` entry: ``{"URL": "bids:<name>:"}`` with the
        ``DOI`` its own description declares (``DatasetDOI``).
    source_datasets
        Further ``SourceDatasets`` entries (a URL, or a mapping with ``URL``/``DOI``/``Version``).
    authors
        ``Authors``; default: those of the ``raw`` dataset, whose data these derivatives are.
    extra
        Other fields.

    ``.bidsignore`` gets the patterns of :data:`BIDSIGNORE` (with their reasons as comments),
    added to whatever it holds. ``README.md`` is written only where no README exists.
    """
    root = Path(root)
    if _dataset_type(Path(os.path.realpath(root))) == "raw":
        # The last line of defence: a raw dataset's description is never replaced.
        raise OutputFolderError(f"{root}: holds a raw BIDS dataset; its dataset_description.json "
                                "is not replaced by a derivative one")
    absolute = root.absolute()
    links = {**read_dataset_links(absolute),
             **{key: Path(value).absolute() for key, value in (dataset_links or {}).items()}}
    description: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {"Name": "nipype-xai", "Version": __version__}
        ],
    }
    sources = _source_datasets(links)
    for entry in source_datasets:
        entry = {"URL": str(entry)} if isinstance(entry, (str, os.PathLike)) else dict(entry)
        if entry not in sources:
            sources.append(entry)
    if links:
        description["DatasetLinks"] = {key: _link_location(absolute, folder)
                                       for key, folder in sorted(links.items())}
    if sources:
        description["SourceDatasets"] = sources
    raw_description = _description(links["raw"]) if "raw" in links else {}
    if authors is None:
        authors = raw_description.get("Authors")
    if isinstance(authors, (list, tuple)) and authors:
        description["Authors"] = [str(a) for a in authors]
    if isinstance(raw_description.get("License"), str):
        # As fMRIPrep does: derivatives of a dataset come under its license.
        description["License"] = raw_description["License"]
    if extra:
        description.update(extra)
    path = write_json(root / "dataset_description.json", description)
    _write_bidsignore(root)
    if not any((root / f"README{ext}").exists() for ext in ("", ".md", ".rst", ".txt")):
        atomic_write(root / "README.md", lambda tmp: tmp.write_text(_README, encoding="utf-8"))
    return path


def update_dataset_links(root: PathLike, links: Mapping[str, PathLike]) -> Optional[Path]:
    """Add the ``links`` its description lacks to the derivatives dataset at ``root``.

    Called where a subject is committed, so that every ``bids:<name>:`` URI of its sidecars
    resolves even when the dataset was not described by the command line (a workflow embedded
    in a lab's own). Returns the description when it was rewritten. The caller holds the
    dataset's lock (:func:`nipype_xai.atomic.dataset_lock`).
    """
    root = Path(root).absolute()
    description_path = root / "dataset_description.json"
    known = read_dataset_links(root)
    missing = {key: Path(value).absolute() for key, value in links.items()
               if key and known.get(key) != Path(value).absolute()}
    if not missing and description_path.is_file():
        return None
    description = _description(root)
    if not description:
        return write_dataset_description(root, dataset_links=missing)
    current = description.get("DatasetLinks") if isinstance(
        description.get("DatasetLinks"), dict) else {}
    current.update({key: _link_location(root, folder) for key, folder in missing.items()})
    description["DatasetLinks"] = dict(sorted(current.items()))
    sources = description.get("SourceDatasets") if isinstance(
        description.get("SourceDatasets"), list) else []
    sources += [entry for entry in _source_datasets(missing) if entry not in sources]
    description["SourceDatasets"] = sources
    return write_json(description_path, description)


def _source_datasets(links: Mapping[str, Path]) -> list[dict[str, str]]:
    """A ``SourceDatasets`` entry per linked dataset: its BIDS URI, and its DOI where declared."""
    entries = []
    for key, folder in sorted(links.items()):
        entry = {"URL": f"bids:{key}:"}
        doi = _description(folder).get("DatasetDOI")
        if isinstance(doi, str) and doi:
            entry["DOI"] = doi
        entries.append(entry)
    return entries


def _write_bidsignore(root: Path) -> None:
    ignore = root / ".bidsignore"
    existing = ignore.read_text().splitlines() if ignore.exists() else []
    lines = list(existing)
    for pattern, why in BIDSIGNORE:
        if pattern not in existing:
            lines += [f"# {why}", pattern]
    if lines != existing or not ignore.exists():
        atomic_write(ignore, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


_README = """\
# nipype-xai derivatives

Attribution maps of a deep-learning model's predictions for 3D brain MRI (T1w), written by
nipype-xai as a BIDS derivatives dataset. `dataset_description.json` names the software version
(`GeneratedBy`) and the input datasets (`DatasetLinks`, `SourceDatasets`); every sidecar's
`Sources` names the files it was made from as BIDS URIs (`bids:raw:...` for the input dataset,
`bids::...` for a file of this dataset).

Per subject, under `sub-<label>/[ses-<label>/]anat/`:

- `*_space-<template>_res-<r>_desc-<method>_attribution.nii.gz`: the map on the model's grid in
  template space, and `*_desc-<method>_attribution.nii.gz` on the subject's T1w grid (each with a
  JSON sidecar: method, parameters, target, prediction, model);
- `*_space-<template>_res-<r>_desc-preproc_T1w.nii.gz`: the T1w as the model received it;
  `*_desc-preproc_T1w.nii.gz` (bias-corrected T1w) and `*_desc-brain_mask.nii.gz`;
- `*_from-T1w_to-<template>_mode-image_xfm.h5` and its inverse (when registered here);
- `*_desc-<model>_predictions.tsv`, `*_desc-registration_metrics.tsv` and, with ground truth,
  `*_desc-overlap_metrics.tsv`.

Group level, under `group/`: `desc-overlap_metrics.tsv` (every subject x method),
`desc-overlap_ranking.tsv`, and the voxel-wise mean and SD map of each method
(`space-<template>_res-<r>_desc-<method>Mean_attribution.nii.gz`, `...Sd...`).

Reports: `sub-<label>.html` and `group.html`, with their figures under `sub-<label>/figures/` and
`group/figures/`.

Files the BIDS specification has no place for yet (attribution maps, transforms, tables of model
outputs and metrics, the group level, reports) are listed in `.bidsignore`, each with the reason.
"""
