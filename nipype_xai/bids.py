"""BIDS derivative names, ``dataset_description.json`` and sidecars (SPEC §6).

Paths are built with pybids' ``build_path`` and our own patterns: niworkflows' DerivativesDataSink
would pull in its whole stack and index TemplateFlow at import. Every write is atomic (temp file in
the same folder, then ``os.replace``), so a crash never leaves a half-written derivative.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from . import __version__
from .atomic import STATE_DIR, atomic_write

PathLike = Union[str, os.PathLike]

#: Folder of the group-level derivatives (the group table and ranking, the group mean and SD
#: maps, the group report's figures), inside the derivatives dataset. BIDS has no naming for
#: files derived from several subjects yet (bids-standard/bids-specification#163 is open): a
#: ``sub-group`` folder would be counted as a participant by the validator's and pybids'
#: subject lists (and by every ``sub-*`` glob), while one folder of its own keeps the group
#: level apart, named with the same entities as the subject files (pybids still parses
#: ``space``, ``res``, ``desc`` and the suffix), and listed once in ``.bidsignore``.
GROUP_DIR = "group"

#: Path patterns of every derivative nipype-xai writes (pybids ``build_path`` syntax).
PATH_PATTERNS: tuple[str, ...] = (
    # per-subject images and sidecars: attribution maps, masks, model-grid T1w, probseg
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "[_space-{space}][_res-{res}][_label-{label}][_desc-{desc}]"
    "_{suffix<attribution|mask|T1w|probseg|dseg>}{extension<.nii.gz|.nii|.json>|.nii.gz}",
    # transforms, as sMRIPrep names them: sub-X_from-T1w_to-<tpl>_mode-image_xfm.h5
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "_from-{from}_to-{to}_mode-{mode<image|points>|image}_{suffix<xfm>}{extension<.h5|.txt|.mat|.nii.gz>|.h5}",
    # per-subject tables: predictions and overlap metrics
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "[_space-{space}][_res-{res}][_desc-{desc}]_{suffix<predictions|metrics>}{extension<.tsv|.json>|.tsv}",
    # group level, in GROUP_DIR
    GROUP_DIR + "/[space-{space}_][res-{res}_][desc-{desc}_]"
    "{suffix<attribution|metrics|ranking|mask>}{extension<.nii.gz|.tsv|.json>|.tsv}",
)

#: ``.bidsignore`` of a nipype-xai derivatives dataset: each pattern, and why the BIDS
#: specification has no place for what it matches. Directory patterns have no trailing slash:
#: the schema validator (3.x) does not match ``figures/`` against the folder ``figures``
#: (bids-standard/bids-validator#291), while ``figures`` matches the folder at any depth.
BIDSIGNORE: tuple[tuple[str, str], ...] = (
    ("*_attribution.nii.gz", "attribution maps: no BIDS suffix for them yet (no BEP covers them)"),
    ("*_attribution.json", "their sidecars"),
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
    ("failures.tsv", "the participant level's failed subjects and why: a run log, not a "
                     "derivative"),
)

#: The group report, at the dataset root beside the subjects' ``sub-X.html``.
GROUP_REPORT = "group.html"


def group_metrics_path(root: Optional[PathLike] = None) -> Path:
    """The group overlap-metrics table: ``group/desc-overlap_metrics.tsv`` (every subject x map).

    >>> group_metrics_path().as_posix()
    'group/desc-overlap_metrics.tsv'
    """
    return derivative_path({"desc": "overlap", "suffix": "metrics", "extension": ".tsv"}, root)


def group_ranking_path(root: Optional[PathLike] = None) -> Path:
    """The method ranking over subjects: ``group/desc-overlap_ranking.tsv``."""
    return derivative_path({"desc": "overlap", "suffix": "ranking", "extension": ".tsv"}, root)


#: Group statistics of the maps and the ``desc`` suffix each gets (``desc-gradientMean``).
GROUP_MAP_STATISTICS: dict[str, str] = {"mean": "Mean", "sd": "Sd"}


def group_map_desc(method: str, statistic: str) -> str:
    """``desc`` label of a group map: ``group_map_desc("smoothgrad_sq", "mean")`` is
    ``smoothgradSqMean``."""
    return method_to_desc(method) + GROUP_MAP_STATISTICS[statistic]


def group_map_path(method: str, statistic: str, space: str, res: Optional[str] = None,
                   root: Optional[PathLike] = None) -> Path:
    """A group map: ``group/space-<tpl>[_res-<r>]_desc-<method>{Mean,Sd}_attribution.nii.gz``.

    >>> group_map_path("gradient", "sd", "MNI152NLin2009aSym", "4").as_posix()
    'group/space-MNI152NLin2009aSym_res-4_desc-gradientSd_attribution.nii.gz'
    """
    return derivative_path({"space": space, "res": res, "desc": group_map_desc(method, statistic),
                            "suffix": "attribution", "extension": ".nii.gz"}, root)


def report_path(subject: Optional[str] = None, session: Optional[str] = None,
                root: Optional[PathLike] = None) -> Path:
    """A report: ``sub-<subject>[_ses-<session>].html``, or :data:`GROUP_REPORT` without a
    subject; at the dataset root, as fMRIPrep writes them."""
    name = GROUP_REPORT if subject is None else (
        f"sub-{subject}" + (f"_ses-{session}" if session else "") + ".html")
    return Path(root, name) if root is not None else Path(name)


def figures_dir(subject: Optional[str] = None, root: Optional[PathLike] = None) -> Path:
    """Folder of a report's figure files: ``sub-<subject>/figures`` (fMRIPrep's place), or
    ``group/figures`` for the group report."""
    folder = Path(GROUP_DIR if subject is None else f"sub-{subject}", "figures")
    return Path(root, folder) if root is not None else folder


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


# ---- provenance: BIDS URIs, DatasetLinks, SpatialReference -------------------------------------
#
# A derivative's ``Sources`` name the files it was made from as BIDS URIs: ``bids::<path>`` for a
# file of this derivatives dataset, ``bids:<name>:<path>`` for a file of another dataset that
# ``DatasetLinks`` in ``dataset_description.json`` maps ``<name>`` to (``raw`` for the input
# dataset; a relative location where one exists, so the pair can be moved together).


def dataset_root(path: PathLike) -> Optional[Path]:
    """The BIDS dataset holding ``path``: its nearest parent folder with a
    ``dataset_description.json`` (BIDS URI resolution), or None."""
    path = Path(path).absolute()
    for folder in path.parents:
        if (folder / "dataset_description.json").is_file():
            return folder
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _link_location(root: Path, target: Path) -> str:
    """``DatasetLinks`` value for ``target`` seen from ``root``: a relative POSIX path (BIDS
    resolves a value without scheme against the dataset root), else a ``file:`` URI."""
    try:
        return Path(os.path.relpath(target, root)).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return target.as_uri()


def read_dataset_links(root: PathLike) -> dict[str, Path]:
    """``DatasetLinks`` of the dataset at ``root``, resolved to absolute folders.

    Relative locations are resolved against ``root`` and ``file:`` URIs to their path; links to
    remote locations (a DOI, ``https:``) are left out, since no local file can be inside them.
    """
    root = Path(root).absolute()
    try:
        links = json.loads((root / "dataset_description.json").read_text(encoding="utf-8")
                           ).get("DatasetLinks", {})
    except (OSError, ValueError, AttributeError):
        return {}
    resolved = {}
    for name, location in (links.items() if isinstance(links, dict) else ()):
        if not isinstance(location, str):
            continue
        if location.startswith("file:"):
            from urllib.parse import unquote, urlparse

            resolved[name] = Path(unquote(urlparse(location).path))
        elif not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", location):
            resolved[name] = Path(os.path.normpath(root / location))
    return resolved


def _link_name(folder: Path, taken: Mapping[str, Path]) -> str:
    """A ``DatasetLinks`` name for a dataset: ``raw`` for a raw dataset, else its folder name
    (alphanumeric), numbered when another dataset has that name already."""
    base = "raw" if _dataset_type(folder) in ("raw", None) else (
        re.sub(r"[^A-Za-z0-9]", "", folder.name) or "source")
    name, index = base, 1
    while name in taken and taken[name] != folder:
        index += 1
        name = f"{base}{index}"
    return name


def input_dataset_links(
    raw: Optional[PathLike] = None,
    *others: Optional[PathLike],
    links: Optional[Mapping[str, PathLike]] = None,
) -> dict[str, Path]:
    """Names for the datasets a run reads: ``raw`` for the input dataset, and one per other input.

    Parameters
    ----------
    raw
        The input BIDS dataset (named ``raw`` whatever its ``DatasetType``, as BIDS-Apps do).
    others
        Other inputs (e.g. a ground-truth derivatives dataset, a lab's sMRIPrep output), or
        files inside them: each is named after the dataset that holds it (its folder name,
        ``raw`` for a raw dataset). None entries are skipped.
    links
        Links known already (e.g. :func:`read_dataset_links` of the output): kept, and not
        added twice.

    Returns
    -------
    dict
        Name -> absolute dataset folder.
    """
    result = {name: Path(folder).absolute() for name, folder in (links or {}).items()}
    if raw is not None:
        result["raw"] = Path(raw).absolute()
    for other in others:
        if other is None:
            continue
        other = Path(other).absolute()
        folder = other if (other / "dataset_description.json").is_file() else dataset_root(other)
        if folder is None or folder in result.values():
            continue
        result[_link_name(folder, result)] = folder
    return result


def bids_uri(path: PathLike, root: PathLike, links: Optional[Mapping[str, PathLike]] = None
             ) -> str:
    """BIDS URI of ``path`` as named from the derivatives dataset at ``root``.

    ``bids::<relative path>`` inside ``root``; ``bids:<name>:<relative path>`` inside the
    dataset that ``links[name]`` is (the innermost, when links nest, e.g. a raw dataset and its
    ``derivatives/groundtruth``); else a ``file:`` URI (a file of no dataset, e.g. an
    intermediate file of a lab's own workflow).

    >>> bids_uri("/data/bids/sub-01/anat/sub-01_T1w.nii.gz", "/data/bids/derivatives/xai",
    ...          {"raw": "/data/bids"})
    'bids:raw:sub-01/anat/sub-01_T1w.nii.gz'
    """
    path = Path(os.path.abspath(path))
    candidates = [("", Path(os.path.abspath(root)))] + [
        (name, Path(os.path.abspath(folder))) for name, folder in (links or {}).items()]
    inside = [(name, folder) for name, folder in candidates if _inside(path, folder)]
    if not inside:
        return path.as_uri()
    name, folder = max(inside, key=lambda item: len(item[1].parts))
    return f"bids:{name}:{path.relative_to(folder).as_posix()}"


#: TemplateFlow's archive: ``SpatialReference`` of template-space images points at it.
TEMPLATEFLOW_URL = "https://templateflow.s3.amazonaws.com"


@functools.lru_cache(maxsize=None)
def template_spatial_reference(template: str) -> str:
    """``SpatialReference`` of an image in template space: the URL of the template's T1w in
    TemplateFlow's archive, as in the BIDS derivatives specification's example.

    The file name (``res-1`` or ``res-01``, a cohort folder) is read from the skeleton of file
    names the ``templateflow`` package ships, so no network and no TemplateFlow home is needed.
    The reference is the template's own (finest) T1w: an image on a coarser grid of the same
    space is aligned to it, and its ``res-`` entity and ``Resolution`` field say which grid.
    A template TemplateFlow does not list gets its folder's URL.
    """
    names: list[str] = []
    try:
        from importlib import resources

        skeleton = resources.files("templateflow.conf") / "templateflow-skel.zip"
        with resources.as_file(skeleton) as local, zipfile.ZipFile(local) as archive:
            names = [n for n in archive.namelist() if n.startswith(f"tpl-{template}/")]
    except (ImportError, OSError, ValueError, zipfile.BadZipFile):
        names = []

    def rank(name: str) -> tuple:
        stem = name.rsplit("/", 1)[-1]
        res = re.search(r"_res-0*(\d+)_", stem)
        return (res is None, int(res.group(1)) if res else 0, len(name), name)

    t1w = [n for n in names if n.endswith("_T1w.nii.gz") and "_desc-" not in n]
    if t1w:
        return f"{TEMPLATEFLOW_URL}/{min(t1w, key=rank)}"
    return f"{TEMPLATEFLOW_URL}/tpl-{template}/"


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


def _description(root: Path) -> dict[str, Any]:
    try:
        content = json.loads((Path(root) / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


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
