#!/usr/bin/env python
"""Reproduce a bundled reference model (``nipype_xai/data/models``) from scratch.

Generates a synthetic training cohort and a fresh test cohort (another seed), trains a TinyCNN3D on
the 4 mm MNI152NLin2009aSym model grid with a fixed seed, scores it on the test cohort, and writes
``<task>_tinycnn3d.pt`` and ``<task>_tinycnn3d.json`` (with the scores under ``"training"``).

The bundled lesion model is exactly::

    OMP_NUM_THREADS=1 python scripts/train_bundled_model.py --task lesion

Same seed, same PyTorch build and same thread count give bit-identical weights on the CPU (the
script pins PyTorch to ``--threads`` threads). Cohorts are cached in ``--work-dir`` (the same seed
writes the same files, so a cached cohort is reused as is).

The spec also carries the summary of the training inputs that the pipeline's input-domain check
compares each subject with (:mod:`nipype_xai.models.domain`), and the fresh cohort's distances to
it. ``--input-summary-only`` (re)computes just that for an existing model, from the cohorts and
settings its ``"training"`` record names, without training: the weights file is not touched::

    OMP_NUM_THREADS=1 python scripts/train_bundled_model.py --task lesion --input-summary-only

``--patterns-only`` fits the model's PatternNet / PatternAttribution patterns
(:mod:`nipype_xai.attribution.patterns`) on a freshly generated cohort of its task (another seed
than training's, prepared as the training inputs were, without augmentation) and writes them
beside the spec; the weights file is not touched::

    OMP_NUM_THREADS=1 python scripts/train_bundled_model.py --task lesion --patterns-only
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "nipype_xai" / "data" / "models"

#: The model grid: 4 mm voxels of the template's own 4 mm grid (nilearn's MNI152NLin2009aSym
#: resampled to 4 mm, 50 x 59 x 48, same origin and axes), 48 x 65 x 48 of them around the
#: template's field-of-view centre. It holds the whole brain (voxels 6-41, 10-54, 0-38), every
#: axis is a multiple of 16 or one more, so TinyCNN3D's four 2x max-pools drop no brain voxel
#: (a pool drops the last row of an odd axis), and x and z are even and y odd like the template
#: grid's, so ``to_model_grid`` lands on the same grid whatever the resolution of the
#: template-space image it is given (1, 2 or 4 mm: no half-voxel snapping).
MODEL_SHAPE = [48, 65, 48]
MODEL_RESOLUTION_MM = 4.0

#: The auxiliary "easy" cohort of the curriculum (larger, higher-contrast lesions; more volume
#: loss) and how each task's images reach the template: shared with the benchmark's training.
from nipype_xai.synth.train import EASY_COHORT_OPTIONS as EASY_OPTIONS  # noqa: E402
from nipype_xai.synth.train import TASK_MAX_SHIFT  # noqa: E402
from nipype_xai.synth.train import TASK_TO_TEMPLATE as TO_TEMPLATE  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Bundled lesion model: OMP_NUM_THREADS=1 python scripts/train_bundled_model.py "
               "--task lesion",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--task", choices=("lesion", "atrophy"), default="lesion")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT,
                        help="where <task>_tinycnn3d.{pt,json} are written")
    parser.add_argument("--work-dir", type=Path, default=Path("train_bundled_work"),
                        help="cache of the generated cohorts")
    parser.add_argument("--n-train", type=int, default=300, help="training cohort size")
    parser.add_argument("--train-seed", type=int, default=1, help="training cohort seed")
    parser.add_argument("--n-test", type=int, default=60, help="fresh test cohort size")
    parser.add_argument("--test-seed", type=int, default=12345, help="fresh test cohort seed")
    parser.add_argument("--n-easy", type=int, default=150,
                        help="size of the auxiliary easy cohort (0: none); see EASY_OPTIONS")
    parser.add_argument("--easy-seed", type=int, default=2, help="easy cohort seed")
    parser.add_argument("--cohort-resolution", type=float, default=2.0,
                        help="voxel size (mm) of the generated cohorts (images finer than the "
                             "4 mm model grid, as real acquisitions are)")
    parser.add_argument("--to-template", choices=("groundtruth", "affine", "identity"),
                        default=None, help="known transform used (default: groundtruth for "
                                           "lesion, affine for atrophy)")
    parser.add_argument("--width", type=int, default=8, help="TinyCNN3D width")
    parser.add_argument("--n-blocks", type=int, default=4, help="TinyCNN3D blocks")
    parser.add_argument("--pooling", choices=("avg", "max", "none"), default="max",
                        help="TinyCNN3D global pooling (max: a lesion detector; none: a "
                             "position-aware flattened head)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="TinyCNN3D dropout before the classifier")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--max-shift", type=int, default=None,
                        help="augmentation shift, voxels (default: 2 for lesion, 0 for atrophy; "
                             "see nipype_xai.synth.train.TASK_MAX_SHIFT)")
    parser.add_argument("--no-flip-x", dest="flip_x", action="store_false",
                        help="no left-right flips (both tasks are bilateral on a symmetric "
                             "template, so flips are on by default)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch CPU threads (1: on a shared machine, OpenMP threads that "
                             "wait for each other on busy cores made training 15x slower)")
    parser.add_argument("--name", default=None, help="file base name (default <task>_tinycnn3d)")
    parser.add_argument("--input-summary-only", action="store_true",
                        help="do not train: (re)compute the training inputs' summary of the "
                             "existing <out-dir>/<name>.json from the cohorts and settings its "
                             "'training' record names, score its fresh cohort against it, and "
                             "rewrite the spec (the weights file stays byte-identical)")
    parser.add_argument("--patterns-only", action="store_true",
                        help="do not train: fit the existing <out-dir>/<name>.json model's "
                             "PatternNet patterns on a fresh cohort (--patterns-n subjects, "
                             "--patterns-seed, --cohort-resolution) and rewrite the spec")
    parser.add_argument("--patterns-n", type=int, default=150,
                        help="subjects of the patterns cohort (half with the task's signal)")
    parser.add_argument("--patterns-seed", type=int, default=16, help="patterns cohort seed")
    parser.add_argument("--patterns-estimator", choices=("relu", "linear"), default="relu")
    return parser.parse_args(argv)


def cohort(work_dir: Path, task: str, n: int, seed: int, resolution: float,
           easy: bool = False) -> Path:
    """Generate a cohort, or reuse a complete one from an earlier run (same seed, same files)."""
    from nipype_xai.synth import generate_cohort

    root = work_dir / f"{task}{'-easy' if easy else ''}_seed-{seed}_n-{n}_res-{resolution:g}"
    if (root / "participants.tsv").is_file():
        return root
    options = EASY_OPTIONS[task] if easy else {}
    return generate_cohort(root, task, n, seed=seed, resolution_mm=resolution, overwrite=True,
                           **options)


def fresh_cohort_distances(summary, X_test) -> dict:
    """How the fresh cohort (held out: another seed) lies against the summary: the false flags."""
    from nipype_xai.models.domain import input_distance

    distances = [input_distance(x[0], summary) for x in X_test]
    values = [d.distance for d in distances]
    return {"n_subjects": len(values), "flagged": sum(d.outside for d in distances),
            "median_distance": round(float(sorted(values)[len(values) // 2]), 3),
            "max_distance": round(max(values), 3), "threshold": round(summary.threshold, 3)}


def input_summary_only(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--input-summary-only``: the summary of an existing model's training inputs, no training."""
    import torch

    from nipype_xai.models import load_model_spec, weights_sha256
    from nipype_xai.synth.train import (
        INPUT_SUMMARY_NOTE,
        add_input_summary,
        augmentation_settings,
        load_cohort_arrays,
        summarize_training_inputs,
    )

    name = args.name or f"{args.task}_tinycnn3d"
    spec_path = (args.out_dir / f"{name}.json").absolute()
    spec = load_model_spec(spec_path)
    training = json.loads(spec_path.read_text(encoding="utf-8")).get("training")
    if not training:
        raise SystemExit(f"{spec_path.name}: no 'training' record to read the cohorts and "
                         f"settings from")
    weights_before = weights_sha256(spec.weights)
    started = time.perf_counter()
    to_template = training["to_template"]
    parts = []
    for key, easy in (("train_cohort", False), ("easy_cohort", True)):
        block = training.get(key)
        if block:
            root = cohort(args.work_dir, block["task"], block["n_subjects"], block["seed"],
                          block["resolution_mm"], easy=easy)
            parts.append(load_cohort_arrays(root, spec, to_template=to_template,
                                            progress=True)[0])
    X = torch.cat(parts)
    summary = summarize_training_inputs(X, **training["settings"])
    fresh = training["fresh_cohort"]
    test_root = cohort(args.work_dir, fresh["task"], fresh["n_subjects"], fresh["seed"],
                       fresh["resolution_mm"])
    X_test, _, _ = load_cohort_arrays(test_root, spec, to_template=fresh["to_template"],
                                      progress=True)
    command = "OMP_NUM_THREADS=1 python scripts/train_bundled_model.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    record = {"command": command.strip(), "inputs": INPUT_SUMMARY_NOTE, "n_inputs": len(X),
              "augmentation": augmentation_settings(training["settings"]),
              "fresh_cohort": {"seed": fresh["seed"], "resolution_mm": fresh["resolution_mm"],
                               **fresh_cohort_distances(summary, X_test)}}
    add_input_summary(spec_path, summary, record)
    if weights_sha256(spec.weights) != weights_before:  # pragma: no cover - never written
        raise SystemExit(f"{spec.weights.name} changed")
    print(json.dumps({"spec": str(spec_path), "input_summary": record,
                      "training_distance": dict(zip(summary.distance_levels,
                                                    summary.distance_quantiles)),
                      "seconds": round(time.perf_counter() - started, 1)}, indent=2))
    return 0


def patterns_only(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--patterns-only``: the existing model's patterns, fitted on a fresh cohort."""
    from nipype_xai.atomic import atomic_write
    from nipype_xai.attribution.patterns import fit_patterns
    from nipype_xai.models import load_model, load_model_spec, weights_sha256
    from nipype_xai.models.spec_json import add_patterns
    from nipype_xai.synth.train import load_cohort_arrays

    name = args.name or f"{args.task}_tinycnn3d"
    spec_path = (args.out_dir / f"{name}.json").absolute()
    spec = load_model_spec(spec_path)
    training = json.loads(spec_path.read_text(encoding="utf-8")).get("training") or {}
    to_template = training.get("to_template") or args.to_template or TO_TEMPLATE[args.task]
    weights_before = weights_sha256(spec.weights)
    started = time.perf_counter()
    cached = (args.work_dir / f"{args.task}_seed-{args.patterns_seed}_n-{args.patterns_n}_res-"
              f"{args.cohort_resolution:g}" / "participants.tsv").is_file()
    root = cohort(args.work_dir, args.task, args.patterns_n, args.patterns_seed,
                  args.cohort_resolution)
    generated = time.perf_counter()
    X, y, _ = load_cohort_arrays(root, spec, to_template=to_template, progress=True)
    loaded = time.perf_counter()
    model = load_model(spec)
    fitted_on = (f"synthetic {args.task} cohort, seed {args.patterns_seed}, {len(X)} subjects "
                 f"({int(y.sum())} with the signal) at {args.cohort_resolution:g} mm, brought "
                 f"to the template with the '{to_template}' transform and onto the model grid "
                 f"as inference does; no augmentation")
    patterns = fit_patterns(model, X, estimator=args.patterns_estimator, batch_size=4,
                            fitted_on=fitted_on)
    fitted = time.perf_counter()
    add_patterns(spec_path, patterns)
    command = "OMP_NUM_THREADS=1 python scripts/train_bundled_model.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    content = json.loads(spec_path.read_text(encoding="utf-8"))
    content.setdefault("training", {})["patterns"] = {
        "command": command.strip(),
        "cohort": {"task": args.task, "n_subjects": args.patterns_n, "seed": args.patterns_seed,
                   "resolution_mm": args.cohort_resolution, "to_template": to_template},
        "estimator": args.patterns_estimator, "threads": args.threads,
        "undetermined_units": dict(patterns.undetermined),
        "seconds": {"generate_cohort": ("cached from an earlier run" if cached
                                        else round(generated - started, 1)),
                    "load_cohort": round(loaded - generated, 1),
                    "fit": round(fitted - loaded, 1)}}
    text = json.dumps(content, indent=2) + "\n"
    atomic_write(spec_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if weights_sha256(spec.weights) != weights_before:  # pragma: no cover - never written
        raise SystemExit(f"{spec.weights.name} changed")
    print(json.dumps({"spec": str(spec_path), **content["training"]["patterns"],
                      "patterns_bytes": len(patterns.to_bytes())}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.input_summary_only:
        return input_summary_only(args, argv)
    if args.patterns_only:
        return patterns_only(args, argv)
    from nipype_xai.models import InputSpec, ModelSpec
    from nipype_xai.synth.anatomy import TEMPLATE_SPACE
    from nipype_xai.synth.train import (
        INPUT_SUMMARY_NOTE,
        augmentation_settings,
        evaluate,
        load_cohort_arrays,
        save_trained_model,
        summarize_training_inputs,
        train_model,
    )

    to_template = args.to_template or TO_TEMPLATE[args.task]
    name = args.name or f"{args.task}_tinycnn3d"
    spec = ModelSpec(
        architecture="nipype_xai.models.architectures:TinyCNN3D",
        kwargs={"n_outputs": 2, "width": args.width, "n_blocks": args.n_blocks,
                "pooling": args.pooling,
                **({"dropout": args.dropout} if args.dropout else {}),
                **({"input_shape": MODEL_SHAPE} if args.pooling == "none" else {})},
        weights=Path(f"{name}.pt"),
        input=InputSpec(space=TEMPLATE_SPACE, resolution_mm=(MODEL_RESOLUTION_MM,) * 3,
                        shape=tuple(MODEL_SHAPE), normalization="zscore", mask="nonzero"),
        outputs=("control", args.task),
        task="classification",
        name=name,
    )

    started = time.perf_counter()
    train_root = cohort(args.work_dir, args.task, args.n_train, args.train_seed,
                        args.cohort_resolution)
    test_root = cohort(args.work_dir, args.task, args.n_test, args.test_seed,
                       args.cohort_resolution)
    easy_root = (cohort(args.work_dir, args.task, args.n_easy, args.easy_seed,
                        args.cohort_resolution, easy=True) if args.n_easy else None)
    generated = time.perf_counter()
    X, y, _ = load_cohort_arrays(train_root, spec, to_template=to_template, progress=True)
    if easy_root is not None:
        X_easy, y_easy, _ = load_cohort_arrays(easy_root, spec, to_template=to_template,
                                               progress=True)
        X, y = torch.cat([X, X_easy]), torch.cat([y, y_easy])
    X_test, y_test, _ = load_cohort_arrays(test_root, spec, to_template=to_template,
                                           progress=True)
    loaded = time.perf_counter()

    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "weight_decay": args.weight_decay, "seed": args.seed, "augment": True,
                "max_shift": (TASK_MAX_SHIFT[args.task] if args.max_shift is None
                              else args.max_shift), "intensity_jitter": 0.1, "flip_x": args.flip_x}
    model, history = train_model(spec, X, y, **settings)
    summary = summarize_training_inputs(X, **settings)
    scores = evaluate(model, X_test, y_test)
    identity = None
    if to_template != "identity":
        # Unregistered native images: how much the model leans on the registration.
        X_native, y_native, _ = load_cohort_arrays(test_root, spec, to_template="identity")
        identity = evaluate(model, X_native, y_native)

    command = "OMP_NUM_THREADS=1 python scripts/train_bundled_model.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    metadata = {
        "command": command.strip(),
        "train_cohort": {"task": args.task, "n_subjects": args.n_train, "seed": args.train_seed,
                         "resolution_mm": args.cohort_resolution},
        "easy_cohort": ({"task": args.task, "n_subjects": args.n_easy, "seed": args.easy_seed,
                         "resolution_mm": args.cohort_resolution,
                         "generate_cohort_options": EASY_OPTIONS[args.task]}
                        if args.n_easy else None),
        "to_template": to_template,
        "settings": settings,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "final_train_loss": round(history["loss"][-1], 6),
        "fresh_cohort": {"task": args.task, "n_subjects": args.n_test, "seed": args.test_seed,
                         "resolution_mm": args.cohort_resolution, "to_template": to_template,
                         "balanced_accuracy": round(scores["balanced_accuracy"], 4),
                         "accuracy": round(scores["accuracy"], 4),
                         "confusion": scores["confusion"]},
    }
    if identity is not None:
        metadata["fresh_cohort"]["balanced_accuracy_unregistered"] = round(
            identity["balanced_accuracy"], 4)
    metadata["input_summary"] = {
        "command": metadata["command"], "inputs": INPUT_SUMMARY_NOTE, "n_inputs": len(X),
        "augmentation": augmentation_settings(settings),
        "fresh_cohort": {"seed": args.test_seed, "resolution_mm": args.cohort_resolution,
                         **fresh_cohort_distances(summary, X_test)}}
    spec_path = save_trained_model(model, spec, args.out_dir, name=name, metadata=metadata,
                                   input_summary=summary)
    finished = time.perf_counter()

    weights = spec_path.with_suffix(".pt")
    print(json.dumps({
        "spec": str(spec_path),
        "weights_bytes": weights.stat().st_size,
        "n_parameters": history["n_parameters"],
        "loss_per_epoch": [round(v, 4) for v in history["loss"]],
        "train_accuracy_per_epoch": [round(v, 3) for v in history["train_accuracy"]],
        "fresh_cohort": metadata["fresh_cohort"],
        "seconds": {"generate_cohorts": round(generated - started, 1),
                    "load_cohorts": round(loaded - generated, 1),
                    "train": round(history["seconds"], 1),
                    "total": round(finished - started, 1)},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
