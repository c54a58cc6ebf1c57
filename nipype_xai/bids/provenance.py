"""Provenance: BIDS URIs, ``DatasetLinks`` and ``SpatialReference``.

A derivative's ``Sources`` name the files it was made from as BIDS URIs: ``bids::<path>`` for a
file of this derivatives dataset, ``bids:<name>:<path>`` for a file of another dataset that
``DatasetLinks`` in ``dataset_description.json`` maps ``<name>`` to (``raw`` for the input
dataset; a relative location where one exists, so the pair can be moved together).
"""

from __future__ import annotations

import functools
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

PathLike = Union[str, os.PathLike]


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
    ``derivatives/groundtruth``); else (a file of no dataset, e.g. an intermediate file of a
    lab's own workflow in its work directory) the file's path relative to ``root``, as BIDS
    resolves a location without scheme: no absolute, machine-specific ``file:`` URI (only across
    drives, where no relative path exists).

    >>> bids_uri("/data/bids/sub-01/anat/sub-01_T1w.nii.gz", "/data/bids/derivatives/xai",
    ...          {"raw": "/data/bids"})
    'bids:raw:sub-01/anat/sub-01_T1w.nii.gz'
    >>> bids_uri("/data/work/sub_01_wf/t1w_preproc.nii.gz", "/data/bids/derivatives/xai")
    '../../../work/sub_01_wf/t1w_preproc.nii.gz'
    """
    path = Path(os.path.abspath(path))
    candidates = [("", Path(os.path.abspath(root)))] + [
        (name, Path(os.path.abspath(folder))) for name, folder in (links or {}).items()]
    inside = [(name, folder) for name, folder in candidates if _inside(path, folder)]
    if not inside:
        return _link_location(Path(os.path.abspath(root)), path)
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


def _description(root: Path) -> dict[str, Any]:
    try:
        content = json.loads((Path(root) / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
