"""Synthetic cohorts (nipype_xai.synth): BIDS layout, ground truth, transforms, reproducibility.

Everything runs on the 4 mm grid so the whole file takes seconds. Transforms are checked against
references that do not share our code: the ITK convention re-implemented here from its definition,
and ANTs itself (``ants.apply_transforms``).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from nipype_xai.synth import (
    CAUDATE,
    cohort_labels,
    generate_cohort,
    histogram_classifier_accuracy,
    jacobian_determinant,
    load_template_anatomy,
    make_subject,
    region_mask,
    subject_seed,
)
from nipype_xai.synth.atrophy import atrophy_point_map
from nipype_xai.synth.warps import displacement_from_image, voxel_centres

RESOLUTION = 4.0
SEED = 3
TPL = "MNI152NLin2009aSym"


@pytest.fixture(scope="module")
def anatomy():
    return load_template_anatomy(RESOLUTION)


@pytest.fixture(scope="module")
def lesion_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "lesion"
    return generate_cohort(root, "lesion", 4, seed=SEED, resolution_mm=RESOLUTION, progress=False)


@pytest.fixture(scope="module")
def atrophy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "atrophy"
    return generate_cohort(root, "atrophy", 4, seed=SEED, resolution_mm=RESOLUTION,
                           progress=False)


@pytest.fixture(scope="module")
def atrophy_subjects(anatomy):
    """Twenty atrophy subjects in memory, labelled as a cohort would be."""
    labels = cohort_labels(5, 20)
    return labels, [make_subject(anatomy, "atrophy", labels[k], subject_seed(5, k))
                    for k in range(20)]


def participants(root):
    import pandas as pd

    return pd.read_csv(root / "participants.tsv", sep="\t", dtype={"participant_id": str},
                       keep_default_na=False)


def gt_dir(root, subject):
    return root / "derivatives" / "groundtruth" / f"sub-{subject}" / "anat"


def load(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


def dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def assert_same_mask(warped, native, label):
    """The template mask pulled by nearest neighbour is the native mask. A lesion mask in the T1w
    samples the lesion at each voxel's own template point rather than at the nearest template
    voxel, so on the 4 mm grid the two differ at the border: each within a voxel of the other."""
    if label == CAUDATE.name:
        assert dice(warped, native) >= 0.9
        return
    warped, native = np.asarray(warped) > 0, np.asarray(native) > 0
    cube = np.ones((3, 3, 3), dtype=bool)
    assert dice(warped, native) >= 0.7
    assert not (warped & ~ndimage.binary_dilation(native, cube)).any()
    assert not (native & ~ndimage.binary_dilation(warped, cube)).any()


def pull_through_itk_field(moving_img, field_path, order=0):
    """Resample ``moving_img`` onto a field's grid, reading the ITK convention from scratch:
    5D (X, Y, Z, 1, 3) LPS vectors; the point p of the field grid takes the value at p + u(p)."""
    field = nib.load(str(field_path))
    data = np.asarray(field.dataobj, dtype=np.float64)
    assert data.shape[3:] == (1, 3)
    assert field.header["intent_code"] == 1007 and field.get_data_dtype() == np.float32
    u_ras = data[:, :, :, 0, :] * np.array([-1.0, -1.0, 1.0])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in data.shape[:3]], indexing="ij"), -1)
    world = nib.affines.apply_affine(field.affine, ijk) + u_ras
    vox = nib.affines.apply_affine(np.linalg.inv(moving_img.affine), world)
    return ndimage.map_coordinates(np.asarray(moving_img.dataobj, dtype=np.float32),
                                   np.moveaxis(vox, -1, 0), order=order, mode="constant")


# --- BIDS --------------------------------------------------------------------------------------


def test_cohort_is_a_bids_dataset_that_pybids_indexes(lesion_root):
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(str(lesion_root))
    assert layout.get_subjects() == ["01", "02", "03", "04"]
    for subject in layout.get_subjects():
        assert len(layout.get(subject=subject, suffix="T1w", extension=".nii.gz")) == 1

    table = participants(lesion_root)
    assert list(table.participant_id) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert sorted(table.label) == ["control", "control", "lesion", "lesion"]
    positive = table.label == "lesion"
    assert (table.groundtruth_mask[positive] == "yes").all()
    assert (table.groundtruth_mask[~positive] == "no").all()
    assert (table.n_lesions[positive].astype(int) >= 1).all()
    assert (table.n_lesions[~positive].astype(int) == 0).all()
    assert (table.lesion_contrast[~positive] == "n/a").all()
    sidecar = json.loads((lesion_root / "participants.json").read_text())
    assert set(table.columns) <= set(sidecar)

    description = json.loads((lesion_root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "nipype-xai"

    deriv = bids.BIDSLayout(str(lesion_root), derivatives=True)
    masks = deriv.get(scope="derivatives", suffix="mask", label="lesion", extension=".nii.gz")
    in_template = [f for f in masks if f.get_entities().get("space") == TPL]
    assert len(in_template) == 2 and len(masks) == 4
    assert all(f.get_entities()["res"] == "4" for f in in_template)
    # Only the positives carry a lesion mask.
    assert {f.get_entities()["subject"] for f in masks} == {
        pid[4:] for pid in table.participant_id[positive]}
    transforms = deriv.get(scope="derivatives", suffix="xfm", extension=".nii.gz")
    assert {(f.get_entities()["from"], f.get_entities()["to"]) for f in transforms} == {
        (TPL, "T1w"), ("T1w", TPL)}
    gt_description = json.loads(
        (lesion_root / "derivatives" / "groundtruth" / "dataset_description.json").read_text())
    assert gt_description["DatasetType"] == "derivative"


def test_labels_are_balanced_and_do_not_depend_on_cohort_size():
    labels = cohort_labels(7, 10)
    assert sum(labels) == 5
    assert cohort_labels(7, 4) == labels[:4]
    assert cohort_labels(7, 3) == labels[:3]
    assert len({tuple(cohort_labels(seed, 10)) for seed in range(10)}) > 1


def test_refuses_bad_arguments_and_non_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        generate_cohort(tmp_path / "a", "tumour", 2)
    with pytest.raises(ValueError, match="positive integer"):
        generate_cohort(tmp_path / "b", "lesion", 0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_cohort(tmp_path / "c", "lesion", 2, resolution_mm=RESOLUTION)
    # overwrite=True writes beside what is there and deletes nothing.
    generate_cohort(tmp_path / "c", "lesion", 1, resolution_mm=RESOLUTION, overwrite=True,
                    progress=False)
    assert (tmp_path / "c" / "keep.txt").read_text() == "user data"
    assert (tmp_path / "c" / "participants.tsv").read_text().count("sub-") == 1
    with pytest.raises(ValueError, match="label"):
        make_subject(load_template_anatomy(RESOLUTION), "lesion", 2, 0)


# --- ground truth ------------------------------------------------------------------------------


def test_lesion_masks_are_in_white_matter_inside_the_brain(lesion_root, anatomy):
    table = participants(lesion_root)
    wm = anatomy.array("wm")
    template_brain = anatomy.array("brain_mask") > 0
    for pid, label in zip(table.participant_id, table.label):
        subject = pid[4:]
        folder = gt_dir(lesion_root, subject)
        native_path = folder / f"sub-{subject}_label-lesion_mask.nii.gz"
        template_path = folder / f"sub-{subject}_space-{TPL}_res-4_label-lesion_mask.nii.gz"
        if label == "control":
            assert not native_path.exists() and not template_path.exists()
            continue
        native = load(native_path) > 0
        template = load(template_path) > 0
        brain = load(folder / f"sub-{subject}_desc-brain_mask.nii.gz") > 0
        assert native.any() and template.any()
        assert native[brain].sum() / native.sum() >= 0.99
        assert template[template_brain].sum() / template.sum() >= 0.99
        # Mostly white matter: the sampler requires 85 % of each lesion's voxels.
        assert np.mean(wm[template] > 0.5) >= 0.8
        assert nib.load(str(native_path)).shape == nib.load(
            str(lesion_root / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz")).shape


def test_lesions_are_the_only_difference_from_the_lesion_free_twin(lesion_root, anatomy):
    """The same seed with label 0 is the same person without lesions: every changed voxel is at
    a lesion, and the lesions change the intensity a lot."""
    table = participants(lesion_root)
    for index, (pid, label) in enumerate(zip(table.participant_id, table.label)):
        if label != "lesion":
            continue
        subject = pid[4:]
        t1w = load(lesion_root / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz")
        twin = make_subject(anatomy, "lesion", 0, subject_seed(SEED, index))
        clean = np.asarray(twin.t1w.dataobj)
        mask = load(gt_dir(lesion_root, subject) / f"sub-{subject}_label-lesion_mask.nii.gz") > 0
        changed = np.abs(t1w.astype(float) - clean) > 0
        # The lesions are drawn where each voxel samples the template: nothing outside the mask.
        assert changed.any() and not changed[~mask].any()
        relative = np.abs(t1w[mask].astype(float) - clean[mask]) / clean[mask]
        assert np.median(relative) > 0.15


def test_stored_transforms_map_template_groundtruth_onto_native(lesion_root, atrophy_root):
    for root, label in ((lesion_root, "lesion"), (atrophy_root, CAUDATE.name)):
        for pid in participants(root).participant_id:
            subject = pid[4:]
            folder = gt_dir(root, subject)
            template_path = folder / f"sub-{subject}_space-{TPL}_res-4_label-{label}_mask.nii.gz"
            if not template_path.exists():
                continue
            warped = pull_through_itk_field(
                nib.load(str(template_path)),
                folder / f"sub-{subject}_from-{TPL}_to-T1w_mode-image_xfm.nii.gz")
            native = load(folder / f"sub-{subject}_label-{label}_mask.nii.gz")
            assert_same_mask(warped, native, label)


def test_inverse_transform_brings_native_images_into_the_template(atrophy_root, anatomy):
    template_brain = anatomy.array("brain_mask")
    template_t1w = anatomy.array("t1w")
    for pid in participants(atrophy_root).participant_id:
        subject = pid[4:]
        folder = gt_dir(atrophy_root, subject)
        inverse = folder / f"sub-{subject}_from-T1w_to-{TPL}_mode-image_xfm.nii.gz"
        brain = pull_through_itk_field(
            nib.load(str(folder / f"sub-{subject}_desc-brain_mask.nii.gz")), inverse)
        assert dice(brain, template_brain) >= 0.95
        # The T1w itself, brought back, looks like the template again (bias and noise aside).
        t1w = pull_through_itk_field(
            nib.load(str(atrophy_root / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz")),
            inverse, order=1)
        inside = template_brain > 0
        assert np.corrcoef(t1w[inside], template_t1w[inside])[0, 1] > 0.85


def test_forward_and_inverse_transforms_are_inverse_of_each_other(atrophy_root, anatomy):
    for pid in participants(atrophy_root).participant_id:
        subject = pid[4:]
        folder = gt_dir(atrophy_root, subject)
        forward = nib.load(str(folder / f"sub-{subject}_from-{TPL}_to-T1w_mode-image_xfm.nii.gz"))
        inverse = nib.load(str(folder / f"sub-{subject}_from-T1w_to-{TPL}_mode-image_xfm.nii.gz"))
        forward_u = np.asarray(forward.dataobj)[:, :, :, 0, :] * np.array([-1.0, -1.0, 1.0])
        inverse_u = np.asarray(inverse.dataobj)[:, :, :, 0, :] * np.array([-1.0, -1.0, 1.0])
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in anatomy.shape], indexing="ij"), -1)
        template_points = nib.affines.apply_affine(inverse.affine, ijk)
        native_points = template_points + inverse_u  # psi(q)
        # phi(psi(q)): the forward displacement (on the native grid) interpolated at psi(q).
        vox = np.moveaxis(nib.affines.apply_affine(np.linalg.inv(forward.affine), native_points),
                          -1, 0)
        back = native_points + np.stack(
            [ndimage.map_coordinates(forward_u[..., c], vox, order=1, mode="nearest")
             for c in range(3)], axis=-1)
        error = np.linalg.norm(back - template_points, axis=-1)[anatomy.array("brain_mask") > 0]
        assert np.median(error) < 0.1 and np.percentile(error, 99) < 0.5


def test_stored_transforms_agree_with_ants(lesion_root, atrophy_root):
    ants = pytest.importorskip("ants")
    for root, label in ((lesion_root, "lesion"), (atrophy_root, CAUDATE.name)):
        for pid in participants(root).participant_id:
            subject = pid[4:]
            folder = gt_dir(root, subject)
            template_path = folder / f"sub-{subject}_space-{TPL}_res-4_label-{label}_mask.nii.gz"
            if not template_path.exists():
                continue
            native_path = folder / f"sub-{subject}_label-{label}_mask.nii.gz"
            warped = ants.apply_transforms(
                fixed=ants.image_read(str(native_path)),
                moving=ants.image_read(str(template_path)),
                transformlist=[str(folder / f"sub-{subject}_from-{TPL}_to-T1w_mode-image_xfm"
                                            f".nii.gz")],
                interpolator="nearestNeighbor")
            assert_same_mask(warped.numpy(), load(native_path), label)
            back = ants.apply_transforms(
                fixed=ants.image_read(str(template_path)),
                moving=ants.image_read(str(folder / f"sub-{subject}_desc-brain_mask.nii.gz")),
                transformlist=[str(folder / f"sub-{subject}_from-T1w_to-{TPL}_mode-image_xfm"
                                            f".nii.gz")],
                interpolator="nearestNeighbor")
            assert dice(back.numpy(), load_template_anatomy(RESOLUTION).array("brain_mask")) >= 0.95


def test_warps_are_diffeomorphic_and_differ_between_subjects(lesion_root, atrophy_root):
    spreads = []
    for root in (lesion_root, atrophy_root):
        for path in sorted((root / "derivatives" / "groundtruth").rglob("*_xfm.nii.gz")):
            det = jacobian_determinant(nib.load(str(path)))
            assert det.min() > 0.0, path.name
            spreads.append(float(det.std()))
    # A real nonlinear warp, not just an affine (whose determinant would be constant).
    assert min(spreads) > 0.02
    first = load(lesion_root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    second = load(lesion_root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    assert np.corrcoef(first.ravel(), second.ravel())[0, 1] < 0.99


# --- reproducibility ---------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_whatever_the_cohort_size(lesion_root, tmp_path):
    small = generate_cohort(tmp_path / "small", "lesion", 2, seed=SEED, resolution_mm=RESOLUTION,
                            progress=False)
    files = sorted(p.relative_to(small) for p in small.rglob("sub-0[12]*") if p.is_file())
    assert len(files) >= 2 * 5
    for relative in files:
        assert (small / relative).read_bytes() == (lesion_root / relative).read_bytes(), relative
    other = generate_cohort(tmp_path / "other", "lesion", 1, seed=SEED + 1,
                            resolution_mm=RESOLUTION, progress=False)
    t1w = "sub-01/anat/sub-01_T1w.nii.gz"
    assert (other / t1w).read_bytes() != (lesion_root / t1w).read_bytes()
    # Atomic writes leave no temporary file behind.
    assert not [p for p in small.rglob(".*")]


# --- atrophy -----------------------------------------------------------------------------------


def test_atrophy_contracts_the_region_by_the_set_fraction(anatomy):
    """Same seed, both labels: the same person with and without atrophy. The region's volume in
    the T1w (partial-volume estimate) shrinks by the fraction written in participants.tsv."""
    for index in range(3):
        seed = subject_seed(11, index)
        atrophied = make_subject(anatomy, "atrophy", 1, seed)
        control = make_subject(anatomy, "atrophy", 0, seed)
        fraction = atrophied.parameters["atrophy_fraction"]
        assert 0.2 <= fraction <= 0.3 and control.parameters["atrophy_fraction"] == 0.0
        ratio = (atrophied.parameters["region_volume_mm3"]
                 / control.parameters["region_volume_mm3"])
        # The volumes are partial-volume estimates of a ~40-voxel region on the 4 mm grid, and
        # the subject's own warp changes local volume, hence the tolerance (the exact fraction
        # is checked in continuous space below).
        assert ratio == pytest.approx(1.0 - fraction, abs=0.06)
        # Only shape changes, and only where the contraction acts (inside its taper).
        changed = np.asarray(atrophied.t1w.dataobj) != np.asarray(control.t1w.dataobj)
        points = voxel_centres(control.t1w.shape, control.t1w.affine) + displacement_from_image(
            control.to_native)
        acting = np.zeros(changed.shape, dtype=bool)
        for centre in CAUDATE.centres_mm:
            acting |= CAUDATE.radius(points, centre) < CAUDATE.taper
        assert changed.any() and not changed[~ndimage.binary_dilation(acting)].any()
        assert changed[np.asarray(control.groundtruth.dataobj) > 0].mean() > 0.5


def test_atrophy_point_map_is_exact_inside_and_invertible(anatomy):
    region = np.asarray(region_mask(anatomy).dataobj) > 0
    assert 2000 <= region.sum() * RESOLUTION**3 / 2 <= 3500  # per side, mm^3 (caudate head+body)
    rng = np.random.default_rng(0)
    points = rng.uniform(-40, 40, size=(3, 20000)) + np.array([[0.0], [8.0], [12.0]])
    forward = atrophy_point_map(points, 0.25, CAUDATE)
    assert np.allclose(atrophy_point_map(forward, 0.25, CAUDATE, inverse=True), points,
                       atol=1e-3)
    # Inside the ellipsoid the map scales by (1 - f)^(-1/3) about the centre.
    centre = np.array(CAUDATE.centres_mm[1])[:, None]
    inner = centre + np.array([[2.0], [4.0], [-3.0]])
    scaled = atrophy_point_map(inner, 0.25, CAUDATE)
    assert np.allclose(scaled - centre, (inner - centre) * 0.75 ** (-1 / 3))
    with pytest.raises(ValueError):
        atrophy_point_map(points, 1.0, CAUDATE)
    # Continuous space (no voxels): the region {inside the ellipsoids, GM > 0.5} loses exactly
    # the fraction. Monte Carlo over the box where the contraction acts.
    from nipype_xai.synth.warps import pull_image

    gm = anatomy.array("gm")
    semi = np.array(CAUDATE.semi_axes_mm)[:, None]
    samples = []
    for centre in CAUDATE.centres_mm:
        samples.append(np.array(centre)[:, None]
                       + rng.uniform(-1, 1, size=(3, 200000)) * semi * CAUDATE.taper)
    samples = np.concatenate(samples, axis=1)

    def in_region(p):
        inside = np.zeros(p.shape[1], dtype=bool)
        for centre in CAUDATE.centres_mm:
            inside |= CAUDATE.radius(p, centre) <= 1.0
        return inside & (pull_image(gm, anatomy.affine, p, order=1) > CAUDATE.min_gm)

    for fraction in (0.2, 0.3):
        kept = in_region(atrophy_point_map(samples, fraction, CAUDATE)).sum()
        assert kept / in_region(samples).sum() == pytest.approx(1.0 - fraction, abs=0.01)


def test_intensity_histograms_cannot_solve_the_atrophy_task(atrophy_subjects):
    labels, subjects = atrophy_subjects
    images = [s.t1w for s in subjects]
    masks = [s.brain_mask for s in subjects]
    for classifier in ("logistic", "nearest_mean"):
        accuracy = histogram_classifier_accuracy(images, labels, masks, classifier=classifier,
                                                 n_repeats=5)
        assert accuracy < 0.7, classifier
    # The check has power: a small contrast change in the positives is found at once.
    shifted = []
    for subject, label in zip(subjects, labels):
        data = np.asarray(subject.t1w.dataobj, dtype=np.float32)
        scale = np.median(data[np.asarray(subject.brain_mask.dataobj) > 0])
        shifted.append((data / scale) ** 1.1 * scale if label else data)
    assert histogram_classifier_accuracy(shifted, labels, masks, n_repeats=5) > 0.9
    # ... while the region's volume (head-size corrected) tells the classes apart.
    volume = np.array([s.parameters["region_volume_mm3"] * np.linalg.det(s.linear[:3, :3])
                       for s in subjects])
    positive = np.asarray(labels) == 1
    assert volume[positive].max() < volume[~positive].min()
    fractions = np.array([s.parameters["atrophy_fraction"] for s in subjects])[positive]
    assert volume[positive].mean() / volume[~positive].mean() == pytest.approx(
        1.0 - fractions.mean(), abs=0.05)


def test_atrophy_cohort_records_the_region_for_every_subject(atrophy_root):
    table = participants(atrophy_root)
    assert sorted(table.label) == ["atrophy", "atrophy", "control", "control"]
    assert (table.groundtruth_mask == "yes").all()
    for pid, label, fraction in zip(table.participant_id, table.label, table.atrophy_fraction):
        subject = pid[4:]
        folder = gt_dir(atrophy_root, subject)
        assert (load(folder / f"sub-{subject}_label-caudate_mask.nii.gz") > 0).any()
        assert (float(fraction) > 0) == (label == "atrophy")


def test_separable_resampling_is_trilinear_interpolation():
    """The fast path that reads warps on regular grids equals scipy's trilinear interpolation,
    flipped axes and points outside the source grid (nearest value) included."""
    from nipype_xai.synth.warps import resample_separable

    rng = np.random.default_rng(0)
    values = rng.standard_normal((3, 5, 6, 7))
    source = [np.arange(5) * 2.0, np.arange(6) * 3.0 + 1.0, 10.0 - np.arange(7) * 1.5]
    target = [np.linspace(-1, 9, 11), np.linspace(0, 17, 9), np.linspace(0, 11, 8)]
    index = np.meshgrid(*[(t - s[0]) / (s[1] - s[0]) for s, t in zip(source, target)],
                        indexing="ij")
    expected = np.stack([ndimage.map_coordinates(values[c], index, order=1, mode="nearest")
                         for c in range(3)])
    assert np.allclose(resample_separable(values, source, target), expected, atol=1e-12)
