"""The workflow's own interfaces: DerivativesDataSink, ReportsSink, GroundTruthOverlap,
BaselineMaps, ModelGridReference and the group-level table and map interfaces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from nipype_xai.attribution.baselines import sobel
from nipype_xai.bids import read_dataset_links
from nipype_xai.interfaces import (
    BaselineMaps,
    DerivativesDataSink,
    GroundTruthOverlap,
    GroupMeanMaps,
    GroupOverlapTable,
    MethodRanking,
    ModelGridReference,
    ReportsSink,
)
from nipype_xai.interfaces.bids import SOURCE_FILE
from nipype_xai.metrics import MetricsError, overlap_metrics
from nipype_xai.models import TinyCNN3D, load_model_spec, to_model_grid

AFFINE = np.array([[4.0, 0, 0, -30], [0, 4, 0, -40], [0, 0, 4, -20], [0, 0, 0, 1]])


def _save(path: Path, data, affine=AFFINE, dtype=np.float32) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), path)
    return path


@pytest.fixture
def volumes(tmp_path):
    """A 16³ ground truth cube, a brain mask, a map equal to the GT and a seeded noise map."""
    gt = np.zeros((16, 16, 16), np.uint8)
    gt[5:8, 6:9, 7:10] = 1
    brain = np.zeros_like(gt)
    brain[2:14, 2:14, 2:14] = 1
    noise = np.random.default_rng(0).normal(size=gt.shape)
    return {
        "gt": _save(tmp_path / "sub-01_label-lesion_mask.nii.gz", gt, dtype=np.uint8),
        "brain": _save(tmp_path / "sub-01_desc-brain_mask.nii.gz", brain, dtype=np.uint8),
        "perfect": _save(tmp_path / "perfect.nii.gz", gt),
        "noise": _save(tmp_path / "noise.nii.gz", noise),
        "arrays": (gt, brain, noise),
    }


def test_ground_truth_overlap_writes_one_row_per_map(tmp_path, volumes):
    result = GroundTruthOverlap(
        in_maps=[str(volumes["perfect"]), str(volumes["noise"])], methods=["oracle", "random"],
        ground_truth=str(volumes["gt"]), brain_mask=str(volumes["brain"]), subject="01",
    ).run(cwd=str(tmp_path))
    table = pd.read_csv(result.outputs.out_tsv, sep="\t")
    assert list(table["method"]) == ["oracle", "random"]
    # BIDS identifiers (as in participants.tsv): no reader takes "sub-01" for the number 1.
    assert list(table["participant_id"]) == ["sub-01", "sub-01"]
    assert "subject" not in table.columns
    oracle = table.iloc[0]
    for metric in ("precision_at_k", "pointing_game", "auroc", "average_precision",
                   "relevance_mass_accuracy"):
        assert oracle[metric] == pytest.approx(1.0)
    assert oracle["emd"] == pytest.approx(0.0, abs=1e-6)
    assert oracle["n_gt_voxels"] == 27 and oracle["resampled"] == "no"
    assert table["emd_method"].str.len().min() > 0
    # The noise row is exactly the core's numbers on the same arrays.
    gt, brain, noise = volumes["arrays"]
    expected = overlap_metrics(noise, gt, brain, affine=AFFINE)
    for metric, value in expected.items():
        assert table.iloc[1][metric] == pytest.approx(value)


def test_ground_truth_overlap_resamples_a_map_on_another_grid(tmp_path, volumes):
    # Maps on a 2 mm grid covering the same field of view: resampled onto the GT's 4 mm grid.
    gt, _, _ = volumes["arrays"]
    fine_affine = AFFINE.copy()
    fine_affine[:3, :3] /= 2
    fine_affine[:3, 3] -= 1  # voxel centres of a 2x upsampling
    fine = np.kron(gt, np.ones((2, 2, 2))).astype(np.float32)
    # A continuous map (the GT blurred): linear interpolation.
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(fine, 1.0)
    smooth_map = _save(tmp_path / "smooth.nii.gz", smooth, fine_affine)
    # A 0/1 map (a mask given as a map): nearest neighbour keeps it 0/1, no binary image is
    # interpolated linearly (nilearn's warning about it is not raised).
    binary_map = _save(tmp_path / "binary.nii.gz", fine, fine_affine)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = GroundTruthOverlap(in_maps=[str(smooth_map), str(binary_map)],
                                    methods=["blurred", "oracle"],
                                    ground_truth=str(volumes["gt"])).run(cwd=str(tmp_path))
    table = pd.read_csv(result.outputs.out_tsv, sep="\t")
    assert list(table["resampled"]) == ["linear onto the ground-truth grid",
                                        "nearest onto the ground-truth grid"]
    assert table.loc[1, "precision_at_k"] == pytest.approx(1.0)
    assert table.loc[1, "dice_at_k"] == pytest.approx(1.0)
    assert table.loc[0, "pointing_game"] == pytest.approx(1.0)
    assert "participant_id" not in table.columns


def test_ground_truth_overlap_empty_mask_names_the_file(tmp_path, volumes):
    empty = _save(tmp_path / "sub-02_label-lesion_mask.nii.gz", np.zeros((16, 16, 16)),
                  dtype=np.uint8)
    with pytest.raises(MetricsError, match=r"^sub-02_label-lesion_mask\.nii\.gz: the ground-truth "
                                           r"mask is empty"):
        GroundTruthOverlap(in_maps=[str(volumes["noise"])], methods=["random"],
                           ground_truth=str(empty)).run(cwd=str(tmp_path))
    outside = np.zeros((16, 16, 16))
    outside[0, 0, 0] = 1
    corner = _save(tmp_path / "sub-03_label-lesion_mask.nii.gz", outside, dtype=np.uint8)
    with pytest.raises(MetricsError, match="sub-03_label-lesion_mask.nii.gz: .*outside the brain"):
        GroundTruthOverlap(in_maps=[str(volumes["noise"])], methods=["random"],
                           ground_truth=str(corner),
                           brain_mask=str(volumes["brain"])).run(cwd=str(tmp_path))


def test_derivatives_data_sink_names_sidecars_and_description(tmp_path, volumes):
    out = tmp_path / "derivatives"
    sidecar = tmp_path / "in.json"
    sidecar.write_text(json.dumps({"Method": "gradient", "Space": "MNI152NLin2009aSym"}))
    result = DerivativesDataSink(
        base_directory=str(out), in_file=[str(volumes["perfect"]), str(volumes["noise"])],
        subject="01", space="MNI152NLin2009aSym", res="4", desc=["gradient", "smoothgradSq"],
        suffix="attribution", in_sidecar=[str(sidecar)], meta_dict={"Space": "T1w"},
        wait_for=["anything"],
    ).run(cwd=str(tmp_path))
    stem = "sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-4_desc-"
    assert result.outputs.out_file == [str(out / f"{stem}gradient_attribution.nii.gz"),
                                       str(out / f"{stem}smoothgradSq_attribution.nii.gz")]
    written = json.loads((out / f"{stem}gradient_attribution.json").read_text())
    assert written == {"Method": "gradient", "Space": "T1w"}
    # Copied byte for byte.
    assert (out / f"{stem}gradient_attribution.nii.gz").read_bytes() == \
        volumes["perfect"].read_bytes()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert "*_attribution.nii.gz" in (out / ".bidsignore").read_text()
    # No temporary file left behind.
    # (.nipype-xai/lock: the dataset lock its description is written under.)
    assert not [p for p in out.rglob(".*") if p.name not in (".bidsignore", ".nipype-xai")]
    assert [p.name for p in (out / ".nipype-xai").iterdir()] == ["lock"]

    # A transform keeps its own extension; a table needs no sidecar.
    xfm = tmp_path / "Composite.h5"
    xfm.write_bytes(b"\x89HDF\r\n\x1a\n")
    DerivativesDataSink(base_directory=str(out), in_file=str(xfm), subject="01", session="A",
                        from_space="T1w", to_space="MNI152NLin2009aSym", mode="image",
                        suffix="xfm").run(cwd=str(tmp_path))
    assert (out / "sub-01/ses-A/anat/sub-01_ses-A_from-T1w_to-MNI152NLin2009aSym_mode-image_"
                  "xfm.h5").is_file()


def test_derivatives_data_sink_names_a_connected_source(tmp_path, volumes):
    out = tmp_path / "derivatives"
    common = {"base_directory": str(out), "in_file": str(volumes["perfect"]), "subject": "01",
              "suffix": "attribution", "source_file": "/lab/work/t1w_preproc.nii.gz"}
    # A file of no BIDS dataset (a lab's intermediate): its path relative to the output dataset,
    # as DatasetLinks are, never an absolute file:// URL of one machine.
    DerivativesDataSink(desc="a", meta_dict={"Type": "x"}, **common).run(cwd=str(tmp_path))
    written = json.loads((out / "sub-01/anat/sub-01_desc-a_attribution.json").read_text())
    relative = Path(os.path.relpath("/lab/work/t1w_preproc.nii.gz", out)).as_posix()
    assert written["Sources"] == [relative] and not relative.startswith("file:")
    # Sources known when the workflow was built win.
    DerivativesDataSink(desc="b", meta_dict={"Sources": ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]},
                        **common).run(cwd=str(tmp_path))
    written = json.loads((out / "sub-01/anat/sub-01_desc-b_attribution.json").read_text())
    assert written["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]

    # A T1w of a BIDS dataset: a BIDS URI where SOURCE_FILE stands, and the dataset is linked.
    raw = tmp_path / "raw"
    (raw / "sub-01" / "anat").mkdir(parents=True)
    (raw / "dataset_description.json").write_text('{"Name": "r", "BIDSVersion": "1.10.0"}')
    t1w = raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    t1w.write_bytes(b"")
    staging = out / ".nipype-xai" / "staging" / "sub-01"
    DerivativesDataSink(
        base_directory=str(staging), dataset_root=str(out), dataset_description=False,
        in_file=[str(volumes["perfect"]), str(volumes["noise"])], subject="01", desc=["c", "d"],
        suffix="attribution", source_file=str(t1w),
        meta_dict={"SpatialReference": SOURCE_FILE},
        meta_per_file=[{"Sources": ["bids::x", SOURCE_FILE]}, {"Sources": ["bids::y"]}],
    ).run(cwd=str(tmp_path))
    uri = "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    c = json.loads((staging / "sub-01/anat/sub-01_desc-c_attribution.json").read_text())
    d = json.loads((staging / "sub-01/anat/sub-01_desc-d_attribution.json").read_text())
    assert c == {"SpatialReference": uri, "Sources": ["bids::x", uri]}
    assert d == {"SpatialReference": uri, "Sources": ["bids::y"]}
    assert read_dataset_links(out) == {"raw": raw}


def test_derivatives_data_sink_checks_every_name_before_writing(tmp_path, volumes):
    out = tmp_path / "derivatives"
    with pytest.raises(ValueError, match="alphanumeric"):
        DerivativesDataSink(base_directory=str(out),
                            in_file=[str(volumes["perfect"]), str(volumes["noise"])],
                            subject="01", desc=["gradient", "smoothgrad_sq"],
                            suffix="attribution").run(cwd=str(tmp_path))
    assert not out.exists()
    with pytest.raises(ValueError, match="desc: 3 values for 2 files"):
        DerivativesDataSink(base_directory=str(out),
                            in_file=[str(volumes["perfect"]), str(volumes["noise"])],
                            subject="01", desc=["a", "b", "c"],
                            suffix="attribution").run(cwd=str(tmp_path))


def test_reports_sink_copies_report_and_figures(tmp_path):
    report = tmp_path / "sub-01.html"
    report.write_text("<html></html>")
    figure = tmp_path / "sub-01_desc-input_T1w.png"
    figure.write_bytes(b"png")
    out = tmp_path / "derivatives"
    ReportsSink(base_directory=str(out), in_report=str(report), report_name="sub-01.html",
                in_figures=[str(figure)], figures_dir="sub-01/figures").run(cwd=str(tmp_path))
    assert (out / "sub-01.html").read_text() == "<html></html>"
    assert (out / "sub-01/figures/sub-01_desc-input_T1w.png").read_bytes() == b"png"


def _tiny_spec(folder: Path, shape=(12, 12, 12)) -> Path:
    torch.manual_seed(0)
    torch.save(TinyCNN3D(n_outputs=2, width=4).state_dict(), folder / "tiny.pt")
    spec = {"architecture": "nipype_xai.models.architectures:TinyCNN3D",
            "kwargs": {"n_outputs": 2, "width": 4}, "weights": "tiny.pt",
            "input": {"space": "MNI152NLin2009aSym", "resolution_mm": 4, "shape": list(shape),
                      "normalization": "zscore", "mask": "nonzero"},
            "outputs": ["control", "lesion"], "task": "classification"}
    (folder / "tiny.json").write_text(json.dumps(spec))
    return folder / "tiny.json"


def test_baseline_maps_are_the_cores_on_the_model_input(tmp_path):
    spec_path = _tiny_spec(tmp_path)
    rng = np.random.default_rng(1)
    image = _save(tmp_path / "sub-01_T1w.nii.gz", rng.uniform(1, 2, (12, 12, 12)))
    result = BaselineMaps(in_file=str(image), model_spec=str(spec_path),
                          baselines=["sobel", "random"], seed=3).run(cwd=str(tmp_path))
    names = [Path(p).name for p in result.outputs.out_files]
    assert names == ["sub-01_T1w_desc-sobel_attribution.nii.gz",
                     "sub-01_T1w_desc-random_attribution.nii.gz"]
    # The image is already on the model grid, so the map is the core's output voxel for voxel.
    x, _ = to_model_grid(nib.load(image), load_model_spec(spec_path))
    np.testing.assert_allclose(nib.load(result.outputs.out_files[0]).get_fdata(),
                               sobel(x)[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    sidecar = json.loads(Path(result.outputs.out_sidecars[1]).read_text())
    assert sidecar["Method"] == "random" and sidecar["Parameters"] == {"seed": 3}
    assert sidecar["Baseline"] is True


def test_model_grid_reference_is_the_grid_to_model_grid_uses(tmp_path):
    spec_path = _tiny_spec(tmp_path, shape=(10, 12, 8))
    template = _save(tmp_path / "template.nii.gz",
                     np.random.default_rng(0).uniform(size=(30, 36, 26)), np.diag([2, 2, 2, 1.0]))
    result = ModelGridReference(template=str(template),
                                model_spec=str(spec_path)).run(cwd=str(tmp_path))
    reference = nib.load(result.outputs.out_file)
    _, grid = to_model_grid(nib.load(template), load_model_spec(spec_path))
    assert reference.shape == grid.shape == (10, 12, 8)
    np.testing.assert_allclose(reference.affine, grid.affine)
    # An image on the reference grid lands on the same grid again (no second interpolation).
    _, again = to_model_grid(reference, load_model_spec(spec_path))
    np.testing.assert_allclose(again.affine, grid.affine)


def test_group_table_ranking_and_mean_maps(tmp_path, volumes):
    rows = []
    for subject, (good, bad) in {"01": (0.9, 0.2), "02": (0.7, 0.1), "03": (0.8, 0.3)}.items():
        table = pd.DataFrame({"participant_id": [f"sub-{subject}"] * 2,
                              "method": ["gradient", "random"],
                              "score": ["abs", "abs"], "precision_at_k": [good, bad],
                              "emd": [1.0, 5.0], "emd_method": ["exact", "exact"],
                              "n_gt_voxels": [27, 27]})
        path = tmp_path / f"sub-{subject}.tsv"
        table.to_csv(path, sep="\t", index=False)
        rows.append(str(path))
    group = GroupOverlapTable(in_tsvs=rows[::-1]).run(cwd=str(tmp_path))
    merged = pd.read_csv(group.outputs.out_tsv, sep="\t")
    assert list(merged["participant_id"]) == ["sub-01", "sub-01", "sub-02", "sub-02",
                                              "sub-03", "sub-03"]
    ranking = MethodRanking(in_tsv=group.outputs.out_tsv, n_boot=200).run(cwd=str(tmp_path))
    summary = pd.read_csv(ranking.outputs.out_tsv, sep="\t")
    assert set(summary["metric"]) == {"precision_at_k", "emd"}  # not the voxel counts
    best = summary[(summary.metric == "precision_at_k") & (summary["rank"] == 1)]
    assert list(best["method"]) == ["gradient"]
    assert best["mean"].iloc[0] == pytest.approx(0.8)

    maps = [_save(tmp_path / f"m{i}.nii.gz", np.full((4, 4, 4), v)) for i, v in enumerate((1, 3))]
    result = GroupMeanMaps(in_maps=[str(p) for p in maps],
                           methods=["gradient", "gradient"]).run(cwd=str(tmp_path))
    assert result.outputs.methods == ["gradient"]
    np.testing.assert_allclose(nib.load(result.outputs.out_mean[0]).get_fdata(), 2.0)
    np.testing.assert_allclose(nib.load(result.outputs.out_sd[0]).get_fdata(), np.sqrt(2.0))
    # The core reads the images the interface loads; a grid mismatch still names the file.
    shifted = AFFINE.copy()
    shifted[0, 3] += 4.0
    moved = _save(tmp_path / "sub-04_desc-gradient_attribution.nii.gz", np.ones((4, 4, 4)),
                  shifted)
    with pytest.raises(ValueError, match="sub-04_desc-gradient_attribution.nii.gz: affine"):
        GroupMeanMaps(in_maps=[str(maps[0]), str(moved)],
                      methods=["gradient", "gradient"]).run(cwd=str(tmp_path))
