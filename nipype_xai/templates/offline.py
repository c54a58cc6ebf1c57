"""nipype-xai's offline copy of MNI152NLin2009aSym: a TemplateFlow-layout home of its own, seeded
once from the files nilearn ships, with resolutions other than 1 mm derived on first request (see
:mod:`nipype_xai.templates` for the files, their names and grids).

Nothing here asks the user's TemplateFlow: :func:`nipype_xai.templates.get_template` falls back
to this home when TemplateFlow cannot deliver the default template.
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

from ..images import save_image

__all__ = [
    "FALLBACK_TEMPLATE",
    "TemplateNotAvailable",
    "fallback_templateflow_home",
    "nipype_xai_home",
    "seed_fallback_home",
]

LOGGER = logging.getLogger(__name__)

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


def _fallback_client(root: Path):
    from templateflow.client import TemplateFlowClient

    # autoupdate/use_datalad off: the home is complete and ours; nothing must be fetched or
    # unpacked into it. A fresh client each time, because its layout is indexed once, when first
    # used, and a derived resolution may have been added since.
    return TemplateFlowClient(root=root, autoupdate=False, use_datalad=False)


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
