"""GradientSHAP (expected gradients) and DeepLIFT-SHAP against captum, their efficiency axiom, the
background fallback, and the background set's draw and file (CPU, seconds).

References and tolerances:

- gradient_shap vs captum ``GradientShap`` fed our draws (captum draws the background index with
  ``np.random.choice`` and alpha with ``np.random.uniform``; the test hands it ours): the same
  computation, so float32 rounding only: |difference| <= 1e-4 relative + 1e-5 of the map's
  largest value.
- deeplift_shap vs captum ``DeepLiftShap`` with the same background, on nets where captum's
  DeepLift is exact (no max pooling, each ReLU used once): same tolerance.
- Efficiency: deeplift_shap's map sums to y_t(x) - mean_b y_t(b) within 1e-4 of it plus 1e-6 of
  sum|a| (float32), on the bundled model and a MONAI ResNet (max pooling, a reused ReLU: captum's
  DeepLiftShap itself cannot run there); gradient_shap's in expectation, within 4 Monte-Carlo
  standard errors measured from independent single draws.
"""

from __future__ import annotations

import copy
import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from captum.attr import DeepLift, DeepLiftShap, GradientShap
from torch import nn

from conftest import TinyNet3D, randomize_batchnorm
from nipype_xai.attribution import attribute, attribute_many, method_defaults
from nipype_xai.attribution.engine import AttributionWarning
from nipype_xai.attribution.model_state import forward
from nipype_xai.attribution.perturbation_baseline import perturbation_baseline
from nipype_xai.attribution.shap_gradients import BACKGROUND_FALLBACK
from nipype_xai.images import ImageError
from nipype_xai.models import load_model, load_model_spec, to_model_grid
from nipype_xai.models.background import (
    choose_background,
    load_background,
    prepare_background,
    write_background,
)
from nipype_xai.models.bundled import bundled_model_spec
from nipype_xai.models.preprocessing import model_grid_for

RTOL, ATOL_SHARE = 1e-4, 1e-5
SUM_RTOL, MASS_SHARE = 1e-4, 1e-6

pytestmark = [
    pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require:UserWarning"),
]


def assert_maps_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    atol = ATOL_SHARE * float(reference.abs().max())
    torch.testing.assert_close(ours, reference.to(ours.dtype), rtol=RTOL, atol=atol)


def batch(n: int, shape=(12, 12, 12), seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, *shape, generator=torch.Generator().manual_seed(seed))


def target_outputs(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return forward(model, x).double().gather(1, target.reshape(-1, 1))[:, 0]


class _PlainNet(nn.Module):
    """Conv-BN-ReLU, average pooling, Conv-ReLU, global mean, Linear: no max pooling and each
    ReLU called once, where captum's DeepLift (and DeepLiftShap) is exact."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.AvgPool3d(2),
            nn.Conv3d(4, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3, 4)))


# ---- gradient_shap against captum GradientShap --------------------------------------------------


def gradient_shap_draws(n_inputs: int, n_background: int, n_samples: int, seed: int):
    """The draws gradient_shap makes without noise, as its docstring states them: per sample,
    its background indices, then its alphas, from a generator seeded with ``seed`` at every
    sample (a sample's draws are those of a batch of one)."""
    generator = torch.Generator()
    chosen, alphas = [], []
    for _ in range(n_inputs):
        generator.manual_seed(seed)
        chosen.append(torch.randint(n_background, (n_samples,), generator=generator))
        alphas.append(torch.rand((n_samples,), generator=generator, dtype=torch.float64))
    return torch.cat(chosen).numpy(), torch.cat(alphas).numpy()


def captum_gradient_shap(model, x, background, target, n_samples, seed, monkeypatch):
    """captum's GradientShap with gradient_shap's draws in place of numpy's global ones."""
    chosen, alphas = gradient_shap_draws(x.shape[0], background.shape[0], n_samples, seed)
    calls = []

    def choice(n, size):
        calls.append("choice")
        assert (n, size) == (background.shape[0], chosen.size)
        return chosen.copy()

    def uniform(low, high, size):
        calls.append("uniform")
        assert size == alphas.size
        return alphas.copy()

    with monkeypatch.context() as patch:
        patch.setattr(np.random, "choice", choice)
        patch.setattr(np.random, "uniform", uniform)
        maps = GradientShap(lambda inputs: forward(model, inputs)).attribute(
            x.clone().requires_grad_(True), baselines=background, n_samples=n_samples,
            stdevs=0.0, target=target)
    assert calls == ["choice", "uniform"]  # captum drew once each: every draw was ours
    return maps.detach()


@pytest.mark.parametrize("net", ["tiny", "monai_resnet"])
def test_gradient_shap_is_captums_with_the_same_draws(net, monkeypatch, request):
    model = (randomize_batchnorm(TinyNet3D()) if net == "tiny"
             else request.getfixturevalue("monai_resnet")).eval()
    size = 12 if net == "tiny" else 16
    x, background = batch(2, (size,) * 3), batch(5, (size,) * 3, seed=2)
    target = torch.tensor([0, 1])
    ours = attribute(model, x, "gradient_shap", target=target, background=background,
                     n_samples=6, seed=4, batch_size=5)
    reference = captum_gradient_shap(model, x, background, target, 6, 4, monkeypatch)
    assert_maps_close(ours, reference)
    # Not the trivial agreement of two zero maps, and not independent of the draws.
    assert float(ours.abs().max()) > 0
    other = captum_gradient_shap(model, x, background, target, 6, 5, monkeypatch)
    assert not torch.allclose(ours, other, rtol=RTOL, atol=1e-3 * float(other.abs().max()))


@pytest.fixture(scope="module")
def bundled():
    """The bundled lesion model; two inputs (its mean training image, and the same with a dark
    blob in the white matter) and a background of three shifted, noisy copies of the mean."""
    spec = load_model_spec(bundled_model_spec("lesion"))
    mean = torch.from_numpy(np.array(spec.input_summary.mean_image, dtype=np.float32))
    x = mean[None, None].repeat(2, 1, 1, 1, 1)
    i, j, k = torch.meshgrid(*(torch.arange(n) for n in mean.shape), indexing="ij")
    x[1, 0][((i - 30) ** 2 + (j - 30) ** 2 + (k - 28) ** 2) <= 4] -= 2.0
    generator = torch.Generator().manual_seed(0)
    background = torch.stack([
        torch.roll(mean, shifts, dims=(0, 1, 2))
        + 0.1 * torch.randn(mean.shape, generator=generator) * (mean != 0)
        for shifts in [(1, 0, 0), (0, -1, 1), (0, 0, 0)]])[:, None]
    return load_model(spec), x, background


def test_gradient_shap_on_the_bundled_model_is_captums(bundled, monkeypatch):
    model, x, background = bundled
    target = torch.tensor([1, 1])
    ours = attribute(model, x, "gradient_shap", target=target, background=background,
                     n_samples=3, seed=0, batch_size=4)
    reference = captum_gradient_shap(model, x, background, target, 3, 0, monkeypatch)
    assert_maps_close(ours, reference)


def test_gradient_shap_does_not_depend_on_batch_size_and_is_reproducible(tiny_net, volume):
    background = batch(4, seed=2)
    maps = {size: attribute(tiny_net, volume, "gradient_shap", background=background,
                            n_samples=7, seed=3, batch_size=size, stdevs=0.2)
            for size in (1, 4, 16)}
    again = attribute(tiny_net, volume, "gradient_shap", background=background, n_samples=7,
                      seed=3, batch_size=4, stdevs=0.2)
    assert torch.equal(maps[4], again)  # bit-reproducible with the same seed
    for size in (1, 16):
        torch.testing.assert_close(maps[size], maps[4], rtol=1e-5, atol=1e-7)
    other = attribute(tiny_net, volume, "gradient_shap", background=background, n_samples=7,
                      seed=4, batch_size=4, stdevs=0.2)
    assert not torch.allclose(other, maps[4])


def test_gradient_shap_of_a_linear_model_is_its_closed_form(volume):
    """y = w·x + c: every gradient is w, so a one-sample background b gives (x - b)·w exactly,
    whatever alpha; with input noise the mean over draws of (x + e - b)·w."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12 ** 3, 2)).eval()
    w = model[1].weight.detach()[1].reshape(1, 1, 12, 12, 12)
    b = batch(1, seed=7)
    maps = attribute(model, volume, "gradient_shap", target=1, background=b, n_samples=5)
    torch.testing.assert_close(maps, (volume - b) * w, rtol=1e-5, atol=1e-7)
    # Noise adds mean_s(e_s)·w: unbiased, and its size is stdevs / sqrt(n_samples) per voxel.
    n = 400
    noisy = attribute(model, volume, "gradient_shap", target=1, background=b, n_samples=n,
                      stdevs=0.5)
    mean_noise = (noisy - (volume - b) * w) / w
    assert abs(float(mean_noise.mean())) < 4 * 0.5 / np.sqrt(n * volume.numel())
    assert float(mean_noise.std()) == pytest.approx(0.5 / np.sqrt(n), rel=0.05)


def test_gradient_shap_completeness_in_expectation(tiny_net, volume):
    """Sum of the map -> y_t(x) - mean_b y_t(b) (SHAP's efficiency) on a piecewise-linear net,
    within 4 standard errors estimated from 64 independent single draws."""
    background = batch(3, seed=2)
    target = torch.tensor([1, 0])
    singles = torch.stack([
        attribute(tiny_net, volume, "gradient_shap", target=target, background=background,
                  n_samples=1, seed=seed).double().sum((1, 2, 3, 4))
        for seed in range(64)])
    n = 512
    sums = attribute(tiny_net, volume, "gradient_shap", target=target, background=background,
                     n_samples=n, seed=1000, batch_size=64).double().sum((1, 2, 3, 4))
    expected = (target_outputs(tiny_net, volume, target)
                - torch.stack([target_outputs(tiny_net, background, torch.full((3,), t))
                               for t in target.tolist()]).mean(1))
    standard_error = singles.std(0) / np.sqrt(n)
    assert bool(((sums - expected).abs() <= 4 * standard_error).all()), (
        sums.tolist(), expected.tolist(), standard_error.tolist())
    # The check can fail: the spread of single draws dwarfs the tolerance.
    assert bool((singles.std(0) > 10 * standard_error).all())


# ---- deeplift_shap ------------------------------------------------------------------------------


def test_deeplift_shap_is_captums_where_captum_is_exact():
    model = _PlainNet().eval()
    randomize_batchnorm(model)
    x, background = batch(3), batch(4, seed=2)
    target = torch.tensor([0, 2, 1])
    ours = attribute(model, x, "deeplift_shap", target=target, background=background,
                     batch_size=6)
    reference = DeepLiftShap(copy.deepcopy(model)).attribute(
        x.clone().requires_grad_(True), baselines=background, target=target).detach()
    assert_maps_close(ours, reference)
    # It is the mean of DeepLIFT against each background sample, not DeepLIFT against their mean.
    against_mean = DeepLift(copy.deepcopy(model)).attribute(
        x.clone().requires_grad_(True), baselines=background.mean(0, keepdim=True),
        target=target).detach()
    assert not torch.allclose(ours, against_mean, rtol=1e-2, atol=1e-3 * float(
        against_mean.abs().max()))


def assert_efficiency(model, x, background, target, **params) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttributionWarning)
        maps = attribute(model, x, "deeplift_shap", target=target, background=background,
                         **params)
    target = torch.as_tensor(target).expand(x.shape[0])
    expected = (target_outputs(model, x, target)
                - torch.stack([target_outputs(model, background,
                                              torch.full((background.shape[0],), t))
                               for t in target.tolist()]).mean(1))
    sums = maps.double().sum((1, 2, 3, 4))
    mass = maps.double().abs().sum((1, 2, 3, 4))
    assert bool(((sums - expected).abs() <= SUM_RTOL * expected.abs() + MASS_SHARE * mass).all()
                ), (sums.tolist(), expected.tolist())
    return maps


def test_deeplift_shap_efficiency_on_the_bundled_model(bundled):
    # Adaptive max pooling (captum has no rule) in a real-shaped input; the lesion logit.
    model, x, background = bundled
    assert_efficiency(model, x, background, 1, batch_size=6)


def test_deeplift_shap_efficiency_on_a_monai_resnet(monai_resnet):
    # Max pooling in the stem, one ReLU module called twice per block: captum's DeepLiftShap
    # refuses the reuse and misses the sums at the pooling; ours keeps them.
    x, background = batch(2, (16,) * 3), batch(3, (16,) * 3, seed=2)
    maps = assert_efficiency(monai_resnet, x, background, [1, 0], batch_size=4)
    # The mean of our DeepLIFT-SHAP against each background sample alone: the batching of
    # (sample, background) pairs changes nothing.
    one_by_one = torch.stack([
        attribute(monai_resnet, x, "deeplift_shap", target=[1, 0], background=b[None])
        for b in background]).mean(0)
    torch.testing.assert_close(maps, one_by_one, rtol=1e-4, atol=1e-6 * float(maps.abs().max()))


def test_deeplift_shap_says_when_efficiency_fails():
    class GeluNet(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.act, self.fc = nn.Conv3d(1, 4, 3, padding=1), nn.GELU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).mean((2, 3, 4)))

    x = batch(2, (8,) * 3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        maps = attribute_many(GeluNet().eval(), x, ["deeplift_shap", "gradient"], target=1,
                              method_params={"deeplift_shap": {"background": batch(3, (8,) * 3)}})
    found = [w.message for w in record if isinstance(w.message, AttributionWarning)]
    # One warning per sample whose map fails, each naming its sample.
    assert found and all(w.methods == ("deeplift_shap",) for w in found)
    assert all(len(w.samples) == 1 and f"sample {w.samples[0]}:" in str(w) for w in found)
    warning = found[0]
    assert "y_t(x) - mean_b y_t(b)" in str(warning) and "act (GELU)" in str(warning)
    assert maps["deeplift_shap"].shape == x.shape


# ---- the fallback and bad backgrounds -----------------------------------------------------------


@pytest.mark.parametrize("method", ["gradient_shap", "deeplift_shap"])
def test_without_a_background_each_sample_is_explained_against_its_blur(tiny_net, volume,
                                                                         method):
    for i in range(volume.shape[0]):
        one = volume[i:i + 1]
        fallback = attribute(tiny_net, one, method, target=1)
        explicit = attribute(tiny_net, one, method, target=1,
                             background=perturbation_baseline(one, "blur"))
        torch.testing.assert_close(fallback, explicit, rtol=1e-5, atol=1e-7)
    if method == "deeplift_shap":  # deterministic: in a batch, each sample against its own blur
        batched = attribute(tiny_net, volume, method, target=1)
        torch.testing.assert_close(batched[1:], attribute(tiny_net, volume[1:], method, target=1),
                                   rtol=1e-5, atol=1e-7)
    assert method_defaults(method)["background"] is None
    assert BACKGROUND_FALLBACK["N"] == 1 and "blur" in BACKGROUND_FALLBACK["Description"]


def test_deeplift_shap_fallback_sums_to_the_drop_from_the_blur(bundled):
    model, x, _ = bundled
    maps = attribute(model, x, "deeplift_shap", target=1)
    target = torch.tensor([1, 1])
    expected = (target_outputs(model, x, target)
                - target_outputs(model, perturbation_baseline(x, "blur"), target))
    torch.testing.assert_close(maps.double().sum((1, 2, 3, 4)), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["gradient_shap", "deeplift_shap"])
def test_bad_background(tiny_net, volume, method):
    with pytest.raises(ValueError, match=r"background: expected shape \(N, 1, 12, 12, 12\)"):
        attribute(tiny_net, volume, method, background=batch(2, (10, 12, 12)))
    with pytest.raises(ValueError, match=r"background: expected shape"):
        attribute(tiny_net, volume, method, background=volume[0])
    bad = batch(2)
    bad[1, 0, 3, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="background: contains NaN or Inf"):
        attribute(tiny_net, volume, method, background=bad)


# ---- the background set: draw, prepare, file ----------------------------------------------------


def test_choose_background_is_seeded_and_keeps_one_class():
    drawn = choose_background(20, 5, seed=3)
    assert drawn == choose_background(20, 5, seed=3) and drawn == sorted(set(drawn))
    assert len(drawn) == 5 and drawn != choose_background(20, 5, seed=4)
    assert choose_background(4, 10, seed=0) == [0, 1, 2, 3]  # fewer than n: all
    labels = ["control", "lesion"] * 5
    controls = choose_background(10, 3, seed=1, labels=labels, keep="control")
    assert len(controls) == 3 and all(labels[i] == "control" for i in controls)
    assert choose_background(10, 9, seed=1, labels=labels, keep="control") == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="no input with label 'atrophy'"):
        choose_background(10, 3, seed=1, labels=labels, keep="atrophy")
    with pytest.raises(ValueError, match="one label per input"):
        choose_background(10, 3, seed=1, labels=labels[:4], keep="control")


AFFINE_4MM = np.array([[4.0, 0, 0, -40], [0, 4, 0, -44], [0, 0, 4, -36], [0, 0, 0, 1]])


def write_spec(folder, shape=(12, 12, 12)):
    from nipype_xai.models import TinyCNN3D

    torch.manual_seed(0)
    torch.save(TinyCNN3D(n_outputs=2, width=4).state_dict(), folder / "tiny.pt")
    (folder / "tiny.json").write_text(json.dumps({
        "architecture": "nipype_xai.models.architectures:TinyCNN3D",
        "kwargs": {"n_outputs": 2, "width": 4}, "weights": "tiny.pt",
        "input": {"space": "MNI152NLin2009aSym", "resolution_mm": 4, "shape": list(shape),
                  "normalization": "zscore", "mask": "nonzero"},
        "outputs": ["control", "lesion"], "task": "classification"}))
    return load_model_spec(folder / "tiny.json")


def images(n, shape=(16, 16, 16), affine=AFFINE_4MM):
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid ** 2).sum(0) < 0.8
    return [(f"sub-{i:02d}_T1w.nii.gz",
             nib.Nifti1Image(np.where(brain, rng.normal(100, 10, shape), 0).astype(np.float32),
                             affine))
            for i in range(n)]


def test_background_file_round_trip(tmp_path):
    spec = write_spec(tmp_path)
    cohort = images(3)
    volumes, grid = prepare_background(iter(cohort), spec)
    # Each volume is the image prepared exactly as an explained image.
    for index, (_, img) in enumerate(cohort):
        x, image_grid = to_model_grid(img, spec)
        assert torch.equal(volumes[index:index + 1], x)
        np.testing.assert_array_equal(image_grid.affine, grid.affine)
    out, sidecar = write_background(tmp_path / "bg.nii.gz", volumes, grid, {"N": 3, "Seed": 0})
    assert nib.load(out).shape == (12, 12, 12, 3) and sidecar.name == "bg.json"
    loaded = load_background(out, spec, model_grid_for(cohort[0][1], spec))
    assert torch.equal(loaded.volumes, volumes) and loaded.n == 3
    assert loaded.sidecar == {"N": 3, "Seed": 0}
    assert loaded.sha256 == __import__("hashlib").sha256(out.read_bytes()).hexdigest()


def test_background_file_is_checked_against_the_model(tmp_path):
    spec = write_spec(tmp_path)
    volumes, grid = prepare_background(iter(images(2)), spec)
    out, _ = write_background(tmp_path / "bg.nii.gz", volumes, grid, {})
    (tmp_path / "other").mkdir()
    other = write_spec(tmp_path / "other", shape=(10, 12, 12))
    with pytest.raises(ImageError, match=r"^bg\.nii\.gz: background grid 12x12x12 is not the "
                                         r"model's input grid 10x12x12"):
        load_background(out, other, None)
    moved = AFFINE_4MM.copy()
    moved[0, 3] += 8.0  # two voxels: another field of view
    shifted = images(1, affine=moved)[0][1]
    with pytest.raises(ImageError, match=r"^bg\.nii\.gz: background grid \(origin .*\) is not "
                                         "the model grid of the explained image"):
        load_background(out, spec, model_grid_for(shifted, spec))
    # Voxel size and orientation.
    data = np.zeros((12, 12, 12, 2), np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2, 2, 1])), tmp_path / "2mm.nii.gz")
    with pytest.raises(ImageError, match="2mm.nii.gz: background voxels of 2x2x2 mm"):
        load_background(tmp_path / "2mm.nii.gz", spec)
    nib.save(nib.Nifti1Image(data, np.diag([-4.0, 4, 4, 1])), tmp_path / "las.nii.gz")
    with pytest.raises(ImageError, match="las.nii.gz: background orientation LAS"):
        load_background(tmp_path / "las.nii.gz", spec)
    data[0, 0, 0, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.diag([4.0, 4, 4, 1])), tmp_path / "nan.nii.gz")
    with pytest.raises(ImageError, match="nan.nii.gz: contains NaN or Inf"):
        load_background(tmp_path / "nan.nii.gz", spec)
    with pytest.raises(ImageError, match="missing.nii.gz: file not found"):
        load_background(tmp_path / "missing.nii.gz", spec)


def test_background_images_must_share_one_grid(tmp_path):
    spec = write_spec(tmp_path)
    first = images(1)[0]
    shifted = ("sub-09_T1w.nii.gz", images(1, shape=(20, 16, 16))[0][1])
    with pytest.raises(ImageError, match=r"^sub-09_T1w.nii.gz: its model grid is not "
                                         r"sub-00_T1w.nii.gz's"):
        prepare_background(iter([first, shifted]), spec)
