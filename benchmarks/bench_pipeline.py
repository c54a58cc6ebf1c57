"""Pipeline overhead: the participant workflow's wall time against its core attribution compute.

On N synthetic lesion subjects (``nipype_xai.synth.generate_cohort``, default 8 at 2 mm) and a
TinyCNN3D spec with seeded random weights on the model grid of MNI152NLin2009aSym (default at 2 mm:
96 x 112 x 96; speed does not depend on training), it times

(a) the full participant level, as ``nipype-xai BIDS OUT participant`` runs it
    (``nipype_xai.cli.execution.run_participant_level``: pybids query, one ``init_xai_wf`` per
    subject with ANTsPy affine registration, model-grid resampling, ``ModelInference``,
    ``Attribution``, maps back to the T1w, overlap metrics against the ground truth, subject
    reports, derivatives);
(b) the same with registration skipped: the cohort's known transforms are reused
    (``--transforms-from <cohort>/derivatives/groundtruth``; dense displacement fields), so the
    workflow only applies transforms;
(c) the core compute for the same subjects, methods and parameters: per subject one prediction
    (forward pass) and one ``attribute_many`` call on the very model-grid inputs the workflow
    fed its model (its ``desc-preproc_T1w`` outputs, normalised as the spec says, prepared outside
    the timer), the model loaded once outside the timer;

and prints (a)/(c) and (b)/(c). Goal: <= 1.3 at 2 mm with 8 subjects.

What counts as core: model inference and attribution on the model grid, nothing else. Overhead is
everything the workflow adds around it: Nipype (graph, hashing, result pickles, scheduling), file
I/O (NIfTI compression, sidecars, sinks), the pybids query, the model loaded per node, the second
forward pass of ``Attribution`` (``ModelInference`` runs one too), resampling to and from the model
grid, maps back to the T1w, overlap metrics and reports; and, in (a) only, registration, which is
real work the workflow must do but not attribution (so (b)/(c) is the overhead of the pipeline
proper, and (a)/(b) the price of registering). Every timed run gets fresh work and output
folders, so Nipype's cache never answers for it. Below the ratios, a per-node table adds up
Nipype's own ``runtime.duration`` of each node (summed over subjects, map-node items summed) for
the last run of (a) and of (b); "outside the nodes" is the run's wall time minus the node sum
(pybids, graph building, Nipype's bookkeeping, ``run_without_submitting`` sinks are in the nodes).

With ``--plugin MultiProc`` the workflow runs subjects side by side while (c) stays serial, so the
ratios then also hold the parallel speed-up. Thread counts: the workflow (Linear: in this process)
and (c) use the same torch threads; set ``OMP_NUM_THREADS`` to fix them.

    python benchmarks/bench_pipeline.py [--n-subjects 8] [--resolution 2] \
        [--methods gradient smoothgrad integrated_gradients gradcam] [--plugin Linear|MultiProc] \
        [--nprocs N] [--repeats 1] [--work-dir DIR] [--no-reports] [--no-ground-truth] \
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import torch

from nipype_xai.attribution import attribute_many
from nipype_xai.cli.execution import configure_logging, plugin_settings, run_participant_level
from nipype_xai.models import TinyCNN3D, load_model, load_model_spec, to_model_grid
from nipype_xai.models.inference import predict, resolve_method_params
from nipype_xai.synth import generate_cohort

TEMPLATE = "MNI152NLin2009aSym"
METHODS = ["gradient", "smoothgrad", "integrated_gradients", "gradcam"]
#: Field of view of the model grid in mm (96 x 112 x 96 voxels at 2 mm; the test suite's
#: 24 x 28 x 24 at 8 mm), divisible by TinyCNN3D's pooling at every resolution used here.
FOV_MM = (192, 224, 192)
SEED = 0


def model_shape(resolution: float) -> tuple[int, int, int]:
    return tuple(int(math.ceil(fov / resolution)) for fov in FOV_MM)  # type: ignore[return-value]


def write_model(folder: Path, resolution: float, shape: tuple[int, int, int], width: int) -> Path:
    """A TinyCNN3D spec with seeded random weights (the speed does not depend on training)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    kwargs = {"n_outputs": 2, "width": width}
    torch.save(TinyCNN3D(**kwargs).state_dict(), folder / "tiny.pt")
    spec = {"name": "tiny_cnn", "architecture": "nipype_xai.models.architectures:TinyCNN3D",
            "kwargs": kwargs, "weights": "tiny.pt",
            "input": {"space": TEMPLATE, "resolution_mm": resolution, "shape": list(shape),
                      "normalization": "zscore", "mask": "nonzero"},
            "outputs": ["control", "lesion"], "task": "classification"}
    (folder / "tiny.json").write_text(json.dumps(spec))
    return folder / "tiny.json"


def timed(fn: Callable[[int], object], repeats: int) -> list[float]:
    """Wall time of each of ``repeats`` calls (``fn`` gets the repeat's index)."""
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        fn(index)
        times.append(time.perf_counter() - start)
    return times


def node_durations(work_dir: Path) -> dict[str, float]:
    """``runtime.duration`` of every node of a participant run, summed over subjects.

    Keys are the node's path below the subject workflow (``registration_wf.register``); the
    shared template selection keeps its own name. A map node's items are summed (its
    ``mapflow`` folders, which hold the same runs, are skipped).
    """
    from nipype.utils.filemanip import loadpkl

    totals: dict[str, float] = defaultdict(float)
    root = work_dir / "participant_wf"
    for path in root.rglob("result_*.pklz"):
        relative = path.parent.relative_to(root).parts
        if "mapflow" in relative:
            continue
        result = loadpkl(path)
        runtime = getattr(result, "runtime", None)
        runtimes = runtime if isinstance(runtime, list) else [runtime]
        duration = sum(float(getattr(r, "duration", 0.0) or 0.0) for r in runtimes if r)
        parts = relative[1:] if relative[0].startswith("sub_") else relative
        totals[".".join(parts)] += duration
    return dict(totals)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-subjects", type=int, default=8)
    parser.add_argument("--resolution", type=float, default=2.0,
                        help="cohort voxel size and model grid resolution in mm (default 2)")
    parser.add_argument("--shape", type=int, nargs=3, default=None,
                        help="model grid shape (default: 192 x 224 x 192 mm at --resolution)")
    parser.add_argument("--width", type=int, default=8, help="TinyCNN3D width (default 8)")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--plugin", choices=("Linear", "MultiProc"), default="Linear")
    parser.add_argument("--nprocs", type=int, default=None, help="MultiProc processes")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each of (a), (b), "
                        "(c); the median is reported")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the cohort, model and runs go (default: a temporary folder, "
                        "removed at the end)")
    parser.add_argument("--no-reports", dest="reports", action="store_false",
                        help="no subject HTML reports (as the CLI's --no-reports)")
    parser.add_argument("--no-ground-truth", dest="ground_truth", action="store_false",
                        help="no overlap metrics against the cohort's lesion masks")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the untimed one-subject run that pays the imports first")
    parser.add_argument("--skip-registration-run", action="store_true", help="skip (a)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="write the figures as JSON")
    args = parser.parse_args(argv)

    configure_logging(False)
    shape = tuple(args.shape) if args.shape else model_shape(args.resolution)
    root = args.work_dir.absolute() if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    root.mkdir(parents=True, exist_ok=True)
    plugin, plugin_args = plugin_settings(args.plugin, None, args.nprocs, "cpu")
    try:
        figures = run(args, root, shape, plugin, plugin_args)
    finally:
        if args.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")


def run(args: argparse.Namespace, root: Path, shape: tuple[int, ...], plugin: str,
        plugin_args: dict[str, Any]) -> dict[str, Any]:
    runs = root / "runs"
    if runs.exists():
        shutil.rmtree(runs)

    started = time.perf_counter()
    bids_dir = root / "cohort"
    if not (bids_dir / "participants.tsv").is_file():
        generate_cohort(bids_dir, "lesion", args.n_subjects, seed=SEED,
                        resolution_mm=args.resolution, overwrite=True, progress=False)
    n_cohort = sum(1 for _ in open(bids_dir / "participants.tsv")) - 1
    if n_cohort != args.n_subjects:
        sys.exit(f"{bids_dir}: holds {n_cohort} subjects, not {args.n_subjects}; use another "
                 f"--work-dir")
    gt_dir = bids_dir / "derivatives" / "groundtruth"
    model_spec = write_model(root / "model", args.resolution, shape, args.width)
    print(f"cohort of {n_cohort} and model ready in {time.perf_counter() - started:.1f} s "
          f"({root})", flush=True)

    counter = iter(range(10**6))

    def participant(reuse: bool, labels: list[str] | None = None) -> Path:
        """One participant-level run in fresh folders; returns its work folder."""
        folder = runs / f"{next(counter):02d}-{'reuse' if reuse else 'register'}"
        summary = run_participant_level(
            bids_dir=bids_dir, output_dir=folder / "out", work_dir=folder / "work",
            model_spec=model_spec, methods=args.methods, template=None,
            participant_labels=labels, ground_truth_dir=gt_dir if args.ground_truth else None,
            transforms_dir=gt_dir if reuse else None, registration="affine", seed=SEED,
            device="cpu", reports=args.reports, plugin=plugin, plugin_args=plugin_args,
        )
        if summary.failures:
            for failure in summary.failures:
                print(f"{failure.subject} failed at {failure.node}: {failure.reason} "
                      f"({failure.crashfile})", file=sys.stderr)
            sys.exit("the participant workflow failed; no timing")
        return folder

    if args.warm_up:
        # Imports (nipype interfaces, ANTsPy, nilearn, matplotlib), TemplateFlow's offline index
        # and torch's first kernels are paid once per process, not per subject: not timed.
        started = time.perf_counter()
        first = sorted(path.name for path in bids_dir.glob("sub-*") if path.is_dir())[0]
        participant(reuse=True, labels=[first])
        print(f"warm-up (one subject, untimed) {time.perf_counter() - started:.1f} s", flush=True)

    folders: dict[str, list[Path]] = {"a": [], "b": []}

    def run_b(_: int) -> None:
        folders["b"].append(participant(reuse=True))

    def run_a(_: int) -> None:
        folders["a"].append(participant(reuse=False))

    times_b = timed(run_b, args.repeats)
    print(f"(b) done: {', '.join(f'{t:.1f}' for t in times_b)} s", flush=True)
    times_a = [] if args.skip_registration_run else timed(run_a, args.repeats)
    if times_a:
        print(f"(a) done: {', '.join(f'{t:.1f}' for t in times_a)} s", flush=True)

    # (c): the model inputs the workflow produced (desc-preproc_T1w on the model grid),
    # normalised as the spec says, prepared outside the timer; the model loaded once.
    spec = load_model_spec(model_spec)
    model = load_model(spec, device="cpu", check_outputs=False)
    inputs = []
    for path in sorted((folders["b"][-1] / "out").glob("sub-*/anat/*_desc-preproc_T1w.nii.gz")):
        x, _ = to_model_grid(nib.load(path), spec)
        inputs.append(x)
    if len(inputs) != args.n_subjects:
        sys.exit(f"expected {args.n_subjects} model inputs, found {len(inputs)}")
    # Exactly the parameters the Attribution node runs with (defaults, seed 0).
    params = resolve_method_params(args.methods, None, seed=SEED, batch_size=None)

    def core(_: int) -> None:
        for x in inputs:
            prediction = predict(model, x, spec)[0]
            attribute_many(model, x, list(params), prediction.predicted_index,
                           method_params=params)

    times_c = timed(core, args.repeats)
    print(f"(c) done: {', '.join(f'{t:.1f}' for t in times_c)} s", flush=True)

    a = statistics.median(times_a) if times_a else float("nan")
    b, c = statistics.median(times_b), statistics.median(times_c)
    nodes_a = node_durations(folders["a"][-1] / "work") if times_a else {}
    nodes_b = node_durations(folders["b"][-1] / "work")

    settings = (f"subjects={args.n_subjects} resolution={args.resolution:g} mm "
                f"model_grid={'x'.join(map(str, shape))} TinyCNN3D(width={args.width}) "
                f"methods={','.join(args.methods)} plugin={plugin}"
                + (f"(n_procs={plugin_args.get('n_procs')})" if plugin == "MultiProc" else "")
                + f" reports={'on' if args.reports else 'off'} "
                f"ground_truth={'on' if args.ground_truth else 'off'} repeats={args.repeats} "
                f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print()
    print(settings)
    print("params: " + "; ".join(f"{m} {p}" for m, p in params.items()))
    rows = ([("(a) participant workflow, affine registration", a)] if times_a else []) + [
        ("(b) participant workflow, transforms reused", b),
        ("(c) core: predict + attribute_many", c)]
    print(f"{'':50s} {'seconds':>9s} {'per subject':>12s} {'ratio to (c)':>13s}")
    for label, seconds in rows:
        print(f"{label:50s} {seconds:9.2f} {seconds / args.n_subjects:12.2f} {seconds / c:13.2f}")
    print((f"(a)/(c) = {a / c:.2f}   " if times_a else "") + f"(b)/(c) = {b / c:.2f}   "
          + (f"(a)/(b) = {a / b:.2f}   " if times_a else "") + "goal: <= 1.3")
    # The Attribution node runs the same attribute_many as (c): on a busy machine its time swings
    # with (c)'s, so the wall time outside it is the steadier measure of the overhead.
    split = {}
    last_runs = ([("a", nodes_a, times_a[-1])] if times_a else []) + [("b", nodes_b, times_b[-1])]
    for key, table, wall in last_runs:
        node = table.get("attribution", 0.0)
        split[key] = {"attribution_node_s": node, "outside_attribution_node_s": wall - node}
        print(f"({key}) last run: attribution node {node:.2f} s = {node / c:.2f} x (c); "
              f"everything else {wall - node:.2f} s = {(wall - node) / c:.2f} x (c); "
              f"(c) + everything else = {(c + wall - node) / c:.2f} x (c)")

    print()
    print("per node: Nipype runtime.duration summed over subjects, in the last run of each; % of "
          "that run's wall time")
    columns = [(f"({key})", table, wall) for key, table, wall in last_runs]
    print(f"{'node':44s}" + "".join(f" {k + ' s':>9s} {k + ' %':>7s}" for k, _, _ in columns))

    def cell(seconds: float | None, wall: float) -> str:
        if seconds is None:
            return f" {'-':>9s} {'':>7s}"
        return f" {seconds:9.2f} {100 * seconds / wall:6.1f}%"

    names = sorted(set().union(*(table for _, table, _ in columns)),
                   key=lambda n: -max(table.get(n, 0.0) for _, table, _ in columns))
    for name in names:
        if max(table.get(name, 0.0) for _, table, _ in columns) < 0.005:
            continue
        print(f"{name:44s}" + "".join(cell(table.get(name), wall) for _, table, wall in columns))
    print(f"{'sum of nodes':44s}"
          + "".join(cell(sum(table.values()), wall) for _, table, wall in columns))
    print(f"{'outside the nodes (wall - sum)':44s}"
          + "".join(cell(wall - sum(table.values()), wall) for _, table, wall in columns))
    print("(nodes under 5 ms in total left out)")

    return {
        "settings": {"n_subjects": args.n_subjects, "resolution_mm": args.resolution,
                     "model_shape": list(shape), "width": args.width, "methods": args.methods,
                     "params": params, "plugin": plugin, "plugin_args": {
                         k: v for k, v in plugin_args.items() if isinstance(v, (int, str))},
                     "reports": args.reports, "ground_truth": args.ground_truth,
                     "repeats": args.repeats, "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
        "seconds": {"a_workflow_registration": times_a, "b_workflow_transforms_reused": times_b,
                    "c_core": times_c},
        "median_s": {"a": a if times_a else None, "b": b, "c": c},
        "ratios": {"a_over_c": a / c if times_a else None, "b_over_c": b / c,
                   "a_over_b": a / b if times_a else None},
        "nodes_s": {"a": nodes_a, "b": nodes_b},
        "last_run_split_s": split,
    }


if __name__ == "__main__":
    main()
