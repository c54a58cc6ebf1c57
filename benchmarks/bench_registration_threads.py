"""What ``--seed``'s byte-identical registration costs: ANTs on one ITK thread against all cores.

nipype-xai registers on one ITK thread by default, because ANTs' multi-threaded registration
differs slightly from run to run even with a fixed seed (``--nondeterministic`` lifts this). This
times :func:`nipype_xai.registration.register` (the participant workflow's affine preset, or
``--preset syn``) of synthetic subjects (``generate_cohort``, default 2 at 1 mm, a lab's T1w
resolution) to the template brain at the workflow's 2 mm registration resolution, each thread count
in fresh processes (ITK reads its thread count once per process), alternating, and prints the
median wall time per registration for each count, their ratio, and whether repeated runs of the
same subject gave the same transform bytes.

    python benchmarks/bench_registration_threads.py [--n-subjects 2] [--resolution 1] \
        [--preset affine] [--threads N] [--repeats 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import sys, time, hashlib
from pathlib import Path
from nipype_xai.registration import register, strip_hdf5_timestamps
from nipype_xai.templates import get_template
moving, out, preset = sys.argv[1], sys.argv[2], sys.argv[3]
fixed = get_template("MNI152NLin2009aSym", resolution=2, suffix="T1w", desc="brain")
mask = get_template("MNI152NLin2009aSym", resolution=2, suffix="mask", desc="brain")
started = time.perf_counter()
result = register(moving, fixed, preset=preset, fixed_mask=mask, seed=0, out_dir=out)
elapsed = time.perf_counter() - started
digest = hashlib.sha256(strip_hdf5_timestamps(result.forward_transform).read_bytes()).hexdigest()
print(f"{elapsed:.3f} {digest}")
"""


def _time_one(t1w: Path, threads: int, preset: str, scratch: Path) -> tuple[float, str]:
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
    out = tempfile.mkdtemp(dir=scratch)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(t1w), out, preset], env=env,
                          check=True, capture_output=True, text=True)
    seconds, digest = done.stdout.split()[-2:]
    return float(seconds), digest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=2)
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--preset", default="affine", choices=("affine", "syn"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="the multi-threaded count to compare with one thread (default: all)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    from nipype_xai.synth import generate_cohort

    with tempfile.TemporaryDirectory(prefix="bench_registration_") as tmp:
        scratch = Path(tmp)
        bids = generate_cohort(scratch / "bids", "lesion", args.n_subjects, seed=0,
                               resolution_mm=args.resolution, progress=False)
        t1ws = sorted(bids.glob("sub-*/anat/sub-*_T1w.nii.gz"))
        times: dict[int, list[float]] = {1: [], args.threads: []}
        digests: dict[tuple[int, str], set[str]] = {}
        for _ in range(args.repeats):
            for t1w in t1ws:
                for threads in times:  # alternating, so load drifts hit both alike
                    seconds, digest = _time_one(t1w, threads, args.preset, scratch)
                    times[threads].append(seconds)
                    digests.setdefault((threads, t1w.name), set()).add(digest)
        one, many = statistics.median(times[1]), statistics.median(times[args.threads])
        print(f"{args.preset} registration of {len(t1ws)} synthetic subject(s) at "
              f"{args.resolution:g} mm to the 2 mm template, {args.repeats} repeat(s), "
              f"{os.cpu_count()} CPU(s):")
        for threads in times:
            same = all(len(digests[(threads, t.name)]) == 1 for t in t1ws)
            print(f"  {threads} ITK thread(s): median {statistics.median(times[threads]):.2f} s "
                  f"per registration (n={len(times[threads])}); repeats byte-identical: "
                  f"{'yes' if same else 'no'}")
        print(f"  ratio 1 thread / {args.threads} threads: {one / many:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
