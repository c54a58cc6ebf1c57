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
The user's TemplateFlow home is never written to by this package.

Where it lives: :mod:`nipype_xai.templates.lookup` asks TemplateFlow and falls back;
:mod:`nipype_xai.templates.offline` seeds and derives the offline copy.
"""

from .lookup import DEFAULT_TEMPLATE, check_template, get_template
from .offline import (
    FALLBACK_TEMPLATE,
    TemplateNotAvailable,
    fallback_templateflow_home,
    nipype_xai_home,
    seed_fallback_home,
)

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
