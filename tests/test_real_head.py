"""A real raw T1w through the documented BIDS-App call, and a lab's sMRIPrep anatomy as input.

Debian mricron-data's adult head (``ch2``: skull, scalp, neck) rigidly moved away from MNI into a
scanner pose (``real_data.head_in_scanner_pose``), at 2 mm so that the file runs in about two
minutes (at 1 mm the steps are the same; N4 dominates: see the README). Two subjects go through
``nipype-xai BIDS OUT participant`` with the defaults (N4, deepbet, affine registration of the
brain, registration QC, maps kept on the subject's brain) and the bundled model:

- ``sub-01``: the whole head. QC passes; the input-domain check flags it (the bundled model
  was trained on synthetic brains); every map's native mass lies inside the subject's brain
  mask, and at least 95 % within one model voxel (4 mm) of the independent reference brain
  (``ch2bet``). Not inside ``ch2bet`` itself: deepbet's brain includes the CSF shell that BET's
  leaves out (measured at 1 mm: 12 % of deepbet's mask lies outside ``ch2bet``'s, 1.8 % farther
  than 3 mm), so a map spread evenly over deepbet's brain has only 89 % of its mass inside
  ``ch2bet``'s;
- ``sub-02``: the same head cut to the top half of the brain (a partial field of view). Its
  registration fails QC: no maps, a row in ``failures.tsv``, exit code 2 -- and sub-01 is
  unaffected.

Then an sMRIPrep-shaped folder is built from sub-01's anatomy (sMRIPrep's file names and
dataset description, plus files the query must ignore) and the same call with
``--anat-derivatives`` runs without N4, brain extraction or registration and gives the same maps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

pytest.importorskip("ants")
pytest.importorskip("deepbet")

from nipype_xai.cli.run import main  # noqa: E402
from real_data import head_in_scanner_pose, real_t1w  # noqa: E402,F401 - real_t1w is a fixture

METHODS = ["gradient", "gradcam"]
TPL = "MNI152NLin2009aSym"
#: The anat-derivatives path must give the registration path's maps to this relative tolerance
#: (of each map's largest magnitude); measured: identical bytes.
SAME_MAPS_RTOL = 1e-5


def load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(np.float64)


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory, real_t1w):
    root = tmp_path_factory.mktemp("real_head")
    t1w, reference_brain = head_in_scanner_pose(2.0)
    bids = root / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "a real head", "BIDSVersion": "1.10.0"}))
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    # sub-02: the top half of the brain only.
    z = np.flatnonzero(np.asanyarray(reference_brain.dataobj).any(axis=(0, 1)))
    middle = int((z.min() + z.max()) // 2)
    shift = np.eye(4)
    shift[2, 3] = middle
    half = nib.Nifti1Image(np.ascontiguousarray(np.asanyarray(t1w.dataobj)[:, :, middle:]),
                           t1w.affine @ shift)
    for subject, image in (("01", t1w), ("02", half)):
        anat = bids / f"sub-{subject}" / "anat"
        anat.mkdir(parents=True)
        nib.save(image, anat / f"sub-{subject}_T1w.nii.gz")
    out, work = root / "out", root / "work"
    code = main([str(bids), str(out), "participant", "--methods", *METHODS, "-w", str(work),
                 "--nprocs", "2"])
    return {"root": root, "bids": bids, "out": out, "work": work, "code": code,
            "reference_brain": reference_brain}


def test_raw_head_is_explained_inside_its_brain(raw_run):
    out = raw_run["out"]
    anat = out / "sub-01" / "anat"
    qc = pd.read_csv(anat / "sub-01_desc-registration_metrics.tsv", sep="\t")
    print("\nsub-01 registration QC:", qc.to_dict("records")[0])
    assert bool(qc["passed"][0]) and qc["dice"][0] >= 0.90
    mask = load(anat / "sub-01_desc-brain_mask.nii.gz") > 0
    reference = np.asanyarray(raw_run["reference_brain"].dataobj) > 0
    # One model voxel (4 mm, 2 voxels here) around the reference brain: a map computed on the
    # 4 mm model grid cannot place mass more finely than that.
    near_reference = ndimage.binary_dilation(reference, iterations=2)
    assert (anat / "sub-01_desc-preproc_T1w.nii.gz").is_file()  # the N4-corrected head
    # The bundled model was trained on synthetic brains: a real one is flagged as unlike them.
    predictions = pd.read_csv(next(anat.glob("sub-01_desc-*_predictions.tsv")), sep="\t")
    print("sub-01 input distance:", predictions["input_distance"][0], "threshold",
          predictions["input_distance_threshold"][0])
    assert bool(predictions["outside_training_inputs"][0])
    assert "unlike the model's training" in (out / "sub-01.html").read_text()
    for desc in METHODS:
        name = f"sub-01_desc-{desc}_attribution"
        magnitude = np.abs(load(anat / f"{name}.nii.gz"))
        total = magnitude.sum()
        sidecar = json.loads((anat / f"{name}.json").read_text())
        outside_input = sidecar["ModelInputRestriction"]["MassOutside"]
        in_reference, near = (magnitude[reference].sum() / total,
                              magnitude[near_reference].sum() / total)
        print(f"{desc}: raw map's mass outside the model input {outside_input:.3f}; native mass "
              f"inside the brain mask {magnitude[mask].sum() / total:.4f}, inside ch2bet "
              f"{in_reference:.4f}, within 4 mm of it {near:.4f}")
        assert total > 0 and 0.0 <= outside_input <= 1.0
        assert magnitude[~mask].sum() == 0
        assert near >= 0.95


def test_failed_registration_is_flagged_and_others_go_on(raw_run):
    out = raw_run["out"]
    assert raw_run["code"] == 2  # some subjects failed (EXIT_SUBJECTS_FAILED)
    failures = pd.read_csv(out / "failures.tsv", sep="\t")
    row = failures[failures["participant_id"] == "sub-02"]
    print("\n" + failures.to_string())
    assert len(row) == 1 and "failed QC" in " ".join(str(v) for v in row.iloc[0].values)
    assert not list((out / "sub-02").glob("**/*_attribution.nii.gz"))
    assert len(list((out / "sub-01" / "anat").glob("*_attribution.nii.gz"))) == 2 * len(METHODS)


def test_smriprep_anatomy_is_used_without_registering_again(raw_run):
    root, out = raw_run["root"], raw_run["out"]
    anat = out / "sub-01" / "anat"
    # An sMRIPrep-shaped folder, from sub-01's anatomy: sMRIPrep's names and description, and
    # files the queries must leave alone (a template-space T1w, tissue probabilities).
    smriprep = root / "smriprep"
    target = smriprep / "sub-01" / "anat"
    target.mkdir(parents=True)
    (smriprep / "dataset_description.json").write_text(json.dumps({
        "Name": "sMRIPrep - sMRI PREProcessing workflow", "BIDSVersion": "1.4.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "sMRIPrep", "Version": "0.16.1"}]}))
    for source, name in (
        ("sub-01_desc-preproc_T1w.nii.gz", "sub-01_desc-preproc_T1w.nii.gz"),
        ("sub-01_desc-brain_mask.nii.gz", "sub-01_desc-brain_mask.nii.gz"),
        (f"sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5",
         f"sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5"),
        (f"sub-01_from-{TPL}_to-T1w_mode-image_xfm.h5",
         f"sub-01_from-{TPL}_to-T1w_mode-image_xfm.h5"),
        (f"sub-01_space-{TPL}_res-4_desc-preproc_T1w.nii.gz",
         f"sub-01_space-{TPL}_desc-preproc_T1w.nii.gz"),
        ("sub-01_desc-brain_mask.nii.gz", "sub-01_label-GM_probseg.nii.gz"),
    ):
        shutil.copyfile(anat / source, target / name)
    again, work = root / "again", root / "work_again"
    code = main([str(raw_run["bids"]), str(again), "participant", "--methods", *METHODS,
                 "-w", str(work), "--participant-label", "01", "--anat-derivatives",
                 str(smriprep)])
    assert code == 0
    ran = {p.parent.parent.name for p in work.rglob("_report/report.rst")}
    for step in ("register", "n4", "brain_extraction"):
        assert step not in ran, f"{step} ran again"
    assert "brain" in ran  # the brain is the lab's T1w inside the lab's mask
    new = again / "sub-01" / "anat"
    assert not list(new.glob("*_xfm.h5"))  # reused transforms are not derivatives here
    for desc in METHODS:
        for name in (f"sub-01_space-{TPL}_res-4_desc-{desc}_attribution.nii.gz",
                     f"sub-01_desc-{desc}_attribution.nii.gz"):
            before, after = load(anat / name), load(new / name)
            difference = np.abs(before - after).max() / np.abs(before).max()
            print(f"{name}: largest difference {difference:.2e} of the map's largest value")
            assert difference <= SAME_MAPS_RTOL
