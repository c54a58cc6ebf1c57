"""``nipype-xai benchmark OUTPUT_DIR``: argument parsing for the validation benchmark.

:func:`run_from_argv` is the ``benchmark`` subcommand of ``nipype-xai`` (:mod:`nipype_xai.cli.run`):
its parser (:func:`benchmark_parser`) and its bad values raise the command line's
:class:`~nipype_xai.cli.parser.UsageError`, reported like every other subcommand's.
``python -m nipype_xai.cli.benchmark OUTPUT_DIR ...`` runs the same thing (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .parser import UsageError, _Parser, method_params_argument

__all__ = ["add_arguments", "benchmark_parser", "main", "run", "run_from_argv"]

DESCRIPTION = ("Score every attribution method against the known ground truth of synthetic "
               "cohorts, with baselines and a model-randomisation check.")


def _json_object(text: str) -> dict[str, Any]:
    """``--train-options``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not a JSON object ({error})") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _part(text: str) -> tuple[int, int]:
    """``K/N`` -> ``(K, N)``."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N (e.g. 2/8), got {text!r}") from None
    return k, n


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the benchmark's arguments to ``parser``.

    Returns
    -------
    argparse.ArgumentParser
        ``parser``, for chaining.
    """
    import dataclasses

    from ..benchmark import ARCHITECTURES, BenchmarkSettings
    from ..synth import TASKS

    # The settings' own defaults, stated once (BenchmarkSettings).
    default = {f.name: f.default for f in dataclasses.fields(BenchmarkSettings)}

    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR",
                        help="where cohorts, models, tables, figures and the report go "
                             "(an interrupted run resumes from what is there)")
    parser.add_argument("--task", nargs="+", choices=TASKS, default=["lesion"],
                        help="synthetic task(s) (default: lesion)")
    parser.add_argument("--n-train", type=int, default=200,
                        help="training cohort size per task (default: 200)")
    parser.add_argument("--n-test", type=int, default=40,
                        help="test cohort size per task; half are positive (default: 40)")
    parser.add_argument("--n-easy", type=int, default=None,
                        help="auxiliary training cohort with a stronger signal (larger, "
                             "brighter lesions; more volume loss), pooled with the training "
                             "cohort: the curriculum that makes small models learn on a CPU "
                             "(default: half of --n-train; 0: none)")
    parser.add_argument("--architectures", nargs="+", choices=list(ARCHITECTURES),
                        default=["tinycnn"], help="models to train (default: tinycnn)")
    parser.add_argument("--model", type=Path, default=None, metavar="SPEC.json",
                        help="benchmark this trained model instead of training architectures")
    parser.add_argument("--trust-model-code", action="store_true",
                        help="--model: import its architecture even from outside nipype_xai, "
                             "monai.networks.nets and torchvision.models (runs the spec's code)")
    parser.add_argument("--allow-external-weights", dest="external_weights",
                        action="store_true",
                        help="--model: accept weights outside the spec's folder")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="attribution methods (default: all available)")
    parser.add_argument("--method-params", type=method_params_argument, default=None,
                        metavar="JSON", help="per-method parameters, a JSON object or file, "
                                             'e.g. \'{"shapley_sampling": {"n_samples": 2}}\'')
    parser.add_argument("--random-model-methods", nargs="*", default=["gradient", "smoothgrad"],
                        help="methods also run on the fully randomised model as baselines "
                             "(default: gradient smoothgrad)")
    parser.add_argument("--seed", type=int, default=0,
                        help="master seed: cohorts, stochastic methods, bootstrap (default: 0)")
    parser.add_argument("--training-seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="train one model per seed and architecture; the confidence "
                             "intervals resample seeds and subjects (default: --seed)")
    parser.add_argument("--min-balanced-accuracy", type=float,
                        default=default["min_balanced_accuracy"],
                        help="a model below this test balanced accuracy did not learn: "
                             "reported and left out of the summaries (default: %(default)s)")
    parser.add_argument("--part", type=_part, default=None, metavar="K/N",
                        help="compute part K of N of the test subjects into "
                             "OUTPUT_DIR/parts/NAME/part-K-of-N/ (no summary; see --merge)")
    parser.add_argument("--name", default=default["name"],
                        help="name of this set of parts (OUTPUT_DIR/parts/NAME/part-K-of-N/), so "
                             "that runs of other methods share OUTPUT_DIR's cohorts and models "
                             "(default: %(default)s)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="PART_DIR",
                        help="merge finished parts (or runs) into OUTPUT_DIR's tables, figures "
                             "and report; nothing is computed again")
    parser.add_argument("--resolution", type=float, default=2.0, metavar="MM",
                        help="voxel size of the generated cohorts (default: 2)")
    parser.add_argument("--model-resolution", type=float, default=None, metavar="MM",
                        help="voxel size of the trained models' grid (default: the larger of "
                             "--resolution and 4)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="training batch size (default: 4)")
    parser.add_argument("--lr", type=float, default=None,
                        help="training learning rate (default: per task, 0.003 for lesion, "
                             "0.001 for atrophy)")
    parser.add_argument("--train-options", type=_json_object, default=None, metavar="JSON",
                        help="other training settings, e.g. '{\"weight_decay\": 0.001, "
                             "\"augment\": false}'")
    parser.add_argument("--parcellation", type=Path, default=None, metavar="ATLAS.nii.gz",
                        help="an atlas in MNI152NLin2009aSym (integer labels): adds the ROI "
                             "ranking (roi_rank, roi_top1, roi_top3) of the ground truth's parcel")
    parser.add_argument("--n-sanity", type=int, default=default["n_sanity"],
                        help="test subjects per model in the cascading randomisation check "
                             "(default: %(default)s)")
    parser.add_argument("--sanity-methods", nargs="*", default=None,
                        help="methods in the randomisation check (default: --methods)")
    parser.add_argument("--sanity-max-steps", type=int, default=None,
                        help="randomisation depths computed (default: every layer)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    return parser


def benchmark_parser() -> argparse.ArgumentParser:
    """``nipype-xai benchmark OUTPUT_DIR [options]``; errors raise
    :class:`~nipype_xai.cli.parser.UsageError`."""
    return add_arguments(_Parser(prog="nipype-xai benchmark", description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments.

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    UsageError
        A bad value (an unknown method, bad sizes, an architecture that cannot run on the grid),
        found before any cohort is generated.
    """
    from ..benchmark import BenchmarkSettings, merge_benchmark, run_validation_benchmark

    # The nipype-xai command's argv starts with "benchmark"; run_from_argv records its own form.
    command = getattr(args, "command", None) or "nipype-xai " + shlex.join(sys.argv[1:])
    if args.merge:
        try:
            table = merge_benchmark(args.output_dir, args.merge, n_boot=args.n_boot,
                                    seed=args.seed)
        except (ValueError, OSError) as error:
            raise UsageError(str(error).splitlines()[0]) from error
        from ..benchmark.provenance import coverage_lines

        merged = json.loads((table.parent / "provenance.json").read_text("utf-8"))
        for line in coverage_lines(merged.get("coverage") or {}):
            print(f"merged {line}")
        print(f"benchmark table: {table}\nreport: {table.parent / 'benchmark.html'}")
        return 0
    try:
        settings = BenchmarkSettings(
            tasks=args.task, n_train=args.n_train, n_test=args.n_test, n_easy=args.n_easy,
            architectures=args.architectures, methods=args.methods, seed=args.seed,
            training_seeds=args.training_seeds, min_balanced_accuracy=args.min_balanced_accuracy,
            part=args.part, name=args.name, parcellation=args.parcellation,
            resolution_mm=args.resolution, model_resolution_mm=args.model_resolution,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            train_options=args.train_options, model_spec=args.model,
            trust_model_code=args.trust_model_code, external_weights=args.external_weights,
            method_params=args.method_params, random_model_methods=args.random_model_methods,
            n_sanity=args.n_sanity, sanity_methods=args.sanity_methods,
            sanity_max_steps=args.sanity_max_steps, n_boot=args.n_boot, device=args.device,
            progress=args.progress, command=command,
        )
        table = run_validation_benchmark(args.output_dir, settings)
    except (ValueError, TypeError) as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise UsageError(lines[0] if lines else type(error).__name__) from error
    if settings.part is not None:
        print(f"part table: {table}\nmerge the parts with: nipype-xai benchmark "
              f"{args.output_dir} --merge {table.parent.parent}/part-*")
    else:
        print(f"benchmark table: {table}\nreport: {table.parent / 'benchmark.html'}")
    return 0


def run_from_argv(argv: Sequence[str]) -> int:
    """``nipype-xai benchmark ARGV...``: parse, then :func:`run`."""
    args = benchmark_parser().parse_args(list(argv))
    args.command = "nipype-xai benchmark " + shlex.join(argv)
    return run(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m nipype_xai.cli.benchmark OUTPUT_DIR ...``: the ``nipype-xai benchmark`` command,
    with its error handling and exit codes."""
    from .run import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(["benchmark", *argv])


if __name__ == "__main__":
    sys.exit(main())
