"""Argument parsers of the ``nipype-xai`` command (SPEC §7).

argparse cannot mix the BIDS-App positional arguments (``BIDS_DIR OUTPUT_DIR participant|group``)
with subcommands, so :func:`nipype_xai.cli.run.main` dispatches on the first argument: ``demo``,
``synth`` and ``train`` have parsers of their own, anything else is the BIDS-App call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Optional

from .. import __version__

#: The most subjects one model node explains by default (``--subjects-per-job``; see
#: :func:`nipype_xai.cli.execution.default_subjects_per_job`). A batch's memory grows with its
#: size (the gradient methods hold every subject's input, activations and gradient at once),
#: its savings do not: past a few subjects the model load and the worker's start (importing
#: torch, seconds) are a small share of the node's time.
MAX_SUBJECTS_PER_JOB = 8

#: Nipype plugins that submit the whole graph to the scheduler and return without waiting for
#: it (the jobs hold their dependencies); the others run it to the end.
SUBMITTING_PLUGINS = ("SLURMGraph",)

__all__ = [
    "DEFAULT_METHODS",
    "UsageError",
    "bids_app_parser",
    "demo_parser",
    "synth_parser",
    "train_parser",
]

#: The default method set: a fast, representative subset of each family, plus two baselines.
#: The perturbation family is represented by ``atlas_occlusion`` (~200 anatomical supervoxels,
#: one forward pass each): sliding-window ``occlusion`` at the scale of a lesion costs thousands
#: of passes per map on a CPU (issue 15).
DEFAULT_METHODS = (
    "gradient", "smoothgrad", "integrated_gradients", "lrp_epsilon_plus_flat", "gradcam",
    "atlas_occlusion", "sobel", "random",
)

_PROG = "nipype-xai"


class UsageError(Exception):
    """A command-line argument is missing or invalid (reported in one line, exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 1 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def method_params_argument(text: str) -> dict[str, dict]:
    """``--method-params``: a JSON object ``{"method": {"parameter": value}}``, or the path of a
    JSON file holding one."""
    import json

    source = text
    path = Path(text)
    if not text.lstrip().startswith("{") and path.is_file():
        source = path.read_text(encoding="utf-8")
    try:
        value = json.loads(source)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"--method-params: not a JSON object or a JSON file ({error})") from error
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError(
            '--method-params: expected {"method": {"parameter": value}}, e.g. '
            '\'{"integrated_gradients": {"n_steps": 128}}\'')
    return value


#: ``--work-dir`` of the BIDS-App call (see :class:`nipype_xai.cli.execution.WorkDirectory`).
WORK_DIR_HELP = (
    "Nipype work directory, kept: a re-run with the same one recomputes only what changed "
    "(default: a new temporary folder under $TMPDIR, else /tmp, removed when the run succeeds; "
    "kept, and named, when a subject fails, for its crash files; nothing is written to the "
    "current folder)"
)


def _common_run_options(parser: argparse.ArgumentParser, *, methods_default=DEFAULT_METHODS,
                        brain_extraction_default: str = "deepbet",
                        work_dir_help: str = WORK_DIR_HELP):
    """Options shared by the BIDS-App call and ``demo``."""
    from ..attribution.precision import PRECISIONS
    from ..workflows.anatomy import BRAIN_EXTRACTION

    parser.add_argument(
        "--brain-extraction", choices=BRAIN_EXTRACTION, default=brain_extraction_default,
        help="how the brain is taken out of the raw T1w before registration: deepbet (a neural "
             "network whose weights ship with its package) or none for images that are already "
             f"skull-stripped (default: {brain_extraction_default})")
    parser.add_argument("--skull-stripped", dest="brain_extraction", action="store_const",
                        const="none", help="the T1w images are already skull-stripped: same as "
                                           "--brain-extraction none")
    parser.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                        help="skip the N4 intensity non-uniformity correction of the raw T1w")
    parser.add_argument("--keep-failed-qc", action="store_true",
                        help="publish the maps of a subject whose registration fails quality "
                             "control, flagged as such (default: the subject fails, no maps)")
    parser.add_argument("--unrestricted-maps", dest="restrict_maps", action="store_false",
                        help="keep the raw maps; by default each map is kept on the subject's "
                             "data (the model input's nonzero voxels, the brain mask on the T1w "
                             "grid) and its sidecar records the share of mass that lay outside")
    parser.add_argument(
        "--methods", nargs="+", default=list(methods_default), metavar="METHOD",
        help="attribution methods and baselines (sobel, laplace, random) to compute "
             f"(default: {' '.join(methods_default)})")
    parser.add_argument("--method-params", type=method_params_argument, default=None,
                        metavar="JSON",
                        help="per-method parameters (defaults: the methods' own, recorded in "
                             "every map's sidecar), a JSON object or file, e.g. "
                             "'{\"integrated_gradients\": {\"n_steps\": 128}}'")
    parser.add_argument("--background", type=Path, metavar="FILE",
                        help="background set of gradient_shap and deeplift_shap, from "
                             "'nipype-xai background' (default: each image's own blurred copy)")
    parser.add_argument("--work-dir", "-w", type=Path, metavar="DIR", help=work_dir_help)
    parser.add_argument("--nprocs", "--n-cpus", type=_positive_int, metavar="N",
                        help="parallel processes (default: all CPUs)")
    parser.add_argument("--plugin", choices=("Linear", "MultiProc", "SLURM", *SUBMITTING_PLUGINS),
                        help="Nipype execution plugin (default: MultiProc, Linear with --nprocs 1)")
    parser.add_argument("--plugin-args", metavar="JSON",
                        help="Nipype plugin arguments as a JSON object, e.g. "
                             "'{\"sbatch_args\": \"--time=1:00:00\"}'")
    parser.add_argument("--subjects-per-job", type=_positive_int, metavar="N",
                        help="subjects explained by one model node: the model is loaded once "
                             "per batch and the batch runs through it together (1: one model "
                             "node per subject; default: the subjects spread evenly over "
                             f"MultiProc's processes, {MAX_SUBJECTS_PER_JOB} per job on a cluster, at most "
                             f"{MAX_SUBJECTS_PER_JOB}). A fixed "
                             "N gives byte-identical re-runs under any plugin")
    parser.add_argument("--device", default="cpu", metavar="cpu|cuda",
                        help="torch device of the model nodes (default: cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                        help="numeric precision of the attribution passes: bf16 or fp16 (CUDA "
                             "only) run them under torch.autocast, faster on a GPU, maps within "
                             "the tolerances the README states; predictions stay fp32 "
                             f"(default: {PRECISIONS[0]})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the stochastic methods, the random baseline and the "
                             "registration (default: 0)")
    parser.add_argument("--nondeterministic", dest="deterministic", action="store_false",
                        help="register on all of a worker's cores: faster, but re-runs differ "
                             "slightly (default: one ITK thread, so that --seed gives "
                             "byte-identical outputs)")
    parser.add_argument("--trust-model-code", action="store_true",
                        help="import the model spec's architecture even from outside the "
                             "packages nipype-xai imports by default (nipype_xai, "
                             "monai.networks.nets, torchvision.models): that code runs with your "
                             "permissions, so only for a model spec you trust")
    parser.add_argument("--allow-external-weights", dest="external_weights",
                        action="store_true",
                        help="accept a model spec whose weights file lies outside the spec's "
                             "own folder (an absolute path, ~, or ../)")
    parser.add_argument("--registration", choices=("affine", "syn"), default="affine",
                        help="T1w -> template registration (default: affine)")
    parser.add_argument("--no-reports", dest="reports", action="store_false",
                        help="skip the HTML reports and their figures")
    parser.add_argument("--counterfactual", type=Path, default=None, metavar="SIMULATOR_SPEC",
                        help="also write each subject's counterfactual for the class the model "
                             "does not predict (image, displacement field, log-Jacobian, "
                             "intensity difference), with this simulator spec from "
                             "'nipype-xai train-simulator' for the model")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Nipype's log, and tracebacks with errors")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress display (subjects done, failed and remaining, elapsed "
                             "time, ETA), which is drawn on stderr only when it is a terminal "
                             "and not with -v; results and errors are still printed")


def bids_app_parser() -> argparse.ArgumentParser:
    """``nipype-xai BIDS_DIR OUTPUT_DIR participant|group [options]``."""
    parser = _Parser(
        prog=_PROG,
        description="Explain a 3D brain-MRI PyTorch model's predictions for every subject of a "
                    "BIDS dataset: attribution maps in template and native space as BIDS "
                    "derivatives, ground-truth overlap metrics, reports.",
        epilog="Other commands: 'nipype-xai demo [OUTPUT_DIR]' (synthetic cohort + bundled model "
               "+ report), 'nipype-xai synth OUTPUT_DIR ...' (synthetic cohorts), 'nipype-xai "
               "train ...' (train a model spec on a cohort), 'nipype-xai benchmark OUTPUT_DIR' "
               "(every method against known ground truth, with baselines), 'nipype-xai "
               "background --images ... OUT.nii.gz' (a background set for the Shapley-family "
               "methods); each has --help. "
               "Exit codes: 0 done, 1 bad input (nothing run), 2 some subjects failed (see "
               "OUTPUT_DIR/failures.tsv).",
    )
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    parser.add_argument("bids_dir", type=Path, metavar="BIDS_DIR", help="the input BIDS dataset")
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR",
                        help="the output derivatives dataset")
    parser.add_argument("analysis_level", choices=("participant", "group"),
                        help="participant: every subject's maps; group: summaries over the "
                             "participant-level outputs")
    parser.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                        help="subjects to process (with or without 'sub-'; default: all)")
    parser.add_argument("--model", type=Path, metavar="SPEC.json",
                        help="model spec JSON (default: the bundled lesion model)")
    parser.add_argument("--template", metavar="TEMPLATE",
                        help="TemplateFlow template to work in (default: the model spec's space)")
    parser.add_argument("--ground-truth", type=Path, metavar="DERIV_DIR",
                        help="derivatives dataset with native-space ground-truth masks "
                             "(sub-X_label-<gt-label>_mask.nii.gz): adds overlap metrics")
    parser.add_argument("--gt-label", default="lesion", metavar="LABEL",
                        help="label- of the ground-truth masks (default: lesion)")
    parser.add_argument("--anat-derivatives", type=Path, metavar="DERIV_DIR",
                        help="a lab's sMRIPrep/fMRIPrep output: its desc-preproc_T1w and "
                             "desc-brain_mask replace bias correction and brain extraction, and "
                             "its T1w <-> template transforms (when there) replace registration")
    parser.add_argument("--transforms-from", type=Path, metavar="DERIV_DIR",
                        help="reuse T1w <-> template transforms from this derivatives folder "
                             "(*_from-T1w_to-<tpl>_mode-image_xfm.h5 and the inverse; every "
                             "subject must have them) instead of registering")
    parser.add_argument("--n-boot", type=_positive_int, default=2000, metavar="N",
                        help="group level: bootstrap replicates of the ranking CIs "
                             "(default: 2000)")
    _common_run_options(parser)
    return parser


def demo_parser() -> argparse.ArgumentParser:
    """``nipype-xai demo [OUTPUT_DIR] [options]``."""
    parser = _Parser(
        prog=f"{_PROG} demo",
        description="The whole pipeline on data the package makes itself: a synthetic lesion "
                    "cohort, the bundled lesion model, the default methods and baselines, "
                    "participant and group levels, HTML reports.",
    )
    parser.add_argument("output_dir", type=Path, nargs="?", default=Path("nipype-xai-demo"),
                        metavar="OUTPUT_DIR",
                        help="where the cohort (bids/), the results (derivatives/nipype-xai/) and "
                             "the work directory (work/) go (default: ./nipype-xai-demo)")
    parser.add_argument("--n-subjects", type=_positive_int, default=8, metavar="N",
                        help="subjects in the synthetic cohort (default: 8, half with lesions)")
    parser.add_argument("--cohort-seed", type=int, default=2024, metavar="S",
                        help="seed of the synthetic cohort (default: 2024, a cohort the bundled "
                             "model never saw)")
    parser.add_argument("--model", type=Path, metavar="SPEC.json",
                        help="model spec JSON (default: the bundled lesion model)")
    parser.add_argument("--resolution", type=float, default=2.0, metavar="MM",
                        help="voxel size of the synthetic T1w images (default: 2, finer than "
                             "the bundled model's 4 mm grid, as real acquisitions are; the "
                             "bundled model was trained on 2 mm cohorts)")
    # The synthetic heads are made from the skull-stripped template: nothing to extract.
    _common_run_options(parser, brain_extraction_default="none",
                        work_dir_help="Nipype work directory (default: OUTPUT_DIR/work, kept: a "
                                      "re-run of the demo recomputes only what changed)")
    return parser


def synth_parser() -> argparse.ArgumentParser:
    """``nipype-xai synth OUTPUT_DIR --task lesion|atrophy --n-subjects N [options]``."""
    parser = _Parser(
        prog=f"{_PROG} synth",
        description="Write a synthetic cohort with a known signal source as a BIDS dataset, with "
                    "its ground truth in derivatives/groundtruth (SPEC §8).",
    )
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR",
                        help="new (or empty) folder for the dataset")
    parser.add_argument("--task", choices=("lesion", "atrophy"), required=True)
    parser.add_argument("--n-subjects", type=_positive_int, required=True, metavar="N")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="(default: 0)")
    parser.add_argument("--resolution", type=float, default=2.0, metavar="MM",
                        help="isotropic voxel size in mm (default: 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks with errors")
    return parser


def train_parser() -> argparse.ArgumentParser:
    """``nipype-xai train COHORT_DIR OUTPUT_DIR [options]``."""
    parser = _Parser(
        prog=f"{_PROG} train",
        description="Train a model spec's architecture on a synthetic cohort with a fixed seed "
                    "and write the weights and a spec JSON pointing at them "
                    "(nipype_xai.synth.train.train_on_cohort).",
    )
    parser.add_argument("cohort_dir", type=Path, metavar="COHORT_DIR",
                        help="a cohort written by 'nipype-xai synth'")
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR",
                        help="folder for <name>.pt and <name>.json")
    parser.add_argument("--spec", type=Path, metavar="SPEC.json",
                        help="spec to train: architecture, kwargs, input grid, outputs; its "
                             "weights are ignored (default: the bundled lesion model's spec)")
    parser.add_argument("--trust-model-code", action="store_true",
                        help="import the spec's architecture even from outside nipype_xai, "
                             "monai.networks.nets and torchvision.models (runs the spec's code)")
    parser.add_argument("--name", help="base name of the files and the spec's name")
    parser.add_argument("--to-template", choices=("groundtruth", "affine", "identity"),
                        default="groundtruth",
                        help="how the T1w images reach template space: the cohort's known "
                             "transform, its affine part, or none (default: groundtruth)")
    parser.add_argument("--epochs", type=_positive_int, default=30)
    parser.add_argument("--batch-size", type=_positive_int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks with errors")
    return parser


def wants_verbose(argv: Optional[list[str]]) -> bool:
    """Whether ``-v`` is among the arguments (known before parsing, for error reporting)."""
    argv = sys.argv[1:] if argv is None else argv
    return any(arg in ("-v", "--verbose") for arg in argv)
