"""The raw T1w before registration: N4 bias correction, then brain extraction (SPEC §5).

A raw BIDS T1w has skull, scalp, neck and a bias field; the template registered to and the images
a model is trained on are brains. As sMRIPrep does it: N4 on the head, then the brain is taken out
(deepbet, whose networks ship inside its wheel), and the brain -- not the head -- is what is
registered and what the model sees. A lab's own sMRIPrep/fMRIPrep anatomy (a bias-corrected
``desc-preproc_T1w`` and its ``desc-brain_mask``) replaces both steps.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.anatomy import BrainExtraction, MaskImage, N4BiasFieldCorrection

__all__ = ["BRAIN_EXTRACTION", "init_anat_wf"]

#: Brain-extraction choices: a network (deepbet), or none for inputs already skull-stripped.
BRAIN_EXTRACTION = ("deepbet", "none")


def init_anat_wf(
    *,
    brain_extraction: str = "deepbet",
    bias_correction: bool = True,
    given_mask: bool = False,
    device: str = "cpu",
    name: str = "anat_wf",
) -> pe.Workflow:
    """Bias-correct a T1w and take its brain out.

    Parameters
    ----------
    brain_extraction
        ``"deepbet"`` or ``"none"`` (the image is already a brain: ``t1w_brain`` is the
        bias-corrected image and ``brain_mask`` stays unset: the caller takes another).
    bias_correction
        N4 (ANTs) first; off for images that are already corrected (e.g. sMRIPrep's).
    given_mask
        The brain mask comes in on ``inputnode.t1w_mask`` (a lab's own): the brain is the image
        inside it, and nothing is extracted.
    device
        Torch device of deepbet; not part of the cache hash.
    name
        Workflow name.

    Inputs
    ------
    t1w
        The T1w (raw, or a lab's preprocessed one).
    t1w_mask
        The brain mask on the T1w grid (with ``given_mask``).

    Outputs
    -------
    t1w_preproc
        The bias-corrected T1w (head).
    t1w_brain
        The skull-stripped T1w: registered to the template brain, and the model's input.
    brain_mask
        The brain mask on the T1w grid (unset with ``brain_extraction="none"`` and no given
        mask).
    """
    if brain_extraction not in BRAIN_EXTRACTION:
        raise ValueError(f"brain_extraction must be one of {BRAIN_EXTRACTION}, "
                         f"got {brain_extraction!r}")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w", "t1w_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["t1w_preproc", "t1w_brain", "brain_mask"]),
                         name="outputnode")
    connections = []
    if bias_correction:
        n4 = pe.Node(N4BiasFieldCorrection(), name="n4")
        connections.append((inputnode, n4, [("t1w", "in_file")]))
        preproc = (n4, "out_file")
    else:
        preproc = (inputnode, "t1w")
    connections.append((preproc[0], outputnode, [(preproc[1], "t1w_preproc")]))

    if given_mask:
        brain = pe.Node(MaskImage(), name="brain")
        connections += [
            (preproc[0], brain, [(preproc[1], "in_file")]),
            (inputnode, brain, [("t1w_mask", "mask")]),
            (brain, outputnode, [("out_file", "t1w_brain")]),
            (inputnode, outputnode, [("t1w_mask", "brain_mask")]),
        ]
    elif brain_extraction == "deepbet":
        gpu = str(device).startswith("cuda")
        extraction = pe.Node(BrainExtraction(device=device, use_gpu=gpu), name="brain_extraction")
        connections += [
            (preproc[0], extraction, [(preproc[1], "in_file")]),
            (extraction, outputnode, [("out_brain", "t1w_brain"), ("out_mask", "brain_mask")]),
        ]
    else:
        connections.append((preproc[0], outputnode, [(preproc[1], "t1w_brain")]))
    workflow.connect(connections)
    return workflow
