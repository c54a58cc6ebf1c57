"""Exact ground truth of the synthetic tasks (nipype_xai.synth): the signal lies inside it.

Each positive is compared with its twin, the same seed generated as a control: same anatomy, pose,
bias field and noise draw, only the signal differs, so ``|positive - twin|`` is the signal itself.
The exact ground truth must hold (almost) all of it; the anatomical region the atrophy task used
as ground truth before does not (that share is asserted too, so the test would have caught it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from nipype_xai.synth import (
    CAUDATE,
    cohort_labels,
    generate_cohort,
    jacobian_determinant,
    load_template_anatomy,
    make_subject,
    region_mask,
    signal_label,
    subject_seed,
)
from nipype_xai.synth.atrophy import (
    SIGNAL_MIN_DISPLACEMENT_VOXELS,
    SIGNAL_MIN_LOG_JACOBIAN,
    atrophy_log_jacobian,
    atrophy_point_map,
)
from nipype_xai.synth.lesion import lesion_intensity_factor
from nipype_xai.synth.train import cohort_to_template

TPL = "MNI152NLin2009aSym"
SEED = 3

#: Least share of the summed |positive - twin| the exact ground truth holds.
MIN_SHARE = 0.99


def positives(n: int = 8) -> list[int]:
    return [k for k, label in enumerate(cohort_labels(SEED, n)) if label]


def twins(anatomy, task: str, index: int, **options):
    seed = subject_seed(SEED, index)
    return (make_subject(anatomy, task, 1, seed, **options),
            make_subject(anatomy, task, 0, seed, **options))


def difference(first: nib.Nifti1Image, second: nib.Nifti1Image) -> np.ndarray:
    return np.abs(np.asarray(first.dataobj, dtype=np.float64)
                  - np.asarray(second.dataobj, dtype=np.float64))


def share_inside(diff: np.ndarray, mask) -> float:
    mask = np.asarray(getattr(mask, "dataobj", mask)) > 0
    return float(diff[mask].sum() / diff.sum())


# --- atrophy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [4.0, 2.0])
def test_atrophy_difference_lies_inside_the_exact_groundtruth(resolution):
    anatomy = load_template_anatomy(resolution)
    indices = positives()[:3 if resolution == 4.0 else 1]
    for index in indices:
        # Same noise draw (Rician: the twins differ only where the signal does) and noise-free.
        for options in ({}, {"noise_fraction": (0.0, 0.0)}):
            positive, twin = twins(anatomy, "atrophy", index, **options)
            diff = difference(positive.t1w, twin.t1w)
            assert twin.signal_mask is None and twin.signal_mask_template is None
            assert share_inside(diff, positive.signal_mask) >= MIN_SHARE
            # The anatomical region (the label-caudate mask) holds about 6 % of it.
            assert share_inside(diff, positive.groundtruth) < 0.2
            # ... all of which the exact ground truth holds: it contains the contracted region.
            region = np.asarray(positive.groundtruth.dataobj) > 0
            assert (np.asarray(positive.signal_mask.dataobj)[region] > 0).mean() >= 0.99


def test_atrophy_groundtruth_on_the_template_grid_follows_the_affine_registration():
    """The atrophy model's input: the T1w moved by its affine component alone (a nonlinear
    registration would undo the contraction), resampled linearly."""
    anatomy = load_template_anatomy(4.0)
    for index in positives()[:2]:
        positive, twin = twins(anatomy, "atrophy", index, noise_fraction=(0.0, 0.0))
        moved = [_affine_to_template(data) for data in (positive, twin)]
        diff = difference(*moved)
        assert share_inside(diff, positive.signal_mask_template) >= MIN_SHARE
        assert share_inside(diff, region_mask(anatomy)) < 0.2


def _affine_to_template(data) -> nib.Nifti1Image:
    """``cohort_to_template(..., "affine")`` on in-memory images (written to a temporary folder
    would cost more than the resampling)."""
    from nilearn.image import resample_img

    moved = nib.Nifti1Image(np.asarray(data.t1w.dataobj, dtype=np.float32),
                            data.linear @ data.t1w.affine)
    return resample_img(moved, target_affine=data.to_template.affine,
                        target_shape=data.to_template.shape[:3], interpolation="linear",
                        force_resample=True, copy_header=True)


def test_atrophy_log_jacobian_is_the_numerical_one():
    """The closed form of log det Dc against central differences of the point map on a 0.5 mm
    grid around one centre."""
    centre = np.array(CAUDATE.centres_mm[0])
    axes = [np.arange(-1.9, 1.9, 0.1) * s + c for s, c in zip(CAUDATE.semi_axes_mm, centre)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"))
    spacing = np.array([a[1] - a[0] for a in axes])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [a[0] for a in axes]
    displacement = atrophy_point_map(points, 0.3, CAUDATE) - points
    numerical = np.log(jacobian_determinant(displacement, affine))
    closed = atrophy_log_jacobian(points, 0.3, CAUDATE)
    error = np.abs(numerical - closed)[(slice(1, -1),) * 3]
    # The taper's second derivative jumps at r = 1 and r = taper, where central differences err
    # by O(step); elsewhere by O(step**2).
    r = CAUDATE.radius(points, centre)[(slice(1, -1),) * 3]
    smooth = (np.abs(r - 1.0) > 0.2) & (np.abs(r - CAUDATE.taper) > 0.2)
    assert error.max() < 0.05 and error[smooth].max() < 0.02
    assert closed[tuple(n // 2 for n in closed.shape)] == pytest.approx(-np.log(0.7))


@pytest.fixture(scope="module")
def atrophy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_gt") / "atrophy"
    return generate_cohort(root, "atrophy", 2, seed=SEED, resolution_mm=4.0, progress=False)


def test_cohort_stores_the_exact_groundtruth_beside_the_region(atrophy_root):
    anatomy = load_template_anatomy(4.0)
    labels = cohort_labels(SEED, 2)
    label = signal_label("atrophy")
    assert label == "atrophy" and signal_label("lesion") == "lesion"
    for index, positive in enumerate(labels):
        subject = f"{index + 1:02d}"
        folder = atrophy_root / "derivatives" / "groundtruth" / f"sub-{subject}" / "anat"
        native = folder / f"sub-{subject}_label-{label}_mask.nii.gz"
        template = folder / f"sub-{subject}_space-{TPL}_res-4_label-{label}_mask.nii.gz"
        # The anatomical region keeps its name, for every subject.
        assert (folder / f"sub-{subject}_label-{CAUDATE.name}_mask.nii.gz").exists()
        assert (folder / f"sub-{subject}_space-{TPL}_res-4_label-{CAUDATE.name}_mask.nii.gz"
                ).exists()
        if not positive:
            assert not native.exists() and not template.exists()
            continue
        data = make_subject(anatomy, "atrophy", 1, subject_seed(SEED, index))
        for path, image in ((native, data.signal_mask), (template, data.signal_mask_template)):
            stored = nib.load(str(path))
            assert np.array_equal(np.asarray(stored.dataobj), np.asarray(image.dataobj))
            assert np.allclose(stored.affine, image.affine)
            sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json"))
                                 .read_text())
            assert sidecar["MinDisplacementVoxels"] == SIGNAL_MIN_DISPLACEMENT_VOXELS
            assert sidecar["MinAbsLogJacobian"] == SIGNAL_MIN_LOG_JACOBIAN
            assert "Controls" in sidecar["Definition"]
        # On the template grid it is the mask for the affine-moved T1w the models are trained on.
        moved = cohort_to_template(atrophy_root, f"sub-{subject}", "affine")
        assert moved.shape == nib.load(str(template)).shape
        assert np.allclose(moved.affine, nib.load(str(template)).affine)


def test_exact_groundtruth_is_valid_bids(atrophy_root, tmp_path):
    pytest.importorskip("bids_validator_deno", reason="bids-validator-deno is not installed")
    env = {**os.environ, "DENO_DIR": str(tmp_path / "deno"), "DENO_NO_UPDATE_CHECK": "1",
           "NO_COLOR": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-c",
             "import sys; from bids_validator_deno import cli; sys.exit(cli())",
             str(atrophy_root / "derivatives" / "groundtruth"), "--format", "json"],
            capture_output=True, text=True, env=env, timeout=300)
        issues = json.loads(done.stdout)["issues"]["issues"]
    except (OSError, subprocess.TimeoutExpired, ValueError) as error:
        pytest.skip(f"bids-validator-deno cannot run here: {error}")
    # Only the new files are checked here (the transforms' names are sMRIPrep's, which the
    # validator does not list for raw-data-like derivatives).
    errors = [(i["code"], i.get("location")) for i in issues
              if i["severity"] == "error" and "label-atrophy" in str(i.get("location"))]
    assert errors == []
    assert {i["code"] for i in issues if i["severity"] == "error"} <= {"NOT_INCLUDED"}


# --- lesion -------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [4.0, 2.0])
def test_lesions_change_nothing_outside_their_mask(resolution):
    """Tolerance 0: in the template, where lesions are defined, and in the T1w (noise-free and
    with the twin's noise draw), not one voxel outside the mask changes. (With the mask ending at
    the border's half-height and the lesions interpolated from the template grid, 35 % of the
    change on the 4 mm grid and 20 % on the 2 mm grid lay outside the T1w's mask.)"""
    anatomy = load_template_anatomy(resolution)
    for index in positives(8)[:4 if resolution == 4.0 else 2]:
        for options in ({}, {"noise_fraction": (0.0, 0.0)}):
            positive, twin = twins(anatomy, "lesion", index, **options)
            change = lesion_intensity_factor(positive.lesions, anatomy.shape,
                                             anatomy.affine) - 1.0
            mask = np.asarray(positive.groundtruth_template.dataobj) > 0
            assert np.abs(change).sum() > 0 and not change[~mask].any()
            diff = difference(positive.t1w, twin.t1w)
            mask = np.asarray(positive.groundtruth.dataobj) > 0
            assert diff.sum() > 0 and not diff[~mask].any()
