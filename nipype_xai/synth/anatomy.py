"""Template anatomy of the synthetic cohorts and the grid their "scanner" images live on.

Every synthetic subject is built from real anatomy: the MNI152 2009a symmetric T1w template and its
grey- and white-matter probability maps, as nilearn ships them in its package data (no download).
They are nilearn's skull-stripped variant on its 197 x 233 x 189 grid at 1 mm, the same files the
offline TemplateFlow seed of SPEC §5 uses, so template-space ground truth written here lines up
with ``tpl-MNI152NLin2009aSym_res-1_desc-brain_T1w``. A coarser working grid is obtained the way
nilearn's own ``load_mni152_template(resolution=n)`` does it (``resample_img`` with
``target_affine = n * I``: same origin, same axes), so our ``res-2`` grid *is* nilearn's 2 mm grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np

__all__ = [
    "TEMPLATE_SPACE",
    "TemplateAnatomy",
    "load_template_anatomy",
    "native_grid",
]

#: Template identifier used in ``space-`` / ``from-`` / ``to-`` entities.
TEMPLATE_SPACE = "MNI152NLin2009aSym"

#: nilearn's whole-brain mask is the rescaled T1w above this value (``load_mni152_brain_mask``).
BRAIN_THRESHOLD = 0.2


@dataclass(frozen=True)
class TemplateAnatomy:
    """The template images on one working grid (all share ``affine`` and ``shape``).

    Attributes
    ----------
    t1w
        Skull-stripped T1w, float32, rescaled to [0, 1] as nilearn does.
    gm, wm
        Grey- and white-matter probability maps, float32 in [0, 1].
    brain_mask
        uint8 whole-brain mask (T1w > 0.2, nilearn's definition).
    resolution_mm
        Isotropic voxel size of the grid.
    space
        Template identifier, ``MNI152NLin2009aSym``.

    The arrays behind the images are read-only: one instance is cached per resolution and shared.
    """

    t1w: nib.Nifti1Image
    gm: nib.Nifti1Image
    wm: nib.Nifti1Image
    brain_mask: nib.Nifti1Image
    resolution_mm: float
    space: str = TEMPLATE_SPACE

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world (RAS mm) affine of the grid."""
        return self.t1w.affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return tuple(int(n) for n in self.t1w.shape[:3])

    def array(self, name: str) -> np.ndarray:
        """Read-only array of ``t1w``, ``gm``, ``wm`` (float32) or ``brain_mask`` (uint8)."""
        return np.asanyarray(getattr(self, name).dataobj)


def load_template_anatomy(resolution_mm: float = 2.0) -> TemplateAnatomy:
    """MNI152 2009a symmetric T1w, GM and WM maps and brain mask on an isotropic grid.

    Parameters
    ----------
    resolution_mm
        Voxel size in mm (1 = the template's own grid). Other sizes are resampled with nilearn
        exactly as ``nilearn.datasets.load_mni152_template(resolution=...)`` does, which only
        accepts integers.

    Returns
    -------
    TemplateAnatomy
        Cached per resolution; its arrays are read-only.

    Raises
    ------
    ValueError
        ``resolution_mm`` is not a positive finite number.
    """
    resolution = float(resolution_mm)
    if not np.isfinite(resolution) or resolution <= 0:
        raise ValueError(f"resolution_mm must be a positive number of mm, got {resolution_mm!r}")
    return _load_template_anatomy(resolution)


@functools.lru_cache(maxsize=4)
def _load_template_anatomy(resolution: float) -> TemplateAnatomy:
    from nilearn import datasets, image

    def on_grid(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
        if resolution != 1.0:
            img = image.resample_img(img, target_affine=np.eye(3) * resolution,
                                     interpolation="continuous", force_resample=True,
                                     copy_header=True)
        # The spline interpolation overshoots at tissue edges: keep probabilities probabilities.
        return np.clip(np.asarray(img.dataobj, dtype=np.float32), 0.0, 1.0), img.affine

    t1w, affine = on_grid(datasets.load_mni152_template(resolution=1))
    gm, _ = on_grid(datasets.load_mni152_gm_template(resolution=1))
    wm, _ = on_grid(datasets.load_mni152_wm_template(resolution=1))
    brain = (t1w > BRAIN_THRESHOLD).astype(np.uint8)

    images = []
    for data in (t1w, gm, wm, brain):
        data.flags.writeable = False
        images.append(_template_image(data, affine))
    return TemplateAnatomy(*images, resolution_mm=resolution)


def _template_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    # NIFTI_XFORM_MNI_152 (4): the coordinates are template coordinates, not a scanner's.
    img.set_qform(affine, code=4)
    img.set_sform(affine, code=4)
    return img


def native_grid(anatomy: TemplateAnatomy, margin_mm: float = 10.0) -> tuple[tuple[int, int, int],
                                                                              np.ndarray]:
    """The "scanner" grid every native image of a cohort shares.

    Same voxel size and axes as the template grid, widened by ``margin_mm`` on every side so a
    subject moved by its affine and warp stays in the field of view. Its shape and origin differ
    from the template's on purpose: a native-space map compared with a template-space mask fails
    the grid check instead of silently overlapping the wrong voxels.

    Returns
    -------
    shape, affine
        Grid shape and voxel-to-world (RAS mm) affine.
    """
    pad = int(np.ceil(margin_mm / anatomy.resolution_mm - 1e-9))
    affine = anatomy.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    shape = tuple(int(n) + 2 * pad for n in anatomy.shape)
    return shape, affine
