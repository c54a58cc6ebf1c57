"""The ``nipype-xai`` command: BIDS-App participant/group levels; ``demo``, ``synth``, ``train``,
``benchmark``, ``background``, ``fit-patterns``, ``train-simulator``.

Exit codes: 0 done; 1 bad input (one line on stderr, ``nipype-xai: error: <file>: <problem>``,
nothing run; with ``-v`` the traceback too); 2 some subjects failed (the others finished; their
names and errors are in ``OUTPUT_DIR/failures.tsv`` and the group report).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

from .parser import (
    SUBMITTING_PLUGINS,
    UsageError,
    bids_app_parser,
    demo_parser,
    synth_parser,
    train_parser,
    wants_verbose,
)

__all__ = ["main"]

LOGGER = logging.getLogger("nipype_xai")

EXIT_OK, EXIT_BAD_INPUT, EXIT_SUBJECTS_FAILED = 0, 1, 2


def _say(message: str) -> None:
    print(f"nipype-xai: {message}", file=sys.stderr)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    # Errors from our cores start with the file name; anything else gets its type for context.
    from ..images import ImageError
    from ..models.spec import ModelSpecError

    known = (UsageError, ImageError, ModelSpecError, FileExistsError, FileNotFoundError)
    if not isinstance(error, known) and type(error).__module__.split(".")[0] != "nipype_xai":
        text = f"{type(error).__name__}: {text}"
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``nipype-xai`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = wants_verbose(argv)
    commands: dict[str, Callable[[list[str]], int]] = {
        "demo": _demo, "synth": _synth, "train": _train, "benchmark": _benchmark,
        "background": _background, "fit-patterns": _fit_patterns,
        "train-simulator": _train_simulator,
    }
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return _bids_app(argv)
    except SystemExit as stop:  # --help, --version
        return int(stop.code or 0)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into exit codes
        if verbose:
            traceback.print_exc()
        print(f"nipype-xai: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ---- shared checks ------------------------------------------------------------------------------


def _model_spec(path: Optional[Path], args) -> Path:
    """The model spec to use, checked by loading the model once (a bad spec stops everything).

    ``args``: the parsed options; ``--trust-model-code`` and ``--allow-external-weights`` are the
    spec's trust-boundary opt-ins (:mod:`nipype_xai.models.spec`).
    """
    from ..models.spec import load_model, load_model_spec

    if path is None:
        from ..models.bundled import bundled_model_spec

        path = bundled_model_spec("lesion")
    path = Path(path).absolute()
    spec = load_model_spec(path, external_weights=args.external_weights)
    # An input grid no machine here can hold (4000³): one clear error now, before the model is
    # built, rather than the same failed allocation in every subject.
    from ..models.inference import check_input_memory

    check_input_memory(spec)
    # Weights missing, refused by weights_only=True, or of the wrong shape: one clear error now
    # rather than the same crash in every subject.
    load_model(spec, device="cpu", trust_code=args.trust_model_code)
    return path


def _check_methods(methods: Sequence[str]) -> list[str]:
    from ..attribution import split_methods

    try:
        model_methods, baselines = split_methods(methods)
    except ValueError as error:
        raise UsageError(f"--methods: {error}") from None
    return model_methods + baselines


def _check_method_params(method_params: Optional[dict], methods: Sequence[str]) -> None:
    """``--method-params``: for requested methods, parameters they accept (the values each method
    checks when it runs); the background set comes from ``--background``, not from JSON."""
    from ..attribution import resolve_params, split_methods

    if not method_params:
        return
    for method, params in method_params.items():
        if "background" in params:
            raise UsageError(f"--method-params: {method}: give the background set with "
                             "--background FILE (from 'nipype-xai background'), not in JSON")
    model_methods = split_methods(methods)[0]
    if not model_methods:
        raise UsageError("--method-params: --methods names no attribution method, only baselines")
    try:
        resolve_params(model_methods, method_params)
    except (ValueError, TypeError) as error:
        raise UsageError(f"--method-params: {error}") from None


def _check_space(model_spec: Path, template: Optional[str], external_weights: bool) -> None:
    """The template a run will register to must be deliverable: checked now, not per subject."""
    from ..models.spec import load_model_spec
    from ..templates import TemplateNotAvailable, check_template
    from ..workflows.xai import registration_resolution

    spec = load_model_spec(model_spec, external_weights=external_weights)
    space = spec.input.space
    try:
        check_template(template or space, resolution=registration_resolution(spec))
    except TemplateNotAvailable as error:
        where = f"--template {template}" if template else f"{spec.source}: input.space {space!r}"
        raise TemplateNotAvailable(f"{where}: {error}") from None
    if template and template != space:
        # Allowed (fMRIPrep users bring MNI152NLin2009cAsym transforms for a 2009aSym model; the
        # two differ by far less than a model voxel), but the user should know.
        _say(f"note: the model expects {space} images; they will be in {template} (--template)")


def _check_background(background: Optional[Path], model_spec: Path, methods: Sequence[str],
                      template: Optional[str], external_weights: bool) -> None:
    """``--background``: a method that takes it, and a file on the grid every subject's model
    input will have (the spec's grid in the template's field of view), checked before any
    subject runs."""
    if background is None:
        return
    import nibabel as nib

    from ..attribution import method_defaults, split_methods
    from ..models.background import load_background
    from ..models.preprocessing import model_grid_for
    from ..models.spec import load_model_spec
    from ..templates import get_template
    from ..workflows.xai import registration_resolution

    takers = [m for m in split_methods(methods)[0] if "background" in method_defaults(m)]
    if not takers:
        raise UsageError(f"--background {background}: none of the --methods takes a background "
                         "(gradient_shap and deeplift_shap do)")
    spec = load_model_spec(model_spec, external_weights=external_weights)
    # The grid of ModelGridReference: the template at the registration resolution (its header
    # only: the grid needs the shape and affine).
    reference = nib.load(str(get_template(template or spec.input.space,
                                          resolution=registration_resolution(spec),
                                          suffix="T1w", desc="brain")))
    load_background(background, spec, model_grid_for(reference, spec))


def _check_precision(args) -> None:
    """``--precision fp16`` without ``--device cuda``: one line now, before anything runs."""
    from ..attribution.precision import PrecisionError, check_precision

    try:
        check_precision(args.precision, args.device)
    except PrecisionError as error:
        raise UsageError(f"--precision: {error}") from None


def _pipeline_options(args, model_spec: Path, methods: Sequence[str],
                      template: Optional[str]):
    """The participant level's options from the parsed command line (BIDS-App or demo)."""
    from ..workflows.options import PipelineOptions

    counterfactual = getattr(args, "counterfactual", None)
    if counterfactual is not None:
        _check_simulator(counterfactual, model_spec, args.external_weights)
    return PipelineOptions(
        model_spec=model_spec, methods=methods, template=template,
        registration=args.registration, brain_extraction=args.brain_extraction,
        bias_correction=args.bias_correction, keep_failed_qc=args.keep_failed_qc,
        restrict_maps=args.restrict_maps, seed=args.seed, deterministic=args.deterministic,
        device=args.device, precision=args.precision, trust_model_code=args.trust_model_code,
        external_weights=args.external_weights, reports=args.reports,
        background=args.background, method_params=args.method_params or {},
        counterfactual=counterfactual,
        subjects_per_job=getattr(args, "subjects_per_job", None),
    )


def _check_simulator(simulator_spec: Path, model_spec: Path, external_weights: bool) -> None:
    """A simulator spec that cannot be read, or was trained for another model: one error now,
    not the same failure in every subject."""
    from ..counterfactual.spec import check_classifier, load_simulator_spec
    from ..models.spec import load_model_spec

    check_classifier(load_simulator_spec(simulator_spec),
                     load_model_spec(model_spec, external_weights=external_weights))


def _report_run(summary, output_dir: Path) -> int:
    from ..bids import FAILURES_FILE

    total = len(summary.succeeded) + len(summary.failures) + len(summary.submitted)
    for failure in summary.failures:
        _say(f"{failure.subject} failed: {failure.reason}")
    if summary.submitted:
        print(f"nipype-xai: participant level: {len(summary.submitted)} of {total} subject(s) "
              "submitted, not run yet: follow the jobs with the scheduler (squeue); once they "
              "are done, the same command with --plugin MultiProc and the same -w collects "
              f"their results into {output_dir} and writes the true failures")
    else:
        print(f"nipype-xai: participant level: {len(summary.succeeded)} of {total} subject(s) "
              f"done in {summary.elapsed_s:.0f} s; results in {output_dir}")
    if summary.failures:
        _say(f"{len(summary.failures)} subject(s) failed; see {output_dir / FAILURES_FILE}")
        return EXIT_SUBJECTS_FAILED
    return EXIT_OK


def _check_dirs(bids_dir: Path, output_dir: Path, work_dir: Path) -> tuple[Path, Path]:
    """The cheap checks of the folders, before the model is loaded; return output and work dirs.

    Paths are resolved (symlinks, ``..``) before they are compared: ``BIDS/sub-01/..`` is the
    input dataset, and a raw dataset is never written to.
    """
    from ..bids import BIDSInputError, OutputFolderError, check_output_folder

    if not bids_dir.is_dir():
        raise BIDSInputError(f"{bids_dir}: BIDS_DIR is not a folder")
    if not (bids_dir / "dataset_description.json").is_file():
        raise BIDSInputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json at "
                             "its root)")
    try:
        output_dir = check_output_folder(output_dir, bids_dir)
        work_dir = check_output_folder(work_dir, bids_dir)
    except OutputFolderError as error:
        raise UsageError(str(error)) from None
    return output_dir, work_dir


# ---- BIDS-App -----------------------------------------------------------------------------------


def _bids_app(argv: list[str]) -> int:
    args = bids_app_parser().parse_args(argv)
    _check_precision(args)
    from .execution import (
        WorkDirectory,
        check_plugin_use,
        configure_logging,
        plugin_settings,
        progress_wanted,
    )

    configure_logging(args.verbose)
    plugin, plugin_args = plugin_settings(args.plugin, args.plugin_args, args.nprocs, args.device)
    check_plugin_use(plugin, work_dir_given=args.work_dir is not None,
                     subjects_per_job=args.subjects_per_job)
    # The progress line would be torn apart by Nipype's log (-v).
    progress = progress_wanted(args.quiet) and not args.verbose
    with WorkDirectory(args.work_dir) as work:
        code = _bids_app_run(args, work.path, plugin, plugin_args, progress)
        work.keep = code != EXIT_OK
        return code


def _bids_app_run(args, work_dir: Path, plugin: str, plugin_args: dict, progress: bool) -> int:
    from .execution import run_group_level, run_participant_level, status_file_path

    output_dir = args.output_dir.absolute()

    if args.analysis_level == "group":
        from ..bids import OutputFolderError, check_output_folder

        try:
            output_dir, work_dir = check_output_folder(output_dir), check_output_folder(work_dir)
        except OutputFolderError as error:
            raise UsageError(str(error)) from None
        report, failures = run_group_level(
            output_dir=output_dir, work_dir=work_dir, template=args.template,
            n_boot=args.n_boot, seed=args.seed, reports=args.reports, plugin=plugin,
            plugin_args=plugin_args, progress=progress,
        )
        for failure in failures:
            _say(f"group level failed: {failure.reason}")
        if failures:
            return EXIT_SUBJECTS_FAILED
        print(f"nipype-xai: group level done; results in {output_dir}"
              + (f"; report: {report}" if report else ""))
        return EXIT_OK

    output_dir, work_dir = _check_dirs(args.bids_dir, output_dir, work_dir)
    methods = _check_methods(args.methods)
    _check_method_params(args.method_params, methods)
    model_spec = _model_spec(args.model, args)
    _check_space(model_spec, args.template, args.external_weights)
    _check_background(args.background, model_spec, methods, args.template,
                      args.external_weights)
    status_file = status_file_path(output_dir, "participant")
    if not args.quiet:
        print(f"nipype-xai: participant level: progress kept in {status_file} (JSON)", flush=True)
    summary = run_participant_level(
        bids_dir=args.bids_dir.absolute(), output_dir=output_dir, work_dir=work_dir,
        options=_pipeline_options(args, model_spec, methods, args.template),
        participant_labels=args.participant_label, ground_truth_dir=args.ground_truth,
        gt_label=args.gt_label, transforms_dir=args.transforms_from,
        anat_dir=args.anat_derivatives, plugin=plugin, plugin_args=plugin_args,
        progress=progress, status_file=status_file,
    )
    return _report_run(summary, output_dir)


# ---- demo ---------------------------------------------------------------------------------------


def _demo(argv: list[str]) -> int:
    args = demo_parser().parse_args(argv)
    _check_precision(args)
    from ..models.spec import load_model_spec
    from ..synth import generate_cohort
    from .execution import (
        configure_logging,
        plugin_settings,
        progress_wanted,
        run_group_level,
        run_participant_level,
    )

    configure_logging(args.verbose)
    progress = progress_wanted(args.quiet) and not args.verbose
    started = time.perf_counter()
    root = args.output_dir.absolute()
    bids_dir, output_dir = root / "bids", root / "derivatives" / "nipype-xai"
    work_dir = (args.work_dir or root / "work").absolute()
    methods = _check_methods(args.methods)
    _check_method_params(args.method_params, methods)
    model_spec = _model_spec(args.model, args)
    spec = load_model_spec(model_spec, external_weights=args.external_weights)
    _check_background(args.background, model_spec, methods, None, args.external_weights)
    plugin, plugin_args = plugin_settings(args.plugin, args.plugin_args, args.nprocs, args.device)
    if plugin in SUBMITTING_PLUGINS:
        raise UsageError(f"demo: --plugin {plugin} returns before its jobs run, and the demo's "
                         "group level and report need them done; use --plugin SLURM")

    resolution = float(args.resolution)
    if (bids_dir / "participants.tsv").is_file():
        n_existing = sum(1 for _ in open(bids_dir / "participants.tsv")) - 1
        if n_existing != args.n_subjects:
            raise UsageError(f"{bids_dir}: holds a cohort of {n_existing} subjects, not "
                             f"{args.n_subjects}; choose another OUTPUT_DIR")
        print(f"nipype-xai demo: reusing the synthetic cohort in {bids_dir}")
    else:
        print(f"nipype-xai demo: generating a synthetic lesion cohort of {args.n_subjects} "
              f"subjects ({resolution:g} mm) in {bids_dir}")
        generate_cohort(bids_dir, "lesion", args.n_subjects, seed=args.cohort_seed,
                        resolution_mm=resolution, overwrite=True, progress=progress)

    print(f"nipype-xai demo: participant level ({', '.join(methods)}; model {spec.name})")
    summary = run_participant_level(
        bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir,
        options=_pipeline_options(args, model_spec, methods, None),
        ground_truth_dir=bids_dir / "derivatives" / "groundtruth", gt_label="lesion",
        plugin=plugin, plugin_args=plugin_args, progress=progress,
    )
    code = _report_run(summary, output_dir)
    if not summary.succeeded:
        return code

    print("nipype-xai demo: group level")
    report, failures = run_group_level(
        output_dir=output_dir, work_dir=work_dir, seed=args.seed, reports=args.reports,
        plugin=plugin, plugin_args=plugin_args, progress=progress,
        provenance={"Model": f"{spec.name} ({model_spec.name})",
                    "Cohort": f"synthetic lesion, {args.n_subjects} subjects, seed "
                              f"{args.cohort_seed}, {resolution:g} mm"},
    )
    for failure in failures:
        _say(f"group level failed: {failure.reason}")
    elapsed = time.perf_counter() - started
    print(f"nipype-xai demo: done in {elapsed / 60:.1f} min; results in {output_dir}")
    if report is not None:
        print(f"nipype-xai demo: open the report: {report}")
    return EXIT_SUBJECTS_FAILED if failures else code


# ---- synth, train ------------------------------------------------------------------------------


def _synth(argv: list[str]) -> int:
    args = synth_parser().parse_args(argv)
    from ..synth import generate_cohort

    try:
        root = generate_cohort(args.output_dir, args.task, args.n_subjects, seed=args.seed,
                               resolution_mm=args.resolution, progress=True)
    except ValueError as error:
        raise UsageError(str(error)) from None
    except FileExistsError:
        raise UsageError(
            f"{args.output_dir}: folder is not empty; choose a new OUTPUT_DIR") from None
    print(f"nipype-xai synth: {args.task} cohort of {args.n_subjects} subjects in {root}; "
          f"ground truth in {Path(root) / 'derivatives' / 'groundtruth'}")
    return EXIT_OK


def _train(argv: list[str]) -> int:
    args = train_parser().parse_args(argv)
    try:
        from ..synth.train import train_on_cohort
    except ImportError:  # pragma: no cover - only in an installation without the module
        raise UsageError("this installation has no nipype_xai.synth.train") from None
    if args.spec is None:
        from ..models.bundled import bundled_model_spec

        args.spec = bundled_model_spec("lesion")
    started = time.perf_counter()
    spec_path = train_on_cohort(
        args.cohort_dir, args.spec, args.output_dir, name=args.name,
        to_template=args.to_template, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, device=args.device, progress=True,
        trust_code=args.trust_model_code,
    )
    print(f"nipype-xai train: model spec {spec_path} (weights beside it), trained in "
          f"{time.perf_counter() - started:.0f} s")
    return EXIT_OK


def _benchmark(argv: list[str]) -> int:
    from .benchmark import run_from_argv

    return run_from_argv(argv)


def _background(argv: list[str]) -> int:
    from .background import run_from_argv

    return run_from_argv(argv)


def _fit_patterns(argv: list[str]) -> int:
    from .patterns import run_from_argv

    return run_from_argv(argv)


def _train_simulator(argv: list[str]) -> int:
    from .counterfactual import run_from_argv

    return run_from_argv(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
