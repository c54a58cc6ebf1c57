"""The same image stored in another voxel order, for tests of orientation invariance."""

from __future__ import annotations

import nibabel as nib
import numpy as np


def permuted(img: nib.Nifti1Image, axcodes=("P", "S", "L")) -> nib.Nifti1Image:
    """The same voxels stored in another order (as a scanner might write them)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    data = np.asanyarray(img.dataobj)
    ornt = ornt_transform(axcodes2ornt(nib.aff2axcodes(img.affine)), axcodes2ornt(axcodes))
    out = nib.Nifti1Image(np.ascontiguousarray(apply_orientation(data, ornt)),
                          img.affine @ inv_ornt_aff(ornt, data.shape))
    assert nib.aff2axcodes(out.affine) == tuple(axcodes)
    return out
