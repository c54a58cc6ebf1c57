"""Gradient and SmoothGrad families against autograd and captum."""

import pytest
import torch

from nipype_xai.attribution import attribute, attribute_many
from nipype_xai.attribution.noise import noisy_batches


def autograd_gradient(model, x, target):
    grads = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].clone().requires_grad_(True)
        out = model(xb)
        out[0, target[b]].backward()
        grads.append(xb.grad)
    return torch.cat(grads)


def test_gradient_family_matches_autograd(tiny_net, volume):
    target = tiny_net(volume).argmax(1)
    expected = autograd_gradient(tiny_net, volume, target)
    maps = attribute_many(tiny_net, volume, ["gradient", "saliency", "input_x_gradient"], batch_size=1)
    torch.testing.assert_close(maps["gradient"], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(maps["saliency"], expected.abs(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(maps["input_x_gradient"], volume * expected, rtol=1e-5, atol=1e-7)


def test_explicit_target_per_sample(tiny_net, volume):
    expected = autograd_gradient(tiny_net, volume, [1, 0])
    torch.testing.assert_close(attribute(tiny_net, volume, "gradient", target=[1, 0]), expected)


def count_forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(args[1][0].shape[0]))
    return calls, handle


def test_families_share_passes(tiny_net, volume):
    calls, handle = count_forwards(tiny_net)
    try:
        attribute_many(tiny_net, volume, ["gradient", "saliency", "input_x_gradient"])
        # one forward to resolve the predicted class, one forward+backward for three maps
        assert calls == [2, 2]
        calls.clear()
        attribute_many(
            tiny_net, volume, ["smoothgrad", "smoothgrad_sq", "vargrad"], n_samples=6, batch_size=4
        )
        # 2 samples x 6 copies = 12 noisy copies in chunks of 4, once for all three maps
        assert calls == [2, 4, 4, 4]
    finally:
        handle.remove()


def test_smoothgrad_family_matches_hand_computation(tiny_net, volume):
    n, level, seed = 7, 0.15, 3
    target = tiny_net(volume).argmax(1)
    grads = {b: [] for b in range(volume.shape[0])}
    for index, noisy in noisy_batches(volume, n, level, seed, batch_size=1):
        grads[int(index)].append(autograd_gradient(tiny_net, noisy, target[index]))
    per_copy = torch.stack([torch.cat(grads[b]) for b in grads])  # (B, n, C, X, Y, Z)
    maps = attribute_many(
        tiny_net, volume, ["smoothgrad", "smoothgrad_sq", "vargrad"], n_samples=n,
        noise_level=level, seed=seed, batch_size=5,
    )
    torch.testing.assert_close(maps["smoothgrad"], per_copy.mean(1), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(maps["smoothgrad_sq"], (per_copy**2).mean(1), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(
        maps["vargrad"], per_copy.var(1, unbiased=False), rtol=1e-3, atol=1e-9
    )


def test_smoothgrad_equals_gradient_without_noise(tiny_net, volume):
    gradient = attribute(tiny_net, volume, "gradient")
    smooth = attribute(tiny_net, volume, "smoothgrad", noise_level=0.0, n_samples=5)
    torch.testing.assert_close(smooth, gradient, rtol=1e-5, atol=1e-8)
    assert float(attribute(tiny_net, volume, "vargrad", noise_level=0.0, n_samples=5).abs().max()) < 1e-12


def test_smoothgrad_seed_reproducible_and_batch_independent(tiny_net, volume):
    a = attribute(tiny_net, volume, "smoothgrad", n_samples=6, seed=11, batch_size=4)
    b = attribute(tiny_net, volume, "smoothgrad", n_samples=6, seed=11, batch_size=4)
    c = attribute(tiny_net, volume, "smoothgrad", n_samples=6, seed=12, batch_size=4)
    d = attribute(tiny_net, volume, "smoothgrad", n_samples=6, seed=11, batch_size=5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-8)


def test_smoothgrad_family_agrees_with_captum_noise_tunnel(tiny_net, volume):
    captum_attr = pytest.importorskip("captum.attr")
    x = volume[:1]
    target = int(tiny_net(x).argmax())
    level, n = 0.1, 300
    sigma = level * float(x.max() - x.min())
    ours = attribute_many(tiny_net, x, ["smoothgrad", "smoothgrad_sq", "vargrad"], n_samples=n,
                          noise_level=level, batch_size=100)
    tunnel = captum_attr.NoiseTunnel(captum_attr.Saliency(tiny_net))
    torch.manual_seed(0)
    for name in ["smoothgrad", "smoothgrad_sq", "vargrad"]:
        theirs = tunnel.attribute(
            x, nt_type=name, nt_samples=n, nt_samples_batch_size=100, stdevs=sigma,
            target=target, abs=False,
        )
        # Two independent Monte-Carlo estimates of the same expectation.
        cosine = torch.nn.functional.cosine_similarity(ours[name].flatten(), theirs.flatten(), dim=0)
        assert cosine > 0.97, (name, float(cosine))
        ratio = float(ours[name].abs().sum() / theirs.abs().sum())
        assert 0.85 < ratio < 1.15, (name, ratio)


def test_chunk_sizes_are_balanced_and_bounded():
    from nipype_xai.attribution.noise import chunk_sizes

    assert chunk_sizes(16, 16, reserved=1) == [8, 8]  # not 15 + 1
    assert chunk_sizes(17, 16) == [9, 8]
    assert chunk_sizes(16, 16) == [16]
    assert chunk_sizes(0, 16) == []
    for total in range(1, 40):
        for batch_size in range(1, 12):
            for reserved in range(batch_size):
                sizes = chunk_sizes(total, batch_size, reserved)
                assert sum(sizes) == total
                assert sizes[0] + reserved <= batch_size
                assert all(1 <= size <= batch_size for size in sizes)
                # The fewest passes that hold everything (one more only when the reserved
                # inputs fill the first pass).
                fewest = -(-(total + reserved) // batch_size)
                assert len(sizes) in (fewest, fewest + 1)
                assert max(sizes[1:], default=0) - min(sizes[1:], default=0) <= 1
    with pytest.raises(ValueError, match="reserved"):
        chunk_sizes(4, 4, reserved=4)
