"""Image loading / validation and the ModelInference and Attribution interfaces in real workflows."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from nipype.pipeline import engine as pe

from nipype_xai.attribution import TargetError, attribute_many
from nipype_xai.images import ImageError, load_volume, save_image
from nipype_xai.interfaces import Attribution, ModelInference
from nipype_xai.models import (
    ModelSpecError,
    MonaiResNet,
    TinyCNN3D,
    from_model_grid,
    load_model,
    load_model_spec,
    to_model_grid,
)

AFFINE_4MM = np.array([[4.0, 0, 0, -32], [0, 4, 0, -40], [0, 0, 4, -28], [0, 0, 0, 1]])


def brain_volume(shape=(16, 16, 16), seed=0) -> np.ndarray:
    """An ellipsoid 'brain' of noisy intensity with zero background and a bright blob."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    data = np.where(brain, rng.normal(100, 10, shape), 0)
    data[tuple(n // 2 + 2 for n in shape)] += 200
    return data.astype(np.float32)


def write_model(folder: Path, n_outputs: int = 2, task: str = "classification", outputs=None,
                shape=(16, 16, 16), name: str = "tiny") -> Path:
    torch.manual_seed(0)
    torch.save(TinyCNN3D(n_outputs=n_outputs, width=4).state_dict(), folder / f"{name}.pt")
    spec = {
        "architecture": "nipype_xai.models.architectures:TinyCNN3D",
        "kwargs": {"n_outputs": n_outputs, "width": 4},
        "weights": f"{name}.pt",
        "input": {"space": "MNI152NLin2009aSym", "resolution_mm": 4, "shape": list(shape),
                  "normalization": "zscore", "mask": "nonzero"},
        "outputs": outputs or ["control", "lesion"],
        "task": task,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def subject(tmp_path):
    """A 16³ T1w at 4 mm and a TinyCNN3D spec (12³ model grid: the maps must be resampled back)."""
    in_file = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(brain_volume(), AFFINE_4MM), in_file)
    return in_file, write_model(tmp_path, shape=(12, 12, 12))


# ------------------------------------------------------------------------------------------
# images.py


def test_load_volume_reads_a_checked_float_volume(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, AFFINE_4MM)
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, tmp_path / "scaled.nii.gz")
    loaded = load_volume(tmp_path / "scaled.nii.gz")
    assert loaded.get_data_dtype() == np.float32
    np.testing.assert_allclose(loaded.get_fdata(), data * 0.5 + 10)
    np.testing.assert_array_equal(loaded.affine, AFFINE_4MM)
    # Saved again, the values stay (no second application of the slope).
    save_image(loaded, tmp_path / "again.nii.gz")
    np.testing.assert_allclose(nib.load(tmp_path / "again.nii.gz").get_fdata(), data * 0.5 + 10)


def test_load_volume_squeezes_a_single_volume_4d_image(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), AFFINE_4MM), tmp_path / "one.nii")
    assert load_volume(tmp_path / "one.nii").shape == (4, 5, 6)


def test_load_volume_reads_nifti2(tmp_path):
    nib.save(nib.Nifti2Image(np.full((4, 5, 6), 3, np.float32), AFFINE_4MM), tmp_path / "n2.nii")
    loaded = load_volume(tmp_path / "n2.nii")
    assert type(loaded) is nib.Nifti1Image and loaded.shape == (4, 5, 6)
    np.testing.assert_array_equal(loaded.affine, AFFINE_4MM)
    assert np.all(loaded.get_fdata() == 3)


def _truncated(tmp_path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)), AFFINE_4MM),
             tmp_path / "full.nii.gz")
    data = (tmp_path / "full.nii.gz").read_bytes()
    path = tmp_path / "sub-02_T1w.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: d / "sub-03_T1w.nii.gz", r"^sub-03_T1w\.nii\.gz: file not found"),
        (_truncated, r"^sub-02_T1w\.nii\.gz: truncated or corrupt image data"),
        (
            lambda d: _save(d / "bold.nii.gz", np.zeros((6, 6, 5, 3), np.float32)),
            r"^bold\.nii\.gz: expected a 3D image, got shape \(6, 6, 5, 3\)",
        ),
        (
            lambda d: _save(d / "nan.nii.gz", _with(np.ones((6, 6, 6), np.float32), np.nan, np.inf)),
            r"^nan\.nii\.gz: contains non-finite voxels \(1 NaN, 1 Inf of 216\)",
        ),
        (
            lambda d: _write(d / "text.nii.gz", gzip.compress(b"not an image")),
            r"^text\.nii\.gz: cannot be read as a NIfTI image",
        ),
    ],
)
def test_load_volume_errors_name_the_file(tmp_path, make, pattern):
    with pytest.raises(ImageError, match=pattern):
        load_volume(make(tmp_path))


def _save(path, data):
    nib.save(nib.Nifti1Image(data, AFFINE_4MM), path)
    return path


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def _with(data, *values):
    flat = data.reshape(-1)
    flat[: len(values)] = values
    return data


def test_save_image_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "map.nii.gz"
    save_image(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), AFFINE_4MM), target)
    before = target.read_bytes()

    def crash(img, path):  # a writer killed half-way
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_image(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), AFFINE_4MM), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["map.nii.gz"]


# ------------------------------------------------------------------------------------------
# Interfaces in a workflow


def test_interfaces_in_a_workflow(tmp_path, subject):
    in_file, spec_path = subject
    workflow = pe.Workflow(name="xai", base_dir=str(tmp_path / "work"))
    inference = pe.Node(ModelInference(in_file=str(in_file), model_spec=str(spec_path)),
                        name="inference")
    attribution = pe.Node(
        Attribution(
            in_file=str(in_file),
            model_spec=str(spec_path),
            methods=["gradient", "smoothgrad", "smoothgrad_sq"],
            method_params={"smoothgrad": {"n_samples": 4}, "smoothgrad_sq": {"n_samples": 4}},
            seed=3,
        ),
        name="attribution",
    )
    workflow.add_nodes([inference, attribution])
    graph = workflow.run(plugin="Linear")
    results = {node.name: node.result.outputs for node in graph.nodes()}

    # Predictions: one row, probabilities from the model's logits.
    table = pd.read_csv(results["inference"].out_tsv, sep="\t")
    assert list(table.columns) == ["control", "lesion", "predicted_label", "predicted_index"]
    spec = load_model_spec(spec_path)
    model = load_model(spec)
    x, grid = to_model_grid(load_volume(in_file), spec)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), 1)[0].numpy()
    np.testing.assert_allclose(table.loc[0, ["control", "lesion"]].to_numpy(float), probabilities,
                               rtol=1e-5)
    predicted = int(np.argmax(probabilities))
    assert table.loc[0, "predicted_index"] == predicted
    assert table.loc[0, "predicted_label"] == spec.outputs[predicted]

    # Maps: on the input's grid, named by desc, each with its sidecar.
    out_files = [Path(f) for f in results["attribution"].out_files]
    assert [f.name for f in out_files] == [
        "sub-01_T1w_desc-gradient_attribution.nii.gz",
        "sub-01_T1w_desc-smoothgrad_attribution.nii.gz",
        "sub-01_T1w_desc-smoothgradSq_attribution.nii.gz",
    ]
    reference = nib.load(in_file)
    maps = [nib.load(f) for f in out_files]
    for map_img in maps:
        assert map_img.shape == reference.shape
        np.testing.assert_allclose(map_img.affine, reference.affine)
        assert np.abs(map_img.get_fdata()).max() > 0
    # The gradient map is the engine's gradient on the model grid, resampled back.
    expected = attribute_many(model, x, ["gradient"], predicted)["gradient"][0, 0]
    np.testing.assert_allclose(
        maps[0].get_fdata(), from_model_grid(expected, grid, reference).get_fdata(), atol=1e-6
    )
    # Noisy copies: the smoothed map differs from the plain gradient wherever the model grid is.
    assert not np.allclose(maps[1].get_fdata(), maps[0].get_fdata(), atol=1e-3 * np.abs(
        maps[0].get_fdata()).max())
    assert maps[2].get_fdata().min() >= 0  # mean of squared gradients

    sidecars = [json.loads(Path(f).read_text()) for f in results["attribution"].out_sidecars]
    assert [s["Method"] for s in sidecars] == ["gradient", "smoothgrad", "smoothgrad_sq"]
    assert sidecars[1]["Parameters"] == {"n_samples": 4, "noise_level": 0.1, "seed": 3,
                                         "batch_size": 16}
    assert sidecars[0]["Parameters"] == {"batch_size": 16}
    for sidecar in sidecars:
        assert sidecar["Target"] == sidecar["PredictedClass"] == predicted
        assert sidecar["PredictedLabel"] == spec.outputs[predicted]
        assert sidecar["Probability"] == pytest.approx(probabilities[predicted], rel=1e-5)
        assert sidecar["ModelSpec"] == "tiny"
        assert sidecar["ModelWeightsSHA256"] == __import__("hashlib").sha256(
            spec.weights.read_bytes()).hexdigest()
        assert sidecar["Space"] == "MNI152NLin2009aSym"
        assert sidecar["ModelGrid"] == {"ResolutionMM": [4.0, 4.0, 4.0], "Shape": [12, 12, 12]}

    # A second run is served from Nipype's cache: the maps are not rewritten.
    mtimes = [f.stat().st_mtime_ns for f in out_files]
    workflow.run(plugin="Linear")
    assert [f.stat().st_mtime_ns for f in out_files] == mtimes


def test_new_weights_change_the_node_hash_but_device_does_not(subject):
    in_file, spec_path = subject
    interface = Attribution(in_file=str(in_file), model_spec=str(spec_path), methods=["gradient"])
    assert interface.inputs.model_weights == str(spec_path.with_suffix(".pt"))
    _, before = interface.inputs.get_hashval(hash_method="timestamp")
    interface.inputs.device = "cpu"
    interface.inputs.use_gpu = False
    assert interface.inputs.get_hashval(hash_method="timestamp")[1] == before

    weights = spec_path.with_suffix(".pt")
    torch.save(TinyCNN3D(n_outputs=2, width=4).state_dict(), weights)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    interface.inputs.model_spec = str(spec_path)
    assert interface.inputs.get_hashval(hash_method="timestamp")[1] != before


# The interface records the warnings even where the user silences them.
@pytest.mark.filterwarnings("ignore::nipype_xai.attribution.engine.AttributionWarning")
def test_a_map_that_misses_its_axiom_says_so_in_its_sidecar(tmp_path, subject):
    pytest.importorskip("monai")
    in_file, tiny_spec = subject
    # MONAI's ResNet with GELU, which captum's DeepLift has no rule for.
    kwargs = {"pooling": "max", "block": "basic", "layers": [1, 1, 1, 1],
              "block_inplanes": [2, 4, 4, 4], "spatial_dims": 3, "n_input_channels": 1,
              "num_classes": 2, "act": "gelu"}
    torch.manual_seed(0)
    torch.save(MonaiResNet(**kwargs).state_dict(), tmp_path / "gelu.pt")
    spec = json.loads(tiny_spec.read_text())
    spec.update(name="gelu", architecture="nipype_xai.models.architectures:MonaiResNet",
                kwargs=kwargs, weights="gelu.pt")
    (tmp_path / "gelu.json").write_text(json.dumps(spec))
    run_dir = tmp_path / "gelu_run"
    run_dir.mkdir()
    result = Attribution(in_file=str(in_file), model_spec=str(tmp_path / "gelu.json"),
                         methods=["deeplift", "gradient"]).run(cwd=str(run_dir))
    deeplift, gradient = (json.loads(Path(f).read_text()) for f in result.outputs.out_sidecars)
    (warning,) = deeplift["Warnings"]
    assert "summation-to-delta does not hold" in warning and "(GELU)" in warning
    assert "Warnings" not in gradient

    # TinyCNN3D (ReLU, max pooling in its blocks): DeepLIFT keeps its axiom, nothing to say.
    result = Attribution(in_file=str(in_file), model_spec=str(tiny_spec),
                         methods=["deeplift"]).run(cwd=str(tmp_path))
    assert "Warnings" not in json.loads(Path(result.outputs.out_sidecars[0]).read_text())


def test_attribution_with_an_explicit_target_and_another_grid(tmp_path):
    # Input at 3 mm in LPS-like orientation; the model grid is 4 mm RAS.
    affine = np.array([[-3.0, 0, 0, 30], [0, -3, 0, 30], [0, 0, 3, -25], [0, 0, 0, 1]])
    in_file = tmp_path / "sub-02_T1w.nii"
    nib.save(nib.Nifti1Image(brain_volume((20, 22, 18), seed=1), affine), in_file)
    spec_path = write_model(tmp_path, n_outputs=3, outputs=["a", "b", "c"])
    result = Attribution(
        in_file=str(in_file), model_spec=str(spec_path), methods=["input_x_gradient"], target=2,
    ).run(cwd=str(tmp_path))
    (out_file,), (sidecar,) = result.outputs.out_files, result.outputs.out_sidecars
    map_img = nib.load(out_file)
    assert map_img.shape == (20, 22, 18)
    np.testing.assert_allclose(map_img.affine, affine)
    assert Path(out_file).name == "sub-02_T1w_desc-inputXGradient_attribution.nii.gz"
    meta = json.loads(Path(sidecar).read_text())
    assert (meta["Target"], meta["TargetLabel"]) == (2, "c")
    assert 0 < meta["TargetProbability"] < 1
    assert meta["PredictedLabel"] == ["a", "b", "c"][meta["PredictedClass"]]


def test_target_out_of_range_fails_without_outputs(tmp_path, subject):
    in_file, spec_path = subject
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(TargetError, match=r"tiny\.json: target 5 out of range"):
        Attribution(in_file=str(in_file), model_spec=str(spec_path), methods=["gradient"],
                    target=5).run(cwd=str(run_dir))
    assert not list(run_dir.glob("*.nii.gz"))


def test_regression_predictions(tmp_path):
    in_file = tmp_path / "sub-03_T1w.nii.gz"
    nib.save(nib.Nifti1Image(brain_volume(), AFFINE_4MM), in_file)
    spec_path = write_model(tmp_path, n_outputs=1, task="regression", outputs=["age"])
    result = ModelInference(in_file=str(in_file), model_spec=str(spec_path)).run(cwd=str(tmp_path))
    table = pd.read_csv(result.outputs.out_tsv, sep="\t")
    assert list(table.columns) == ["prediction"]
    model = load_model(spec_path)
    x, _ = to_model_grid(load_volume(in_file), load_model_spec(spec_path))
    with torch.no_grad():
        assert table.loc[0, "prediction"] == pytest.approx(float(model(x)[0, 0]), rel=1e-6)


def test_interface_checks_the_output_count_on_the_real_prediction(tmp_path, subject):
    in_file, _ = subject
    spec_path = write_model(tmp_path, n_outputs=2, outputs=["a", "b", "c"], name="mislabelled")
    with pytest.raises(ModelSpecError, match=r"^mislabelled\.json: the model has 2 output\(s\)"):
        ModelInference(in_file=str(in_file), model_spec=str(spec_path)).run(cwd=str(tmp_path))


def test_interface_reports_a_bad_image_by_name(tmp_path, subject):
    _, spec_path = subject
    bad = _save(tmp_path / "sub-04_T1w.nii.gz", np.zeros((6, 6, 5, 2), np.float32))
    with pytest.raises(ImageError, match=r"sub-04_T1w\.nii\.gz: expected a 3D image"):
        ModelInference(in_file=str(bad), model_spec=str(spec_path)).run(cwd=str(tmp_path))


def test_restrict_to_mask_by_hand():
    from nipype_xai.attribution.restriction import restrict_to_mask

    values = np.array([[[3.0, -1.0], [0.0, 2.0]], [[-4.0, 0.5], [0.5, 0.0]]], np.float32)
    mask = np.array([[[1, 0], [1, 1]], [[0, 0], [1, 0]]], np.uint8)
    restricted, outside = restrict_to_mask(values, mask)
    assert restricted.dtype == np.float32
    assert np.array_equal(restricted, np.where(mask > 0, values, 0))
    # |a| outside: 1 + 4 + 0.5 = 5.5 of 11 in all
    assert outside == pytest.approx(5.5 / 11.0)
    assert restrict_to_mask(np.zeros((2, 2)), np.ones((2, 2)))[1] == 0.0
    with pytest.raises(ValueError, match="shape"):
        restrict_to_mask(values, mask[0])


def test_restrict_maps_interface_records_the_mass_outside(tmp_path):
    from nipype_xai.interfaces import RestrictMaps

    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    rng = np.random.default_rng(0)
    maps, sidecars = [], []
    for index in range(2):
        path = tmp_path / f"sub-01_desc-m{index}_attribution.nii.gz"
        save_image(nib.Nifti1Image(rng.normal(size=(6, 7, 5)).astype(np.float32), affine), path)
        sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
        sidecar.write_text(json.dumps({"Method": f"m{index}"}))
        maps.append(str(path))
        sidecars.append(str(sidecar))
    domain = np.zeros((6, 7, 5), np.float32)
    domain[1:5, 2:6, 1:4] = 3.5  # a model input: nonzero inside the brain
    save_image(nib.Nifti1Image(domain, affine), tmp_path / "input.nii.gz")
    cwd = tmp_path / "node"
    cwd.mkdir()
    result = RestrictMaps(in_files=maps, in_sidecars=sidecars, mask=str(tmp_path / "input.nii.gz"),
                          description="the model input", sidecar_key="ModelInputRestriction"
                          ).run(cwd=str(cwd)).outputs
    for in_file, out_file, out_sidecar in zip(maps, result.out_files, result.out_sidecars):
        before = nib.load(in_file).get_fdata()
        after = nib.load(out_file)
        assert Path(out_file).name == Path(in_file).name and np.array_equal(after.affine, affine)
        assert np.array_equal(after.get_fdata(), np.where(domain > 0, before, 0))
        record = json.loads(Path(out_sidecar).read_text())
        expected = np.abs(before)[domain == 0].sum() / np.abs(before).sum()
        assert record["ModelInputRestriction"]["Domain"] == "the model input"
        assert record["ModelInputRestriction"]["MassOutside"] == pytest.approx(expected, abs=1e-6)
        assert record["Method"].startswith("m")
    other = tmp_path / "other.nii.gz"
    save_image(nib.Nifti1Image(domain[:5], affine), other)
    with pytest.raises(ImageError, match="other.nii.gz: not on the grid"):
        RestrictMaps(in_files=maps, mask=str(other), description="x").run(cwd=str(cwd))


# ------------------------------------------------------------------------------------------
# A background set (gradient_shap, deeplift_shap): given as a file, described in the sidecars


def _write_background(folder: Path, spec_path: Path, seeds=(5, 6, 7)) -> Path:
    from nipype_xai.models.background import prepare_background, write_background

    cohort = ((f"sub-{s}_T1w.nii.gz", nib.Nifti1Image(brain_volume(seed=s), AFFINE_4MM))
              for s in seeds)
    volumes, grid = prepare_background(cohort, load_model_spec(spec_path))
    out, _ = write_background(folder / "background.nii.gz", volumes, grid,
                              {"ModelSpec": "tiny", "N": len(seeds), "Seed": 3,
                               "Selection": {"Column": "label", "Value": "control"},
                               "Sources": [f"sub-{s}_T1w.nii.gz" for s in seeds]})
    return out


def test_attribution_with_a_background_file_records_it(tmp_path, subject):
    import hashlib

    from nipype_xai.models.background import load_background

    in_file, spec_path = subject
    background = _write_background(tmp_path, spec_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = Attribution(
        in_file=str(in_file), model_spec=str(spec_path),
        methods=["deeplift_shap", "gradient_shap", "gradient"], background=str(background),
        method_params={"gradient_shap": {"n_samples": 4}}, seed=2,
    ).run(cwd=str(run_dir)).outputs
    sidecars = [json.loads(Path(f).read_text()) for f in result.out_sidecars]
    described = {"Source": str(background), "SHA256": hashlib.sha256(
        background.read_bytes()).hexdigest(), "N": 3, "ModelSpec": "tiny", "Seed": 3,
        "Selection": {"Column": "label", "Value": "control"}}
    assert sidecars[0]["Parameters"] == {"background": described, "batch_size": 16}
    assert sidecars[1]["Parameters"] == {"background": described, "n_samples": 4,
                                         "stdevs": 0.0, "seed": 2, "batch_size": 16}
    assert sidecars[2]["Parameters"] == {"batch_size": 16}
    # The map is the engine's, against the file's volumes, put back on the image's grid.
    spec = load_model_spec(spec_path)
    model = load_model(spec)
    x, grid = to_model_grid(load_volume(in_file), spec)
    volumes = load_background(background, spec).volumes
    expected = attribute_many(model, x, ["deeplift_shap"], sidecars[0]["Target"],
                              method_params={"deeplift_shap": {"background": volumes}})
    np.testing.assert_allclose(
        nib.load(result.out_files[0]).get_fdata(),
        from_model_grid(expected["deeplift_shap"][0, 0], grid, nib.load(in_file)).get_fdata(),
        atol=1e-6)
    # Against the fallback (each image's blur) the map is another one, and says so.
    fallback = Attribution(in_file=str(in_file), model_spec=str(spec_path),
                           methods=["deeplift_shap"]).run(cwd=str(tmp_path)).outputs
    from nipype_xai.attribution.shap_gradients import BACKGROUND_FALLBACK

    record = json.loads(Path(fallback.out_sidecars[0]).read_text())
    assert record["Parameters"]["background"] == BACKGROUND_FALLBACK
    assert not np.allclose(nib.load(fallback.out_files[0]).get_fdata(),
                           nib.load(result.out_files[0]).get_fdata())


def test_attribution_refuses_a_background_it_cannot_use(tmp_path, subject):
    in_file, spec_path = subject
    background = _write_background(tmp_path, spec_path)
    with pytest.raises(ValueError, match="background.nii.gz: a background was given, but none "
                                         r"of the methods \['gradient'\] takes one"):
        Attribution(in_file=str(in_file), model_spec=str(spec_path), methods=["gradient"],
                    background=str(background)).run(cwd=str(tmp_path))
    # Another field of view: another model grid than the background's.
    other = tmp_path / "sub-05_T1w.nii.gz"
    nib.save(nib.Nifti1Image(brain_volume((20, 16, 16)), AFFINE_4MM), other)
    with pytest.raises(ImageError, match="background.nii.gz: background grid .* is not the "
                                         "model grid of the explained image"):
        Attribution(in_file=str(other), model_spec=str(spec_path), methods=["deeplift_shap"],
                    background=str(background)).run(cwd=str(tmp_path))
    assert not list(tmp_path.glob("*_attribution.nii.gz"))


def test_a_tensor_parameter_is_described_never_dumped():
    from nipype_xai.interfaces.attribution import _json_safe

    small = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    described = _json_safe(small)
    assert described == {"Type": "Tensor", "Shape": [2, 3], "DType": "float32",
                         "SHA256": __import__("hashlib").sha256(small.numpy().tobytes()
                                                                ).hexdigest()}
    assert _json_safe(np.zeros((4, 4), np.int16))["Shape"] == [4, 4]
    assert _json_safe(np.float32(0.5)) == 0.5 and _json_safe([1, (2, "a")]) == [1, [2, "a"]]
