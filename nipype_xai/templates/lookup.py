"""Template files from the user's TemplateFlow, falling back to nipype-xai's offline copy
(:mod:`nipype_xai.templates.offline`) for MNI152NLin2009aSym: :func:`get_template`, and
:func:`check_template` before a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .offline import (
    _NIFTI_EXTENSIONS,
    FALLBACK_TEMPLATE,
    TemplateNotAvailable,
    _derive_resolution,
    _fallback_client,
    seed_fallback_home,
)

__all__ = ["DEFAULT_TEMPLATE", "check_template", "get_template"]

LOGGER = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "MNI152NLin2009aSym"

# Queries the user's TemplateFlow could not answer in this process: asking again would repeat
# a network attempt (up to TemplateFlow's 10 s timeout on a firewalled machine) on every call.
_USER_TEMPLATEFLOW_FAILURES: dict[tuple, str] = {}
_WARNED_HEAD_T1W: set[tuple] = set()


def get_template(
    template: str = DEFAULT_TEMPLATE,
    resolution: int = 1,
    suffix: str = "T1w",
    desc: str | None = None,
    label: str | None = None,
    **entities: Any,
) -> Path:
    """Return the path of one template file, from TemplateFlow or nipype-xai's offline copy.

    Parameters
    ----------
    template : str
        TemplateFlow identifier, e.g. ``"MNI152NLin2009aSym"`` or ``"MNI152NLin2009cAsym"``.
    resolution : int
        TemplateFlow's ``res-`` index; for the MNI templates the voxel size in mm. In the offline
        fallback it is always the voxel size in mm (``res-2`` is derived from ``res-1``).
    suffix : str
        BIDS suffix: ``"T1w"``, ``"mask"``, ``"probseg"``, ...
    desc : str or None
        ``desc-`` entity; ``None`` means the file has none (e.g. the head T1w).
    label : str or None
        ``label-`` entity (``"GM"``, ``"WM"`` for probseg); ``None`` means the file has none.
    **entities
        Further TemplateFlow entities (``cohort``, ``atlas``, ``hemi``, ...), passed through.

    Returns
    -------
    pathlib.Path
        A non-empty NIfTI file.

    Raises
    ------
    TemplateNotAvailable
        TemplateFlow cannot deliver the file (no network, not prefetched, no such file) and the
        offline copy has no match either; the message says how to prefetch it.
    ValueError
        The query matches more than one file.
    """
    query: dict[str, Any] = {
        "resolution": _as_resolution(resolution),
        "suffix": suffix,
        "desc": desc,
        "label": label,
        **entities,
    }
    path, reason = _from_user_templateflow(template, query)
    if path is not None:
        return path
    if template != FALLBACK_TEMPLATE:
        raise TemplateNotAvailable(_prefetch_message(template, query, reason))
    return _from_fallback(query, reason)


def _as_resolution(resolution: Any) -> int:
    try:
        value = int(resolution)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or value != float(resolution):
        raise ValueError(
            f"resolution must be a positive integer (TemplateFlow res- index), got {resolution!r}")
    return value


def _describe(template: str, query: dict[str, Any]) -> str:
    fields = ", ".join(f"{key}={value!r}" for key, value in query.items())
    return f"{template} ({fields})"


def _query_key(template: str, query: dict[str, Any]) -> tuple:
    return (template, tuple(sorted((key, repr(value)) for key, value in query.items())))


def _from_user_templateflow(template: str, query: dict[str, Any]) -> tuple[Path | None, str]:
    """Ask the user's TemplateFlow; return ``(path, "")`` or ``(None, why it could not)``."""
    key = _query_key(template, query)
    if key in _USER_TEMPLATEFLOW_FAILURES:
        return None, _USER_TEMPLATEFLOW_FAILURES[key]
    try:
        # Imported here, not at module import: templateflow reads TEMPLATEFLOW_HOME and unpacks
        # its skeleton into that home when first imported (its behaviour, not ours).
        from templateflow import api as templateflow_api

        matches = templateflow_api.ls(template, extension=_NIFTI_EXTENSIONS, **query)
    except Exception as exc:  # noqa: BLE001 - failing to initialise TemplateFlow = "cannot deliver"
        reason = f"TemplateFlow could not be queried ({_summarise(exc)})"
        _USER_TEMPLATEFLOW_FAILURES[key] = reason
        return None, reason
    if len(matches) > 1:
        names = ", ".join(sorted(p.name for p in matches))
        raise ValueError(f"{_describe(template, query)} matches {len(matches)} TemplateFlow files: "
                         f"{names}; add entities to choose one")
    if not matches:
        reason = "TemplateFlow lists no such file"
        _USER_TEMPLATEFLOW_FAILURES[key] = reason
        return None, reason
    try:
        # get() downloads a zero-byte skeleton file into the user's home when there is network:
        # that is TemplateFlow fetching for the user, as configured by the user.
        fetched = templateflow_api.get(template, extension=_NIFTI_EXTENSIONS, **query)
    except Exception as exc:  # noqa: BLE001 - requests' ConnectionError, RuntimeError, OSError
        reason = f"TemplateFlow could not fetch {matches[0].name} ({_summarise(exc)})"
        _USER_TEMPLATEFLOW_FAILURES[key] = reason
        return None, reason
    path = Path(fetched)
    if not path.is_file() or path.stat().st_size == 0:
        reason = f"TemplateFlow returned an empty file {path}"
        _USER_TEMPLATEFLOW_FAILURES[key] = reason
        return None, reason
    return path, ""


def _summarise(exc: BaseException, limit: int = 160) -> str:
    # requests' ConnectionError is an OSError whose text nests the whole urllib3 retry story.
    text = " ".join(str(exc).split())
    kind = "no network?" if isinstance(exc, OSError) else type(exc).__name__
    return f"{kind} {type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _user_templateflow_home() -> str:
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if home:
        return home
    from platformdirs import user_cache_dir

    return user_cache_dir("templateflow")


def _prefetch_how(template: str, resolution: int) -> str:
    return (
        f"nipype-xai can supply only {FALLBACK_TEMPLATE} (T1w brain, brain mask, GM/WM probseg) "
        "without network; on a machine with network access, prefetch the template into a "
        "TemplateFlow home with: TEMPLATEFLOW_HOME=/path/to/templateflow python -c \"import "
        f"templateflow.api as tf; tf.get('{template}', resolution={resolution})\", then copy that "
        "folder to this machine (or mount it; read-only works) and set TEMPLATEFLOW_HOME to it "
        f"(now: {_user_templateflow_home()})."
    )


def _prefetch_message(template: str, query: dict[str, Any], reason: str) -> str:
    # One line: the command line shows only an error's first line.
    return (f"Template {_describe(template, query)} is not available: {reason}. "
            + _prefetch_how(template, query["resolution"]))


def check_template(template: str, resolution: int = 1) -> None:
    """Fail now, before any subject runs, if a run could not get ``template``'s files.

    A run registers to the template's skull-stripped T1w and its brain mask
    (``desc-brain_T1w``, ``desc-brain_mask``) at ``resolution``, from the user's TemplateFlow or,
    for :data:`FALLBACK_TEMPLATE`, from nipype-xai's offline copy, which can always be made.

    Cheap where it can be: the fallback template is accepted without a look, and a template
    that the user's TemplateFlow home has no ``tpl-<template>`` folder for is refused without
    indexing the home. Otherwise the files are asked for exactly as the run will ask (the first
    query of a process indexes the home, seconds), so a template TemplateFlow cannot deliver
    here (not prefetched, no network) is found now.

    Parameters
    ----------
    template
        TemplateFlow identifier, e.g. ``"MNI152NLin2009cAsym"``.
    resolution
        TemplateFlow ``res-`` index the run registers at.

    Raises
    ------
    TemplateNotAvailable
        One line: the template, why it is not available, and how to prefetch it.
    """
    resolution = _as_resolution(resolution)
    if template == FALLBACK_TEMPLATE:
        return

    def refuse(reason: str) -> TemplateNotAvailable:
        return TemplateNotAvailable(f"template {template!r} is not available: {reason}. "
                                    + _prefetch_how(template, resolution))

    try:
        # TemplateFlow unpacks its skeleton of every template it knows into an empty home when
        # first imported (as the run would); after that, the home lists them as folders.
        import templateflow.api  # noqa: F401
        from templateflow import conf as templateflow_conf
    except Exception as exc:  # noqa: BLE001 - an import or a home that cannot be set up
        raise refuse(f"TemplateFlow could not be set up ({_summarise(exc)})") from None
    home = Path(templateflow_conf.TF_HOME)
    if not (home / f"tpl-{template}").is_dir():
        raise refuse(f"TemplateFlow has no template {template!r} (no tpl-{template} in {home})")
    for suffix in ("T1w", "mask"):
        query = {"resolution": resolution, "suffix": suffix, "desc": "brain", "label": None}
        path, reason = _from_user_templateflow(template, query)
        if path is None:
            raise refuse(f"{reason} (the {suffix} of res-{resolution}, desc-brain)")


# --- the offline fallback --------------------------------------------------------------------


def _from_fallback(query: dict[str, Any], reason: str) -> Path:
    root = seed_fallback_home()
    fallback_query = dict(query)
    if fallback_query.get("suffix") == "T1w" and fallback_query.get("desc") is None:
        # Warn once per process and query: workflows ask for the same template many times.
        log = LOGGER.info if _query_key(FALLBACK_TEMPLATE, query) in _WARNED_HEAD_T1W else LOGGER.warning
        _WARNED_HEAD_T1W.add(_query_key(FALLBACK_TEMPLATE, query))
        log(
            "%s head T1w requested but TemplateFlow cannot deliver it (%s); using nipype-xai's "
            "offline copy, which is skull-stripped (desc-brain) and on nilearn's 197x233x189 grid.",
            FALLBACK_TEMPLATE, reason,
        )
        fallback_query["desc"] = "brain"
    else:
        LOGGER.info("TemplateFlow cannot deliver %s (%s); using nipype-xai's offline copy in %s",
                    _describe(FALLBACK_TEMPLATE, query), reason, root)
    if fallback_query["resolution"] != 1:
        _derive_resolution(root, fallback_query)
    matches = _fallback_client(root).ls(FALLBACK_TEMPLATE, extension=_NIFTI_EXTENSIONS, **fallback_query)
    if len(matches) != 1:
        available = ", ".join(sorted(p.name for p in (root / f"tpl-{FALLBACK_TEMPLATE}").glob("*.nii*")))
        raise TemplateNotAvailable(
            _prefetch_message(FALLBACK_TEMPLATE, query, reason)
            + f" The offline copy in {root} has: {available}."
        )
    return matches[0]
