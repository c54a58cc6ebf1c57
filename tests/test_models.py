"""Model specs and loading, reference architectures, preprocessing to the model grid and back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from nipype_xai.attribution import TargetError
from nipype_xai.models import (
    SFCN,
    InputSpec,
    ModelSpec,
    ModelSpecError,
    TinyCNN3D,
    from_model_grid,
    load_model,
    load_model_spec,
    normalize_intensity,
    save_model_spec,
    to_model_grid,
    weights_sha256,
)
from nipype_xai.models.inference import explain_image, predict

TINY = "nipype_xai.models.architectures:TinyCNN3D"


def write_spec(folder: Path, name: str = "model", **overrides) -> Path:
    """A TinyCNN3D spec with seeded weights in ``folder``; ``overrides`` replace top-level keys
    (``None`` removes the key)."""
    torch.manual_seed(0)
    weights = folder / "weights.pt"
    if not weights.exists():
        torch.save(TinyCNN3D(n_outputs=2).state_dict(), weights)
    data = {
        "architecture": TINY,
        "kwargs": {"n_outputs": 2},
        "weights": "weights.pt",
        "input": {
            "space": "MNI152NLin2009aSym",
            "resolution_mm": 4,
            "shape": [16, 16, 16],
            "normalization": "zscore",
            "mask": "nonzero",
        },
        "outputs": ["control", "lesion"],
        "task": "classification",
    }
    data.update(overrides)
    data = {key: value for key, value in data.items() if value is not None}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


class _Payload:
    """A custom class: pickling it stores a reference to code, which weights_only refuses."""

    def __init__(self):
        self.tensor = torch.zeros(3)


# ------------------------------------------------------------------------------------------
# Specs


def test_spec_loading_resolves_weights_and_defaults(tmp_path):
    (tmp_path / "specs").mkdir()
    spec_path = write_spec(tmp_path / "specs", name="lesionNet", weights="../weights.pt")
    torch.save(TinyCNN3D().state_dict(), tmp_path / "weights.pt")
    # Weights outside the spec's folder need the opt-in (tests/test_model_trust.py).
    spec = load_model_spec(spec_path, external_weights=True)

    assert spec.weights == (tmp_path / "weights.pt").absolute()
    assert spec.name == "lesionNet"  # the JSON stem when no "name" is given
    assert spec.input.resolution_mm == (4.0, 4.0, 4.0)
    assert spec.input.shape == (16, 16, 16)
    assert spec.input.mask == "nonzero"
    assert spec.input.orientation == "RAS"
    assert spec.outputs == ("control", "lesion")
    assert spec.path == spec_path.absolute()


def test_spec_round_trip(tmp_path):
    torch.save(TinyCNN3D().state_dict(), tmp_path / "w.pt")
    spec = ModelSpec(
        architecture=TINY,
        kwargs={"n_outputs": 3, "width": 4},
        weights=(tmp_path / "w.pt").absolute(),
        input=InputSpec("MNI152NLin2009aSym", (2.0, 2.0, 2.5), (24, 28, 20), "minmax", None, "LAS"),
        outputs=("a", "b", "c"),
        task="classification",
        name="roundTrip",
        weights_sha256="ab" * 32,
    )
    path = save_model_spec(spec, tmp_path / "sub" / "spec.json")
    written = json.loads(path.read_text())
    assert written["weights"] == "../w.pt"  # relative to the JSON, so both can move together
    assert written["input"]["resolution_mm"] == [2.0, 2.0, 2.5]
    assert load_model_spec(path, external_weights=True) == spec  # ../ leaves the spec's folder


def test_load_model_reproduces_the_saved_model(tmp_path):
    spec_path = write_spec(tmp_path)
    torch.manual_seed(0)
    reference = TinyCNN3D(n_outputs=2).eval()
    model = load_model(spec_path)
    assert not model.training
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_load_model_monai_class_and_wrapped_checkpoint(tmp_path):
    nets = pytest.importorskip("monai.networks.nets")
    kwargs = dict(
        spatial_dims=3, in_channels=1, out_channels=2, init_features=4, growth_rate=4,
        block_config=[2, 2], bn_size=2,
    )
    torch.manual_seed(1)
    reference = nets.DenseNet(**kwargs).eval()
    # A training checkpoint saved from DataParallel: wrapped and with "module." prefixes.
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    torch.save(wrapped, tmp_path / "weights.pt")
    spec_path = write_spec(
        tmp_path, architecture="monai.networks.nets:DenseNet", kwargs=kwargs
    )
    model = load_model(spec_path)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_weights_sha256_matches_hashlib_and_is_checked(tmp_path):
    write_spec(tmp_path)
    expected = hashlib.sha256((tmp_path / "weights.pt").read_bytes()).hexdigest()
    assert weights_sha256(tmp_path / "weights.pt") == expected

    good = write_spec(tmp_path, name="good", weights_sha256=expected)
    assert isinstance(load_model(good), TinyCNN3D)
    bad = write_spec(tmp_path, name="tampered", weights_sha256="0" * 64)
    pattern = r"^tampered\.json: weights file weights\.pt does not match weights_sha256 in the spec"
    with pytest.raises(ModelSpecError, match=pattern) as info:
        load_model(bad)
    assert expected not in str(info.value)  # the file's own digest is never shown


def _not_json(path: Path) -> Path:
    path.write_text('{"architecture": "x:Y", ')
    return path


@pytest.mark.parametrize(
    "make_spec, problem",
    [
        (lambda d: _not_json(d / "broken.json"), r"not valid JSON \(line 1"),
        (lambda d: d / "absent.json", r"model spec not found"),
        (lambda d: write_spec(d, name="nokeys", task=None), r"missing required key\(s\) \['task'\]"),
        (
            lambda d: write_spec(d, name="nonorm", input={"space": "X", "resolution_mm": 2,
                                                          "shape": [8, 8, 8]}),
            r"'input' is missing key\(s\) \['normalization'\]",
        ),
        (
            lambda d: write_spec(d, name="badnorm", input={"space": "X", "resolution_mm": 2,
                                                           "shape": [8, 8, 8],
                                                           "normalization": "robust"}),
            r"'input.normalization' must be one of",
        ),
        (lambda d: write_spec(d, name="badtask", task="segmentation"), r"'task' must be one of"),
    ],
)
def test_invalid_spec_files_name_the_file(tmp_path, make_spec, problem):
    path = make_spec(tmp_path)
    with pytest.raises(ModelSpecError, match=rf"^{path.name}: .*{problem}"):
        load_model_spec(path)


def test_missing_module_and_missing_class(tmp_path):
    no_module = write_spec(tmp_path, name="nomodule", architecture="lab_models.nets:BrainNet")
    pattern = r"^nomodule\.json: .*cannot import module 'lab_models\.nets'"
    with pytest.raises(ModelSpecError, match=pattern):
        load_model(no_module, trust_code=True)  # outside the allow-list: refused without trust
    no_class = write_spec(tmp_path, name="noclass", architecture="nipype_xai.models.architectures:ResNet")
    with pytest.raises(ModelSpecError, match=r"^noclass\.json: .*has no class 'ResNet'"):
        load_model(no_class)
    not_module = write_spec(tmp_path, name="notmodule", architecture="json:dumps")
    with pytest.raises(ModelSpecError, match=r"^notmodule\.json: .*not a torch\.nn\.Module class"):
        load_model(not_module, trust_code=True)


def test_missing_weights(tmp_path):
    path = write_spec(tmp_path, name="noweights", weights="gone/weights.pt")
    with pytest.raises(ModelSpecError, match=r"^noweights\.json: weights file not found: .*gone"):
        load_model(path)


def test_weights_of_the_wrong_shape_name_the_tensor(tmp_path):
    torch.save(TinyCNN3D(n_outputs=2, width=4).state_dict(), tmp_path / "narrow.pt")
    path = write_spec(tmp_path, name="wrongshape", weights="narrow.pt")  # spec says width 8
    with pytest.raises(ModelSpecError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith("wrongshape.json: weights file narrow.pt does not fit")
    assert "tensor 'features.0.weight' has shape (4, 1, 3, 3, 3) in the file but (8, 1, 3, 3, 3)" in message


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    state = TinyCNN3D().state_dict()
    state["extra.weight"] = state.pop("classifier.bias")
    torch.save(state, tmp_path / "renamed.pt")
    path = write_spec(tmp_path, name="renamed", weights="renamed.pt")
    pattern = r"missing tensor\(s\) \['classifier\.bias'\].*unexpected tensor\(s\) \['extra\.weight'\]"
    with pytest.raises(ModelSpecError, match=pattern):
        load_model(path)


def test_pickled_objects_are_refused_never_unpickled(tmp_path):
    torch.save({"payload": _Payload()}, tmp_path / "pickled.pt")
    path = write_spec(tmp_path, name="pickled", weights="pickled.pt")
    with pytest.raises(ModelSpecError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith("pickled.json: weights file pickled.pt contains pickled code/objects")
    assert "_Payload" in message
    assert "weights_only=True" in message


def test_corrupt_weights_file(tmp_path):
    torch.save(TinyCNN3D().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    path = write_spec(tmp_path, name="cut", weights="cut.pt")
    with pytest.raises(ModelSpecError, match=r"^cut\.json: cannot read weights file cut\.pt"):
        load_model(path)


def test_output_count_must_match_outputs(tmp_path):
    path = write_spec(tmp_path, name="threenames", outputs=["a", "b", "c"])
    pattern = r"^threenames\.json: the model has 2 output\(s\) but 'outputs' names 3"
    with pytest.raises(ModelSpecError, match=pattern):
        load_model(path)


def test_input_shape_too_small_for_the_architecture(tmp_path):
    torch.save(SFCN(n_outputs=2).state_dict(), tmp_path / "sfcn.pt")
    path = write_spec(
        tmp_path, name="small", architecture="nipype_xai.models.architectures:SFCN",
        kwargs={"n_outputs": 2}, weights="sfcn.pt",
    )  # 16³ input: five 2× poolings leave nothing
    pattern = r"^small\.json: .*cannot run on the spec's input shape \(1, 1, 16, 16, 16\)"
    with pytest.raises(ModelSpecError, match=pattern):
        load_model(path)


# ------------------------------------------------------------------------------------------
# Architectures


def test_sfcn_has_the_published_layer_plan():
    model = SFCN(n_outputs=40).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 256, 64, 40]
    assert [c.kernel_size for c in convs] == [(3, 3, 3)] * 5 + [(1, 1, 1)] * 2
    assert [c.padding for c in convs] == [(1, 1, 1)] * 5 + [(0, 0, 0)] * 2
    assert sum(isinstance(m, nn.MaxPool3d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) == 6
    assert [type(m) for m in model.feature_extractor.conv_0] == [
        nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ReLU
    ]
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert model.classifier.dropout.p == 0.5
    # Parameter count by hand: conv weights + biases, batch norm affine, classifier conv.
    convs_hand = (1 * 32 * 27 + 32) + (32 * 64 * 27 + 64) + (64 * 128 * 27 + 128) + (
        128 * 256 * 27 + 256) + (256 * 256 * 27 + 256) + (256 * 64 + 64)
    batch_norm_hand = 2 * (32 + 64 + 128 + 256 + 256 + 64)
    assert sum(p.numel() for p in model.parameters()) == convs_hand + batch_norm_hand + 64 * 40 + 40
    # The released weights' names (DataParallel prefix removed).
    assert "feature_extractor.conv_5.0.weight" in model.state_dict()
    assert "classifier.conv_6.weight" in model.state_dict()


def test_sfcn_forward_gives_logits_per_sample():
    torch.manual_seed(0)
    model = SFCN(n_outputs=3, channel_number=[4, 4, 8, 8, 8, 4]).eval()
    x = torch.randn(2, 1, 32, 40, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3)
    # Raw logits, not log-probabilities: they do not log-sum-exp to 0.
    assert not torch.allclose(torch.logsumexp(out, 1), torch.zeros(2), atol=1e-3)


def test_sfcn_adaptive_pool_equals_the_published_window():
    torch.manual_seed(0)
    model = SFCN(n_outputs=4).eval()
    features = torch.randn(2, 64, 5, 6, 5)  # the feature grid of a 160x192x160 input
    published = model.classifier.conv_6(nn.AvgPool3d([5, 6, 5])(features)).flatten(1)
    with torch.no_grad():
        torch.testing.assert_close(model.classifier(features).flatten(1), published)


@pytest.mark.parametrize("size", [12, 16, 21])
def test_tiny_cnn_runs_on_small_volumes(size):
    model = TinyCNN3D(in_channels=2, n_outputs=3, width=4).eval()
    assert model(torch.zeros(2, 2, size, size, size)).shape == (2, 3)
    assert all(isinstance(m, nn.ReLU) and not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


# ------------------------------------------------------------------------------------------
# Preprocessing


def _spec(resolution=2.0, shape=(40, 48, 40), normalization="none", mask=None, orientation="RAS"):
    return ModelSpec(
        architecture=TINY, kwargs={}, weights=Path("/nonexistent.pt"),
        input=InputSpec("MNI152NLin2009aSym", (resolution,) * 3, shape, normalization, mask,
                        orientation),
        outputs=("a", "b"), task="classification", name="test",
    )


def _world_grid(affine, shape):
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return nib.affines.apply_affine(affine, ijk)


def _smooth(world):
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    return 100 + 40 * np.sin(x / 25.0) * np.cos(y / 30.0) + 0.3 * z


def test_model_grid_round_trip_of_a_smooth_volume():
    # LAS image at 3 mm with an origin off the centre: orientation, voxel size and translation all
    # differ from the 2 mm RAS model grid.
    affine = np.array([[-3.0, 0, 0, 50], [0, 3, 0, -70], [0, 0, 3, -40], [0, 0, 0, 1]])
    shape = (34, 40, 32)
    img = nib.Nifti1Image(_smooth(_world_grid(affine, shape)).astype(np.float32), affine)
    spec = _spec(shape=(44, 52, 40))

    x, grid = to_model_grid(img, spec)
    assert x.shape == (1, 1, 44, 52, 40) and x.dtype == torch.float32
    # The model grid samples the same function of world coordinates.
    np.testing.assert_allclose(
        x[0, 0].numpy(), _smooth(_world_grid(grid.affine, grid.shape)), atol=0.5
    )
    back = from_model_grid(x[0, 0], grid, img)
    assert back.shape == shape
    np.testing.assert_array_equal(back.affine, affine)

    # Image voxels in model-grid voxel coordinates: compare a voxel inside the model grid's border;
    # beyond its edge there is no data, and the map is 0.
    in_grid = nib.affines.apply_affine(np.linalg.inv(grid.affine), _world_grid(affine, shape))
    inside = np.all((in_grid >= 1) & (in_grid <= np.array(grid.shape) - 2), axis=-1)
    outside = np.any((in_grid < -1) | (in_grid > np.array(grid.shape)), axis=-1)
    assert inside.sum() > 0.4 * inside.size and outside.sum() > 0
    error = np.abs(back.get_fdata()[inside] - img.get_fdata()[inside])
    assert error.max() < 0.5  # of a 160-wide range
    assert np.all(back.get_fdata()[outside] == 0)


def test_model_grid_keeps_world_coordinates():
    # Permuted, flipped axes at 2.5 mm: array axis 0 runs along world y, axis 1 along -x.
    affine = np.array([[0, -2.5, 0, 60], [2.5, 0, 0, -80], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    shape = (60, 48, 44)
    blob_world = np.array([10.0, -20.0, 15.0])
    world = _world_grid(affine, shape)
    data = np.exp(-np.sum((world - blob_world) ** 2, -1) / (2 * 6.0**2)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)

    x, grid = to_model_grid(img, _spec(shape=(40, 48, 40)))
    volume = x[0, 0].numpy()
    peak = np.unravel_index(np.argmax(volume), volume.shape)
    np.testing.assert_allclose(nib.affines.apply_affine(grid.affine, peak), blob_world, atol=1.0)
    weights = volume / volume.sum()
    centre_of_mass = np.tensordot(weights, _world_grid(grid.affine, grid.shape), axes=3)
    np.testing.assert_allclose(centre_of_mass, blob_world, atol=0.3)
    # RAS grid at the spec's resolution.
    np.testing.assert_allclose(np.diag(grid.affine)[:3], [2, 2, 2])


def test_same_axes_is_an_exact_centre_crop_and_pad():
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-50, -60, -40]
    data = rng.uniform(1, 10, size=(51, 30, 44)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    x, grid = to_model_grid(img, _spec(shape=(40, 48, 40)))
    volume = x[0, 0].numpy()
    # Voxel (i, j, k) of the model grid is voxel offset + (i, j, k) of the image: no interpolation.
    offset = np.linalg.solve(affine, grid.affine)[:3, 3]
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-6)
    ox, oy, oz = np.round(offset).astype(int)
    assert (ox, oz) == (6, 2)  # (51 - 40) / 2 and (44 - 40) / 2, rounded
    np.testing.assert_array_equal(volume[:, -oy:-oy + 30, :], data[ox:ox + 40, :, oz:oz + 40])
    assert np.all(volume[:, : -oy, :] == 0) and np.all(volume[:, -oy + 30:, :] == 0)  # padding


def test_normalization_over_nonzero_voxels():
    rng = np.random.default_rng(0)
    data = np.zeros((10, 10, 10), np.float32)
    data[2:8, 2:8, 2:8] = rng.normal(50, 10, size=(6, 6, 6))
    z = normalize_intensity(data, "zscore", "nonzero")
    brain = data != 0
    assert abs(z[brain].mean()) < 1e-5 and abs(z[brain].std() - 1) < 1e-5
    assert np.all(z[~brain] == 0)
    z_all = normalize_intensity(data, "zscore", None)
    assert abs(z_all.mean()) < 1e-5 and z_all[0, 0, 0] < 0
    minmax = normalize_intensity(data, "minmax", "nonzero")
    assert minmax[brain].min() == 0 and abs(minmax[brain].max() - 1) < 1e-6
    np.testing.assert_array_equal(normalize_intensity(data, "none"), data)
    with pytest.raises(ValueError, match="no nonzero voxel"):
        normalize_intensity(np.zeros((4, 4, 4)), "zscore", "nonzero")


def test_to_model_grid_applies_the_spec_normalization():
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    data = np.zeros((16, 16, 16), np.float32)
    data[4:12, 4:12, 4:12] = np.random.default_rng(1).uniform(100, 200, size=(8, 8, 8))
    x, _ = to_model_grid(nib.Nifti1Image(data, affine),
                         _spec(4.0, (16, 16, 16), "zscore", "nonzero"))
    inside = x[0, 0][4:12, 4:12, 4:12]
    assert abs(float(inside.mean())) < 1e-4 and abs(float(inside.std(unbiased=False)) - 1) < 1e-4
    assert float(x.abs().sum()) == pytest.approx(float(inside.abs().sum()))


# ------------------------------------------------------------------------------------------
# Inference cores


def test_single_logit_classifier_probabilities(tmp_path):
    class OneLogit(nn.Module):
        def forward(self, x):
            return x.mean(dim=(1, 2, 3, 4))[:, None]

    spec = _spec(4.0, (8, 8, 8))
    x = torch.full((2, 1, 8, 8, 8), 0.5)
    x[1] = -2.0
    first, second = predict(OneLogit(), x, spec)
    assert first.probabilities == pytest.approx((1 - torch.sigmoid(torch.tensor(0.5)).item(),
                                                 torch.sigmoid(torch.tensor(0.5)).item()))
    assert (first.predicted_index, first.predicted_label) == (1, "b")
    assert (second.predicted_index, second.predicted_label) == (0, "a")
    assert first.as_row() == pytest.approx(
        {"a": first.probabilities[0], "b": first.probabilities[1], "predicted_label": "b",
         "predicted_index": 1}
    )


def test_explain_image_rejects_a_target_out_of_range(tmp_path):
    spec = load_model_spec(write_spec(tmp_path))
    model = load_model(spec)
    img = nib.Nifti1Image(np.random.default_rng(0).uniform(1, 2, (16, 16, 16)).astype(np.float32),
                          np.diag([4.0, 4.0, 4.0, 1.0]))
    pattern = r"model\.json: target 2 out of range for outputs \['control', 'lesion'\]"
    with pytest.raises(TargetError, match=pattern):
        explain_image(model, spec, img, ["gradient"], target=2)
    explanation = explain_image(model, spec, img, ["gradient"], target=0)
    assert explanation.target == 0 and explanation.target_label == "control"
    assert explanation.maps["gradient"].shape == (16, 16, 16)


def test_explain_image_needs_a_target_for_several_regression_outputs(tmp_path):
    spec = load_model_spec(write_spec(tmp_path, task="regression", outputs=["age", "volume"]))
    model = load_model(spec)
    img = nib.Nifti1Image(np.random.default_rng(0).uniform(1, 2, (16, 16, 16)).astype(np.float32),
                          np.diag([4.0, 4.0, 4.0, 1.0]))
    with pytest.raises(TargetError, match=r"2 regression outputs \['age', 'volume'\]; give the target"):
        explain_image(model, spec, img, ["gradient"])
    explanation = explain_image(model, spec, img, ["gradient"], target=1)
    assert (explanation.target, explanation.target_label) == (1, "volume")
    assert explanation.prediction.as_row().keys() == {"age", "volume"}


def test_tinycnn3d_pooling_heads():
    """avg/max pool the last feature map; none flattens it into the classifier (by hand)."""
    from nipype_xai.models.architectures import TinyCNN3D

    torch.manual_seed(0)
    x = torch.randn(2, 1, 20, 24, 16)
    for pooling in ("avg", "max"):
        model = TinyCNN3D(n_outputs=3, width=4, n_blocks=2, pooling=pooling).eval()
        features = model.features(x)
        pooled = features.mean(dim=(2, 3, 4)) if pooling == "avg" else features.amax(dim=(2, 3, 4))
        torch.testing.assert_close(model(x), model.classifier(pooled))
    model = TinyCNN3D(n_outputs=3, width=4, n_blocks=2, pooling="none", input_shape=(20, 24, 16),
                      dropout=0.5).eval()
    features = model.features(x)
    assert features.shape[2:] == (5, 6, 4)
    torch.testing.assert_close(model(x), model.classifier(features.flatten(1)))  # no dropout in eval
    with pytest.raises(ValueError, match="input_shape"):
        TinyCNN3D(pooling="none")
    with pytest.raises(ValueError, match="too small"):
        TinyCNN3D(n_blocks=4, pooling="none", input_shape=(8, 32, 32))
    with pytest.raises(ValueError, match="pooling"):
        TinyCNN3D(pooling="median")


def test_monai_resnet_wrapper_matches_monai_and_pools_by_max():
    nets = pytest.importorskip("monai.networks.nets")
    from nipype_xai.models import MonaiResNet

    kwargs = {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [2, 4, 4, 8],
              "spatial_dims": 3,
              "n_input_channels": 1, "conv1_t_size": 3, "num_classes": 2,
              "act": ("relu", {"inplace": False})}
    torch.manual_seed(0)
    reference = nets.ResNet(**kwargs).eval()
    x = torch.randn(2, 1, 16, 18, 16)
    averaged = MonaiResNet(pooling="avg", **kwargs).eval()
    averaged.net.load_state_dict(reference.state_dict())
    torch.testing.assert_close(averaged(x), reference(x))

    maxed = MonaiResNet(pooling="max", **kwargs).eval()
    maxed.load_state_dict(averaged.state_dict())  # same weights: pooling has none
    net = reference
    with torch.no_grad():
        h = net.maxpool(net.act(net.bn1(net.conv1(x))))
        h = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        expected = net.fc(h.amax(dim=(2, 3, 4)))
    torch.testing.assert_close(maxed(x), expected)
    with pytest.raises(ValueError, match="pooling"):
        MonaiResNet(pooling="median", **kwargs)
