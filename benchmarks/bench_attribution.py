"""Attribution speed against its limit and its peers, measured in one run.

On the reference 3D CNN at the 2 mm MNI grid (91 x 109 x 91) it times

(a) the limit: one batched forward + backward (input gradient) over N copies,
(b) ``attribute_many`` for the gradient family + SmoothGrad family (six maps, N noisy samples),
(c) captum ``NoiseTunnel(Saliency)`` SmoothGrad (one map), and captum for the same six maps,
(d) MONAI ``SmoothGrad`` (one volume at a time, one map),
(e) zennit ``SmoothGrad`` (one map),

and prints each as a ratio to (a). Goal: (b) <= 1.15 x (a) while delivering six maps, and (b)
faster than (c) + (d) for the same maps.

    python benchmarks/bench_attribution.py [--n-samples 16] [--batch-size 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from nipype_xai.attribution import attribute_many
from nipype_xai.models.architectures import TinyCNN3D

SHAPE = (91, 109, 91)
SIX = ["gradient", "saliency", "input_x_gradient", "smoothgrad", "smoothgrad_sq", "vargrad"]


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
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
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = TinyCNN3D(in_channels=1, n_outputs=2).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = torch.randn(1, 1, *SHAPE, device=device)
    target = int(model(x).argmax())
    n, batch_size = args.n_samples, args.batch_size
    sigma = 0.1 * float(x.max() - x.min())

    def limit() -> None:
        # N copies through forward + input-gradient backward, batch_size at a time: the floor any
        # SmoothGrad implementation pays.
        for start in range(0, n, batch_size):
            copies = x.expand(min(batch_size, n - start), -1, -1, -1, -1).clone()
            copies.requires_grad_(True)
            model(copies)[:, target].sum().backward()

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

    base = rows[0][1]
    print(f"device={device} grid={SHAPE} N={n} batch_size={batch_size} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")
    print(f"{'':48s} {'seconds':>9s} {'ratio to (a)':>13s}")
    for label, seconds in rows:
        print(f"{label:48s} {seconds:9.3f} {seconds / base:13.2f}")
    by_label = dict(rows)
    peers = [v for k, v in by_label.items() if k.startswith(("(c')", "(d)"))]
    if len(peers) == 2:
        print(f"(b) / ((c') + (d)) = {by_label['(b) nipype-xai attribute_many, six maps'] / sum(peers):.2f}")


if __name__ == "__main__":
    main()
