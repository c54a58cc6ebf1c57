"""Derivative names and dataset description, checked against pybids' own indexing."""

import json
import os

import pytest

from nipype_xai.attribution import available_methods
from nipype_xai.bids import (
    atomic_write,
    derivative_path,
    desc_to_method,
    method_to_desc,
    resolution_label,
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
    assert str(derivative_path({"desc": "overlap", "suffix": "metrics"})) == "desc-overlap_metrics.tsv"
    assert str(derivative_path({"space": "MNI152NLin2009aSym", "desc": "smoothgradMean",
                                "suffix": "attribution", "extension": ".nii.gz"})) == \
        "space-MNI152NLin2009aSym_desc-smoothgradMean_attribution.nii.gz"
    with pytest.raises(ValueError, match="alphanumeric"):
        derivative_path({"subject": "01", "desc": "smoothgrad_sq", "suffix": "attribution"})


def test_pybids_indexes_outputs(tmp_path):
    bids = pytest.importorskip("bids")
    write_dataset_description(tmp_path, source_datasets=["../rawdata"])
    for desc in ["gradient", "smoothgradSq"]:
        for space in [None, "MNI152NLin2009aSym"]:
            path = derivative_path({"subject": "01", "space": space, "desc": desc,
                                    "suffix": "attribution"}, root=tmp_path)
            atomic_write(path, lambda tmp: tmp.write_bytes(b"\x1f\x8b"))
    description = json.loads((tmp_path / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "nipype-xai"
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
