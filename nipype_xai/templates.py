"""TemplateFlow access with an offline fallback for MNI152NLin2009aSym.

:func:`get_template` asks the user's TemplateFlow first, exactly as configured by
``TEMPLATEFLOW_HOME`` (a lab's prefetched, even read-only, home works as is). TemplateFlow
unpacks a *skeleton* of zero-byte files into its home and downloads a file's content from S3
on first use, so on a machine without network it raises on any file nobody prefetched.

For the default template, MNI152NLin2009aSym, nipype-xai then falls back to a home of its own,
``$NIPYPE_XAI_HOME/templateflow`` (default: ``<user cache dir>/nipype-xai/templateflow``), laid
out as a TemplateFlow home and read through TemplateFlow's own client. It is seeded once,
atomically, from the copy of the MNI ICBM152 2009a *symmetric* template that nilearn ships in
``nilearn/datasets/data``:

========================================================  ==============================================
nilearn file                                              nipype-xai name (``tpl-MNI152NLin2009aSym/``)
========================================================  ==============================================
``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``      ``..._res-1_desc-brain_T1w.nii.gz``
(derived: voxels of the T1w above 0, holes filled)        ``..._res-1_desc-brain_mask.nii.gz``
``mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz``      ``..._res-1_label-GM_probseg.nii.gz``
``mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz``      ``..._res-1_label-WM_probseg.nii.gz``
========================================================  ==============================================

The names are honest: nilearn's T1w is skull-stripped (``desc-brain``), and it is on the
original MNI distribution's 197×233×189 grid with origin (-98, -134, -72) mm, not on
TemplateFlow's 193×229×193 head-template grid; both grids are in the same MNI world
coordinates, so anything resampled through affines lines up. ``template_description.json``
records where each file came from. There is no head T1w offline: a request for it
(``desc=None``) is answered with the brain T1w and a logged warning.

Resolutions other than 1 mm are derived on first request and cached in the same home
(``res-2`` = 2 mm isotropic, 99×117×95 voxels with the same corner voxel centre, i.e. the same
field of view as the 1 mm grid and the very grid of nilearn's ``load_mni152_template(2)``).
TemplateFlow itself has only ``res-1`` for MNI152NLin2009aSym, so ``res-2`` comes from this copy
even on a networked machine: the 2 mm model grid is the same everywhere.
The user's TemplateFlow home is never written to by this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .images import save_image

__all__ = [
    "DEFAULT_TEMPLATE",
    "FALLBACK_TEMPLATE",
    "TemplateNotAvailable",
    "check_template",
    "fallback_templateflow_home",
    "get_template",
    "nipype_xai_home",
    "seed_fallback_home",
]

LOGGER = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "MNI152NLin2009aSym"
#: The one template nipype-xai can supply without network (from nilearn's bundled files).
FALLBACK_TEMPLATE = "MNI152NLin2009aSym"

_NIFTI_EXTENSIONS = [".nii.gz", ".nii"]
_FALLBACK_PREFIX = f"tpl-{FALLBACK_TEMPLATE}_res-1"
#: Seeded files: our name -> nilearn's file (None: derived from the T1w).
_SEED_FILES = {
    f"{_FALLBACK_PREFIX}_desc-brain_T1w.nii.gz": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    f"{_FALLBACK_PREFIX}_desc-brain_mask.nii.gz": None,
    f"{_FALLBACK_PREFIX}_label-GM_probseg.nii.gz": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    f"{_FALLBACK_PREFIX}_label-WM_probseg.nii.gz": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: Suffixes whose values are labels: resampled nearest-neighbour, never interpolated.
_LABEL_SUFFIXES = {"mask", "dseg"}
#: NIfTI xform code 4 = "MNI152": the files are in MNI world coordinates.
_MNI_XFORM_CODE = 4

# Queries the user's TemplateFlow could not answer in this process: asking again would repeat
# a network attempt (up to TemplateFlow's 10 s timeout on a firewalled machine) on every call.
_USER_TEMPLATEFLOW_FAILURES: dict[tuple, str] = {}
_WARNED_HEAD_T1W: set[tuple] = set()


class TemplateNotAvailable(RuntimeError):
    """A template file that neither TemplateFlow nor nipype-xai's offline copy can provide."""


def nipype_xai_home() -> Path:
    """Return nipype-xai's own data folder.

    Returns
    -------
    pathlib.Path
        ``$NIPYPE_XAI_HOME`` if set, otherwise the user cache folder (``~/.cache/nipype-xai``
        on Linux, as given by :mod:`platformdirs`).
    """
    from platformdirs import user_cache_dir

    return Path(os.environ.get("NIPYPE_XAI_HOME") or user_cache_dir("nipype-xai")).absolute()


def fallback_templateflow_home() -> Path:
    """Return the TemplateFlow-layout home that nipype-xai owns (``<home>/templateflow``)."""
    return nipype_xai_home() / "templateflow"


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


def _fallback_client(root: Path):
    from templateflow.client import TemplateFlowClient

    # autoupdate/use_datalad off: the home is complete and ours; nothing must be fetched or
    # unpacked into it. A fresh client each time, because its layout is indexed once, when first
    # used, and a derived resolution may have been added since.
    return TemplateFlowClient(root=root, autoupdate=False, use_datalad=False)


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


def _seed_is_complete(template_dir: Path) -> bool:
    names = [*_SEED_FILES, "template_description.json"]
    return all((template_dir / name).is_file() and (template_dir / name).stat().st_size > 0
               for name in names)


def seed_fallback_home() -> Path:
    """Seed nipype-xai's TemplateFlow-layout home from nilearn's files, once and atomically.

    The template folder is built in a hidden temporary folder inside the home and renamed into
    place in one step, so concurrent processes (Nipype's MultiProc, SLURM array jobs sharing a
    home) either see the complete folder or none; the loser of a race discards its copy.

    Returns
    -------
    pathlib.Path
        The home (``$NIPYPE_XAI_HOME/templateflow``), holding ``tpl-MNI152NLin2009aSym/``.
    """
    root = fallback_templateflow_home()
    template_dir = root / f"tpl-{FALLBACK_TEMPLATE}"
    if _seed_is_complete(template_dir):
        return root
    root.mkdir(parents=True, exist_ok=True)
    # A leading dot: TemplateFlow's indexer ignores hidden paths, so a half-built copy is never listed.
    staging = Path(tempfile.mkdtemp(prefix=".seeding-", dir=root))
    try:
        staged = staging / template_dir.name
        _write_seed(staged)
        try:
            os.rename(staged, template_dir)
        except OSError:
            # Another process renamed its copy first (the target exists and is not empty).
            if not _seed_is_complete(template_dir):
                # Something incomplete that we did not write in one step: swap it out.
                os.rename(template_dir, staging / "incomplete")
                os.rename(staged, template_dir)
        LOGGER.info("Seeded %s from nilearn's MNI152 2009a symmetric files", template_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _nilearn_data_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mni_image(data: np.ndarray, affine: np.ndarray, *, slope: float = 1.0) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    # nilearn's files carry sform "aligned" and no units; the data are in MNI mm coordinates.
    img.set_sform(affine, code=_MNI_XFORM_CODE)
    img.set_qform(affine, code=_MNI_XFORM_CODE)
    img.header.set_xyzt_units("mm")
    if slope != 1.0:
        img.header.set_slope_inter(slope, 0.0)
    return img


def _write_seed(template_dir: Path) -> None:
    import nilearn
    from scipy import ndimage

    from nipype_xai import __version__

    template_dir.mkdir(parents=True)
    source_dir = _nilearn_data_dir()
    sources = {}
    t1w_img = None
    for name, source_name in _SEED_FILES.items():
        if source_name is None:
            continue
        source = source_dir / source_name
        if not source.is_file():
            raise TemplateNotAvailable(
                f"{source}: nilearn's MNI152 2009a file is missing; cannot seed the offline "
                "template (reinstall nilearn, or prefetch TemplateFlow)")
        img = nib.load(source)
        data = np.asanyarray(img.dataobj)
        sources[name] = {"NilearnFile": source_name, "Sha256": _sha256(source)}
        if name.endswith("_T1w.nii.gz"):
            t1w_img = _mni_image(data, img.affine)
            out = t1w_img
        else:
            # Stored as nilearn's uint8 0..255; the scale slope maps them to probabilities 0..1.
            out = _mni_image(data, img.affine, slope=1.0 / 255.0)
        nib.save(out, template_dir / name)

    # nilearn's skull-stripped T1w is zero exactly outside the brain (one connected component,
    # no holes, every brain voxel >= 20 of 255), so its support is the brain mask.
    t1w_data = np.asanyarray(t1w_img.dataobj)
    brain_mask = ndimage.binary_fill_holes(t1w_data > 0).astype(np.uint8)
    mask_name = f"{_FALLBACK_PREFIX}_desc-brain_mask.nii.gz"
    nib.save(_mni_image(brain_mask, t1w_img.affine), template_dir / mask_name)
    sources[mask_name] = {"DerivedFrom": f"{_FALLBACK_PREFIX}_desc-brain_T1w.nii.gz",
                          "Method": "T1w > 0, holes filled"}

    shape = [int(n) for n in t1w_img.shape]
    description = {
        "Identifier": FALLBACK_TEMPLATE,
        "Name": "ICBM 152 Nonlinear Symmetrical template version 2009a (skull-stripped copy shipped by "
                "nilearn; nipype-xai's offline fallback)",
        "Authors": ["Fonov V", "Evans AC", "Botteron K", "Almli CR", "McKinstry RC", "Collins DL"],
        "BIDSVersion": "1.1.0",
        "License": "MNI ICBM 2009 template license, see http://nist.mni.mcgill.ca/?p=904",
        "ReferencesAndLinks": [
            "https://doi.org/10.1016/j.neuroimage.2010.07.033",
            "https://doi.org/10.1016/S1053-8119(09)70884-5",
            "http://nist.mni.mcgill.ca/?p=904",
        ],
        "Species": "Homo sapiens",
        "GeneratedBy": [{
            "Name": "nipype-xai", "Version": __version__,
            "Description": "seeded from the files nilearn ships, because TemplateFlow could not "
                           "deliver the template (no network)",
        }],
        "SourceDatasets": [{"Name": "nilearn", "Version": nilearn.__version__,
                            "Location": "nilearn/datasets/data"}],
        "Sources": sources,
        "Notes": (
            "Not TemplateFlow's files. The T1w is skull-stripped (hence desc-brain; there is no "
            f"head T1w) and on the original MNI distribution's {shape[0]}x{shape[1]}x{shape[2]} "
            "grid at 1 mm, origin (-98, -134, -72) mm, not on TemplateFlow's 193x229x193 grid "
            "(origin (-96, -132, -78) mm); world coordinates are the same MNI coordinates. Data "
            "are nilearn's unchanged; headers were set to sform/qform code MNI152 and units mm; "
            "probseg files scale nilearn's uint8 0..255 to 0..1 with the NIfTI scale slope 1/255."
        ),
        "DerivedResolutions": (
            "res-<r> (r mm isotropic) is derived from res-1 on first request and cached here: "
            "same corner voxel centre, shape floor((n-1)/r)+1 per axis (res-2: 99x117x95, "
            "nilearn's own 2 mm MNI grid); T1w and probseg by linear interpolation after Gaussian "
            "anti-aliasing (sigma (r-1)/2 mm), masks by nearest neighbour."
        ),
        "res": {str(r): _grid_description(t1w_img, r) for r in (1, 2)},
    }
    (template_dir / "template_description.json").write_text(json.dumps(description, indent=2) + "\n")


def _derived_grid(reference: nib.Nifti1Image, resolution: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The ``res-<resolution>`` grid: same corner voxel centre and field of view as ``reference``."""
    zooms = np.asarray(reference.header.get_zooms()[:3], dtype=float)
    affine = reference.affine.copy()
    affine[:3, :3] = reference.affine[:3, :3] * (resolution / zooms)
    extent = (np.asarray(reference.shape[:3]) - 1) * zooms
    shape = tuple(int(math.floor(e / resolution + 1e-6)) + 1 for e in extent)
    return affine, shape


def _grid_description(reference: nib.Nifti1Image, resolution: int) -> dict[str, list]:
    affine, shape = _derived_grid(reference, resolution)
    return {"origin": [float(v) for v in affine[:3, 3]], "shape": list(shape),
            "zooms": [float(resolution)] * 3}


def _derive_resolution(root: Path, query: dict[str, Any]) -> None:
    """Create the ``res-<r>`` file matching ``query`` from its ``res-1`` file, if not there yet."""
    from nilearn.image import resample_img, smooth_img

    resolution = query["resolution"]
    source_query = {**query, "resolution": 1}
    sources = _fallback_client(root).ls(FALLBACK_TEMPLATE, extension=_NIFTI_EXTENSIONS, **source_query)
    if len(sources) != 1:
        return  # nothing to derive from: the caller reports what is available
    source = sources[0]
    target = source.with_name(source.name.replace("_res-1_", f"_res-{resolution}_"))
    if target.is_file() and target.stat().st_size > 0:
        return
    img = nib.load(source)
    affine, shape = _derived_grid(img, resolution)
    if query.get("suffix") in _LABEL_SUFFIXES:
        resampled = resample_img(img, target_affine=affine, target_shape=shape,
                                 interpolation="nearest", force_resample=True, copy_header=True)
        data = np.asarray(resampled.dataobj).astype(np.uint8)
    else:
        # Linear interpolation alone would decimate (aliasing); sigma (r-1)/2 in units of the
        # 1 mm voxel is scikit-image's default anti-aliasing for a downscale by r.
        sigma_mm = (resolution - 1) / 2.0
        smoothed = smooth_img(img, fwhm=sigma_mm * math.sqrt(8 * math.log(2)))
        resampled = resample_img(smoothed, target_affine=affine, target_shape=shape,
                                 interpolation="linear", force_resample=True, copy_header=True)
        data = np.asarray(resampled.dataobj, dtype=np.float32)
    save_image(_mni_image(data, affine), target)  # atomic
    LOGGER.info("Derived %s (%s mm grid %s) from %s", target.name, resolution, "x".join(map(str, shape)),
                source.name)
