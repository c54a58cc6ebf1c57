"""Canonizers: equivalent outputs, true adjacencies only, an exactly restored model."""

import copy

import pytest
import torch
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.core import Composite, collect_leaves
from zennit.layer import Sum

from nipype_xai.attribution.canonizers import (
    BatchNormAffine1d,
    BatchNormAffine3d,
    BatchNormAsAffine,
    MergeFollowingBatchNorm,
    MonaiResNetBlockCanonizer,
    batch_norm_layout,
    canonizers_for,
)

MODELS = ["tiny_net", "monai_resnet", "monai_densenet"]


def with_statistics(model, seed=0):
    """Like conftest's randomize_batchnorm, also for batch norms without affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.randn(n, generator=generator))
                    module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


def snapshot(model):
    return (
        {key: value.clone() for key, value in model.state_dict().items()},
        [(name, type(module)) for name, module in model.named_modules()],
        [module.training for module in model.modules()],
    )


def assert_restored(model, before):
    state, modules, training = before
    after = model.state_dict()
    assert list(after) == list(state)
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert [(name, type(module)) for name, module in model.named_modules()] == modules
    assert [module.training for module in model.modules()] == training
    for module in model.modules():
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)
        assert "forward" not in vars(module)


@pytest.mark.parametrize("fixture", MODELS)
def test_canonized_model_computes_the_same_outputs(fixture, volume, request):
    model = request.getfixturevalue(fixture)
    before = snapshot(model)
    with torch.no_grad():
        expected = model(volume)
    weights_before = [p.clone() for p in model.parameters()]
    composite = Composite(canonizers=canonizers_for(model))
    with composite.context(model), torch.no_grad():
        canonized = model(volume)
        # The canonizers really did change the model (else this test proves nothing).
        changed = any(
            not torch.equal(p, q) for p, q in zip(model.parameters(), weights_before)
        ) or len(list(model.parameters())) != len(weights_before)
        assert changed
    torch.testing.assert_close(canonized, expected, rtol=1e-5, atol=1e-5)
    assert_restored(model, before)
    with torch.no_grad():
        assert torch.equal(model(volume), expected)


def test_canonizers_are_undone_after_an_error(monai_densenet, volume):
    before = snapshot(monai_densenet)
    composite = Composite(canonizers=canonizers_for(monai_densenet))
    with pytest.raises(RuntimeError, match="boom"):
        with composite.context(monai_densenet):
            raise RuntimeError("boom")
    assert_restored(monai_densenet, before)


def test_densenet_merges_only_true_conv_bn_adjacencies(monai_densenet):
    layout = batch_norm_layout(monai_densenet)
    assert layout.traced
    layers = [
        f"features.denseblock{block}.denselayer{layer}.layers"
        for block in (1, 2)
        for layer in (1, 2)
    ]
    assert set(layout.merge) == {("features.conv0", "features.norm0")} | {
        (f"{prefix}.conv1", f"{prefix}.norm2") for prefix in layers
    }
    # Batch norm before a convolution (after a concatenation) stays a layer of its own.
    assert set(layout.standalone) == {f"{prefix}.norm1" for prefix in layers} | {
        "features.transition1.norm", "features.norm5",
    }


def test_zennit_sequential_merge_mispairs_densenet(monai_densenet):
    """Why the layout is traced: registration order pairs a dense layer's last convolution with
    the next layer's norm1, which normalises the concatenation of all earlier features."""
    names = {module: name for name, module in monai_densenet.named_modules()}
    leaves = list(collect_leaves(monai_densenet))
    sequential_pairs = {
        (names[a], names[b])
        for a, b in zip(leaves, leaves[1:])
        if isinstance(a, nn.Conv3d) and isinstance(b, nn.BatchNorm3d)
    }
    wrong = (
        "features.denseblock1.denselayer1.layers.conv2",
        "features.denseblock1.denselayer2.layers.norm1",
    )
    assert wrong in sequential_pairs
    assert wrong not in batch_norm_layout(monai_densenet).merge
    with pytest.raises(RuntimeError):
        SequentialMergeBatchNorm().apply(copy.deepcopy(monai_densenet))


@pytest.mark.parametrize("fixture", MODELS)
def test_structural_fallback_finds_the_same_layout(fixture, request, monkeypatch):
    model = request.getfixturevalue(fixture)
    traced = batch_norm_layout(model)

    def untraceable(*args, **kwargs):
        raise torch.fx.proxy.TraceError("data-dependent control flow")

    monkeypatch.setattr(torch.fx, "symbolic_trace", untraceable)
    fallback = batch_norm_layout(model)
    assert traced.traced and not fallback.traced
    assert set(fallback.merge) == set(traced.merge)
    assert set(fallback.standalone) == set(traced.standalone)


def test_merge_skips_a_convolution_output_used_twice(volume):
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 3, 3, padding=1)
            self.bn = nn.BatchNorm3d(3)

        def forward(self, x):
            y = self.conv(x)
            return (self.bn(y) + y).mean(dim=(2, 3, 4))

    model = with_statistics(Skip())
    layout = batch_norm_layout(model)
    assert layout.merge == () and layout.standalone == ("bn",)
    with torch.no_grad():
        expected = model(volume)
        with Composite(canonizers=canonizers_for(model)).context(model):
            assert isinstance(model.bn, BatchNormAffine3d)
            torch.testing.assert_close(model(volume), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(model.bn, nn.BatchNorm3d)


def test_merge_is_exact_and_handles_missing_affine_and_bias():
    torch.manual_seed(0)
    model = with_statistics(nn.Sequential(nn.Conv3d(2, 3, 3, bias=False), nn.BatchNorm3d(3)))
    plain = with_statistics(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, affine=False)))
    for net, x in ((model, torch.randn(2, 2, 5, 5, 5)), (plain, torch.randn(5, 4))):
        before = snapshot(net)
        with torch.no_grad():
            expected = net(x)
            canonizer = MergeFollowingBatchNorm([(("0",), "1")])
            with Composite(canonizers=[canonizer]).context(net):
                torch.testing.assert_close(net[1](expected), expected, rtol=0, atol=1e-6)
                torch.testing.assert_close(net(x), expected, rtol=1e-6, atol=1e-6)
        assert_restored(net, before)
    assert model[0].bias is None


@pytest.mark.parametrize(
    ("batch_norm", "shape"),
    [
        (nn.BatchNorm1d(3), (4, 3)),
        (nn.BatchNorm1d(3), (4, 3, 7)),
        (nn.BatchNorm2d(3), (4, 3, 5, 6)),
        (nn.BatchNorm3d(3), (4, 3, 5, 6, 2)),
        (nn.BatchNorm3d(3, affine=False), (4, 3, 5, 6, 2)),
    ],
)
def test_batch_norm_as_affine_convolution_is_exact(batch_norm, shape):
    model = with_statistics(nn.Sequential(batch_norm))
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x)
        with Composite(canonizers=[BatchNormAsAffine(["0"])]).context(model):
            assert isinstance(model[0], (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            assert isinstance(model[0], BatchNormAffine1d) == isinstance(batch_norm, nn.BatchNorm1d)
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    assert model[0] is batch_norm


def test_residual_canonizer_routes_the_addition_through_sum(monai_resnet, volume):
    block = monai_resnet.layer2[0]
    with torch.no_grad():
        expected = block(torch.randn(1, 4, 6, 6, 6, generator=torch.Generator().manual_seed(0)))
    seen = []
    with Composite(canonizers=[MonaiResNetBlockCanonizer()]).context(monai_resnet):
        assert isinstance(block.canonizer_sum, Sum)
        handle = block.canonizer_sum.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
        with torch.no_grad():
            result = block(torch.randn(1, 4, 6, 6, 6, generator=torch.Generator().manual_seed(0)))
        handle.remove()
    torch.testing.assert_close(result, expected)
    assert seen == [torch.Size([1, 8, 3, 3, 3, 2])]
    assert not hasattr(block, "canonizer_sum")


def test_canonizers_for_plain_cnn_only_merges(tiny_net):
    canonizers = canonizers_for(tiny_net)
    assert [type(c) for c in canonizers] == [MergeFollowingBatchNorm]
    layout = batch_norm_layout(tiny_net)
    assert layout.merge == (("features.0", "features.1"), ("features.4", "features.5"))
    assert layout.standalone == ()
