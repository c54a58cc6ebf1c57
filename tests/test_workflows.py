"""The participant and group workflows end to end on a tiny synthetic cohort (CPU, ~1 minute).

Three 4 mm synthetic lesion subjects, a randomly initialised TinyCNN3D on an 8 mm model grid, two
attribution methods and one baseline, affine registration, MultiProc with two processes.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nipype.interfaces.base import isdefined

from nipype_xai.bids import figures_dir, group_map_path, group_metrics_path, group_ranking_path
from nipype_xai.synth import generate_cohort
from nipype_xai.workflows import (
    collect_data,
    collect_group_inputs,
    init_group_wf,
    init_participant_wf,
    init_registration_wf,
    init_xai_wf,
)

from tiny_model import MODEL_SHAPE, TPL  # noqa: E402
from tiny_model import write_tiny_model as _write_tiny_model  # noqa: E402

METHODS = ["gradient", "gradcam", "sobel"]
DESCS = ["gradient", "gradcam", "sobel"]
# Named tiny_cnn: its predictions are desc-tinycnn (the name's alphanumeric part).
write_tiny_model = functools.partial(_write_tiny_model, name="tiny_cnn")


@pytest.fixture(scope="module")
def participant_run(tmp_path_factory):
    """Run the participant workflow once on three subjects; every test reads its outputs."""
    root = tmp_path_factory.mktemp("workflows")
    bids_dir = generate_cohort(root / "bids", "lesion", 3, seed=0, resolution_mm=4.0,
                               progress=False)
    model = write_tiny_model(root / "model")
    subjects, problems = collect_data(
        bids_dir, ground_truth_dir=bids_dir / "derivatives" / "groundtruth", gt_label="lesion")
    assert problems == []
    output_dir = root / "out"
    workflow = init_participant_wf(subjects=subjects, output_dir=output_dir, model_spec=model,
                                   methods=METHODS, seed=0)
    workflow.base_dir = str(root / "work")
    workflow.config["execution"].update({"crashdump_dir": str(root / "crash"),
                                         "poll_sleep_duration": 0.2})
    # Spawned workers: this test process may already have run torch on several threads, and a
    # forked child of such a process hangs in OpenMP.
    # Nipype's MultiProc collects garbage at every step: keep this process's objects out of it
    # (as the command line does).
    gc.freeze()
    try:
        workflow.run(plugin="MultiProc", plugin_args={"n_procs": 2, "mp_context": "spawn"})
    finally:
        gc.unfreeze()
    return {"root": root, "bids": bids_dir, "out": output_dir, "subjects": subjects,
            "model": model}


def test_collect_data_finds_t1w_and_ground_truth(participant_run):
    subjects = participant_run["subjects"]
    assert [s.subject for s in subjects] == ["01", "02", "03"]
    assert all(s.t1w.name == f"sub-{s.subject}_T1w.nii.gz" for s in subjects)
    # Only positives of the lesion task carry a (native, not template-space) lesion mask.
    participants = pd.read_csv(participant_run["bids"] / "participants.tsv", sep="\t")
    positives = {pid[4:] for pid, label in zip(participants.participant_id, participants.label)
                 if label == "lesion"}
    assert positives
    for entry in subjects:
        if entry.subject in positives:
            assert entry.ground_truth.name == f"sub-{entry.subject}_label-lesion_mask.nii.gz"
        else:
            assert entry.ground_truth is None


def test_every_spec_output_exists(participant_run):
    out = participant_run["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "nipype-xai"
    assert "*_attribution.nii.gz" in (out / ".bidsignore").read_text()
    for entry in participant_run["subjects"]:
        anat = out / f"sub-{entry.subject}" / "anat"
        sub = f"sub-{entry.subject}"
        expected = [
            f"{sub}_from-T1w_to-{TPL}_mode-image_xfm.h5",
            f"{sub}_from-{TPL}_to-T1w_mode-image_xfm.h5",
            f"{sub}_desc-tinycnn_predictions.tsv",
            f"{sub}_desc-brain_mask.nii.gz",
            f"{sub}_space-{TPL}_res-8_desc-preproc_T1w.nii.gz",
        ]
        for desc in DESCS:
            expected += [f"{sub}_space-{TPL}_res-8_desc-{desc}_attribution.nii.gz",
                         f"{sub}_space-{TPL}_res-8_desc-{desc}_attribution.json",
                         f"{sub}_desc-{desc}_attribution.nii.gz",
                         f"{sub}_desc-{desc}_attribution.json"]
        if entry.ground_truth is not None:
            expected.append(f"{sub}_desc-overlap_metrics.tsv")
        else:
            assert not (anat / f"{sub}_desc-overlap_metrics.tsv").exists()
        missing = [name for name in expected if not (anat / name).is_file()]
        assert missing == []
        assert (out / f"{sub}.html").is_file()
        assert list((out / sub / "figures").glob("*.png"))
    # Atomic writes leave no temporary file anywhere; nipype-xai's own folder holds only the
    # subjects' completion records and the dataset lock (no staging left).
    assert [p for p in out.rglob(".*") if p.name not in (".bidsignore", ".nipype-xai")] == []
    state = sorted(p.relative_to(out / ".nipype-xai").as_posix()
                   for p in (out / ".nipype-xai").rglob("*") if p.is_file())
    assert state == ["complete/" + f"sub-{e.subject}.json"
                     for e in sorted(participant_run["subjects"], key=lambda e: e.subject)
                     ] + ["lock"]


def test_provenance_without_the_command_line(participant_run):
    """The workflow alone (no CLI) links the datasets its Sources name, relative to the output."""
    out, bids_dir = participant_run["out"], participant_run["bids"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetLinks"] == {"groundtruth": "../bids/derivatives/groundtruth",
                                           "raw": "../bids"}
    lesion = next(e for e in participant_run["subjects"] if e.ground_truth is not None)
    sub = f"sub-{lesion.subject}"
    metrics = json.loads((out / sub / "anat" / f"{sub}_desc-overlap_metrics.json").read_text())
    assert metrics["Sources"][-2:] == [
        f"bids:groundtruth:{sub}/anat/{sub}_label-lesion_mask.nii.gz",
        f"bids::{sub}/anat/{sub}_desc-brain_mask.nii.gz"]
    t1w = json.loads((out / sub / "anat" / f"{sub}_desc-preproc_T1w.json").read_text())
    assert t1w["Sources"] == [f"bids:raw:{sub}/anat/{sub}_T1w.nii.gz"]
    assert (bids_dir / sub / "anat" / f"{sub}_T1w.nii.gz").is_file()


def test_pybids_indexes_every_output(participant_run):
    import bids

    layout = bids.BIDSLayout(str(participant_run["out"]), validate=False)
    for entry in participant_run["subjects"]:
        for desc in DESCS:
            in_template = layout.get(subject=entry.subject, space=TPL, desc=desc,
                                     suffix="attribution", extension=".nii.gz")
            assert [f.entities["res"] for f in in_template] == ["8"]
            native = layout.get(subject=entry.subject, space=bids.layout.Query.NONE, desc=desc,
                                suffix="attribution", extension=".nii.gz")
            assert len(native) == 1
        assert len(layout.get(subject=entry.subject, suffix="xfm", extension=".h5")) == 2
        assert len(layout.get(subject=entry.subject, suffix="predictions",
                              extension=".tsv")) == 1


def test_maps_sidecars_and_metrics(participant_run):
    out = participant_run["out"]
    for entry in participant_run["subjects"]:
        anat = out / f"sub-{entry.subject}" / "anat"
        sub = f"sub-{entry.subject}"
        t1w = nib.load(entry.t1w)
        for method, desc in zip(METHODS, DESCS):
            template_map = nib.load(
                anat / f"{sub}_space-{TPL}_res-8_desc-{desc}_attribution.nii.gz")
            assert template_map.shape == MODEL_SHAPE
            np.testing.assert_allclose(np.diag(template_map.affine)[:3], [8, 8, 8])
            native = nib.load(anat / f"{sub}_desc-{desc}_attribution.nii.gz")
            assert native.shape == t1w.shape
            np.testing.assert_allclose(native.affine, t1w.affine, atol=1e-4)
            assert np.abs(native.get_fdata()).max() > 0
            sidecar = json.loads((anat / f"{sub}_space-{TPL}_res-8_desc-{desc}_attribution.json")
                                 .read_text())
            assert sidecar["Method"] == method
            assert sidecar["Space"] == TPL
            native_sidecar = json.loads((anat / f"{sub}_desc-{desc}_attribution.json").read_text())
            assert native_sidecar["Space"] == "T1w" and native_sidecar["Method"] == method
            if method != "sobel":
                assert len(sidecar["ModelWeightsSHA256"]) == 64
                assert sidecar["PredictedLabel"] in ("control", "lesion")
        predictions = pd.read_csv(anat / f"{sub}_desc-tinycnn_predictions.tsv", sep="\t")
        assert predictions[["control", "lesion"]].sum(axis=1).iloc[0] == pytest.approx(1.0)
        if entry.ground_truth is not None:
            metrics = pd.read_csv(anat / f"{sub}_desc-overlap_metrics.tsv", sep="\t")
            assert list(metrics["method"]) == METHODS
            assert set(metrics["participant_id"]) == {sub}
            assert metrics["precision_at_k"].between(0, 1).all()
            assert metrics["auroc"].between(0, 1).all()
            assert (metrics["resampled"] == "no").all()  # native maps are on the GT's grid


def test_registration_is_good_enough(participant_run):
    """The derived brain mask overlaps the true one; the model input looks like the template."""
    out, bids_dir = participant_run["out"], participant_run["bids"]
    for entry in participant_run["subjects"]:
        sub = f"sub-{entry.subject}"
        derived = nib.load(out / sub / "anat" / f"{sub}_desc-brain_mask.nii.gz").get_fdata() > 0
        truth = nib.load(bids_dir / "derivatives" / "groundtruth" / sub / "anat"
                         / f"{sub}_desc-brain_mask.nii.gz").get_fdata() > 0
        dice = 2 * (derived & truth).sum() / (derived.sum() + truth.sum())
        assert dice > 0.85, f"{sub}: brain-mask Dice {dice:.3f}"


def test_group_workflow(participant_run):
    out = participant_run["out"]
    inputs = collect_group_inputs(out)
    assert inputs.template == TPL and inputs.res == "8"
    assert len(inputs.maps) == 3 * len(METHODS)
    n_gt = sum(entry.ground_truth is not None for entry in participant_run["subjects"])
    assert len(inputs.metrics_tsvs) == n_gt
    workflow = init_group_wf(inputs=inputs, output_dir=out, n_boot=200)
    workflow.base_dir = str(participant_run["root"] / "work")
    workflow.run()
    table = pd.read_csv(group_metrics_path(out), sep="\t")
    assert group_metrics_path(out) == out / "group" / "desc-overlap_metrics.tsv"
    assert len(table) == n_gt * len(METHODS)
    assert table["participant_id"].str.fullmatch(r"sub-\d\d").all()
    ranking = pd.read_csv(group_ranking_path(out), sep="\t")
    assert set(ranking["method"]) == set(METHODS)
    assert {"mean", "ci_low", "ci_high", "rank"} <= set(ranking.columns)
    for desc in DESCS:
        method = METHODS[DESCS.index(desc)]
        mean = group_map_path(method, "mean", TPL, "8", root=out)
        sd = group_map_path(method, "sd", TPL, "8", root=out)
        assert mean == out / "group" / f"space-{TPL}_res-8_desc-{desc}Mean_attribution.nii.gz"
        assert nib.load(mean).shape == MODEL_SHAPE and sd.is_file()
        sidecar = json.loads(mean.with_name(mean.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Sources"] == [
            f"bids::sub-{s}/anat/sub-{s}_space-{TPL}_res-8_desc-{desc}_attribution.nii.gz"
            for s in ("01", "02", "03")]
        # The mean map is the mean of the subjects' maps.
        subject_maps = [nib.load(p).get_fdata() for p, m in zip(inputs.maps, inputs.methods)
                        if m == METHODS[DESCS.index(desc)]]
        np.testing.assert_allclose(nib.load(mean).get_fdata(), np.mean(subject_maps, axis=0),
                                   rtol=1e-4, atol=1e-6)
    assert (out / "group.html").is_file()
    assert list(figures_dir(root=out).glob("desc-ranking_*.png"))
    assert not (out / "figures").exists()
    # Nothing group-level at the root but the report (the rest is under group/).
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        ".bidsignore", "README.md", "dataset_description.json", "group.html", "sub-01.html",
        "sub-02.html", "sub-03.html"]



def test_group_report_node_gets_the_subjects_outside_the_training_inputs(tmp_path):
    from nipype_xai.workflows import GroupInputs

    inputs = GroupInputs(metrics_tsvs=[], maps=[tmp_path / "m.nii.gz"], methods=["gradient"],
                         template=TPL, res="8", subjects=["01"], labels=["sub-01"],
                         outside_domain=[("sub-01", "input distance 41.5 > threshold 7.5")])
    report = init_group_wf(inputs=inputs, output_dir=tmp_path).get_node("report")
    assert report.inputs.outside_domain == [["sub-01", "input distance 41.5 > threshold 7.5"]]
    inputs = dataclasses.replace(inputs, outside_domain=[])
    report = init_group_wf(inputs=inputs, output_dir=tmp_path).get_node("report")
    assert not isdefined(report.inputs.outside_domain)

def test_xai_wf_reusing_transforms_has_no_registration(tmp_path):
    model = write_tiny_model(tmp_path)
    for name in ("fwd.h5", "inv.h5"):
        (tmp_path / name).write_bytes(b"")
    workflow = init_xai_wf(subject="01", methods=["gradient", "random"], model_spec=model,
                           output_dir=tmp_path / "out", t1w=tmp_path / "tiny.json",
                           transforms=(tmp_path / "fwd.h5", tmp_path / "inv.h5"), reports=False)
    names = {node.name for node in workflow._get_all_nodes()}
    assert "t1w_template" not in names  # nothing in init_xai_wf reads the T1w in template space
    assert "register" not in names
    assert "ds_forward_transform" not in names and "overlap" not in names
    assert {"attribution", "baseline_maps", "ds_template_maps", "ds_native_maps"} <= names
    with pytest.raises(ValueError, match="unknown method"):
        init_xai_wf(subject="01", methods=["gradient", "sharpgrad"], model_spec=model,
                    output_dir=tmp_path / "out")


def test_xai_wf_gives_the_background_to_the_attribution_node(tmp_path):
    model = write_tiny_model(tmp_path)
    background = tmp_path / "bg.nii.gz"
    background.write_bytes(b"")
    common = {"subject": "01", "model_spec": model, "output_dir": tmp_path / "out",
              "t1w": tmp_path / "tiny.json", "reports": False}
    workflow = init_xai_wf(methods=["gradient", "deeplift_shap", "sobel"],
                           background=background, **common)
    attribution = workflow.get_node("attribution")
    assert attribution.inputs.background == str(background)
    assert attribution.inputs.methods == ["gradient", "deeplift_shap"]
    # No method takes it: the node is not given it (the command line refuses such a run).
    workflow = init_xai_wf(methods=["gradient"], background=background, **common)
    assert not isdefined(workflow.get_node("attribution").inputs.background)
    workflow = init_xai_wf(methods=["gradient_shap"], **common)
    assert not isdefined(workflow.get_node("attribution").inputs.background)


def test_model_nodes_ask_a_batch_scheduler_for_a_gpu_only_on_cuda(tmp_path):
    from nipype_xai.workflows.xai import GPU_NODE_PLUGIN_ARGS

    model = write_tiny_model(tmp_path)
    common = {"subject": "01", "model_spec": model, "output_dir": tmp_path / "out",
              "t1w": tmp_path / "tiny.json", "reports": False, "methods": ["gradient", "sobel"]}
    on_gpu = init_xai_wf(device="cuda", **common)
    model_nodes = {"inference", "attribution"}
    for node in on_gpu._get_all_nodes():
        asked = node.plugin_args.get("sbatch_args", "")
        if node.name in model_nodes:
            # With a leading space: the graph plugins glue it to the run's sbatch_args.
            assert asked == GPU_NODE_PLUGIN_ARGS["sbatch_args"] == " --gres=gpu:1", node.name
            assert node.inputs.use_gpu and not node.plugin_args.get("overwrite")
        else:  # registration, baselines, sinks: no GPU held for them
            assert "gres" not in asked, node.name
    on_cpu = init_xai_wf(device="cpu", **common)
    assert not any("gres" in node.plugin_args.get("sbatch_args", "")
                   for node in on_cpu._get_all_nodes())


def test_registration_wf_graph():
    workflow = init_registration_wf(apply_to_maps=True, apply_to_masks=True)
    names = {node.name for node in workflow._get_all_nodes()}
    assert {"register", "brain_mask", "maps_to_template", "masks_to_template"} <= names
    assert workflow.get_node("maps_to_template").interface.inputs.interpolation == "linear"
    assert workflow.get_node("masks_to_template").interface.inputs.interpolation == "nearest"
    assert workflow.get_node("brain_mask").inputs.interpolation == "nearest"
    reusing = {node.name for node in init_registration_wf(reuse_transforms=True)._get_all_nodes()}
    assert "t1w_template" in reusing and "register" not in reusing
    lean = init_registration_wf(reuse_transforms=True, resample_t1w=False)
    assert "t1w_template" not in {node.name for node in lean._get_all_nodes()}


def test_collect_data_with_sessions_and_fmriprep_transforms(tmp_path):
    """Sessions, subject-level ground truth, fMRIPrep transforms taken as consistent pairs."""
    def touch_nifti(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)

    def description(root: Path, kind: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "dataset_description.json").write_text(json.dumps(
            {"Name": "t", "BIDSVersion": "1.10.0", "DatasetType": kind,
             **({"GeneratedBy": [{"Name": "test"}]} if kind == "derivative" else {})}))

    bids_dir, gt_dir, fmriprep = tmp_path / "bids", tmp_path / "gt", tmp_path / "fmriprep"
    for root, kind in ((bids_dir, "raw"), (gt_dir, "derivative"), (fmriprep, "derivative")):
        description(root, kind)
    for session in ("A", "B"):
        touch_nifti(bids_dir / f"sub-01/ses-{session}/anat/sub-01_ses-{session}_T1w.nii.gz")
    (bids_dir / "sub-02" / "anat").mkdir(parents=True)  # a subject without any T1w
    touch_nifti(gt_dir / "sub-01/anat/sub-01_label-lesion_mask.nii.gz")
    touch_nifti(gt_dir / f"sub-01/anat/sub-01_space-{TPL}_label-lesion_mask.nii.gz")
    other = "MNI152NLin2009cAsym"
    xfms = {
        "subject": (f"sub-01/anat/sub-01_from-T1w_to-{other}_mode-image_xfm.h5",
                    f"sub-01/anat/sub-01_from-{other}_to-T1w_mode-image_xfm.h5"),
        # Session B has its own forward transform only: B must still get a consistent pair.
        "B": (f"sub-01/ses-B/anat/sub-01_ses-B_from-T1w_to-{other}_mode-image_xfm.h5", None),
    }
    for forward, inverse in xfms.values():
        for name in (forward, inverse):
            if name:
                (fmriprep / name).parent.mkdir(parents=True, exist_ok=True)
                (fmriprep / name).write_bytes(b"")

    subjects, problems = collect_data(bids_dir, ground_truth_dir=gt_dir, transforms_dir=fmriprep,
                                      template=other)
    assert [(s.subject, s.session) for s in subjects] == [("01", "A"), ("01", "B")]
    for entry in subjects:
        assert entry.t1w.name == f"sub-01_ses-{entry.session}_T1w.nii.gz"
        assert entry.ground_truth.name == "sub-01_label-lesion_mask.nii.gz"
        assert [p.relative_to(fmriprep).as_posix() for p in entry.transforms] == \
            list(xfms["subject"])
    assert [(p.subject, p.problem) for p in problems] == [
        ("02", "no T1w image found under sub-02/anat")]
    # The subject's workflow names carry the session; its derivatives too.
    workflow = init_participant_wf(subjects=subjects, output_dir=tmp_path / "out",
                                   model_spec=write_tiny_model(tmp_path / "model"),
                                   methods=["gradient"], template=other, reports=False)
    names = {node.name for node in workflow._graph.nodes()}
    assert {"sub_01_ses_A_wf", "sub_01_ses_B_wf", "template_select"} <= names


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("reuse", [False, True], ids=["registered", "known-transforms"])
def test_registration_wf_against_the_known_warp(tmp_path, reuse):
    """init_registration_wf on a synthetic subject, checked against the cohort's known warp.

    Registered (affine, 2 mm template): the subject's brain mask pushed to the template overlaps
    the template's, the pulled-back template mask overlaps the subject's true one, and the T1w
    in template space correlates with the T1w sent there through the known transform. With the
    known transforms given (``reuse_transforms``, as fMRIPrep's), the same outputs are (almost)
    exact: the workflow reads ITK transforms in the right direction.
    """
    from nipype_xai.registration import apply_transforms

    bids = generate_cohort(tmp_path / "bids", "atrophy", 1, seed=3, resolution_mm=4.0,
                           progress=False)
    (anat,) = (bids / "derivatives" / "groundtruth").glob("sub-*/anat")
    sub = anat.parent.name
    t1w = bids / sub / "anat" / f"{sub}_T1w.nii.gz"
    forward = anat / f"{sub}_from-T1w_to-{TPL}_mode-image_xfm.nii.gz"
    inverse = anat / f"{sub}_from-{TPL}_to-T1w_mode-image_xfm.nii.gz"
    brain = anat / f"{sub}_desc-brain_mask.nii.gz"

    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    def collect(template, template_mask, masks, maps, brain_mask):
        return {"template": template, "template_mask": template_mask, "masks": masks,
                "maps": maps, "brain_mask": brain_mask}

    workflow = init_registration_wf(preset="affine", resolution=2, reuse_transforms=reuse,
                                    apply_to_maps=True, apply_to_masks=True, seed=0)
    inputnode = workflow.get_node("inputnode")
    inputnode.inputs.t1w = str(t1w)
    inputnode.inputs.maps = [str(t1w)]
    inputnode.inputs.masks = [str(brain)]
    if reuse:
        inputnode.inputs.forward_transform = str(forward)
        inputnode.inputs.inverse_transform = str(inverse)
    # Identity nodes are dropped at run time: a node downstream of the outputnode, as in a lab's
    # own workflow, receives the outputs.
    collector = pe.Node(niu.Function(function=collect, output_names=["outputs"]),
                        name="collector")
    outer = pe.Workflow("outer", base_dir=str(tmp_path / "work"))
    fields = ["template", "template_mask", "masks", "maps", "brain_mask"]
    for field in fields:
        outer.connect(workflow, f"outputnode.{field}", collector, field)
    result = outer.run()
    (node,) = [n for n in result.nodes() if n.name == "collector"]
    outputs = node.result.outputs.outputs
    template_mask = nib.load(outputs["template_mask"]).get_fdata() > 0
    pushed = nib.load(outputs["masks"][0]).get_fdata() > 0
    pulled = nib.load(outputs["brain_mask"]).get_fdata() > 0
    truth = nib.load(brain).get_fdata() > 0
    registered = nib.load(outputs["maps"][0]).get_fdata()
    known = apply_transforms(t1w, outputs["template"], [forward]).get_fdata()
    inside = template_mask
    correlation = np.corrcoef(registered[inside], known[inside])[0, 1]
    floor = 0.965 if reuse else 0.9
    print(f"Dice pushed {_dice(pushed, template_mask):.3f}, pulled {_dice(pulled, truth):.3f}, "
          f"correlation {correlation:.4f}")
    assert _dice(pushed, template_mask) > floor
    assert _dice(pulled, truth) > floor
    assert correlation > (0.999 if reuse else 0.9)


def test_xai_wf_with_the_labs_brain_mask_and_relative_paths(tmp_path, monkeypatch):
    """A given T1w mask makes the brain that is registered and fed to the model, and is the
    metrics' and derivative's brain mask; relative model and output paths are made absolute
    (nodes run in their own folders)."""
    write_tiny_model(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    workflow = init_xai_wf(subject="01", methods=["gradient"], model_spec="model/tiny.json",
                           output_dir="derivs", t1w=tmp_path / "t1w.nii.gz",
                           t1w_mask=tmp_path / "mask.nii.gz", ground_truth=tmp_path / "gt.nii.gz",
                           reports=False)
    flat = workflow._create_flat_graph()
    edges = {}
    for u, v, data in flat.edges(data=True):
        edges.setdefault(v.name, []).extend((u.name, a, b) for a, b in data["connect"])
    # Through the identity nodes (which Nipype removes at run time): inputnode.t1w_mask -> ...
    assert ("inputnode", "t1w_mask", "mask") in edges["brain"]  # MaskImage
    assert "brain_extraction" not in edges  # the lab's mask: nothing extracted
    resolved = _resolved_edges(workflow)
    assert ("inputnode", "t1w_mask", "brain_mask") in resolved["overlap"]
    assert ("inputnode", "t1w_mask", "in_file") in resolved["ds_brain_mask"]
    assert not any(u == "brain_mask" for u, _, _ in edges["overlap"])
    mask_input = next(n for n in flat.nodes() if n.name == "inputnode"
                      and n.fullname.endswith("sub_01_wf.inputnode"))
    assert mask_input.inputs.t1w_mask == str(tmp_path / "mask.nii.gz")
    sink = next(n for n in flat.nodes() if n.name == "ds_native_maps")
    # Sinks stage into the subject's folder inside the (absolute) output; the commit moves them.
    assert sink.inputs.base_directory == str(tmp_path / "derivs" / ".nipype-xai" / "staging"
                                             / "sub-01")
    commit = next(n for n in flat.nodes() if n.name == "commit_derivatives")
    assert commit.inputs.base_directory == str(tmp_path / "derivs")
    attribution = next(n for n in flat.nodes() if n.name == "attribution")
    assert attribution.inputs.model_spec == str(tmp_path / "model" / "tiny.json")


def _resolved_edges(workflow) -> dict[str, list[tuple[str, str, str]]]:
    """Edges into each node by name, with identity nodes (inputnode/outputnode) followed back to
    the node that computes the value: (source name, source field, destination field)."""
    from nipype.interfaces.utility import IdentityInterface

    flat = workflow._create_flat_graph()
    into = {}
    for u, v, data in flat.edges(data=True):
        for a, b in data["connect"]:
            into[(v, b)] = (u, a)

    def origin(node, field):
        while isinstance(node.interface, IdentityInterface) and (node, field) in into:
            node, field = into[(node, field)]
        return node, field

    edges = {}
    for (v, b), (u, a) in into.items():
        if isinstance(v.interface, IdentityInterface):
            continue
        source, field = origin(u, a)
        edges.setdefault(v.name, []).append((source.name, field, b))
    return edges


def test_xai_wf_raw_t1w_graph(tmp_path):
    """The default on a raw T1w: N4 -> deepbet -> the brain is registered, checked and fed to
    the model; the extracted mask is the brain mask. Skull-stripped inputs skip extraction; a
    lab's mask makes the brain without extraction."""
    write_tiny_model(tmp_path / "model")

    def edges_of(**options):
        return _resolved_edges(init_xai_wf(
            subject="01", methods=["gradient"], model_spec=tmp_path / "model" / "tiny.json",
            output_dir=tmp_path / "out", t1w=tmp_path / "t1w.nii.gz", reports=False, **options))

    edges = edges_of()
    assert ("n4", "out_file", "in_file") in edges["brain_extraction"]
    assert ("brain_extraction", "out_brain", "moving_image") in edges["register"]
    # registration_wf declares a moving mask, and nothing feeds it (the brain is 0 outside)
    assert all(u == "inputnode" for u, _, b in edges["register"] if b == "moving_mask")
    assert ("brain_extraction", "out_brain", "in_file") in edges["t1w_model"]
    assert ("brain_extraction", "out_mask", "in_file") in edges["ds_brain_mask"]
    assert ("brain_extraction", "out_mask", "brain_mask") in edges["registration_qc"]
    assert ("registration_qc", "passed", "passed") in edges["check_qc"]
    assert any(u == "check_qc" for u, _, _ in edges["all_results"])  # derivatives wait for QC
    assert ("registration_qc", "out_tsv", "in_file") in edges["ds_registration_qc"]

    stripped = edges_of(brain_extraction="none", bias_correction=False)
    assert "brain_extraction" not in stripped and "n4" not in stripped
    assert ("brain_mask", "out_file", "in_file") in stripped["ds_brain_mask"]  # template's

    lab = edges_of(t1w_mask=tmp_path / "mask.nii.gz", bias_correction=False)
    assert "brain_extraction" not in lab
    assert ("brain", "out_file", "moving_image") in lab["register"]
    assert ("brain", "out_file", "in_file") in lab["t1w_model"]


def test_collect_data_with_anat_derivatives(tmp_path):
    """An sMRIPrep-shaped folder: preproc T1w and brain mask found with pybids (session level
    first, then subject level), transforms taken when there; a T1w without its mask is a
    problem, not a silent half."""
    def touch_nifti(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)

    bids_dir, smriprep = tmp_path / "bids", tmp_path / "smriprep"
    for root, kind in ((bids_dir, "raw"), (smriprep, "derivative")):
        root.mkdir(parents=True)
        (root / "dataset_description.json").write_text(json.dumps(
            {"Name": "t", "BIDSVersion": "1.10.0", "DatasetType": kind,
             **({"GeneratedBy": [{"Name": "smriprep"}]} if kind == "derivative" else {})}))
    for sub in ("01", "02", "03"):
        touch_nifti(bids_dir / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz")
    anat = smriprep / "sub-01" / "anat"
    touch_nifti(anat / "sub-01_desc-preproc_T1w.nii.gz")
    touch_nifti(anat / "sub-01_desc-brain_mask.nii.gz")
    touch_nifti(anat / f"sub-01_space-{TPL}_desc-preproc_T1w.nii.gz")  # not native: ignored
    for name in (f"sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5",
                 f"sub-01_from-{TPL}_to-T1w_mode-image_xfm.h5"):
        (anat / name).write_bytes(b"h5")
    touch_nifti(smriprep / "sub-02" / "anat" / "sub-02_desc-preproc_T1w.nii.gz")  # no mask

    subjects, problems = collect_data(bids_dir, anat_dir=smriprep, template=TPL)
    found = {s.subject: s for s in subjects}
    assert found["01"].preproc_t1w == anat / "sub-01_desc-preproc_T1w.nii.gz"
    assert found["01"].brain_mask == anat / "sub-01_desc-brain_mask.nii.gz"
    assert found["01"].transforms[0].name.startswith("sub-01_from-T1w_to-")
    # sub-03 has nothing there: processed from its raw T1w, registered here.
    assert found["03"].preproc_t1w is None and found["03"].transforms is None
    assert [p.subject for p in problems] == ["02"]
    assert "desc-preproc_T1w but no desc-brain_mask" in problems[0].problem
