"""``nipype-xai fit-patterns``: fit a model's PatternNet / PatternAttribution patterns on images and
record them in its model spec.

::

    nipype-xai fit-patterns OUT_SPEC.json --model SPEC.json --images T1w.nii.gz ...
    nipype-xai fit-patterns --in-place --model SPEC.json --images T1w.nii.gz ...

The images are T1w volumes in the model's template space (``input.space``), prepared exactly as
:func:`~nipype_xai.models.inference.explain_image` prepares the images it explains (resampled to
the model grid and normalised, :func:`~nipype_xai.models.to_model_grid`), read one at a time in
one streaming pass (:func:`~nipype_xai.attribution.patterns.fit_patterns`). The patterns file
goes beside the spec written, which names it with its SHA-256
(:func:`~nipype_xai.models.spec_json.add_patterns`); a spec written into another folder gets a
copy of the weights, so it loads inside the trust boundary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .parser import UsageError, _Parser, _positive_int

__all__ = ["fit_patterns_parser", "main", "run", "run_from_argv"]

DESCRIPTION = ("Fit a model's PatternNet / PatternAttribution signal patterns on T1w images in "
               "its template space, and write them beside its model spec.")


def fit_patterns_parser() -> argparse.ArgumentParser:
    """``nipype-xai fit-patterns [OUT_SPEC] --model SPEC --images T1w... [options]``."""
    from ..attribution.patterns import ESTIMATORS

    parser = _Parser(prog="nipype-xai fit-patterns", description=DESCRIPTION)
    parser.add_argument("out_spec", type=Path, nargs="?", metavar="OUT_SPEC.json",
                        help="the spec to write (its patterns file beside it); a folder other "
                             "than SPEC's gets a copy of the weights. Omit with --in-place")
    parser.add_argument("--in-place", action="store_true",
                        help="rewrite SPEC itself (its patterns file beside it)")
    parser.add_argument("--model", type=Path, required=True, metavar="SPEC.json",
                        help="the model spec the patterns are fitted for")
    parser.add_argument("--images", type=Path, nargs="+", required=True, metavar="T1w",
                        help="NIfTI images in the model's template space (e.g. its training "
                             "inputs), one pass over them")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="relu",
                        help="signal estimator (default: relu, the two-component one)")
    parser.add_argument("--fitted-on", default=None, metavar="TEXT",
                        help="what the images are, recorded in the spec "
                             "(default: the number of images and their folder)")
    parser.add_argument("--batch-size", type=_positive_int, default=4,
                        help="images per forward pass (default: 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust-model-code", action="store_true",
                        help="import the spec's architecture even from outside nipype_xai, "
                             "monai.networks.nets and torchvision.models (runs the spec's code)")
    parser.add_argument("--allow-external-weights", dest="external_weights", action="store_true",
                        help="accept weights outside the spec's folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks with errors")
    return parser


def _model_inputs(paths: Sequence[Path], spec, batch_size: int, progress: bool
                  ) -> Iterator:
    """Batches of images on the model grid, read one file at a time."""
    import torch
    from tqdm.auto import tqdm

    from ..images import check_not_constant, load_volume
    from ..models.preprocessing import to_model_grid

    batch = []
    for path in tqdm(paths, desc="fit-patterns", unit="image", disable=not progress):
        img = load_volume(path)
        check_not_constant(img, path.name)
        try:
            x, _ = to_model_grid(img, spec)
        except ValueError as error:
            raise UsageError(f"{path.name}: {error}") from None
        batch.append(x)
        if len(batch) == batch_size:
            yield torch.cat(batch)
            batch = []
    if batch:
        yield torch.cat(batch)


def run(args: argparse.Namespace, progress: bool = True) -> Path:
    """Fit and write; returns the spec written. Bad arguments raise :class:`UsageError`."""
    from ..attribution.patterns import fit_patterns
    from ..models.spec import load_model, load_model_spec
    from ..models.spec_json import add_patterns

    if args.in_place == (args.out_spec is not None):
        raise UsageError("give either OUT_SPEC or --in-place (see 'nipype-xai fit-patterns "
                         "--help')")
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        raise UsageError(f"--images: not found: {', '.join(missing[:5])}")
    spec_path = args.model.absolute()
    out = spec_path if args.in_place else args.out_spec.absolute()
    if out.suffix != ".json":
        raise UsageError(f"{out.name}: OUT_SPEC must be a .json file")
    spec = load_model_spec(spec_path, external_weights=args.external_weights)
    model = load_model(spec, device=args.device, trust_code=args.trust_model_code)
    folders = sorted({str(path.absolute().parent) for path in args.images})
    fitted_on = args.fitted_on or (
        f"{len(args.images)} images in {spec.input.space} from "
        f"{folders[0] if len(folders) == 1 else f'{len(folders)} folders'}")
    patterns = fit_patterns(model, _model_inputs(args.images, spec, args.batch_size, progress),
                            estimator=args.estimator, fitted_on=fitted_on)
    return add_patterns(spec_path, patterns, out, external_weights=args.external_weights)


def run_from_argv(argv: Sequence[str]) -> int:
    """``nipype-xai fit-patterns ARGV...``: parse, fit, write; 0 on success."""
    args = fit_patterns_parser().parse_args(list(argv))
    started = time.perf_counter()
    written = run(args)
    print(f"nipype-xai fit-patterns: {args.estimator} patterns from {len(args.images)} images "
          f"in {time.perf_counter() - started:.0f} s; spec {written}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m nipype_xai.cli.patterns ...``: the ``nipype-xai fit-patterns`` command, with its
    error handling and exit codes."""
    from .run import main as cli_main

    return cli_main(["fit-patterns", *list(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
