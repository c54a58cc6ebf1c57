"""Attribution speed against its limit and its peers, measured in one run.

On the reference 3D CNN at the 2 mm MNI grid (91 x 109 x 91) it times

(a) the limit: one batched forward + backward (input gradient) over N copies,
(b) ``attribute_many`` for the gradient family + SmoothGrad family (six maps, N noisy samples),
(c) captum ``NoiseTunnel(Saliency)`` SmoothGrad (one map), and captum for the same six maps,
(d) MONAI ``SmoothGrad`` (one volume at a time, one map),
(e) zennit ``SmoothGrad`` (one map),

and prints each as a ratio to (a). Goal: (b) <= 1.15 x (a) while delivering six maps, and (b)
faster than (c) + (d) for the same maps.

It then times integrated gradients and occlusion against their peers at the same settings:

(f) ``attribute(..., "integrated_gradients", n_steps=N)`` (Gauss-Legendre, baseline 0) vs captum
    ``IntegratedGradients`` with the same steps, rule and internal batch size; both against (a),
    which is exactly their floor (N scaled copies forward + backward). MONAI has no integrated
    gradients (``monai.visualize`` offers CAMs, occlusion, vanilla/guided/smooth gradients).
(h) the occlusion limit: one batched forward pass (no backward) over the W occluded copies of a
    W-window occlusion, copies prepared outside the timer;
(i) ``attribute(..., "occlusion", window=w)`` (stride = window, baseline 0) vs captum ``Occlusion``
    and MONAI ``OcclusionSensitivity`` (``mask_size=w``, ``overlap=0``, constant 0, no activation)
    with the same windows and batch size, each against (h). The volume is zero-padded to a multiple
    of the window so that the three libraries occlude exactly the same W windows (captum drops a
    partial last window; ours and MONAI's keep it).

    python benchmarks/bench_attribution.py [--n-samples 16] [--batch-size 16] [--device cpu]
                                           [--occlusion-window 16] [--skip-occlusion]
                                           [--shape 91 109 91]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from nipype_xai.attribution import attribute, attribute_many
from nipype_xai.models.architectures import TinyCNN3D

SHAPE = (91, 109, 91)
SIX = ["gradient", "saliency", "input_x_gradient", "smoothgrad", "smoothgrad_sq", "vargrad"]


def timed(fn: Callable[[], object], device: torch.device, repeats: int,
          warm_up: bool = True) -> float:
    """Median wall time of ``repeats`` calls, after one warm-up call unless ``warm_up`` is False
    (for calls that cost minutes, once the model's kernels are warm from cheaper ones)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-monai", action="store_true", help="MONAI loops one copy at a time")
    parser.add_argument("--occlusion-window", type=int, default=16,
                        help="occlusion window edge in voxels (stride = window)")
    parser.add_argument("--occlusion-repeats", type=int, default=1,
                        help="timed calls per occlusion row (each costs W forward passes)")
    parser.add_argument("--skip-occlusion", action="store_true")
    parser.add_argument("--shape", type=int, nargs=3, default=list(SHAPE),
                        help="volume shape (default: the 2 mm MNI grid)")
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = TinyCNN3D(in_channels=1, n_outputs=2).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = torch.randn(1, 1, *shape, device=device)
    target = int(model(x).argmax())
    n, batch_size = args.n_samples, args.batch_size
    sigma = 0.1 * float(x.max() - x.min())

    def limit() -> None:
        # N copies through forward + input-gradient backward, batch_size at a time: the floor any
        # SmoothGrad implementation pays.
        for start in range(0, n, batch_size):
            copies = x.expand(min(batch_size, n - start), -1, -1, -1, -1).clone()
            copies.requires_grad_(True)
            # The gradient w.r.t. the input only (as every attribution method takes it): a plain
            # .backward() would also compute and accumulate every weight gradient, a cost no
            # method pays, and make this "limit" slower than the methods it bounds.
            torch.autograd.grad(model(copies)[:, target].sum(), copies)

    def ours() -> None:
        attribute_many(model, x, SIX, target=target, n_samples=n, batch_size=batch_size)

    rows: list[tuple[str, float]] = [("(a) limit: batched forward+backward x N", timed(limit, device, args.repeats))]
    rows.append(("(b) nipype-xai attribute_many, six maps", timed(ours, device, args.repeats)))

    try:
        from captum.attr import InputXGradient, NoiseTunnel, Saliency

        tunnel = NoiseTunnel(Saliency(model))

        def captum_one(kind: str = "smoothgrad") -> None:
            tunnel.attribute(x, nt_type=kind, nt_samples=n, nt_samples_batch_size=batch_size,
                             stdevs=sigma, target=target, abs=False)

        def captum_six() -> None:
            Saliency(model).attribute(x, target=target, abs=False)
            Saliency(model).attribute(x, target=target, abs=True)
            InputXGradient(model).attribute(x, target=target)
            for kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
                captum_one(kind)

        rows.append(("(c) captum NoiseTunnel smoothgrad, one map", timed(captum_one, device, args.repeats)))
        rows.append(("(c') captum, the same six maps", timed(captum_six, device, args.repeats)))
    except ImportError as error:
        print(f"captum not available: {error}")

    if not args.skip_monai:
        try:
            from monai.visualize import SmoothGrad as MonaiSmoothGrad

            monai_sg = MonaiSmoothGrad(model, stdev_spread=0.1, n_samples=n, magnitude=False,
                                       verbose=False)
            rows.append(("(d) MONAI SmoothGrad, one map", timed(lambda: monai_sg(x, index=target),
                                                            device, args.repeats)))
        except ImportError as error:
            print(f"MONAI not available: {error}")

    try:
        from zennit.attribution import SmoothGrad as ZennitSmoothGrad

        one_hot = torch.zeros(1, 2, device=device)
        one_hot[0, target] = 1

        def zennit_sg() -> None:
            with ZennitSmoothGrad(model, noise_level=0.1, n_iter=n) as attributor:
                attributor(x, one_hot)

        rows.append(("(e) zennit SmoothGrad, one map", timed(zennit_sg, device, args.repeats)))
    except ImportError as error:
        print(f"zennit not available: {error}")

    # (f) integrated gradients: N scaled copies forward + backward, the same floor as (a).
    rows.append(("(f) nipype-xai integrated_gradients", timed(
        lambda: attribute(model, x, "integrated_gradients", target=target, n_steps=n,
                          batch_size=batch_size), device, args.repeats)))
    try:
        from captum.attr import IntegratedGradients

        captum_ig = IntegratedGradients(model)
        rows.append(("(f') captum IntegratedGradients", timed(
            lambda: captum_ig.attribute(x, baselines=0.0, target=target, n_steps=n,
                                        method="gausslegendre", internal_batch_size=batch_size),
            device, args.repeats)))
    except ImportError as error:
        print(f"captum not available: {error}")
    print("MONAI has no integrated gradients (monai.visualize: CAMs, occlusion, vanilla / "
          "guided / smooth gradients): no MONAI row for (f).")

    occlusion_rows: list[tuple[str, float]] = []
    if not args.skip_occlusion:
        occlusion_rows, windows, padded = occlusion_benchmark(model, x, target, args, device)

    base = rows[0][1]
    print(f"device={device} grid={shape} N={n} batch_size={batch_size} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")
    print(f"{'':48s} {'seconds':>9s} {'ratio to (a)':>13s}")
    for label, seconds in rows:
        print(f"{label:48s} {seconds:9.3f} {seconds / base:13.2f}")
    by_label = dict(rows)
    peers = [v for k, v in by_label.items() if k.startswith(("(c')", "(d)"))]
    if len(peers) == 2:
        print(f"(b) / ((c') + (d)) = {by_label['(b) nipype-xai attribute_many, six maps'] / sum(peers):.2f}")
    if occlusion_rows:
        limit = occlusion_rows[0][1]
        print(f"occlusion: window={args.occlusion_window} (stride = window), padded grid={padded}, "
              f"W={windows} windows, batch_size={batch_size}")
        print(f"{'':48s} {'seconds':>9s} {'ratio to (h)':>13s}")
        for label, seconds in occlusion_rows:
            print(f"{label:48s} {seconds:9.3f} {seconds / limit:13.2f}")


def occlusion_benchmark(model: torch.nn.Module, x: torch.Tensor, target: int,
                        args: argparse.Namespace, device: torch.device
                        ) -> tuple[list[tuple[str, float]], int, tuple[int, ...]]:
    """Rows (h), (i), (i'), (i''): occlusion limit, ours, captum, MONAI, at the same windows."""
    w, batch_size = args.occlusion_window, args.batch_size
    pad = [(-s) % w for s in x.shape[2:]]
    # F.pad takes (last axis before, after, ...): pad the far end of each spatial axis.
    xp = F.pad(x, [p for axis in reversed(pad) for p in (0, axis)])
    spatial = tuple(xp.shape[2:])
    counts = [s // w for s in spatial]
    windows = math.prod(counts)

    # The W occluded copies, made before timing: (h) times the forward passes alone.
    starts = [(i * w, j * w, k * w) for i in range(counts[0]) for j in range(counts[1])
              for k in range(counts[2])]

    def occluded(chunk: list[tuple[int, int, int]]) -> torch.Tensor:
        copies = xp.expand(len(chunk), -1, -1, -1, -1).clone()
        for c, (i, j, k) in enumerate(chunk):
            copies[c, :, i:i + w, j:j + w, k:k + w] = 0
        return copies

    batches = [occluded(starts[s:s + batch_size]) for s in range(0, windows, batch_size)]

    def limit() -> None:
        with torch.no_grad():
            model(xp)  # the unoccluded reference output every implementation needs
            for batch in batches:
                model(batch)

    repeats = args.occlusion_repeats
    rows = [("(h) limit: batched forward x W occluded copies", timed(limit, device, repeats))]
    batches.clear()  # ~1 GB of copies at 2 mm: not kept during the other rows
    rows.append(("(i) nipype-xai occlusion", timed(
        lambda: attribute(model, xp, "occlusion", target=target, window=w, batch_size=batch_size),
        device, repeats, warm_up=False)))
    try:
        from captum.attr import Occlusion

        captum_occlusion = Occlusion(model)
        rows.append(("(i') captum Occlusion", timed(
            lambda: captum_occlusion.attribute(xp, sliding_window_shapes=(1, w, w, w),
                                               strides=(1, w, w, w), baselines=0.0,
                                               target=target,
                                               perturbations_per_eval=batch_size),
            device, repeats, warm_up=False)))
    except ImportError as error:
        print(f"captum not available: {error}")
    if not args.skip_monai:
        try:
            from monai.visualize import OcclusionSensitivity

            monai_occlusion = OcclusionSensitivity(model, mask_size=w, n_batch=batch_size,
                                                   verbose=False, mode=0.0, overlap=0.0,
                                                   activate=False)

            def monai_call() -> None:
                with warnings.catch_warnings():
                    # MONAI 1.6 indexes with a list (a torch deprecation warning per window).
                    warnings.simplefilter("ignore", UserWarning)
                    monai_occlusion(xp)

            rows.append(("(i'') MONAI OcclusionSensitivity", timed(monai_call, device, repeats,
                                                                   warm_up=False)))
        except ImportError as error:
            print(f"MONAI not available: {error}")
    return rows, windows, spatial


if __name__ == "__main__":
    main()
