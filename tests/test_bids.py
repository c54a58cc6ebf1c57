"""Derivative names and dataset description, checked against pybids' own indexing."""

import json
import os

import pytest

from nipype_xai.attribution import available_methods
from nipype_xai.bids import (
    BIDSIGNORE,
    GROUP_DIR,
    atomic_write,
    bids_uri,
    derivative_path,
    desc_to_method,
    figures_dir,
    group_map_path,
    group_metrics_path,
    group_ranking_path,
    input_dataset_links,
    method_to_desc,
    read_dataset_links,
    report_path,
    resolution_label,
    template_spatial_reference,
    update_dataset_links,
    write_dataset_description,
    write_json,
)


def test_desc_labels_round_trip():
    assert method_to_desc("smoothgrad_sq") == "smoothgradSq"
    assert method_to_desc("lrp_epsilon_plus_flat") == "lrpEpsilonPlusFlat"
    assert method_to_desc("lrp_alpha2_beta1") == "lrpAlpha2Beta1"
    assert method_to_desc("gradient") == "gradient"
    labels = [method_to_desc(m) for m in available_methods()]
    assert len(set(labels)) == len(labels)
    for method in available_methods():
        assert method_to_desc(method).isalnum()
        assert desc_to_method(method_to_desc(method)) == method
    assert desc_to_method("sobel") == "sobel"


def test_resolution_label():
    assert resolution_label(2) == "2"
    assert resolution_label(1.5) == "1p5"


def test_paths_follow_spec():
    path = derivative_path({"subject": "01", "space": "MNI152NLin2009aSym", "res": "2",
                            "desc": "smoothgradSq", "suffix": "attribution"})
    assert str(path) == ("sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_desc-smoothgradSq"
                         "_attribution.nii.gz")
    assert str(derivative_path({"subject": "01", "session": "A", "desc": "gradient",
                                "suffix": "attribution", "extension": ".json"})) == \
        "sub-01/ses-A/anat/sub-01_ses-A_desc-gradient_attribution.json"
    assert str(derivative_path({"subject": "01", "from": "T1w", "to": "MNI152NLin2009aSym",
                                "mode": "image", "suffix": "xfm", "extension": ".h5"})) == \
        "sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5"
    assert str(derivative_path({"subject": "01", "desc": "overlap", "suffix": "metrics"})) == \
        "sub-01/anat/sub-01_desc-overlap_metrics.tsv"
    # Group level: files of several subjects go to group/ (BIDS has no group-level naming).
    assert str(derivative_path({"desc": "overlap", "suffix": "metrics"})) == \
        "group/desc-overlap_metrics.tsv"
    assert str(derivative_path({"space": "MNI152NLin2009aSym", "desc": "smoothgradMean",
                                "suffix": "attribution", "extension": ".nii.gz"})) == \
        "group/space-MNI152NLin2009aSym_desc-smoothgradMean_attribution.nii.gz"
    with pytest.raises(ValueError, match="alphanumeric"):
        derivative_path({"subject": "01", "desc": "smoothgrad_sq", "suffix": "attribution"})


def test_group_level_and_report_names_come_from_one_place(tmp_path):
    assert GROUP_DIR == "group"
    assert group_metrics_path().as_posix() == "group/desc-overlap_metrics.tsv"
    assert group_ranking_path(tmp_path) == tmp_path / "group" / "desc-overlap_ranking.tsv"
    assert group_map_path("smoothgrad_sq", "mean", "MNI152NLin2009aSym", "4").as_posix() == \
        "group/space-MNI152NLin2009aSym_res-4_desc-smoothgradSqMean_attribution.nii.gz"
    assert group_map_path("gradient", "sd", "MNI152NLin2009aSym").as_posix() == \
        "group/space-MNI152NLin2009aSym_desc-gradientSd_attribution.nii.gz"
    assert report_path().as_posix() == "group.html"
    assert report_path("01", "2", root=tmp_path) == tmp_path / "sub-01_ses-2.html"
    assert figures_dir("01").as_posix() == "sub-01/figures"
    assert figures_dir().as_posix() == "group/figures"


def test_bids_uris_and_dataset_links(tmp_path):
    raw = tmp_path / "bids"
    (raw / "sub-01" / "anat").mkdir(parents=True)
    (raw / "dataset_description.json").write_text(json.dumps(
        {"Name": "raw", "BIDSVersion": "1.10.0", "DatasetDOI": "doi:10.1234/raw",
         "License": "CC0", "Authors": ["A. Author", "B. Author"]}))
    gt = raw / "derivatives" / "ground-truth"
    (gt / "sub-01" / "anat").mkdir(parents=True)
    (gt / "dataset_description.json").write_text(json.dumps(
        {"Name": "gt", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    out = raw / "derivatives" / "nipype-xai"
    t1w = raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    mask = gt / "sub-01" / "anat" / "sub-01_label-lesion_mask.nii.gz"

    links = input_dataset_links(raw, mask, None)
    assert links == {"raw": raw, "groundtruth": gt}
    assert bids_uri(t1w, out, links) == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    # The innermost dataset names a file (the ground truth lies inside the raw folder).
    assert bids_uri(mask, out, links) == \
        "bids:groundtruth:sub-01/anat/sub-01_label-lesion_mask.nii.gz"
    assert bids_uri(out / "sub-01" / "anat" / "x.nii.gz", out, links) == \
        "bids::sub-01/anat/x.nii.gz"
    # A file of no dataset (a lab's work directory): named relative to the output, not file://.
    assert bids_uri(tmp_path / "work" / "x.nii.gz", out, links) == "../../../work/x.nii.gz"

    write_dataset_description(out, dataset_links=links)
    description = json.loads((out / "dataset_description.json").read_text())
    # Portable: locations relative to the derivatives dataset, no absolute temporary path.
    assert description["DatasetLinks"] == {"groundtruth": "../ground-truth", "raw": "../.."}
    assert description["SourceDatasets"] == [{"URL": "bids:groundtruth:"},
                                             {"URL": "bids:raw:", "DOI": "doi:10.1234/raw"}]
    assert "file:" not in json.dumps(description)
    assert description["License"] == "CC0"
    assert description["Authors"] == ["A. Author", "B. Author"]
    assert read_dataset_links(out) == links
    assert (out / "README.md").stat().st_size > 150

    # A link added later (a subject committed with another input) keeps the others.
    other = tmp_path / "smriprep"
    other.mkdir()
    (other / "dataset_description.json").write_text(json.dumps(
        {"Name": "s", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    update_dataset_links(out, {"smriprep": other})
    assert read_dataset_links(out) == {**links, "smriprep": other}
    assert update_dataset_links(out, {"raw": raw}) is None  # nothing to add: not rewritten
    # Rewriting the description (the next run) keeps the links it does not name again.
    write_dataset_description(out, dataset_links={"raw": raw})
    assert read_dataset_links(out) == {**links, "smriprep": other}


def test_template_spatial_reference_is_templateflow_url():
    assert template_spatial_reference("MNI152NLin2009aSym") == (
        "https://templateflow.s3.amazonaws.com/tpl-MNI152NLin2009aSym/"
        "tpl-MNI152NLin2009aSym_res-1_T1w.nii.gz")
    assert template_spatial_reference("MNI152NLin2009cAsym").endswith(
        "/tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz")
    assert template_spatial_reference("NotATemplate") == \
        "https://templateflow.s3.amazonaws.com/tpl-NotATemplate/"


def test_bidsignore_lists_patterns_with_reasons(tmp_path):
    (tmp_path / ".bidsignore").write_text("mine.txt\n")
    write_dataset_description(tmp_path)
    write_dataset_description(tmp_path)  # idempotent
    lines = (tmp_path / ".bidsignore").read_text().splitlines()
    assert lines[0] == "mine.txt"
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns == ["mine.txt", *(pattern for pattern, _ in BIDSIGNORE)]
    # Every pattern follows its reason; folders without a trailing slash (bids-validator#291).
    for pattern, why in BIDSIGNORE:
        assert lines[lines.index(pattern) - 1] == f"# {why}"
        assert not pattern.endswith("/")


def test_pybids_indexes_outputs(tmp_path):
    bids = pytest.importorskip("bids")
    write_dataset_description(tmp_path, source_datasets=["https://example.org/rawdata"])
    for desc in ["gradient", "smoothgradSq"]:
        for space in [None, "MNI152NLin2009aSym"]:
            path = derivative_path({"subject": "01", "space": space, "desc": desc,
                                    "suffix": "attribution"}, root=tmp_path)
            atomic_write(path, lambda tmp: tmp.write_bytes(b"\x1f\x8b"))
    description = json.loads((tmp_path / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "nipype-xai"
    assert description["SourceDatasets"] == [{"URL": "https://example.org/rawdata"}]
    assert "*_attribution.nii.gz" in (tmp_path / ".bidsignore").read_text()
    layout = bids.BIDSLayout(tmp_path, validate=False)
    found = layout.get(subject="01", space="MNI152NLin2009aSym", desc="smoothgradSq",
                       suffix="attribution", extension=".nii.gz")
    assert [f.filename for f in found] == [
        "sub-01_space-MNI152NLin2009aSym_desc-smoothgradSq_attribution.nii.gz"]
    assert len(layout.get(subject="01", suffix="attribution")) == 4


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub-01" / "x.json"

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert list(target.parent.iterdir()) == []
    write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    umask = os.umask(0)
    os.umask(umask)
    # not mkstemp's private 0600: a derivative gets the permissions of any new file
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_group_inputs_keep_sessions(tmp_path):
    """Two sessions of one subject are two reports on the group page, one participant."""
    from nipype_xai.bids import collect_group_inputs, commit_subject, staging_folder

    out = tmp_path / "out"
    write_dataset_description(out)
    for session in ("1", "2"):
        label = f"sub-01_ses-{session}"
        name = derivative_path({"subject": "01", "session": session,
                                "space": "MNI152NLin2009aSym", "res": "8", "desc": "gradient",
                                "suffix": "attribution", "extension": ".nii.gz"})
        staged = staging_folder(out, label) / name
        staged.parent.mkdir(parents=True)
        staged.write_bytes(b"map")
        commit_subject(out, label, [staged])
    inputs = collect_group_inputs(out)
    assert inputs.subjects == ["01"]
    assert inputs.labels == ["sub-01_ses-1", "sub-01_ses-2"]
    assert inputs.methods == ["gradient", "gradient"] and len(inputs.maps) == 2


def test_group_inputs_name_the_subjects_outside_the_models_training_inputs(tmp_path):
    """The predictions TSV's input-domain check reaches the group level: a subject whose input
    the model flagged is named (with its distance and threshold); one inside, one without the
    check and one whose derivatives are not complete are not."""
    import pandas as pd

    from nipype_xai.bids import collect_group_inputs, commit_subject, staging_folder
    from nipype_xai.tables import write_tsv

    out = tmp_path / "out"
    write_dataset_description(out)
    domain = {"01": (41.5, True), "02": (1.25, False), "03": None, "04": (50.0, True)}
    for subject, check in domain.items():
        label = f"sub-{subject}"
        staged_map = staging_folder(out, label) / derivative_path(
            {"subject": subject, "space": "MNI152NLin2009aSym", "res": "8", "desc": "gradient",
             "suffix": "attribution", "extension": ".nii.gz"})
        staged_map.parent.mkdir(parents=True)
        staged_map.write_bytes(b"map")
        row = {"control": 0.2, "lesion": 0.8, "predicted_label": "lesion"}
        if check is not None:
            row.update(input_distance=check[0], input_distance_threshold=7.5,
                       outside_training_inputs=check[1])
        staged_tsv = staging_folder(out, label) / derivative_path(
            {"subject": subject, "desc": "tinycnn", "suffix": "predictions",
             "extension": ".tsv"})
        write_tsv(pd.DataFrame([row]), staged_tsv)
        if subject != "04":  # sub-04: killed before its record, left out
            commit_subject(out, label, [staged_map, staged_tsv])
        else:
            final = out / staged_map.relative_to(staging_folder(out, label))
            final.parent.mkdir(parents=True, exist_ok=True)
            staged_map.rename(final)
            staged_tsv.rename(out / staged_tsv.relative_to(staging_folder(out, label)))
    inputs = collect_group_inputs(out)
    assert inputs.subjects == ["01", "02", "03"]
    assert inputs.outside_domain == [("sub-01", "input distance 41.5 > threshold 7.5")]
