"""Simulator-network counterfactuals: the deformation core against the numpy reference of
nipype_xai.synth.warps and closed forms, the simulator, its training and the atrophy scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nipype_xai.counterfactual import (
    Simulator,
    SimulatorSettings,
    atrophy_counterfactual_scores,
    class_log_probabilities,
    counterfactual,
    integrate_velocity,
    jacobian_determinant,
    log_jacobian_determinant,
    to_voxel_units,
    to_world_units,
    train_simulator,
    warp_image,
)
from nipype_xai.synth import warps
from nipype_xai.synth.atrophy import CAUDATE, atrophy_log_jacobian, atrophy_signal_mask

LATTICE = warps.Lattice((-30.0, -40.0, -20.0), 4.0, (16, 18, 14))
SMALL = (4, 4, 8, 8, 8, 4)  # simulator features for the tests: seconds, not minutes


def _velocity(seed=0, rms_mm=3.0):
    return warps.random_velocity_field(LATTICE, np.random.default_rng(seed), smoothness_mm=8.0,
                                       rms_mm=rms_mm)


def _torch_displacement(velocity_mm, n_squarings):
    v = torch.from_numpy(velocity_mm)[None].float()
    u = integrate_velocity(to_voxel_units(v, LATTICE.affine), n_squarings)
    return to_world_units(u, LATTICE.affine)[0].double().numpy()


# ------------------------------------------------------------------------------------------------
# Deformation core vs the numpy reference (nipype_xai.synth.warps) and closed forms


@pytest.mark.parametrize("n_squarings", [4, 6])
def test_integration_matches_numpy_reference(n_squarings):
    velocity = _velocity()
    reference = warps.integrate_velocity(velocity, LATTICE, n_squarings=n_squarings)
    ours = _torch_displacement(velocity, n_squarings)
    assert np.abs(reference).max() > 3.0  # a real deformation, several mm
    # float32 against float64: 1e-4 mm on displacements of ~8 mm.
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


def test_log_jacobian_matches_numpy_reference():
    velocity = _velocity(seed=3)
    displacement = warps.integrate_velocity(velocity, LATTICE, n_squarings=6)
    reference = np.log(warps.jacobian_determinant(displacement, LATTICE.affine))
    assert np.abs(reference).max() > 0.3
    ours, n_folded = log_jacobian_determinant(torch.from_numpy(displacement)[None].float(),
                                              LATTICE.affine)
    assert n_folded == 0
    np.testing.assert_allclose(ours[0].numpy(), reference, atol=1e-5, rtol=0)


def test_log_jacobian_is_the_same_in_voxel_and_mm_units():
    u_mm = torch.from_numpy(warps.integrate_velocity(_velocity(1), LATTICE, 6))[None].float()
    affine = LATTICE.affine.copy()
    affine[0, 0] = -4.0  # an LAS grid: the chain rule must carry the flipped axis
    in_mm = jacobian_determinant(u_mm, affine)
    in_voxels = jacobian_determinant(to_voxel_units(u_mm, affine))
    torch.testing.assert_close(in_mm, in_voxels, atol=1e-5, rtol=0)


def test_uniform_scaling_has_log_jacobian_three_log_s():
    scale = 1.1
    centre = LATTICE.points().reshape(3, -1).mean(axis=1)
    velocity = np.log(scale) * (LATTICE.points() - centre[:, None, None, None])
    displacement = _torch_displacement(velocity, 7)
    log_jac, _ = log_jacobian_determinant(torch.from_numpy(displacement)[None].float(),
                                          LATTICE.affine)
    inner = log_jac[0, 4:-4, 4:-4, 4:-4]  # away from the border, where the grid is clamped
    np.testing.assert_allclose(inner.numpy(), 3 * np.log(scale), atol=1e-3)
    # The map itself is the scaling about the centre (exp of a linear field, exactly).
    expected = (scale - 1.0) * (LATTICE.points() - centre[:, None, None, None])
    np.testing.assert_allclose(displacement[:, 5:-5, 5:-5, 4:-4],
                               expected[:, 5:-5, 5:-5, 4:-4], atol=2e-3)


def test_translation_moves_by_the_velocity_and_keeps_volume():
    velocity = np.broadcast_to(np.array([2.0, -3.0, 1.5])[:, None, None, None],
                               (3, *LATTICE.shape)).copy()
    displacement = _torch_displacement(velocity, 7)
    np.testing.assert_allclose(displacement, velocity, atol=1e-4)
    log_jac, _ = log_jacobian_determinant(torch.from_numpy(displacement)[None].float(),
                                          LATTICE.affine)
    assert float(log_jac.abs().max()) < 1e-5


def test_exp_of_minus_v_inverts_exp_of_v():
    v = to_voxel_units(torch.from_numpy(_velocity(2))[None].float(), LATTICE.affine)
    forward_map, inverse_map = integrate_velocity(v, 7), integrate_velocity(-v, 7)
    # (phi o phi^-1)(p) = p + u_inv(p) + u(p + u_inv(p)) = p.
    residual = inverse_map + warp_image(forward_map, inverse_map)
    inner = residual[..., 3:-3, 3:-3, 3:-3]
    assert float(forward_map.abs().max()) > 1.0
    assert float(inner.abs().max()) < 0.05  # voxels, with trilinear resampling of the field


def test_warp_matches_reference_resampling():
    rng = np.random.default_rng(4)
    shape, affine = LATTICE.shape, LATTICE.affine
    data = np.zeros(shape, np.float32)
    data[4:-4, 4:-4, 4:-4] = rng.standard_normal((8, 10, 6)).astype(np.float32) + 2.0
    displacement = warps.integrate_velocity(_velocity(5, rms_mm=2.0), LATTICE, 6)
    import nibabel as nib

    field = warps.displacement_field_image(displacement, affine)
    reference = warps.apply_displacement_field(nib.Nifti1Image(data, affine), field).get_fdata()
    u_vox = to_voxel_units(torch.from_numpy(displacement)[None].float(), affine)
    ours = warp_image(torch.from_numpy(data)[None, None], u_vox)[0, 0].numpy()
    assert np.abs(reference - data).max() > 0.5  # the warp changes the image
    np.testing.assert_allclose(ours, reference, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# The simulator


@pytest.mark.parametrize("shape", [(12, 12, 12), (13, 15, 11)])
def test_simulator_velocity_fits_any_grid_and_is_bounded(shape):
    torch.manual_seed(0)
    simulator = Simulator(n_classes=3, features=SMALL, max_velocity_voxels=0.5)
    with torch.no_grad():
        simulator.unet.final_conv.weight.normal_(0.0, 10.0)  # push the raw output far out
        velocity = simulator(torch.randn(2, 1, *shape), [0, 2])
    assert velocity.shape == (2, 3, *shape)
    assert float(velocity.abs().max()) <= 0.5 + 1e-6
    assert float(velocity.abs().max()) > 0.1


def test_simulator_depends_on_the_requested_class_and_refuses_others():
    torch.manual_seed(0)
    simulator = Simulator(features=SMALL)
    with torch.no_grad():
        simulator.unet.final_conv.weight.normal_(0.0, 1.0)
        x = torch.randn(1, 1, 12, 12, 12)
        assert not torch.allclose(simulator(x, 0), simulator(x, 1))
    with pytest.raises(ValueError, match="classes must lie in 0..1"):
        simulator(x, 2)


# ------------------------------------------------------------------------------------------------
# Training against a frozen classifier, on a task whose answer is known


class BlobSizeClassifier(nn.Module):
    """Class 1 when the mean intensity inside a central ball is high: a big bright blob."""

    def __init__(self, shape=(16, 16, 16), radius=4.0, threshold=0.5, gain=20.0, single=False):
        super().__init__()
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape],
                                          indexing="ij"))
        centre = torch.tensor([(n - 1) / 2 for n in shape]).reshape(3, 1, 1, 1)
        self.register_buffer("ball", (((grid - centre) ** 2).sum(0) <= radius ** 2).float())
        self.gain = nn.Parameter(torch.tensor(gain))
        self.threshold = threshold
        self.single = single

    def forward(self, x):
        mean = (x[:, 0] * self.ball).sum(dim=(1, 2, 3)) / self.ball.sum()
        logit = self.gain * (mean - self.threshold)
        return logit[:, None] if self.single else torch.stack([-logit, logit], dim=1)


def _blobs(radii, shape=(16, 16, 16)):
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape],
                                      indexing="ij"))
    centre = torch.tensor([(n - 1) / 2 for n in shape]).reshape(3, 1, 1, 1)
    distance = ((grid - centre) ** 2).sum(0).sqrt()
    return torch.stack([torch.sigmoid(2.0 * (r - distance))[None] for r in radii])


def _blob_data():
    radii = [2.6, 2.7, 2.8, 2.9, 3.6, 3.7, 3.8, 3.9]  # class 0: small blob, class 1: big
    return _blobs(radii), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


FAST = dict(features=SMALL, batch_size=4, lr=1e-2, max_velocity_voxels=2.0, smoothing_voxels=0.5,
            downsample=1)


def test_training_leaves_the_classifier_untouched_and_is_reproducible():
    x, y = _blob_data()
    classifier = BlobSizeClassifier()
    classifier.train()
    state = {k: v.clone() for k, v in classifier.state_dict().items()}
    settings = SimulatorSettings(epochs=1, **FAST)
    first, history = train_simulator(classifier, x, y, settings)
    assert classifier.training and classifier.gain.requires_grad  # restored as it was
    assert all(torch.equal(state[k], v) for k, v in classifier.state_dict().items())
    assert classifier.gain.grad is None
    second, again = train_simulator(classifier, x, y, settings)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert history["loss"] == again["loss"]
    other, _ = train_simulator(classifier, x, y, SimulatorSettings(epochs=1, seed=1, **FAST))
    assert not torch.equal(first.unet.final_conv.weight, other.unet.final_conv.weight)
    assert set(history) >= {"loss", "classification", "smoothness", "cycle", "magnitude",
                            "flip_rate", "seconds", "n_parameters"}


def test_simulator_learns_to_grow_and_shrink_the_blob():
    x, y = _blob_data()
    classifier = BlobSizeClassifier()
    with torch.no_grad():
        assert (classifier(x).argmax(dim=1) == y).all()  # the classifier is right to start
    simulator, history = train_simulator(classifier, x, y, SimulatorSettings(epochs=12, **FAST))
    assert history["classification"][-1] < 0.5 * history["classification"][0]
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    small, big = x[:4], x[4:]
    grown = counterfactual(simulator, classifier, small, 1, affine=affine, n_squarings=7)
    shrunk = counterfactual(simulator, classifier, big, 0, affine=affine)
    # The classifier changes its mind ...
    assert float(grown.probabilities_before[:, 1].mean()) < 0.1
    assert float(grown.probabilities_after[:, 1].mean()) > 0.7
    assert float(shrunk.probabilities_before[:, 0].mean()) < 0.1
    assert float(shrunk.probabilities_after[:, 0].mean()) > 0.7
    # ... because the blob grew (expansion inside the ball) or shrank (contraction).
    ball = classifier.ball.bool()
    assert float(grown.log_jacobian[:, ball].mean()) > 0.05
    assert float(shrunk.log_jacobian[:, ball].mean()) < -0.05
    assert grown.n_folded == 0 and shrunk.n_folded == 0


def test_a_single_logit_classifier_is_read_as_binary():
    x, y = _blob_data()
    two, one = BlobSizeClassifier(), BlobSizeClassifier(single=True)
    with torch.no_grad():
        # sigmoid(z) is softmax over the logits (0, z).
        torch.testing.assert_close(class_log_probabilities(one(x)),
                                   torch.log_softmax(torch.cat([0 * one(x), one(x)], 1), dim=1))
        assert (class_log_probabilities(two(x)).argmax(1) == y).all()
    simulator, history = train_simulator(one, x, y, SimulatorSettings(epochs=1, **FAST))
    assert history["n_classes"] == 2 and simulator.n_classes == 2
    result = counterfactual(simulator, one, x[:2], 1)
    assert result.probabilities_before.shape == (2, 2)


def test_counterfactual_outputs_are_consistent():
    torch.manual_seed(0)
    simulator = Simulator(features=SMALL, downsample=1)
    with torch.no_grad():
        simulator.unet.final_conv.weight.normal_(0.0, 0.5)
    classifier = BlobSizeClassifier()
    x = _blobs([3.0, 4.0, 5.0])
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    result = counterfactual(simulator, classifier, x, [1, 1, 0], affine=affine, batch_size=2)
    with torch.no_grad():
        velocity = simulator(x, torch.tensor([1, 1, 0]))
        pull = integrate_velocity(velocity, 7)
        expected_image = warp_image(x, pull)
        push = integrate_velocity(-velocity, 7)
    torch.testing.assert_close(result.image, expected_image)
    torch.testing.assert_close(result.intensity_difference, expected_image - x)
    # mm along each axis: voxel displacement times the voxel size of that axis.
    torch.testing.assert_close(result.displacement,
                               pull * torch.tensor([2.0, 3.0, 4.0]).reshape(1, 3, 1, 1, 1))
    torch.testing.assert_close(result.log_jacobian, torch.log(jacobian_determinant(push)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(result.probabilities_after.sum(dim=1), torch.ones(3))
    assert result.target.tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="one class per image"):
        counterfactual(simulator, classifier, x, [0, 1])


# ------------------------------------------------------------------------------------------------
# Scores on the atrophy task


def _atrophy_grid(fraction=0.3):
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-40.0, -36.0, -24.0)
    points = warps.voxel_centres((21, 23, 17), affine)
    truth = atrophy_log_jacobian(points, fraction)
    gt = atrophy_signal_mask(points, fraction, 4.0)
    # Inside the ellipsoids the contraction is a pure scaling (the caudate lies inside them).
    core = np.zeros(gt.shape, bool)
    for centre in CAUDATE.centres_mm:
        core |= CAUDATE.radius(points, centre) <= 1.0
    return truth, gt, core, affine


def test_atrophy_scores_reward_the_true_expansion():
    truth, gt, core, affine = _atrophy_grid(0.3)
    kwargs = dict(region=core, affine=affine, expected=truth)
    perfect = atrophy_counterfactual_scores(truth, gt, **kwargs)
    assert perfect["correlation_expected"] == pytest.approx(1.0)
    assert perfect["rmse_expected"] == pytest.approx(0.0)
    # Closed form inside the scaled core: log(1 / (1 - fraction)) everywhere.
    assert perfect["mean_log_jacobian_region"] == pytest.approx(-np.log(0.7))
    assert perfect["expansion_fraction_region"] == 1.0
    # Over the exact ground truth the stretched taper balances the core: no sign to read.
    assert abs(perfect["mean_log_jacobian_gt"]) < 0.1
    assert perfect["mean_log_jacobian_outside_gt"] == pytest.approx(0.0, abs=0.01)
    assert perfect["precision_at_k"] > 0.9
    # The opposite deformation (more atrophy) is found in the right place, with the wrong sign.
    wrong = atrophy_counterfactual_scores(-truth, gt, **kwargs)
    assert wrong["mean_log_jacobian_region"] == pytest.approx(np.log(0.7))
    assert wrong["expansion_fraction_region"] == 0.0
    assert wrong["correlation_expected"] == pytest.approx(-1.0)
    assert wrong["precision_at_k"] == pytest.approx(perfect["precision_at_k"])
    # A deformation elsewhere scores low.
    shifted = np.roll(truth, 8, axis=1)
    elsewhere = atrophy_counterfactual_scores(shifted, gt, **kwargs)
    assert elsewhere["precision_at_k"] < perfect["precision_at_k"] - 0.3
    assert elsewhere["correlation_expected"] < 0.5


def test_atrophy_scores_refuse_an_empty_ground_truth():
    truth, gt, _, _ = _atrophy_grid()
    with pytest.raises(ValueError, match="a control has no atrophy"):
        atrophy_counterfactual_scores(truth, np.zeros_like(gt))


# ------------------------------------------------------------------------------------------------
# Real architectures: a MONAI 3D ResNet, and the bundled model on its own grid


def test_simulator_trains_against_a_monai_resnet(monai_resnet):
    x, y = _blob_data()
    state = {k: v.clone() for k, v in monai_resnet.state_dict().items()}
    simulator, history = train_simulator(monai_resnet, x, y, SimulatorSettings(epochs=1, **FAST))
    assert all(torch.equal(state[k], v) for k, v in monai_resnet.state_dict().items())
    assert np.isfinite(history["loss"]).all()
    result = counterfactual(simulator, monai_resnet, x[:2], 1)
    assert result.probabilities_after.shape == (2, 2) and result.n_folded == 0
    assert torch.isfinite(result.log_jacobian).all()


def test_counterfactual_on_the_bundled_model_grid():
    from nipype_xai.models import load_model, load_model_spec
    from nipype_xai.models.bundled import bundled_model_spec

    spec = load_model_spec(bundled_model_spec("lesion"))
    model = load_model(spec)
    torch.manual_seed(0)
    simulator = Simulator(features=SMALL)
    with torch.no_grad():
        simulator.unet.final_conv.weight.normal_(0.0, 0.3)
    x = torch.randn(1, 1, *spec.input.shape)
    affine = np.diag([*spec.input.resolution_mm, 1.0])
    result = counterfactual(simulator, model, x, 1, affine=affine)
    assert result.image.shape == x.shape
    assert result.displacement.shape == (1, 3, *spec.input.shape)
    assert float(result.displacement.abs().max()) > 0.5  # mm
    assert result.n_folded == 0
