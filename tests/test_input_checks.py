"""Inputs that must be refused early and in one line (issue 11, finding 6).

Each case names the file and the fact: a model input too large for memory, a NIfTI header
declaring more voxels than the file (or the machine) can hold, an empty or constant image given to
registration, an affine that is not finite, singular or sheared, a model whose output is NaN, and a
template that cannot be delivered. The CLI cases check that nothing ran: the participant level is
replaced by a function that fails the test if it is called.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nipype_xai.cli import main
from nipype_xai.images import ImageError, load_volume
from nipype_xai.models import TinyCNN3D

TPL = "MNI152NLin2009aSym"


# ---- helpers --------------------------------------------------------------------------------


def _spec(folder: Path, name: str = "tiny", *, shape=(24, 28, 24), space: str = TPL,
          nan_output: bool = False) -> Path:
    """A TinyCNN3D spec (8 mm grid); with ``nan_output`` its classifier weights are NaN (so are its
    outputs and their gradients)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = TinyCNN3D(n_outputs=2, width=4).state_dict()
    if nan_output:
        state["classifier.weight"] = torch.full_like(state["classifier.weight"], float("nan"))
    torch.save(state, folder / f"{name}.pt")
    spec = {"name": name, "architecture": "nipype_xai.models.architectures:TinyCNN3D",
            "kwargs": {"n_outputs": 2, "width": 4}, "weights": f"{name}.pt",
            "input": {"space": space, "resolution_mm": 8, "shape": list(shape),
                      "normalization": "zscore", "mask": "nonzero"},
            "outputs": ["control", "lesion"], "task": "classification"}
    (folder / f"{name}.json").write_text(json.dumps(spec))
    return folder / f"{name}.json"


def _mni(resolution: int = 4) -> nib.Nifti1Image:
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=resolution)
    return nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)


def _bids(root: Path, t1w: dict[str, nib.Nifti1Image]) -> Path:
    bids = root / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "checks", "BIDSVersion": "1.9.0"}))
    for label, img in t1w.items():
        anat = bids / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        nib.save(img, anat / f"sub-{label}_T1w.nii.gz")
    return bids


@pytest.fixture
def no_run(monkeypatch):
    """Make running the participant level fail the test: the checks must come first."""
    from nipype_xai.cli import execution

    calls = []

    def refuse(**kwargs):
        calls.append(kwargs)
        raise AssertionError("the participant level ran; the check should have stopped it first")

    monkeypatch.setattr(execution, "run_participant_level", refuse)
    return calls


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("nipype-xai: error: "), err
    return err[0]


def _header_only_nifti(path: Path, shape, dtype=np.int16, data_bytes: int = 64) -> Path:
    """A NIfTI file whose header declares ``shape`` but which holds only ``data_bytes`` of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * data_bytes
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _with_affine(path: Path, affine: np.ndarray, qform_code: int = 0) -> Path:
    """A small image whose sform is ``affine`` exactly, bypassing nibabel's checks on writing."""
    data = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32) + 1
    header = nib.Nifti1Image(data, np.eye(4)).header.copy()
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["sform_code"], header["qform_code"] = 1, qform_code
    nib.save(nib.Nifti1Image(data, None, header=header), path)
    return path


# ---- 1. a model input too large for memory, found before anything runs -------------------------


def test_model_input_too_large_for_memory_is_refused_up_front(tmp_path, capsys, no_run):
    from nipype_xai.models.inference import check_input_memory, input_memory_bytes
    from nipype_xai.models.spec import ModelSpecError, load_model_spec

    spec_path = _spec(tmp_path / "model", "huge", shape=(4000, 4000, 4000))
    spec = load_model_spec(spec_path)
    # 4 float32 copies of one 4000^3 single-channel input.
    assert input_memory_bytes(spec) == 4 * 4 * 4000**3
    with pytest.raises(ModelSpecError, match=r"^huge\.json: input\.shape 4000x4000x4000 needs "
                                             r"at least 954 GiB of memory"):
        check_input_memory(spec, memory_bytes=64 * 2**30)
    small = load_model_spec(_spec(tmp_path / "model", "small"))
    check_input_memory(small, memory_bytes=64 * 2**30)  # 24x28x24: fits

    bids = _bids(tmp_path, {"01": _mni(8)})
    work = tmp_path / "work"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main([str(bids), str(tmp_path / "out"), "participant", "--model", str(spec_path),
                     "-w", str(work), "--nprocs", "1"])
    assert code == 1
    line = _one_error_line(capsys)
    assert line.startswith("nipype-xai: error: huge.json: input.shape 4000x4000x4000 needs at "
                           "least 954 GiB of memory"), line
    assert not [str(w.message) for w in caught]
    assert not no_run and not (work / "participant_wf").exists()


# ---- 2. a header declaring more than the file or the machine can hold ------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_header_declaring_a_huge_image_is_named_before_allocating(tmp_path, suffix):
    from nipype_xai.registration import RegistrationError, load_image

    path = _header_only_nifti(tmp_path / f"sub-01_T1w{suffix}", (10000, 10000, 10000))
    expected = (rf"^sub-01_T1w{suffix.replace('.', '[.]')}: the header declares a "
                r"10000x10000x10000 int16 image \(1863 GiB\), more than the file can hold")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match=expected):
            load_volume(path)
        with pytest.raises(RegistrationError, match=re.escape(f"{tmp_path}/") + expected[1:]):
            load_image(path)
    assert not [str(w.message) for w in caught]


def test_header_larger_than_memory_is_named(tmp_path, monkeypatch):
    import nipype_xai.images as images
    from nipype_xai.registration import RegistrationError, load_image

    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((128, 64, 64), np.int16), np.eye(4)), path)
    monkeypatch.setattr(images, "usable_memory_bytes", lambda: 2**20)  # a 1 MiB machine
    expected = (r"sub-01_T1w[.]nii[.]gz: the header declares a 128x64x64 int16 image \(2 MiB as "
                r"float32\), more than this machine's memory \(1 MiB\)")
    with pytest.raises(ImageError, match="^" + expected):
        load_volume(path)
    with pytest.raises(RegistrationError, match=expected):
        load_image(path)


# ---- 3. an empty or constant image, before registration -------------------------------------------


def test_empty_and_constant_images_are_refused_before_registration(tmp_path, capfd):
    pytest.importorskip("ants")
    from nipype_xai.registration import RegistrationError, register

    template = tmp_path / "template.nii.gz"
    nib.save(_mni(8), template)
    empty = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 24, 20), np.int16), np.diag([8, 8, 8, 1.0])), empty)
    constant = tmp_path / "sub-02_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 24, 20), 5, np.int16), np.diag([8, 8, 8, 1.0])), constant)
    with pytest.raises(RegistrationError,
                       match=rf"^{re.escape(str(empty))}: the image is empty \(all voxels 0\)$"):
        register(empty, template, out_dir=tmp_path / "reg")
    with pytest.raises(RegistrationError,
                       match=rf"^{re.escape(str(constant))}: the image is constant \(all voxels 5\)"):
        register(template, constant, out_dir=tmp_path / "reg")
    # Refused before ANTs ran: no ITK dump.
    captured = capfd.readouterr()
    assert "itk" not in (captured.out + captured.err).lower()
    assert not (tmp_path / "reg").exists()


# ---- 4. affines: finite, non-singular, then unsheared ----------------------------------------------


AFFINES = {
    "nan": (np.array([[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
            r"the affine \(voxel to world\) is not finite \(NaN or Inf\)"),
    "inf": (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, np.inf], [0, 0, 0, 1.0]]),
            r"the affine \(voxel to world\) is not finite \(NaN or Inf\)"),
    "zero": (np.diag([1, 0, 1, 1.0]),
             r"the affine \(voxel to world\) is singular \(voxel sizes 1x0x1 mm, determinant 0\)"),
    "flat": (np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
             r"the affine \(voxel to world\) is singular \(voxel sizes 1x1x1 mm, determinant 0\)"),
}


@pytest.mark.parametrize("case", sorted(AFFINES))
def test_bad_affines_are_named_at_load_without_warnings(tmp_path, case):
    from nipype_xai.registration import RegistrationError, load_image, to_ants

    affine, message = AFFINES[case]
    path = _with_affine(tmp_path / f"sub-{case}_T1w.nii.gz", affine)
    in_memory = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel's own qform decomposition divides by zero
        try:
            in_memory = nib.Nifti1Image(np.ones((3, 3, 3), np.float32), affine)
        except nib.spatialimages.HeaderDataError:
            pass  # nibabel cannot build this one in memory (its qform decomposition fails)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match=rf"^sub-{case}_T1w[.]nii[.]gz: {message}"):
            load_volume(path)
        with pytest.raises(RegistrationError, match=rf"^{re.escape(str(path))}: {message}"):
            load_image(path)
        if in_memory is not None and importlib.util.find_spec("ants") is not None:
            # An in-memory image given to to_ants directly: the same message, no division by 0.
            with pytest.raises(RegistrationError, match=rf"^<in-memory image>: {message}"):
                to_ants(in_memory)
    assert not [str(w.message) for w in caught]


def test_sheared_affine_is_loaded_for_nilearn_but_refused_for_ants(tmp_path):
    from nipype_xai.registration import RegistrationError, load_image

    affine = np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    path = _with_affine(tmp_path / "sub-01_T1w.nii.gz", affine)
    assert np.allclose(load_volume(path).affine, affine)  # nilearn resamples sheared grids
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RegistrationError,
                           match=rf"^{re.escape(str(path))}: the image affine has shear"):
            load_image(path)
    assert not [str(w.message) for w in caught]


# ---- 5. a model whose output is not finite ---------------------------------------------------------


def test_nan_model_output_is_a_model_output_error(tmp_path, monkeypatch):
    from nipype_xai.models.inference import ModelOutputError, explain_image, predict_image
    from nipype_xai.models.spec import load_model, load_model_spec

    spec = load_model_spec(_spec(tmp_path / "model", "nanny", nan_output=True))
    model = load_model(spec)
    path = tmp_path / "sub-01_space-MNI152NLin2009aSym_T1w.nii.gz"
    nib.save(_mni(8), path)
    img = load_volume(path)
    expected = (r"^nanny\.json: the model's output for sub-01_space-MNI152NLin2009aSym_T1w"
                r"\.nii\.gz is not finite \(NaN\)")
    with pytest.raises(ModelOutputError, match=expected):
        predict_image(model, spec, img)
    with pytest.raises(ModelOutputError, match=expected):
        explain_image(model, spec, img, ["gradient"])
    # A map that is not finite while the output is: named with its method.
    import nipype_xai.models.inference as inference

    fine = load_model_spec(_spec(tmp_path / "model", "fine"))
    monkeypatch.setattr(inference, "attribute_many", lambda *args, **kwargs: {
        "gradient": torch.full((1, 1, *fine.input.shape), float("nan"))})
    with pytest.raises(ModelOutputError, match=r"^fine\.json: the gradient map for sub-01_space-"
                                               r"MNI152NLin2009aSym_T1w\.nii\.gz is not finite "
                                               r"\(16128 NaN voxels of 16128\)"):
        explain_image(load_model(fine), fine, img, ["gradient"])


def test_empty_image_is_refused_by_the_inference_core(tmp_path):
    """With reused transforms an empty T1w reaches the model without registration: named there."""
    from nipype_xai.models.inference import explain_image, predict_image
    from nipype_xai.models.spec import load_model, load_model_spec

    spec = load_model_spec(_spec(tmp_path / "model"))
    model = load_model(spec)
    path = tmp_path / "sub-01_T1w_trans.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 28, 24), np.float32), np.diag([8, 8, 8, 1.0])), path)
    for run in (lambda img: predict_image(model, spec, img),
                lambda img: explain_image(model, spec, img, ["gradient"])):
        with pytest.raises(ImageError,
                           match=r"^sub-01_T1w_trans\.nii\.gz: the image is empty \(all voxels 0\)$"):
            run(load_volume(path))


def test_subject_failures_say_what_is_wrong(tmp_path, capsys):
    """Through the CLI: an all-zero T1w (sub-01) and a model that outputs NaN (everyone else)."""
    pytest.importorskip("ants")
    pytest.importorskip("templateflow")
    import pandas as pd

    mni = _mni(4)
    bids = _bids(tmp_path, {"01": nib.Nifti1Image(np.zeros(mni.shape, np.float32), mni.affine),
                            "02": mni})
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--model",
                 str(_spec(tmp_path / "model", "nanny", nan_output=True)),
                 "--methods", "gradient", "--no-reports", "-w", str(tmp_path / "work"),
                 "--nprocs", "1", "--skull-stripped"])
    assert code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    failures = pd.read_csv(out / "failures.tsv", sep="\t").set_index("participant_id")
    # N4, the first step on the raw T1w, is the first to see it.
    assert failures.loc["sub-01", "reason"] == (
        f"AnatomyError: {bids}/sub-01/anat/sub-01_T1w.nii.gz: the image to bias-correct is empty "
        "(all voxels 0)")
    reason = failures.loc["sub-02", "reason"]
    assert reason.startswith("ModelOutputError: nanny.json: the model's output for sub-02_T1w"), reason
    assert reason.endswith("is not finite (NaN)"), reason
    assert not (out / "sub-01").exists() and not (out / "sub-02").exists()


# ---- 6. a template that cannot be delivered, before anything runs ----------------------------------


def test_unknown_template_is_refused_up_front(tmp_path, capsys, no_run):
    pytest.importorskip("templateflow")
    bids = _bids(tmp_path, {"01": _mni(8)})
    work = tmp_path / "work"
    cases = [
        (["--model", str(_spec(tmp_path / "model"))] + ["--template", "Foo"],
         "nipype-xai: error: --template Foo: template 'Foo' is not available: TemplateFlow has no "
         "template 'Foo'"),
        (["--model", str(_spec(tmp_path / "model", "elsewhere", space="NoSuchSpace"))],
         "nipype-xai: error: elsewhere.json: input.space 'NoSuchSpace': template 'NoSuchSpace' is "
         "not available: TemplateFlow has no template 'NoSuchSpace'"),
    ]
    for extra, message in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(work),
                         "--nprocs", "1", *extra])
        assert code == 1
        line = _one_error_line(capsys)
        assert line.startswith(message), line
        assert "tf.get(" in line and "TEMPLATEFLOW_HOME" in line, line
        assert not [str(w.message) for w in caught]
    assert not no_run and not (work / "participant_wf").exists()


def test_check_template(monkeypatch):
    pytest.importorskip("templateflow")
    import nipype_xai.templates as templates
    import nipype_xai.templates.lookup as lookup

    asked = []
    monkeypatch.setattr(lookup, "_from_user_templateflow",
                        lambda template, query: asked.append((template, query)) or (
                            None, "TemplateFlow could not fetch it (no network?)"))
    templates.check_template(templates.FALLBACK_TEMPLATE, resolution=2)  # always deliverable
    assert asked == []
    # A template TemplateFlow knows but cannot deliver here (not prefetched, no network).
    with pytest.raises(templates.TemplateNotAvailable) as error:
        templates.check_template("MNI152NLin2009cAsym", resolution=2)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("template 'MNI152NLin2009cAsym' is not available: TemplateFlow "
                              "could not fetch it (no network?)")
    assert "tf.get('MNI152NLin2009cAsym', resolution=2)" in message
    assert asked[0][1]["resolution"] == 2
