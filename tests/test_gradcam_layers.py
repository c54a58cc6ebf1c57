"""The Grad-CAM family's default layer: the rectified output of the last convolutional stage
(issue 15, defect 4), on every reference network and on the bundled model."""

import importlib

import pytest
import torch
from torch import nn

from nipype_xai.attribution import attribute
from nipype_xai.attribution.gradcam import _layer_activation_and_gradient, default_gradcam_layer
from nipype_xai.models.bundled import bundled_model_spec

from conftest import randomize_batchnorm


def _architecture(key: str, **overrides) -> nn.Module:
    from nipype_xai.benchmark.settings import ARCHITECTURES

    path, kwargs = ARCHITECTURES[key]
    module, name = path.split(":")
    torch.manual_seed(0)
    return getattr(importlib.import_module(module), name)(**{**kwargs, **overrides})


def _bundled() -> nn.Module:
    from nipype_xai.models import load_model, load_model_spec

    return load_model(load_model_spec(bundled_model_spec("lesion")))


def _sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 2))


def _densenet121() -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    return nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)


#: name: (model factory, input shape, the default layer). SFCN and DenseNet121 halve the grid
#: five times: 64³ leaves them a 2³ map.
REFERENCE_NETS = {
    "bundled TinyCNN3D": (_bundled, (48, 65, 48), "features.14"),
    "benchmark tinycnn": (lambda: _architecture("tinycnn"), (32, 32, 32), "features.14"),
    "benchmark sfcn": (lambda: _architecture("sfcn"), (64, 64, 64), "feature_extractor"),
    "benchmark resnet": (lambda: _architecture("resnet"), (32, 32, 32), "net.layer4"),
    "benchmark densenet": (lambda: _architecture("densenet"), (32, 32, 32), "class_layers.relu"),
    "MONAI DenseNet121": (_densenet121, (64, 64, 64), "class_layers.relu"),
    "nn.Sequential": (_sequential, (16, 16, 16), "5"),
}


@pytest.mark.parametrize("name", list(REFERENCE_NETS))
def test_default_layer_is_rectified_on_every_reference_net(name):
    pytest.importorskip("monai")
    factory, shape, expected = REFERENCE_NETS[name]
    model = randomize_batchnorm(factory())
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    layer = default_gradcam_layer(model, x)
    activation, _ = _layer_activation_and_gradient(model, x, torch.tensor([1]), layer)
    assert activation.shape[2:].numel() > 1
    assert float(activation.min()) >= 0, f"{layer} is signed"
    assert float(activation.max()) > 0
    assert layer == expected


def test_layer_argument_still_overrides(tiny_net, volume):
    signed = attribute(tiny_net, volume, "gradcam_pp", layer="features.4")
    assert not torch.allclose(signed, attribute(tiny_net, volume, "gradcam_pp"))


def test_bundled_model_grad_cam_family_on_synthetic_lesions():
    """On synthetic lesion subjects at the bundled model's 4 mm, explaining the predicted class:
    the default layer is >= 0, so Grad-CAM++'s α = 1 / (2 + (Σ A)·g) lies in (0, 1/2] wherever
    g > 0, and no Grad-CAM or Grad-CAM++ map is all zero.

    On the last Conv3d (the old default) A reached -48, 2 + (Σ A)·g was as low as -21 (<= 0 for
    41 % of the positive-gradient entries of the three positives: α negative or infinite), and
    Grad-CAM was all zero for every subject predicted "control" (subject 1 and the control)."""
    from nipype_xai.models import load_model, load_model_spec
    from nipype_xai.models.preprocessing import to_model_grid
    from nipype_xai.synth import (
        apply_displacement_field,
        load_template_anatomy,
        make_subject,
        subject_seed,
    )

    spec = load_model_spec(bundled_model_spec("lesion"))
    model = load_model(spec)
    anatomy = load_template_anatomy(4.0)
    inputs = []
    for index, label in [(0, 1), (1, 1), (2, 1), (3, 0)]:
        data = make_subject(anatomy, "lesion", label, subject_seed(7, index))
        in_template = apply_displacement_field(data.t1w, data.to_template, order=1)
        inputs.append(to_model_grid(in_template, spec)[0][0])
    x = torch.stack(inputs)
    with torch.no_grad():
        target = model(x).argmax(1)
    assert target.tolist() == [1, 0, 1, 0]

    layer = default_gradcam_layer(model, x)
    activation, gradient = _layer_activation_and_gradient(model, x, target, layer)
    assert float(activation.min()) >= 0
    denominator = 2 + activation.sum(dim=(2, 3, 4), keepdim=True) * gradient
    assert float(denominator[gradient > 0].min()) >= 2
    for method in ["gradcam", "gradcam_pp"]:
        maps = attribute(model, x, method, target=target)
        assert bool((maps.flatten(1).amax(1) > 0).all()), method
