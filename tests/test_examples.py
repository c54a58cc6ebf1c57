"""The examples run end to end at their smallest size (CPU, ~20 s each).

``examples/embed_xai_wf.py``: one synthetic lesion subject at 4 mm, the gradient method, the
known transforms reused; the lab's downstream node must receive nipype-xai's real outputs.
``examples/run_all_methods.py``: one training step, one method. Neither writes into the
repository: without an output folder they make a temporary one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nipype_xai.models import load_model_spec
from nipype_xai.workflows.xai import model_label

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TPL = "MNI152NLin2009aSym"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def embed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    module = load_example("embed_xai_wf")
    result = module.main(["--out", str(root / "out"), "--methods", "gradient", "--n-subjects",
                          "1", "--work-dir", str(root / "work")])
    return {"module": module, "root": root, "result": result}


def test_embed_writes_derivatives(embed_run):
    result = embed_run["result"]
    derivatives = result["derivatives"]
    assert derivatives == embed_run["root"] / "out" / "derivatives" / "nipype_xai"
    anat = derivatives / "sub-01" / "anat"
    label = model_label(load_model_spec(result["model"]))
    expected = [
        "sub-01_desc-gradient_attribution.nii.gz",
        "sub-01_desc-gradient_attribution.json",
        f"sub-01_space-{TPL}_res-4_desc-gradient_attribution.nii.gz",
        f"sub-01_space-{TPL}_res-4_desc-preproc_T1w.nii.gz",
        "sub-01_desc-brain_mask.nii.gz",
        f"sub-01_desc-{label}_predictions.tsv",
        "sub-01_desc-overlap_metrics.tsv",  # subject 01 of the example's cohort has lesions
    ]
    assert [name for name in expected if not (anat / name).is_file()] == []
    # Transforms were given (the cohort's known ones), so none is written as a derivative.
    assert list(anat.glob("*_xfm.*")) == []
    assert (derivatives / "sub-01.html").is_file()
    # Nipype worked in --work-dir; nothing generated lands next to the example.
    assert (embed_run["root"] / "work" / "lab_wf" / "sub_01_lab_wf" / "sub_01_wf").is_dir()

    t1w = nib.load(result["bids_dir"] / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    native = nib.load(anat / "sub-01_desc-gradient_attribution.nii.gz")
    assert native.shape == t1w.shape
    np.testing.assert_allclose(native.affine, t1w.affine, atol=1e-4)
    assert np.abs(native.get_fdata()).max() > 0
    assert nib.load(anat / f"sub-01_space-{TPL}_res-4_desc-gradient_attribution.nii.gz"
                    ).shape == (48, 65, 48)
    # The T1w was connected from the lab's node, not known at build time: the native map's
    # sidecar still names it (in its Sources, or as its SpatialReference where the provenance is
    # given as BIDS URIs).
    sidecar = json.loads((anat / "sub-01_desc-gradient_attribution.json").read_text())
    assert "t1w_preproc.nii.gz" in json.dumps({key: sidecar.get(key)
                                               for key in ("Sources", "SpatialReference")})


def test_embed_consumer_receives_outputs(embed_run):
    result = embed_run["result"]
    anat = result["derivatives"] / "sub-01" / "anat"
    [summary_file] = result["summaries"]
    summary = json.loads(summary_file.read_text())
    assert summary["subject"] == "01"
    assert list(summary["maps"]) == ["gradient"]

    # The map the lab's node read is the one nipype-xai wrote as a derivative.
    received = Path(summary["maps"]["gradient"]["file"])
    assert received.is_file() and received.is_relative_to(embed_run["root"] / "work")
    np.testing.assert_array_equal(
        nib.load(received).get_fdata(),
        nib.load(anat / "sub-01_desc-gradient_attribution.nii.gz").get_fdata())
    assert 0 < summary["maps"]["gradient"]["share_in_brain_mask"] <= 1

    [predictions] = anat.glob("sub-01_desc-*_predictions.tsv")
    row = pd.read_csv(predictions, sep="\t").iloc[0]
    assert summary["prediction"]["control"] == pytest.approx(row["control"])
    assert summary["prediction"]["lesion"] == pytest.approx(row["lesion"])
    assert summary["prediction"]["control"] + summary["prediction"]["lesion"] == pytest.approx(1)

    metrics = pd.read_csv(anat / "sub-01_desc-overlap_metrics.tsv", sep="\t",
                          dtype={"subject": str})
    assert [r["method"] for r in summary["overlap"]] == list(metrics["method"]) == ["gradient"]
    assert summary["overlap"][0]["auroc"] == pytest.approx(metrics["auroc"].iloc[0])
    assert 0 <= summary["overlap"][0]["auroc"] <= 1


def test_embed_graph_variants(embed_run):
    """Without ground truth, no metrics edge; with --register, registration runs inside."""
    module, result = embed_run["module"], embed_run["result"]
    workflow = module.init_lab_subject_wf(
        subject="02", bids_dir=embed_run["root"] / "missing", model=result["model"],
        methods=["gradient"], derivatives=embed_run["root"] / "d", results=embed_run["root"] / "r",
        register=True)
    xai_wf = workflow.get_node("sub_02_wf")
    assert xai_wf.get_node("registration_wf").get_node("register") is not None
    assert xai_wf.get_node("overlap") is None
    summary_inputs = {d for _, _, e in workflow._graph.in_edges(workflow.get_node("summarize"),
                                                                data=True)
                      for _, d in e["connect"]}
    assert summary_inputs == {"brain_mask", "methods", "native_maps", "predictions"}


def _files_under(folder: Path) -> set:
    return {(p, p.stat().st_mtime_ns) for p in folder.rglob("*")} if folder.exists() else set()


def test_run_all_methods_writes_to_a_temporary_folder(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    in_repository = _files_under(EXAMPLES / "output")
    module = load_example("run_all_methods")
    assert module.main(["--train-steps", "1", "--methods", "gradient"]) == 0
    [out] = list(tmp_path.glob("nipype-xai-run_all_methods-*"))
    assert f"output: {out}" in capsys.readouterr().out
    assert (out / "methods_summary.tsv").is_file()
    assert list((out / "maps").rglob("*.nii.gz"))
    assert _files_under(EXAMPLES / "output") == in_repository  # nothing new in the repository
