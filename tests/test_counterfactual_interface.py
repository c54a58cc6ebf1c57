"""The ``Counterfactual`` interface: four images on the model grid with sidecars, the displacement
field in the ITK/ANTs convention (checked by resampling with nipype_xai.synth.warps)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nipype_xai.counterfactual import Simulator, SimulatorSettings
from nipype_xai.counterfactual.spec import save_simulator
from nipype_xai.interfaces.counterfactual import Counterfactual
from nipype_xai.models import load_model_spec, to_model_grid, weights_sha256
from nipype_xai.synth import warps

from test_counterfactual_cli import SHAPE, write_classifier

SMALL = (4, 4, 8, 8, 8, 4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfi")
    model = write_classifier(root / "model")
    spec = load_model_spec(model)
    settings = SimulatorSettings(features=SMALL, max_velocity_voxels=1.5)
    torch.manual_seed(0)
    simulator = Simulator(features=SMALL, max_velocity_voxels=1.5)
    with torch.no_grad():  # an untrained simulator that still moves things
        simulator.unet.final_conv.weight.normal_(0.0, 0.3)
    sim = save_simulator(simulator, settings, spec, root / "sim", name="sim")
    # A smooth blob image in MNI world coordinates, on its own 6 mm grid.
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    affine[:3, 3] = (-96.0, -132.0, -78.0)
    grid = np.indices((32, 38, 30)).astype(float)
    centre = np.array([16.0, 21.0, 15.0]).reshape(3, 1, 1, 1)
    data = np.exp(-((grid - centre) ** 2).sum(0) / 60.0) * 100 + 1.0
    data *= ((grid - centre) ** 2).sum(0) < 180
    in_file = root / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(in_file))
    return root, model, sim, in_file


def _run(setup, tmp_path, **inputs):
    root, model, sim, in_file = setup
    tmp_path.mkdir(parents=True, exist_ok=True)
    node = Counterfactual(in_file=str(in_file), model_spec=str(model), simulator_spec=str(sim),
                          **inputs)
    return node.run(cwd=str(tmp_path)).outputs


def test_counterfactual_writes_four_consistent_images(setup, tmp_path):
    root, model, sim, in_file = setup
    out = _run(setup, tmp_path)
    names = [Path(f).name for f in out.out_files]
    assert names == ["sub-01_T1w_desc-counterfactual_T1w.nii.gz",
                     "sub-01_T1w_from-T1w_to-counterfactual_mode-image_xfm.nii.gz",
                     "sub-01_T1w_desc-logJacobian_counterfactual.nii.gz",
                     "sub-01_T1w_desc-intensityDifference_counterfactual.nii.gz"]
    spec = load_model_spec(model)
    x, grid = to_model_grid(nib.load(str(in_file)), spec)
    image = nib.load(out.out_image)
    assert image.shape == SHAPE and np.allclose(image.affine, grid.affine)
    # The field, read as ANTs would (LPS on disk), resamples the model-grid input onto the
    # counterfactual: the reference resampling reproduces the image.
    field = nib.load(out.out_displacement)
    assert field.shape == (*SHAPE, 1, 3) and field.header.get_intent()[0] == "vector"
    displacement = warps.displacement_from_image(field)
    assert np.abs(displacement).max() > 1.0  # mm: the simulator moves things
    moved = warps.apply_displacement_field(grid.to_image(x[0, 0].numpy()), field).get_fdata()
    np.testing.assert_allclose(image.get_fdata(), moved, atol=2e-3)
    difference = nib.load(out.out_difference).get_fdata()
    np.testing.assert_allclose(difference, image.get_fdata() - x[0, 0].numpy(), atol=1e-5)
    # Subject-to-counterfactual volume change: the inverse of the field's map, so its
    # log-Jacobian is close to minus the field's own.
    log_jac = nib.load(out.out_log_jacobian).get_fdata()
    pull = np.log(warps.jacobian_determinant(field))
    assert np.corrcoef(log_jac.ravel(), -pull.ravel())[0, 1] > 0.95
    sidecars = [json.loads(Path(s).read_text()) for s in out.out_sidecars]
    first = sidecars[0]
    assert first["Simulator"]["WeightsSHA256"] == weights_sha256(root / "sim" / "sim.pt")
    assert first["Simulator"]["ClassifierWeightsSHA256"] == weights_sha256(spec.weights)
    assert first["TargetLabel"] != first["PredictedLabelBefore"]  # binary default: the other
    assert sum(first["ProbabilitiesAfter"].values()) == pytest.approx(1.0, abs=1e-5)
    assert all(s["Description"] for s in sidecars) and len({s["Description"] for s in sidecars}) == 4


def test_counterfactual_target_and_classifier_checks(setup, tmp_path):
    root, model, sim, in_file = setup
    for target in (0, 1):
        out = _run(setup, tmp_path / str(target), target=target)
        assert json.loads(Path(out.out_sidecars[0]).read_text())["Target"] == target
    other = write_classifier(tmp_path / "other", seed=3)
    node = Counterfactual(in_file=str(in_file), model_spec=str(other), simulator_spec=str(sim))
    (tmp_path / "refused").mkdir()
    with pytest.raises(Exception, match="sim.json: trained for classifier 'clf'"):
        node.run(cwd=str(tmp_path / "refused"))
    assert not list((tmp_path / "refused").glob("*.nii.gz"))
