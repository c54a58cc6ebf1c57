"""``--counterfactual``: the participant workflow writes each subject's counterfactual as BIDS
derivatives that the validator accepts (the tiny cohort and model of test_cli, an untrained
simulator that still deforms: the pipeline, not the simulator, is under test)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from test_bids_validator import _validate
from test_cli import TPL, cohort  # noqa: F401  (module fixture: the cohort and tiny model)

from nipype_xai.cli import main
from nipype_xai.counterfactual import Simulator, SimulatorSettings
from nipype_xai.counterfactual.spec import save_simulator
from nipype_xai.models import load_model_spec
from nipype_xai.synth.warps import displacement_from_image

SMALL = (4, 4, 8, 8, 8, 4)


def _simulator(model, folder, name="sim"):
    torch.manual_seed(0)
    simulator = Simulator(features=SMALL, max_velocity_voxels=1.0)
    with torch.no_grad():
        simulator.unet.final_conv.weight.normal_(0.0, 0.3)
    return save_simulator(simulator, SimulatorSettings(features=SMALL, max_velocity_voxels=1.0),
                          load_model_spec(model), folder, name=name)


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("cfwf")
    sim = _simulator(cohort["model"], root / "sim")
    out = root / "derivatives" / "nipype-xai"
    argv = [str(cohort["bids"]), str(out), "participant", "--model", str(cohort["model"]),
            "--participant-label", "02", "--methods", "gradient", "--counterfactual", str(sim),
            "--skull-stripped", "--no-bias-correction", "--no-reports", "-w",
            str(root / "work"), "--nprocs", "1"]
    assert main(argv) == 0
    return {"out": out, "root": root, "sim": sim}


def test_counterfactual_derivatives_are_written(run):
    anat = run["out"] / "sub-02" / "anat"
    image = anat / f"sub-02_space-{TPL}_res-8_desc-counterfactual_T1w.nii.gz"
    xfm = anat / "sub-02_from-T1w_to-counterfactual_mode-image_xfm.nii.gz"
    log_jac = anat / f"sub-02_space-{TPL}_res-8_desc-logJacobian_counterfactual.nii.gz"
    difference = anat / f"sub-02_space-{TPL}_res-8_desc-intensityDifference_counterfactual.nii.gz"
    model_input = anat / f"sub-02_space-{TPL}_res-8_desc-preproc_T1w.nii.gz"
    for path in (image, xfm, log_jac, difference):
        assert path.is_file(), path.name
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Simulator"]["Name"] == "sim"
        assert sidecar["Sources"] == [f"bids::{model_input.relative_to(run['out']).as_posix()}"]
        assert sidecar["TargetLabel"] != sidecar["PredictedLabelBefore"]
    grid = nib.load(str(model_input))
    assert nib.load(str(image)).shape == grid.shape
    assert np.allclose(nib.load(str(log_jac)).affine, grid.affine)
    assert np.abs(displacement_from_image(nib.load(str(xfm)))).max() > 0.5  # mm


def test_counterfactual_derivatives_pass_the_validator(run, tmp_path):
    issues = _validate(run["out"], tmp_path)
    errors = [f"{i['code']} {i.get('location', '')}" for i in issues if i["severity"] == "error"]
    assert errors == []


def test_a_simulator_for_another_model_stops_the_run(cohort, tmp_path, capsys):  # noqa: F811
    from tiny_model import write_tiny_model

    other = write_tiny_model(tmp_path / "other", resolution=8)
    torch.manual_seed(5)
    state = {k: v + 0.01 for k, v in torch.load(other.with_suffix(".pt")).items()}
    torch.save(state, other.with_suffix(".pt"))
    sim = _simulator(other, tmp_path / "sim")
    code = main([str(cohort["bids"]), str(tmp_path / "out"), "participant", "--model",
                 str(cohort["model"]), "--counterfactual", str(sim), "-w", str(tmp_path / "w")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sim.json: trained for classifier 'tiny'" in err[0]
    assert not (tmp_path / "out" / "sub-01").exists()
