"""``nipype-xai background``: draw a background set for ``gradient_shap`` / ``deeplift_shap`` from a
cohort and write it as a file (:mod:`nipype_xai.models.background`).

::

    nipype-xai background --model SPEC.json --images IMG [IMG ...] [-n 32] [--seed S]
                          [--participants participants.tsv --only label=control] OUT.nii.gz

The images are in the model's template space (e.g. the participant level's
``space-<tpl>_res-<r>_desc-preproc_T1w`` outputs, which are on the model grid already); each is
prepared exactly as an explained image (resampled to the model grid, normalised as the spec
says). ``--only COLUMN=VALUE`` keeps the images of the participants whose ``participants.tsv``
row has that value (e.g. the controls), matched by the ``sub-<label>`` in each file name.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Sequence

from .parser import UsageError, _Parser, _positive_int

__all__ = ["background_parser", "run_from_argv"]

#: Default background size: SHAP's expected-gradients examples use tens to hundreds of samples;
#: DeepLIFT-SHAP costs one DeepLIFT map per background sample, so a few tens keeps it practical.
DEFAULT_N = 32


def background_parser() -> argparse.ArgumentParser:
    """``nipype-xai background [options] OUT.nii.gz``; errors raise
    :class:`~nipype_xai.cli.parser.UsageError`."""
    parser = _Parser(
        prog="nipype-xai background",
        description="Draw a background set (reference inputs on the model grid) from a cohort "
                    "for gradient_shap and deeplift_shap, and write it as a 4D NIfTI with a "
                    "JSON sidecar; give it to the participant level with --background.",
    )
    # Optional for argparse: "--images A B OUT.nii.gz" gives every path to --images, and the last
    # one is then the output (see run_from_argv).
    parser.add_argument("output", type=Path, nargs="?", metavar="OUT.nii.gz",
                        help="the background file to write (its .json sidecar goes beside it)")
    parser.add_argument("--model", type=Path, metavar="SPEC.json",
                        help="model spec JSON (default: the bundled lesion model)")
    parser.add_argument("--images", type=Path, nargs="+", required=True, metavar="IMG",
                        help="3D images in the model's template space (e.g. the participant "
                             "level's space-<tpl>_res-<r>_desc-preproc_T1w files)")
    parser.add_argument("-n", "--n-samples", dest="n", type=_positive_int, default=DEFAULT_N,
                        metavar="N", help=f"background size; all images when there are fewer "
                                          f"(default: {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    parser.add_argument("--participants", type=Path, metavar="TSV",
                        help="participants.tsv giving each subject's columns, for --only")
    parser.add_argument("--only", metavar="COLUMN=VALUE",
                        help="draw only from the participants with this value, e.g. "
                             "label=control (needs --participants)")
    parser.add_argument("--allow-external-weights", dest="external_weights", action="store_true",
                        help="accept a model spec whose weights file lies outside its folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks with errors")
    return parser


def _labels(images: Sequence[Path], participants: Path, column: str) -> list[str]:
    """The ``column`` value of each image's participant (by the ``sub-<label>`` in its name)."""
    import pandas as pd

    if not participants.is_file():
        raise UsageError(f"{participants}: --participants file not found")
    table = pd.read_csv(participants, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table.columns or column not in table.columns:
        raise UsageError(f"{participants.name}: needs the columns participant_id and {column!r} "
                         f"(has {', '.join(table.columns)})")
    values = dict(zip(table["participant_id"], table[column]))
    labels = []
    for image in images:
        match = re.search(r"(?:^|_)(sub-[A-Za-z0-9]+)", image.name)
        if match is None:
            raise UsageError(f"{image.name}: no sub-<label> in the file name to find its row in "
                             f"{participants.name}")
        if match.group(1) not in values:
            raise UsageError(f"{image.name}: {match.group(1)} is not in {participants.name}")
        labels.append(values[match.group(1)])
    return labels


def run(args: argparse.Namespace) -> int:
    """Draw, prepare and write the background the parsed ``args`` describe; return 0."""
    from ..images import load_volume
    from ..models.background import choose_background, prepare_background, write_background
    from ..models.spec import load_model_spec

    output = args.output.absolute()
    if not output.name.endswith((".nii.gz", ".nii")):
        raise UsageError(f"{output.name}: the background file must end in .nii.gz or .nii")
    if args.model is None:
        from ..models.bundled import bundled_model_spec

        args.model = bundled_model_spec("lesion")
    spec = load_model_spec(args.model, external_weights=args.external_weights)
    images = [image.absolute() for image in args.images]
    missing = [image for image in images if not image.is_file()]
    if missing:
        raise UsageError(f"{missing[0]}: image not found")

    selection, labels, keep = None, None, None
    if args.only is not None:
        if args.participants is None:
            raise UsageError("--only needs --participants (the table that says who is who)")
        column, sep, keep = args.only.partition("=")
        if not sep or not column or not keep:
            raise UsageError(f"--only: expected COLUMN=VALUE (e.g. label=control), got "
                             f"{args.only!r}")
        labels = _labels(images, args.participants, column)
        selection = {"Column": column, "Value": keep,
                     "Participants": str(args.participants.absolute())}
    elif args.participants is not None:
        raise UsageError("--participants is only read with --only COLUMN=VALUE")
    try:
        chosen = choose_background(len(images), args.n, args.seed, labels=labels, keep=keep)
    except ValueError as error:
        raise UsageError(f"--only {args.only}: {error}" if keep else str(error)) from None

    sources = [images[i] for i in chosen]
    volumes, grid = prepare_background(((p.name, load_volume(p)) for p in sources), spec)
    sidecar = {
        "Description": "Background set for gradient_shap and deeplift_shap: model inputs "
                       "(resampled to the model grid and normalised as the model spec says), "
                       "one volume per background sample",
        "ModelSpec": spec.name,
        "Space": spec.input.space,
        "ModelGrid": {"ResolutionMM": [float(r) for r in spec.input.resolution_mm],
                      "Shape": list(grid.shape)},
        "N": len(sources),
        "NAvailable": len(images) if keep is None else sum(label == keep for label in labels),
        "Seed": args.seed,
        "Selection": selection,
        "Sources": [str(p) for p in sources],
    }
    image, json_file = write_background(output, volumes, grid, sidecar)
    print(f"nipype-xai background: {len(sources)} volume(s) on the {spec.name} model grid "
          f"({'x'.join(map(str, grid.shape))}) in {image} (sidecar {json_file.name})")
    return 0


def run_from_argv(argv: Sequence[str]) -> int:
    """The ``background`` subcommand of ``nipype-xai``."""
    args = background_parser().parse_args(list(argv))
    if args.output is None:
        # "--images A B OUT.nii.gz": argparse's --images took the output too.
        if len(args.images) < 2:
            raise UsageError("the following arguments are required: OUT.nii.gz (see "
                             "'nipype-xai background --help')")
        args.output = args.images.pop()
    return run(args)

