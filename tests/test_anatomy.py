"""Anatomical steps before and after registration: N4, brain extraction (deepbet), registration QC.

Synthetic volumes for N4 and the QC metrics; the real adult head of Debian's mricron-data
(``tests/real_data.py``: Colin27 ``ch2`` and its brain-extracted ``ch2bet``) for brain extraction
and QC of real registrations. Measured on the project's 2 shared CPU cores: deepbet 8-13 s per
1 mm head (4 s when the cores are idle), Dice 0.936 with ``ch2bet``'s mask; an affine registration
of its brain to nilearn's 2 mm template ~10 s, QC dice 0.955 / ncc 0.65 (passes); failures: identity
on the head in scanner orientation 0.55 / 0.09, an inferior-superior flip in the affine 0.88 / 0.19,
the top half of the brain 0.69 / 0.32 (all fail). The whole file: about a minute.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("ants")

from nipype_xai.anatomy import (  # noqa: E402
    QC_THRESHOLDS,
    AnatomyError,
    apply_brain_mask,
    extract_brain,
    n4_bias_correct,
    plot_registration_overlay,
    qc_passed,
    registration_qc,
)
from geometry import dice, rotation  # noqa: E402
from real_data import real_brain_mask, real_t1w  # noqa: E402,F401 - real_t1w is a fixture

deepbet = pytest.importorskip("deepbet")


@pytest.fixture(scope="module")
def template():
    """nilearn's MNI152 2009a brain T1w and brain mask on the 2 mm grid (the model grid)."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    t1w = load_mni152_template(resolution=2)
    t1w = nib.Nifti1Image(t1w.get_fdata(dtype=np.float32), t1w.affine)
    mask = load_mni152_brain_mask(resolution=2)
    return t1w, nib.Nifti1Image((mask.get_fdata() > 0).astype(np.uint8), mask.affine)


# --- N4 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def biased():
    """The 3 mm template times a known smooth bias (up to about +-35 %), and its white matter."""
    from nilearn.datasets import load_mni152_template, load_mni152_wm_template

    t1w = load_mni152_template(resolution=3)
    data = t1w.get_fdata(dtype=np.float32)
    centre = (np.asarray(data.shape) - 1) / 2
    x, y, z = ((np.indices(data.shape) - centre[:, None, None, None])
               / centre[:, None, None, None])
    bias = np.exp(0.25 * x + 0.2 * y - 0.15 * z + 0.15 * x * y).astype(np.float32)
    white_matter = load_mni152_wm_template(resolution=3).get_fdata() > 0.95
    return nib.Nifti1Image(data * bias, t1w.affine), data, white_matter


def coefficient_of_variation(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def test_n4_removes_a_known_bias_and_is_deterministic(biased):
    img, unbiased, white_matter = biased
    first = n4_bias_correct(img)
    second = n4_bias_correct(img)
    corrected = first.get_fdata()
    before = coefficient_of_variation(img.get_fdata()[white_matter])
    after = coefficient_of_variation(corrected[white_matter])
    # Measured: template 0.025, biased 0.117, corrected 0.040.
    assert before > 0.1 and after < 0.05 and after < 0.4 * before
    assert coefficient_of_variation(unbiased[white_matter]) < after
    # Same input, same process: the same bytes (N4 has no random sampling).
    assert np.array_equal(corrected, second.get_fdata())
    assert first.shape == img.shape and np.array_equal(first.affine, img.affine)
    assert first.get_data_dtype() == np.float32


def test_n4_does_not_depend_on_the_voxel_order(biased):
    """N4 subsamples in index space; the same image stored in PSL order gives the same result."""
    from nipype_xai.images import reorient_like
    from voxel_order import permuted

    img, _, _ = biased
    stored = permuted(img)
    corrected = n4_bias_correct(stored)
    assert corrected.shape == stored.shape and np.array_equal(corrected.affine, stored.affine)
    back = reorient_like(corrected, img)
    assert np.array_equal(np.asanyarray(back.dataobj), n4_bias_correct(img).get_fdata(dtype=np.float32))


def test_n4_input_errors_name_the_file(tmp_path, biased):
    img, _, _ = biased
    empty = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    empty.set_filename(str(tmp_path / "sub-01_T1w.nii.gz"))
    with pytest.raises(AnatomyError, match=r"sub-01_T1w\.nii\.gz: .*empty"):
        n4_bias_correct(empty)
    constant = nib.Nifti1Image(np.full((8, 8, 8), 7, np.float32), np.eye(4))
    with pytest.raises(AnatomyError, match="constant"):
        n4_bias_correct(constant)
    other_grid = nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), np.eye(4))
    other_grid.set_filename(str(tmp_path / "sub-01_mask.nii.gz"))
    with pytest.raises(AnatomyError, match=r"sub-01_mask\.nii\.gz: not on the grid"):
        n4_bias_correct(img, mask=other_grid)


def test_n4_interface(tmp_path, biased):
    from nipype_xai.interfaces.anatomy import N4BiasFieldCorrection

    img, _, white_matter = biased
    nib.save(img, tmp_path / "sub-01_T1w.nii.gz")
    result = N4BiasFieldCorrection(in_file=str(tmp_path / "sub-01_T1w.nii.gz"),
                                   n_iterations=[50, 50, 50]).run(cwd=str(tmp_path))
    out = Path(result.outputs.out_file)
    assert out.name == "sub-01_T1w_n4.nii.gz" and out.parent == tmp_path
    corrected = nib.load(out)
    assert np.array_equal(corrected.affine, img.affine)
    assert coefficient_of_variation(corrected.get_fdata()[white_matter]) < 0.06


# --- brain extraction ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_extraction(real_t1w):
    head, _ = real_t1w
    from nipype_xai.images import load_volume

    return extract_brain(load_volume(head))


def test_extract_brain_on_a_real_head(real_t1w, real_extraction):
    head, _ = real_t1w
    head_img = nib.load(head)
    mask = real_extraction.mask
    # On the input's grid, bit for bit; uint8 0/1.
    assert mask.shape == head_img.shape and np.array_equal(mask.affine, head_img.affine)
    assert mask.get_data_dtype() == np.uint8
    mask_data = np.asarray(mask.dataobj)
    assert set(np.unique(mask_data)) == {0, 1}
    # Measured 0.936 (deepbet's mask is one voxel looser than ch2bet's BET boundary).
    assert dice(mask_data, real_brain_mask().dataobj) >= 0.92
    assert 1500 < real_extraction.volume_cm3 < 2200
    brain = np.asarray(real_extraction.brain.dataobj)
    head_data = np.asarray(head_img.dataobj, dtype=np.float32)
    assert np.array_equal(brain, np.where(mask_data > 0, head_data, 0))


def test_extract_brain_keeps_world_space_in_any_voxel_order(real_t1w, real_extraction):
    """LPS with permuted voxel axes: deepbet's canonical round trip puts the mask back on it."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
    from nibabel.processing import resample_from_to

    head_img = nib.load(real_t1w[0])
    data = head_img.get_fdata(dtype=np.float32)
    ornt = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(("P", "S", "L")))
    permuted = nib.Nifti1Image(np.ascontiguousarray(apply_orientation(data, ornt)),
                               head_img.affine @ inv_ornt_aff(ornt, data.shape))
    assert nib.aff2axcodes(permuted.affine) == ("P", "S", "L")
    result = extract_brain(permuted)
    assert result.mask.shape == permuted.shape
    assert np.array_equal(result.mask.affine, permuted.affine)
    # Independent check, through world coordinates: resample onto the original grid.
    back = resample_from_to(result.mask, head_img, order=0)
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(real_extraction.mask.dataobj))


def test_extract_brain_errors_name_the_file(tmp_path):
    img = nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    img.set_filename(str(tmp_path / "sub-01_T1w.nii.gz"))
    with pytest.raises(AnatomyError, match=r"sub-01_T1w\.nii\.gz: the T1w is empty"):
        extract_brain(img)
    constant = nib.Nifti1Image(np.full((64, 64, 64), 5, np.float32), img.affine)
    with pytest.raises(AnatomyError, match="constant"):
        extract_brain(constant)
    # A small bright cube: deepbet's bounding-box network sees no brain at all.
    cube = np.zeros((64, 64, 64), np.float32)
    cube[30:34, 30:34, 30:34] = 100
    cube_img = nib.Nifti1Image(cube, img.affine)
    cube_img.set_filename(str(tmp_path / "sub-02_T1w.nii.gz"))
    with pytest.raises(AnatomyError, match=r"sub-02_T1w\.nii\.gz: deepbet found no brain") as error:
        extract_brain(cube_img)
    assert "\n" not in str(error.value)
    with pytest.raises(AnatomyError, match="threshold"):
        extract_brain(cube_img, threshold=1.0)


def test_brain_extraction_interface(tmp_path, real_t1w, real_extraction):
    from nipype_xai.interfaces.anatomy import BrainExtraction

    result = BrainExtraction(in_file=str(real_t1w[0])).run(cwd=str(tmp_path))
    assert Path(result.outputs.out_mask).name == "ch2_brainmask.nii.gz"
    assert Path(result.outputs.out_brain).name == "ch2_brain.nii.gz"
    mask = nib.load(result.outputs.out_mask)
    assert mask.get_data_dtype() == np.uint8
    # Same input, same mask: deepbet is deterministic on the CPU.
    assert np.array_equal(np.asarray(mask.dataobj), np.asarray(real_extraction.mask.dataobj))
    assert result.outputs.volume_cm3 == pytest.approx(real_extraction.volume_cm3)


def test_mask_image_interface_applies_a_given_mask(tmp_path, template):
    from nipype_xai.interfaces.anatomy import MaskImage

    t1w, mask = template
    half = np.asarray(mask.dataobj).copy()
    half[: half.shape[0] // 2] = 0
    nib.save(t1w, tmp_path / "sub-01_desc-preproc_T1w.nii.gz")
    nib.save(nib.Nifti1Image(half, mask.affine), tmp_path / "sub-01_desc-brain_mask.nii.gz")
    result = MaskImage(in_file=str(tmp_path / "sub-01_desc-preproc_T1w.nii.gz"),
                       mask=str(tmp_path / "sub-01_desc-brain_mask.nii.gz")).run(cwd=str(tmp_path))
    out = nib.load(result.outputs.out_file)
    assert Path(result.outputs.out_file).name == "sub-01_desc-preproc_T1w_brain.nii.gz"
    assert np.array_equal(out.affine, t1w.affine)
    assert np.array_equal(out.get_fdata(dtype=np.float32),
                          np.where(half > 0, t1w.get_fdata(dtype=np.float32), 0))
    empty = nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine)
    empty.set_filename(str(tmp_path / "sub-02_desc-brain_mask.nii.gz"))
    with pytest.raises(AnatomyError, match=r"sub-02_desc-brain_mask\.nii\.gz: .* is empty"):
        apply_brain_mask(t1w, empty)


# --- registration QC: metrics --------------------------------------------------------------------


def test_registration_qc_metrics_against_direct_computation(template):
    t1w, mask = template
    assert registration_qc(mask, mask, t1w, t1w) == pytest.approx(
        {"dice": 1.0, "ncc": 1.0, "volume_ratio": 1.0})
    # Shift the "registered" brain by 4 voxels: metrics computed here independently.
    shifted_mask = np.roll(np.asarray(mask.dataobj), 4, axis=1)
    shifted_t1w = np.roll(t1w.get_fdata(), 4, axis=1)
    metrics = registration_qc(nib.Nifti1Image(shifted_mask, mask.affine), mask,
                              nib.Nifti1Image(shifted_t1w, t1w.affine), t1w)
    inside = np.asarray(mask.dataobj) > 0
    assert metrics["dice"] == pytest.approx(dice(shifted_mask, mask.dataobj))
    assert metrics["ncc"] == pytest.approx(
        np.corrcoef(shifted_t1w[inside], t1w.get_fdata()[inside])[0, 1])
    assert metrics["volume_ratio"] == pytest.approx(shifted_mask.sum() / inside.sum())
    assert 0.8 < metrics["dice"] < 0.95 and metrics["ncc"] < 0.9


def test_qc_passed_reads_the_thresholds():
    good = {"dice": 0.96, "ncc": 0.67, "volume_ratio": 1.06}
    assert qc_passed(good) == (True, [])
    passed, reasons = qc_passed({"dice": 0.55, "ncc": 0.09, "volume_ratio": 1.4})
    assert not passed
    assert reasons == [f"dice 0.550 < {QC_THRESHOLDS['dice'][0]:g}",
                       f"ncc 0.090 < {QC_THRESHOLDS['ncc'][0]:g}",
                       f"volume_ratio 1.400 > {QC_THRESHOLDS['volume_ratio'][1]:g}"]
    passed, reasons = qc_passed({"dice": float("nan"), "ncc": 0.9, "volume_ratio": 1.0})
    assert not passed and reasons == ["dice missing or not finite (nan)"]
    assert qc_passed({"dice": 0.96}, {"dice": (0.97, None)}) == (False, ["dice 0.960 < 0.97"])


def test_registration_qc_refuses_images_on_other_grids(tmp_path, template):
    t1w, mask = template
    other = nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4))
    other.set_filename(str(tmp_path / "sub-01_space-MNI_desc-brain_mask.nii.gz"))
    with pytest.raises(AnatomyError, match=r"sub-01_space-MNI_desc-brain_mask\.nii\.gz: not on the "
                       "grid"):
        registration_qc(other, mask, t1w, t1w)


def test_registration_overlay_png_and_reproducible_svg(tmp_path, template):
    t1w, mask = template
    first = plot_registration_overlay(t1w, mask, tmp_path / "a" / "sub-01_regqc", title="QC")
    second = plot_registration_overlay(t1w, mask, tmp_path / "b" / "sub-01_regqc", title="QC")
    assert sorted(first) == ["png", "svg"]
    assert first["png"].name == "sub-01_regqc.png" and first["png"].read_bytes()[:4] == b"\x89PNG"
    assert first["svg"].read_bytes() == second["svg"].read_bytes()
    assert not list((tmp_path / "a").glob(".*"))  # no temporary file left behind


# --- registration QC on real registrations, through the interface --------------------------------


@pytest.fixture(scope="module")
def qc_inputs(tmp_path_factory, real_extraction, template):
    """The real brain in several poses, each registered (affine) to the 2 mm template."""
    import ants

    from nipype_xai.registration import register

    root = tmp_path_factory.mktemp("qc")
    t1w, mask = template
    nib.save(t1w, root / "tpl_desc-brain_T1w.nii.gz")
    nib.save(mask, root / "tpl_desc-brain_mask.nii.gz")
    brain = real_extraction.brain.get_fdata(dtype=np.float32)
    brain_mask = np.asarray(real_extraction.mask.dataobj)
    affine = real_extraction.brain.affine
    identity = root / "identity.mat"
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3),
                         str(identity))
    # Flip the inferior-superior axis in the header only (a wrong affine, the voxels intact).
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, brain.shape[2] - 1
    # Keep the top half of the brain (a partial field of view).
    z = np.flatnonzero(brain_mask.any(axis=(0, 1)))
    middle = (z.min() + z.max()) // 2
    crop = np.eye(4)
    crop[2, 3] = middle
    # A head in scanner orientation: turned 15 and 10 degrees, 50 mm away from MNI's origin.
    pose = np.eye(4)
    pose[:3, :3] = rotation(0, 15) @ rotation(2, -10)
    pose[:3, 3] = [12.0, -25.0, 40.0]
    cases = {
        "good": (brain, brain_mask, affine, True),
        "flipped": (brain, brain_mask, affine @ flip, True),
        "half": (brain[:, :, middle:], brain_mask[:, :, middle:], affine @ crop, True),
        "unregistered": (brain, brain_mask, pose @ affine, False),
    }
    inputs = {}
    for name, (data, labels, case_affine, registered) in cases.items():
        brain_file = root / f"sub-{name}_desc-brain_T1w.nii.gz"
        mask_file = root / f"sub-{name}_desc-brain_mask.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), case_affine), brain_file)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(labels), case_affine), mask_file)
        if registered:
            transform = register(brain_file, t1w, preset="affine", seed=0,
                                 out_dir=tempfile.mkdtemp(dir=root)).forward_transform
        else:
            transform = identity
        inputs[name] = (brain_file, mask_file, transform)
    return root, inputs


def run_qc(root: Path, brain_file: Path, mask_file: Path, transform: Path, cwd: Path):
    from nipype_xai.interfaces.anatomy import RegistrationQC

    cwd.mkdir()
    return RegistrationQC(
        brain_file=str(brain_file), brain_mask=str(mask_file), transforms=[str(transform)],
        template_brain=str(root / "tpl_desc-brain_T1w.nii.gz"),
        template_mask=str(root / "tpl_desc-brain_mask.nii.gz"),
    ).run(cwd=str(cwd)).outputs


def test_registration_qc_passes_a_good_registration_of_the_real_head(qc_inputs, tmp_path,
                                                                    record_property):
    root, inputs = qc_inputs
    outputs = run_qc(root, *inputs["good"], tmp_path / "good")
    record_property("metrics", outputs.metrics)
    # Measured: dice 0.955, ncc 0.651, volume ratio 1.07.
    assert outputs.passed and outputs.reasons == []
    assert outputs.metrics["dice"] > 0.93 and outputs.metrics["ncc"] > 0.6
    tsv = Path(outputs.out_tsv)
    assert tsv.name == "sub-good_desc-brain_T1w_regqc.tsv" and tsv.parent == tmp_path / "good"
    with tsv.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 1 and list(rows[0]) == ["dice", "ncc", "volume_ratio", "passed", "reasons"]
    assert rows[0]["passed"] == "true" and rows[0]["reasons"] == "n/a"
    assert float(rows[0]["dice"]) == pytest.approx(outputs.metrics["dice"], abs=1e-6)
    sidecar = json.loads(Path(outputs.out_json).read_text())
    assert sidecar["dice"]["PassRange"] == f">= {QC_THRESHOLDS['dice'][0]:g}"
    warped = nib.load(outputs.warped_mask)
    assert warped.shape == (99, 117, 95) and warped.get_data_dtype() == np.uint8
    assert Path(outputs.out_svg).is_file() and Path(outputs.out_png).is_file()


@pytest.mark.parametrize("case", ["flipped", "half", "unregistered"])
def test_registration_qc_flags_failed_registrations_without_raising(qc_inputs, tmp_path, case,
                                                                     record_property):
    root, inputs = qc_inputs
    outputs = run_qc(root, *inputs[case], tmp_path / case)
    record_property("metrics", outputs.metrics)
    # Measured (dice, ncc): flipped 0.88, 0.19; half 0.69, 0.32; unregistered 0.55, 0.09.
    assert not outputs.passed
    assert any(reason.startswith("ncc") for reason in outputs.reasons)
    with Path(outputs.out_tsv).open() as handle:
        row = next(csv.DictReader(handle, delimiter="\t"))
    assert row["passed"] == "false" and "ncc" in row["reasons"]


def test_check_registration_qc_stops_a_failed_subject_unless_kept(tmp_path):
    from nipype_xai.anatomy import RegistrationQCFailed
    from nipype_xai.interfaces.anatomy import CheckRegistrationQC

    tsv = tmp_path / "sub-01_desc-brain_T1w_regqc.tsv"
    tsv.write_text("dice\tncc\tvolume_ratio\tpassed\treasons\n")
    assert CheckRegistrationQC(passed=True).run(cwd=str(tmp_path)).outputs.passed
    failed = {"passed": False, "reasons": ["ncc 0.092 < 0.5", "dice 0.546 < 0.9"],
              "in_tsv": str(tsv), "subject": "sub-01"}
    with pytest.raises(RegistrationQCFailed) as error:
        CheckRegistrationQC(**failed).run(cwd=str(tmp_path))
    message = str(error.value)
    assert message.startswith("sub-01_desc-brain_T1w_regqc.tsv: the registration of sub-01")
    assert "ncc 0.092 < 0.5; dice 0.546 < 0.9" in message and "\n" not in message
    kept = CheckRegistrationQC(keep_failed=True, **failed).run(cwd=str(tmp_path))
    assert kept.outputs.passed is False

