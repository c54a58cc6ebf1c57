"""``nipype-xai train-simulator --model SPEC --cohort DIR OUT_DIR``: train a counterfactual
simulator (:mod:`nipype_xai.counterfactual`) for a classifier on a synthetic cohort.

The cohort's T1w images reach the model grid exactly as the benchmark's training inputs do
(:mod:`nipype_xai.synth.training_data`: the cohort's known transform into template space, the
affine part only for the atrophy task whose signal a nonlinear registration would undo, then
:func:`~nipype_xai.models.to_model_grid`, as inference prepares an image). Written into OUT_DIR:
``<name>.pt`` (the simulator's state dict) and ``<name>.json`` (its spec, naming the classifier
and the SHA-256 of its weights; :mod:`nipype_xai.counterfactual.spec`).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .parser import UsageError, _Parser, _positive_int

__all__ = ["load_training_set", "run_from_argv", "train_simulator_parser"]

_PROG = "nipype-xai train-simulator"


def train_simulator_parser() -> argparse.ArgumentParser:
    """The ``train-simulator`` subcommand's parser."""
    from ..counterfactual import SimulatorSettings

    default = SimulatorSettings()
    parser = _Parser(
        prog=_PROG,
        description="Train a simulator network (Liu et al., IPMI 2021) that deforms an image "
                    "until a frozen classifier sees the requested class; write its weights and "
                    "a simulator spec for the participant workflow's --counterfactual.")
    parser.add_argument("output_dir", type=Path, metavar="OUT_DIR",
                        help="folder for <name>.pt and <name>.json")
    parser.add_argument("--model", type=Path, required=True, metavar="SPEC.json",
                        help="the classifier's model spec (frozen during training)")
    parser.add_argument("--cohort", type=Path, required=True, metavar="DIR",
                        help="a synthetic cohort written by 'nipype-xai synth'")
    parser.add_argument("--n-subjects", type=_positive_int, default=None,
                        help="train on this many subjects, half of each class where the cohort "
                             "has them, in participants.tsv order (default: all)")
    parser.add_argument("--to-template", choices=("groundtruth", "affine", "identity"),
                        default=None,
                        help="how the T1w images reach template space (default: the task's, "
                             "'affine' for atrophy, 'groundtruth' otherwise)")
    parser.add_argument("--name", default=None,
                        help="base name of the files (default: <model name>_simulator)")
    parser.add_argument("--epochs", type=_positive_int, default=default.epochs)
    parser.add_argument("--batch-size", type=_positive_int, default=default.batch_size)
    parser.add_argument("--lr", type=float, default=default.lr)
    parser.add_argument("--seed", type=int, default=default.seed)
    for term in ("classification", "smoothness", "cycle", "magnitude"):
        parser.add_argument(f"--weight-{term}", type=float,
                            default=getattr(default, f"weight_{term}"),
                            help=f"weight of the {term} loss (default: %(default)s)")
    parser.add_argument("--max-velocity", type=float, default=default.max_velocity_voxels,
                        help="bound on each velocity component, voxels (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust-model-code", action="store_true",
                        help="import the classifier's architecture even from outside "
                             "nipype_xai, monai.networks.nets and torchvision.models")
    parser.add_argument("--allow-external-weights", dest="external_weights",
                        action="store_true", help="accept classifier weights outside its "
                                                  "spec's folder")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks with errors")
    return parser


def _cohort_task(cohort: Path) -> str:
    """``atrophy`` when the cohort's participants.tsv records atrophy fractions, else ``lesion``."""
    path = cohort / "participants.tsv"
    with open(path, newline="", encoding="utf-8") as stream:
        header = next(csv.reader(stream, delimiter="\t"), [])
    return "atrophy" if "atrophy_fraction" in header else "lesion"


def load_training_set(cohort: Path, spec, *, n_subjects: Optional[int], to_template: str,
                      progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The cohort's images on the spec's model grid and their class indices.

    ``n_subjects`` takes the first subjects of each class in ``participants.tsv`` order, half
    of each where the cohort has enough (None: every subject).
    """
    from tqdm.auto import tqdm

    from ..models.preprocessing import to_model_grid
    from ..synth.training_data import cohort_to_template, read_participants

    participants = read_participants(cohort)
    unknown = sorted({label for _, label in participants} - set(spec.outputs))
    if unknown:
        raise UsageError(f"{cohort / 'participants.tsv'}: label(s) {unknown} are not among "
                         f"{spec.source}'s outputs {list(spec.outputs)}")
    if n_subjects is not None and n_subjects < len(participants):
        by_class = {label: [p for p in participants if p[1] == label] for label in spec.outputs}
        chosen: list[tuple[str, str]] = []
        share = n_subjects // len(spec.outputs)
        for rows in by_class.values():
            chosen += rows[:share]
        rest = [p for p in participants if p not in chosen]
        chosen += rest[:n_subjects - len(chosen)]
        order = {p: i for i, p in enumerate(participants)}
        participants = sorted(chosen, key=order.__getitem__)
    X = torch.empty((len(participants), spec.input.channels, *spec.input.shape))
    for row, (subject, _) in enumerate(tqdm(participants, desc="load cohort", unit="subject",
                                            disable=not progress)):
        X[row] = to_model_grid(cohort_to_template(cohort, subject, to_template), spec)[0][0]
    y = torch.tensor([spec.outputs.index(label) for _, label in participants])
    return X, y, [subject for subject, _ in participants]


def run(args: argparse.Namespace) -> Path:
    """Train and write the simulator; return the spec JSON written."""
    from ..counterfactual import SimulatorSettings, train_simulator
    from ..counterfactual.spec import save_simulator
    from ..models.spec import load_model, load_model_spec
    from ..synth.training_data import TASK_TO_TEMPLATE

    spec = load_model_spec(args.model, external_weights=args.external_weights)
    if spec.task != "classification":
        raise UsageError(f"{spec.source}: a simulator moves a classifier's answer; the spec's "
                         f"task is {spec.task!r}")
    if not (args.cohort / "participants.tsv").is_file():
        raise UsageError(f"{args.cohort}: not a synthetic cohort (no participants.tsv)")
    try:
        settings = SimulatorSettings(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            weight_classification=args.weight_classification,
            weight_smoothness=args.weight_smoothness, weight_cycle=args.weight_cycle,
            weight_magnitude=args.weight_magnitude, max_velocity_voxels=args.max_velocity)
    except ValueError as error:
        raise UsageError(str(error)) from None
    classifier = load_model(spec, device=args.device, trust_code=args.trust_model_code)
    task = _cohort_task(args.cohort)
    to_template = args.to_template or TASK_TO_TEMPLATE.get(task, "groundtruth")
    started, cpu_started = time.perf_counter(), time.process_time()
    X, y, subjects = load_training_set(args.cohort, spec, n_subjects=args.n_subjects,
                                       to_template=to_template, progress=args.progress)
    loading = time.perf_counter() - started
    loading_cpu = time.process_time() - cpu_started
    if len(torch.unique(y)) < 2:
        raise UsageError(f"{args.cohort}: the training subjects hold a single class; a "
                         f"simulator needs both")
    simulator, history = train_simulator(classifier, X, y, settings, device=args.device,
                                         progress=args.progress)
    terms = ("loss", "classification", "smoothness", "cycle", "magnitude", "flip_rate")
    record: dict[str, Any] = {
        "cohort": {"path": str(args.cohort.absolute()), "task": task,
                   "n_subjects": len(subjects), "subjects": subjects,
                   "to_template": to_template},
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        "seconds_loading": round(loading, 1),
        "cpu_seconds_loading": round(loading_cpu, 1),
        "seconds_training": round(history["seconds"], 1),
        "cpu_seconds_training": round(history["cpu_seconds"], 1),
        "n_parameters": history["n_parameters"],
        "final_losses": {t: history[t][-1] for t in terms},
        "history": {t: history[t] for t in terms},
    }
    name = args.name or f"{spec.name}_simulator"
    return save_simulator(simulator, settings, spec, args.output_dir, name=name,
                          training=record)


def run_from_argv(argv: Sequence[str]) -> int:
    """The ``train-simulator`` subcommand: parse, train, say where the spec is; exit code 0."""
    args = train_simulator_parser().parse_args(list(argv))
    path = run(args)
    print(f"nipype-xai: simulator spec written to {path}")
    return 0
