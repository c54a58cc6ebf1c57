"""Embed nipype-xai's subject workflow in your own Nipype workflow.

A lab that already has a Nipype pipeline (its own, or one reading fMRIPrep/sMRIPrep outputs) does
not need the ``nipype-xai`` command line: :func:`~nipype_xai.workflows.init_xai_wf` is an ordinary
Nipype workflow with an ``inputnode`` and an ``outputnode``. This example builds, per subject::

    inputs (the T1w, brain mask, lesion mask and T1w <-> template transforms the lab already has)
      -> preproc (the lab's preprocessing; here: skull-stripping with the lab's brain mask)
      -> sub_<label>_wf (init_xai_wf: prediction, attribution maps, overlap metrics, derivatives)
      -> summarize (the lab's downstream step: reads the maps and metrics, writes a JSON summary)

The lab's own brain mask goes to ``inputnode.t1w_mask``: it restricts the registration metric and
is the brain mask of the overlap metrics (without it, nipype-xai pulls the template's mask back onto
the T1w). Everything is made locally: a synthetic lesion cohort at 4 mm
(:func:`nipype_xai.synth.generate_cohort`; its known transforms stand in for fMRIPrep's
``*_from-T1w_to-<template>_mode-image_xfm.h5``) and the bundled lesion model, or, if the package
ships none, an *untrained* TinyCNN3D with seeded weights on the same 4 mm grid (the maps then
explain an arbitrary model: the example shows the plumbing, not a result).

Usage::

    python examples/embed_xai_wf.py [OUTPUT_DIR] [--methods gradient smoothgrad]
                                    [--n-subjects 1] [--work-dir DIR] [--register]

``OUTPUT_DIR`` (default: a new temporary folder, printed; nothing is written into the repository)
receives ``bids/`` (the cohort), ``model/`` (the stand-in model), ``derivatives/nipype_xai/``
(nipype-xai's derivatives) and ``lab_results/`` (the summaries); ``--out DIR`` is the same. ``--register`` registers with ANTsPy instead of reusing the
known transforms. About 20 s for one subject on one CPU core, ~5 s per further subject.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from nipype_xai.models import InputSpec, ModelSpec, TinyCNN3D, save_model_spec
from nipype_xai.models.bundled import bundled_model_spec
from nipype_xai.synth import generate_cohort
from nipype_xai.workflows import init_xai_wf

TEMPLATE = "MNI152NLin2009aSym"
COHORT_SEED = 1  # subject 01 of this seed has lesions (and so overlap metrics); 02 is a control


# Function-node functions are re-executed from their source, alone: imports go inside them, and
# annotations may only use builtins.
def skull_strip(t1w: str, brain_mask: str) -> str:
    """The lab's preprocessing (a stand-in): the T1w multiplied by the lab's brain mask."""
    import os

    import nibabel as nib
    import numpy as np

    image = nib.load(t1w)
    data = image.get_fdata(dtype=np.float32) * (np.asarray(nib.load(brain_mask).dataobj) > 0)
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    out_file = os.path.abspath("t1w_preproc.nii.gz")
    nib.Nifti1Image(data, image.affine, header).to_filename(out_file)
    return out_file


def summarize(subject: str, methods: list, native_maps: list, predictions: str, brain_mask: str,
              out_dir: str, metrics: str | None = None) -> str:
    """The lab's downstream step: one JSON per subject with the prediction, each native-space map
    (and the share of its absolute mass inside the lab's brain mask) and the overlap metrics."""
    import json
    import os

    import nibabel as nib
    import numpy as np
    import pandas as pd

    mask = np.asarray(nib.load(brain_mask).dataobj) > 0
    summary = {"subject": subject,
               "prediction": pd.read_csv(predictions, sep="\t").iloc[0].to_dict(), "maps": {}}
    for method, path in zip(methods, native_maps):
        mass = np.abs(nib.load(path).get_fdata())
        share = float(mass[mask].sum() / mass.sum()) if mass.sum() > 0 else float("nan")
        summary["maps"][method] = {"file": path, "share_in_brain_mask": share}
        print(f"sub-{subject} {method:>12}: {share:.1%} of |attribution| inside the brain mask")
    if metrics:  # only subjects with a ground-truth mask have overlap metrics
        table = pd.read_csv(metrics, sep="\t", dtype={"subject": str})
        summary["overlap"] = table.to_dict("records")
        print(table[["method", "precision_at_k", "auroc"]].to_string(index=False))
    os.makedirs(out_dir, exist_ok=True)
    out_file = os.path.join(out_dir, f"sub-{subject}_xai_summary.json")
    with open(out_file, "w") as stream:
        json.dump(summary, stream, indent=2, default=str)
    return out_file


def model_spec(folder: Path) -> Path:
    """The bundled lesion model; without one, an untrained TinyCNN3D on the same 4 mm grid."""
    try:
        return bundled_model_spec("lesion")
    except FileNotFoundError:
        pass
    path = folder / "untrained_tinycnn3d.json"
    if not path.is_file():
        import torch

        kwargs = {"n_outputs": 2, "width": 8, "n_blocks": 4}
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(TinyCNN3D(**kwargs).state_dict(), folder / "untrained_tinycnn3d.pt")
        save_model_spec(ModelSpec(
            architecture="nipype_xai.models.architectures:TinyCNN3D", kwargs=kwargs,
            weights=folder / "untrained_tinycnn3d.pt",
            input=InputSpec(space=TEMPLATE, resolution_mm=(4.0, 4.0, 4.0), shape=(48, 65, 48),
                            normalization="zscore", mask="nonzero"),
            outputs=("control", "lesion"), task="classification", name="untrained_tinycnn3d",
        ), path)
    return path


def init_lab_subject_wf(*, subject: str, bids_dir: Path, model: Path, methods: Sequence[str],
                        derivatives: Path, results: Path, register: bool = False
                        ) -> pe.Workflow:
    """One subject of the lab's workflow, with nipype-xai's subject workflow inside it."""
    anat = bids_dir / f"sub-{subject}" / "anat"
    truth = bids_dir / "derivatives" / "groundtruth" / f"sub-{subject}" / "anat"
    lesion = truth / f"sub-{subject}_label-lesion_mask.nii.gz"
    has_lesion = lesion.is_file()  # the graph differs with and without ground truth

    workflow = pe.Workflow(name=f"sub_{subject}_lab_wf")
    # What the lab already has: a data grabber's, or fMRIPrep's anatomical, outputs.
    inputs = pe.Node(niu.IdentityInterface(fields=[
        "t1w", "brain_mask", "lesion_mask", "forward_transform", "inverse_transform"]),
        name="inputs")
    inputs.inputs.t1w = str(anat / f"sub-{subject}_T1w.nii.gz")
    inputs.inputs.brain_mask = str(truth / f"sub-{subject}_desc-brain_mask.nii.gz")
    inputs.inputs.forward_transform = str(
        truth / f"sub-{subject}_from-T1w_to-{TEMPLATE}_mode-image_xfm.nii.gz")
    inputs.inputs.inverse_transform = str(
        truth / f"sub-{subject}_from-{TEMPLATE}_to-T1w_mode-image_xfm.nii.gz")
    if has_lesion:
        inputs.inputs.lesion_mask = str(lesion)
    preproc = pe.Node(niu.Function(function=skull_strip, input_names=["t1w", "brain_mask"],
                                   output_names=["t1w_preproc"]), name="preproc")

    # nipype-xai: the T1w, the brain mask, the lesion mask and (without registration) the
    # transforms are connected at its inputnode below, not given as files.
    connected = ["t1w_mask"] + (["ground_truth"] if has_lesion else [])
    if not register:
        connected.append("transforms")
    xai_wf = init_xai_wf(subject=subject, methods=methods, model_spec=model,
                         output_dir=derivatives, connected=connected)

    summary = pe.Node(niu.Function(
        function=summarize, output_names=["out_file"],
        input_names=["subject", "methods", "native_maps", "predictions", "brain_mask", "out_dir",
                     "metrics"]), name="summarize")
    summary.inputs.subject = subject
    summary.inputs.out_dir = str(results)

    connections = [
        (inputs, preproc, [("t1w", "t1w"), ("brain_mask", "brain_mask")]),
        (preproc, xai_wf, [("t1w_preproc", "inputnode.t1w")]),
        (inputs, xai_wf, [("brain_mask", "inputnode.t1w_mask")]),
        (inputs, summary, [("brain_mask", "brain_mask")]),
        (xai_wf, summary, [("outputnode.methods", "methods"),
                           ("outputnode.native_maps", "native_maps"),
                           ("outputnode.predictions", "predictions")]),
    ]
    if not register:
        connections.append((inputs, xai_wf, [("forward_transform", "inputnode.forward_transform"),
                                             ("inverse_transform", "inputnode.inverse_transform")]))
    if has_lesion:
        connections += [(inputs, xai_wf, [("lesion_mask", "inputnode.ground_truth")]),
                        (xai_wf, summary, [("outputnode.metrics", "metrics")])]
    workflow.connect(connections)
    return workflow


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Make the data, build the lab's workflow and run it.

    Returns
    -------
    dict
        ``bids_dir``, ``model`` (the spec used), ``derivatives`` (nipype-xai's derivatives
        dataset) and ``summaries`` (the lab's JSON summary of each subject), as paths.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", type=Path, default=None,
                        help="where everything goes (default: a new temporary folder)")
    parser.add_argument("--out", dest="output_dir_option", type=Path, metavar="DIR",
                        help="the same as OUTPUT_DIR")
    parser.add_argument("--methods", nargs="+", default=["gradient", "smoothgrad"])
    parser.add_argument("--n-subjects", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="Nipype's working directory (default: OUTPUT_DIR/work)")
    parser.add_argument("--register", action="store_true",
                        help="register with ANTsPy instead of reusing the known transforms")
    args = parser.parse_args(argv)
    given = args.output_dir or args.output_dir_option
    root = (Path(given) if given else
            Path(tempfile.mkdtemp(prefix="nipype-xai-embed_xai_wf-"))).absolute()
    print(f"output: {root}")
    subjects = [f"{index:02d}" for index in range(1, args.n_subjects + 1)]

    started = time.perf_counter()
    bids_dir = root / "bids"
    if not all((bids_dir / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz").is_file()
               for s in subjects):
        generate_cohort(bids_dir, "lesion", args.n_subjects, seed=COHORT_SEED,
                        resolution_mm=4.0, overwrite=True, progress=False)
    model = model_spec(root / "model")
    derivatives, results = root / "derivatives" / "nipype_xai", root / "lab_results"

    workflow = pe.Workflow(name="lab_wf", base_dir=str(args.work_dir or root / "work"))
    workflow.config["execution"]["crashdump_dir"] = str(args.work_dir or root / "work")
    workflow.add_nodes([
        init_lab_subject_wf(subject=s, bids_dir=bids_dir, model=model, methods=args.methods,
                            derivatives=derivatives, results=results, register=args.register)
        for s in subjects
    ])
    workflow.run()  # Linear here; any Nipype plugin (MultiProc, SLURM, ...) otherwise

    summaries = [results / f"sub-{s}_xai_summary.json" for s in subjects]
    print(f"model: {model}\nderivatives: {derivatives}\nsummaries: "
          f"{', '.join(str(p) for p in summaries)}\n{time.perf_counter() - started:.0f} s")
    return {"bids_dir": bids_dir, "model": model, "derivatives": derivatives,
            "summaries": summaries}


if __name__ == "__main__":
    from nipype import config, logging

    config.set("logging", "workflow_level", "WARNING")  # the summaries, not every node, on screen
    logging.update_logging(config)
    main(sys.argv[1:])
