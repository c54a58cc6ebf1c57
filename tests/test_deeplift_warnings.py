"""A method that cannot keep its own axiom on a model says so: AttributionWarning from DeepLIFT
(summation-to-delta) and integrated gradients (completeness), naming the map it concerns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from nipype_xai.attribution import attribute, attribute_many
from nipype_xai.attribution.engine import AttributionWarning
from nipype_xai.attribution.path import COMPLETENESS_RTOL, SUMMATION_TO_DELTA_RTOL
from nipype_xai.models import load_model, load_model_spec
from nipype_xai.models.bundled import bundled_model_spec


class _GeluNet(nn.Module):
    """Conv3d -> GELU -> global average -> Linear: captum's DeepLift has no rule for GELU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3, 4)))


def _attribution_warnings(record) -> list[AttributionWarning]:
    return [w.message for w in record if isinstance(w.message, AttributionWarning)]


@pytest.fixture
def volume():
    return torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(3))


def test_deeplift_says_when_summation_to_delta_fails(volume):
    model = _GeluNet().eval()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        maps = attribute_many(model, volume, ["deeplift", "gradient"], target=1)
    # One warning per sample, each naming its sample (a batch of subjects: each its own).
    first, second = _attribution_warnings(record)
    assert first.methods == second.methods == ("deeplift",)
    assert (first.samples, second.samples) == ((0,), (1,))
    message = str(first)
    assert "summation-to-delta" in message and "act (GELU)" in message
    assert f"within {SUMMATION_TO_DELTA_RTOL:g}" in message
    assert "sample 0" in message and "sample 1" in str(second)
    # The map is still returned, unchanged by the check.
    assert maps["deeplift"].shape == volume.shape

    model.act = nn.ReLU()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        attribute(model, volume, "deeplift", target=1)
    assert not _attribution_warnings(record)


def test_integrated_gradients_says_when_completeness_fails(volume):
    model = _GeluNet().eval()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        attribute(model, volume, "integrated_gradients", target=1, n_steps=2,
                  integration_method="riemann_left")
    found = _attribution_warnings(record)
    assert found and all(w.methods == ("integrated_gradients",) for w in found)
    warning = found[0]
    assert "completeness with n_steps=2" in str(warning) and "raise n_steps" in str(warning)
    assert f"within {COMPLETENESS_RTOL:g}" in str(warning)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        attribute(model, volume, "integrated_gradients", target=1, n_steps=64)
    assert not _attribution_warnings(record)


def test_bundled_model_gives_deeplift_no_warning():
    spec = load_model_spec(bundled_model_spec("lesion"))
    mean = torch.from_numpy(np.array(spec.input_summary.mean_image, dtype=np.float32))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        attribute(load_model(spec), mean[None, None], "deeplift", target=1)
    assert not _attribution_warnings(record)


def test_warning_outside_the_engine_names_no_method():
    assert AttributionWarning("a message").methods == ()


def test_a_warning_about_one_sample_can_name_it():
    one = AttributionWarning(f"sum off ({AttributionWarning.SAMPLE}: 1 vs 2)", samples=(3,))
    assert str(one) == "sum off (sample 3: 1 vs 2)"
    assert one.naming("sub-01_T1w.nii.gz") == "sum off (sub-01_T1w.nii.gz: 1 vs 2)"
    every = AttributionWarning("every map is odd")
    assert every.naming("sub-01_T1w.nii.gz") == "every map is odd" == str(every)
