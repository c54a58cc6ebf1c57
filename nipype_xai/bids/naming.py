"""Names of every derivative nipype-xai writes (SPEC §6): path patterns, ``desc`` labels, reports.

Paths are built with pybids' ``build_path`` and our own patterns: niworkflows' DerivativesDataSink
would pull in its whole stack and index TemplateFlow at import.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

PathLike = Union[str, os.PathLike]

#: Written by the participant level at the output root: subjects that failed and why.
FAILURES_FILE = "failures.tsv"

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
    # per-subject images and sidecars: attribution maps, counterfactual maps (log-Jacobian,
    # intensity difference), masks, model-grid T1w (and its counterfactual), probseg
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "[_space-{space}][_res-{res}][_label-{label}][_desc-{desc}]"
    "_{suffix<attribution|counterfactual|mask|T1w|probseg|dseg>}"
    "{extension<.nii.gz|.nii|.json>|.nii.gz}",
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
        from ..attribution import available_methods

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
