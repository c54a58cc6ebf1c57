"""BIDS derivative names, ``dataset_description.json`` and sidecars (SPEC §6).

Paths are built with pybids' ``build_path`` and our own patterns: niworkflows' DerivativesDataSink
would pull in its whole stack and index TemplateFlow at import. Every write is atomic (temp file in
the same folder, then ``os.replace``), so a crash never leaves a half-written derivative.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from . import __version__
from .atomic import atomic_write

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
