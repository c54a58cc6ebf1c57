"""The input-domain check (nipype_xai.models.domain): the summary of a model's training inputs, the
distance of a subject's input from them, the spec's ``input_summary`` and ModelInference's columns.

Small: toy volumes of a few thousand voxels, synthetic cohorts at 4 mm on an 8 mm grid, a handful
of 2 mm subjects on the bundled model's grid, and the real Colin27 brain (skipped with the reason
where Debian's mricron-data cannot be had).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from nipype_xai.images import load_volume
from nipype_xai.interfaces.model import ModelInference
from nipype_xai.models import (
    InputSpec,
    ModelSpec,
    ModelSpecError,
    TinyCNN3D,
    input_distance,
    load_model_spec,
    save_model_spec,
    summarize_inputs,
    to_model_grid,
)
from nipype_xai.models.bundled import bundled_model_spec
from nipype_xai.models.domain import (
    DISTANCE_LEVELS,
    MIN_REFERENCE_INPUTS,
    QUANTILE_LEVELS,
    THRESHOLD_MARGIN,
    mean_image_bytes,
)
from nipype_xai.models.spec import mean_image_name
from nipype_xai.synth import (
    apply_displacement_field,
    cohort_labels,
    load_template_anatomy,
    make_subject,
    subject_seed,
)
from nipype_xai.synth.train import augmentation_settings, training_inputs

from real_data import real_t1w  # noqa: F401 - a session fixture

TINY = "nipype_xai.models.architectures:TinyCNN3D"
TPL = "MNI152NLin2009aSym"
#: Seeds no cohort of the bundled model, the demo or another test uses.
TRAIN_SEED, HELD_OUT_SEED = 4242, 9191


# ---------------------------------------------------------------------------------------------
# Helpers


def toy_inputs(n: int, shape=(10, 12, 9), seed: int = 0) -> list[np.ndarray]:
    """Model inputs with a zero background: a noisy ellipsoid 'brain', z-scored inside."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    out = []
    for _ in range(n):
        radii = np.array(shape)[:, None, None, None] * rng.uniform(0.33, 0.4, (3, 1, 1, 1))
        inside = (((grid - centre) / radii) ** 2).sum(axis=0) < 1
        values = rng.gamma(4.0, 1.0, size=shape) + 2.0 * grid[0] / shape[0]
        volume = np.where(inside, values, 0.0)
        kept = volume[inside]
        volume[inside] = (kept - kept.mean()) / kept.std()
        out.append(volume.astype(np.float32))
    return out


def prequential_reference(stack: np.ndarray, margin: float = THRESHOLD_MARGIN) -> dict:
    """summarize_inputs' figures, computed directly on a stack with numpy (the reference)."""
    n = len(stack)
    quantiles = np.array([np.quantile(x[x != 0], QUANTILE_LEVELS) for x in stack])
    fractions = np.array([(x != 0).mean() for x in stack])

    def dissimilarity(x, mean):
        return 1.0 - np.corrcoef(x.ravel(), mean.ravel())[0, 1]

    dissimilarities = [dissimilarity(stack[k].astype(float), stack[:k].astype(float).mean(0))
                       for k in range(1, n)]
    distances = {}
    for k in range(3, n):
        qz = (quantiles[k] - quantiles[:k].mean(0)) / quantiles[:k].std(0, ddof=1)
        d_before = np.array(dissimilarities[:k - 1])
        dz = (dissimilarities[k - 1] - d_before.mean()) / d_before.std(ddof=1)
        fz = (fractions[k] - fractions[:k].mean()) / fractions[:k].std(ddof=1)
        distances[k] = max(np.sqrt(np.mean(qz ** 2)), dz, abs(fz), 0.0)
    scored = [d for k, d in distances.items() if k >= MIN_REFERENCE_INPUTS]
    return {
        "quantile_mean": quantiles.mean(0), "quantile_sd": quantiles.std(0, ddof=1),
        "fraction_mean": fractions.mean(), "fraction_sd": fractions.std(ddof=1),
        "dissimilarity_mean": np.mean(dissimilarities),
        "dissimilarity_sd": np.std(dissimilarities, ddof=1),
        "mean_image": stack.astype(float).mean(0), "scored": scored,
        "threshold": margin * max(scored),
    }


def make_spec(folder: Path, shape=(10, 12, 9), resolution=4.0, summary=None, name="toy"
              ) -> ModelSpec:
    weights = folder / f"{name}.pt"
    if not weights.exists():
        torch.manual_seed(0)
        torch.save(TinyCNN3D(n_outputs=2, width=4).state_dict(), weights)
    return ModelSpec(architecture=TINY, kwargs={"n_outputs": 2, "width": 4}, weights=weights,
                     input=InputSpec(space=TPL, resolution_mm=(resolution,) * 3, shape=shape,
                                     normalization="zscore", mask="nonzero"),
                     outputs=("control", "lesion"), task="classification", name=name,
                     input_summary=summary)


def synthetic_inputs(spec: ModelSpec, seed: int, n: int, resolution_mm: float) -> torch.Tensor:
    """A synthetic lesion cohort (nipype_xai.synth, in memory) on ``spec``'s grid, brought to the
    template by its known transform, exactly as nipype_xai.synth.train.load_cohort_arrays does:
    ``(N, 1, X, Y, Z)``."""
    anatomy = load_template_anatomy(resolution_mm)
    labels = cohort_labels(seed, n)
    out = []
    for index in range(n):
        data = make_subject(anatomy, "lesion", labels[index], subject_seed(seed, index))
        in_template = apply_displacement_field(data.t1w, data.to_template, order=1)
        out.append(to_model_grid(in_template, spec)[0][0])
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# The summary: one streaming pass equals the direct computation


def test_streaming_summary_equals_a_direct_computation_on_the_stack():
    arrays = toy_inputs(16)
    summary = summarize_inputs(x for x in arrays)  # a generator: read once
    reference = prequential_reference(np.stack(arrays))
    assert summary.n_inputs == 16 and summary.quantile_levels == QUANTILE_LEVELS
    np.testing.assert_allclose(summary.quantile_mean, reference["quantile_mean"], rtol=1e-12)
    np.testing.assert_allclose(summary.quantile_sd, reference["quantile_sd"], rtol=1e-9)
    assert summary.nonzero_fraction_mean == pytest.approx(reference["fraction_mean"], rel=1e-12)
    assert summary.nonzero_fraction_sd == pytest.approx(reference["fraction_sd"], rel=1e-9)
    assert summary.dissimilarity_mean == pytest.approx(reference["dissimilarity_mean"], rel=1e-9)
    assert summary.dissimilarity_sd == pytest.approx(reference["dissimilarity_sd"], rel=1e-7)
    np.testing.assert_allclose(summary.mean_image, reference["mean_image"], rtol=1e-6,
                               atol=1e-7)
    assert summary.mean_image.dtype == np.float32 and not summary.mean_image.flags.writeable
    # Inputs 10..15 are scored (the first MIN_REFERENCE_INPUTS only build the reference).
    assert summary.n_distances == 16 - MIN_REFERENCE_INPUTS == len(reference["scored"])
    np.testing.assert_allclose(summary.distance_quantiles,
                               np.quantile(reference["scored"], DISTANCE_LEVELS), rtol=1e-7)
    assert summary.threshold == pytest.approx(reference["threshold"], rel=1e-7)
    assert summary.threshold == pytest.approx(THRESHOLD_MARGIN * summary.distance_quantiles[-1])


def test_quantiles_are_numpy_quantiles_of_the_nonzero_voxels():
    # Every input holds the values 1..1000 in some order, and 0 elsewhere: the quantiles are
    # numpy's of 1..1000 with no spread, whatever the order.
    rng = np.random.default_rng(3)
    arrays = []
    for _ in range(5):
        volume = np.zeros(2000, dtype=np.float32)
        volume[rng.permutation(2000)[:1000]] = rng.permutation(np.arange(1, 1001))
        arrays.append(volume.reshape(10, 20, 10))
    summary = summarize_inputs(arrays)
    np.testing.assert_allclose(summary.quantile_mean,
                               np.quantile(np.arange(1, 1001), QUANTILE_LEVELS))
    np.testing.assert_allclose(summary.quantile_sd, 0.0, atol=1e-9)
    assert summary.nonzero_fraction_mean == 0.5 and summary.nonzero_fraction_sd == 0.0


def test_identical_inputs_make_any_change_outside():
    x = toy_inputs(1)[0]
    summary = summarize_inputs([x] * 5)
    assert summary.threshold == 0.0 and summary.dissimilarity_mean == pytest.approx(0, abs=1e-12)
    same = input_distance(x, summary)
    assert same.distance == pytest.approx(0.0, abs=1e-6) and not same.outside
    changed = x.copy()
    changed[changed != 0] *= 1.01
    assert input_distance(changed, summary).outside


def test_summary_refuses_bad_inputs():
    arrays = toy_inputs(4)
    with pytest.raises(ValueError, match=r"needs at least 4 training inputs .*got 3$"):
        summarize_inputs(arrays[:3])
    with pytest.raises(ValueError, match=r"training input 2: shape \(3, 3, 3\) differs"):
        summarize_inputs([arrays[0], arrays[1], np.ones((3, 3, 3))])
    with pytest.raises(ValueError, match="training input 1: every voxel is 0"):
        summarize_inputs([arrays[0], np.zeros_like(arrays[0])] + arrays[2:])
    summary = summarize_inputs(arrays)
    with pytest.raises(ValueError, match=r"sub-01: shape \(4, 4, 4\) differs"):
        input_distance(np.ones((4, 4, 4)), summary, what="sub-01")
    # A (1, 1, X, Y, Z) tensor is the model's input itself.
    torch_input = torch.from_numpy(arrays[0])[None, None]
    assert input_distance(torch_input, summary) == input_distance(arrays[0], summary)


def test_an_intensity_scaled_image_is_the_same_input(tmp_path):
    # The spec's z-score removes a global intensity scale: the model sees the same input, so
    # the check must not flag it (and it is not the check's business to).
    spec = make_spec(tmp_path)
    img = nib.Nifti1Image(np.abs(toy_inputs(1, seed=5)[0]) * 100, np.diag([4.0] * 3 + [1]))
    brighter = nib.Nifti1Image(np.asarray(img.dataobj) * 3.0, img.affine)
    summary = summarize_inputs(toy_inputs(12, seed=6))
    a = input_distance(to_model_grid(img, spec)[0], summary)
    b = input_distance(to_model_grid(brighter, spec)[0], summary)
    assert b.distance == pytest.approx(a.distance, rel=1e-4)
    assert b.outside == a.outside


# ---------------------------------------------------------------------------------------------
# Synthetic cohorts: training inputs inside, held-out subjects unflagged, the obvious flagged


@pytest.fixture(scope="module")
def small_grid_cohorts(tmp_path_factory):
    """A 4 mm synthetic training cohort and a held-out one (fresh seed) on an 8 mm model grid,
    summarised as nipype-xai train does (one augmented draw per input)."""
    folder = tmp_path_factory.mktemp("domain")
    spec = make_spec(folder, shape=(24, 29, 24), resolution=8.0, name="small")
    train = synthetic_inputs(spec, TRAIN_SEED, 24, 4.0)
    held_out = synthetic_inputs(spec, HELD_OUT_SEED, 16, 4.0)
    settings = augmentation_settings({"max_shift": 1, "flip_x": True})
    summary = summarize_inputs(training_inputs(train, **settings))
    return dataclasses.replace(spec, input_summary=summary), train, held_out


def test_training_and_held_out_synthetic_inputs_are_inside(small_grid_cohorts):
    spec, train, held_out = small_grid_cohorts
    summary = spec.input_summary
    train_distances = [input_distance(x, summary).distance for x in train]
    held = [input_distance(x, summary) for x in held_out]
    flagged = sum(d.outside for d in held)
    print(f"\nsmall grid: threshold {summary.threshold:.2f}; training inputs (bare) up to "
          f"{max(train_distances):.2f}; held-out subjects (seed {HELD_OUT_SEED}) up to "
          f"{max(d.distance for d in held):.2f}; false flags {flagged}/{len(held)}")
    assert max(train_distances) < summary.threshold
    assert flagged == 0


def _brain_of(x: np.ndarray) -> np.ndarray:
    """The brain of a synthetic model input: above the background noise, largest component."""
    labels, _ = ndimage.label(x > 0.0)
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def _zscore_nonzero(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[x != 0] = (x[x != 0] - x[x != 0].mean()) / x[x != 0].std()
    return out


def _with_scalp(x: np.ndarray, scalp_voxels: int) -> np.ndarray:
    """A synthetic input with a head around its brain: ``scalp_voxels`` of fat (brighter than
    white matter in a T1w) over one voxel of dark skull, normalised again as the model's input."""
    brain = _brain_of(x)
    shell = (ndimage.binary_dilation(brain, iterations=1 + scalp_voxels)
             & ~ndimage.binary_dilation(brain))
    head = x.copy()
    head[shell] = 1.2 * x[brain].max()
    return _zscore_nonzero(head)


def _without_background(x: np.ndarray) -> np.ndarray:
    """The brain alone, zeros around it (as a skull-stripped real T1w), normalised again."""
    return _zscore_nonzero(np.where(_brain_of(x), x, 0.0))


def test_obvious_out_of_domain_inputs_are_flagged(small_grid_cohorts):
    spec, _, held_out = small_grid_cohorts
    summary = spec.input_summary
    x = held_out[0, 0].numpy()
    assert not input_distance(x, summary).outside
    rng = np.random.default_rng(0)
    # Shifted 64 mm to the right. The check is no registration QC (that is RegistrationQC's
    # job): shifts the size of the training augmentation's are in its domain, and on this grid a
    # shift is flagged from about 56 mm on.
    shifted = np.zeros_like(x)
    shifted[8:] = x[:-8]
    centre = (np.array(x.shape) - 1) / 2
    zoom = 1.4
    scaled = ndimage.affine_transform(x, np.eye(3) / zoom, offset=centre - centre / zoom,
                                      order=1)  # the head 40 % larger
    noise = rng.standard_normal(x.shape).astype(np.float32)
    cases = {"shifted 64 mm": shifted, "scaled 1.4x": scaled, "noise": noise,
             "no background": _without_background(x), "contrast inverted": -x}
    for name, case in cases.items():
        result = input_distance(case, summary, what=name)
        print(f"{name}: distance {result.distance:.1f} (threshold {summary.threshold:.1f}; "
              f"z: quantiles {result.quantile_z:.1f}, dissimilarity "
              f"{result.dissimilarity_z:.1f}, non-zero fraction {result.nonzero_fraction_z:.1f})")
        assert result.outside, name


# ---------------------------------------------------------------------------------------------
# The bundled model: fresh synthetic subjects inside, the real healthy brain outside


@pytest.fixture(scope="module")
def bundled():
    spec = load_model_spec(bundled_model_spec("lesion"))
    assert spec.input_summary is not None, "the bundled model carries its training summary"
    return spec


@pytest.fixture(scope="module")
def bundled_fresh_inputs(bundled):
    """Fresh subjects (a seed none used) at 2 mm, as the bundled model's training cohorts were."""
    return synthetic_inputs(bundled, HELD_OUT_SEED, 6, 2.0)


def test_bundled_summary_leaves_fresh_synthetic_subjects_unflagged(bundled,
                                                                   bundled_fresh_inputs):
    results = [input_distance(x, bundled.input_summary) for x in bundled_fresh_inputs]
    flagged = sum(r.outside for r in results)
    print(f"\nbundled: threshold {bundled.input_summary.threshold:.2f}; fresh subjects up to "
          f"{max(r.distance for r in results):.2f}; false flags {flagged}/{len(results)}")
    assert flagged == 0


def test_bundled_summary_flags_a_head_and_a_stripped_background(bundled, bundled_fresh_inputs):
    x = bundled_fresh_inputs[0, 0].numpy()
    for name, case in (("12 mm of scalp", _with_scalp(x, 3)),
                       ("no background", _without_background(x))):
        result = input_distance(case, bundled.input_summary, what=name)
        print(f"bundled, {name}: distance {result.distance:.1f} (threshold "
              f"{result.threshold:.1f})")
        assert result.outside, name


def test_the_real_healthy_brain_is_outside_the_bundled_models_training_inputs(bundled,
                                                                               real_t1w):
    head, brain = real_t1w
    for path, what in ((brain, "Colin27 brain (ch2bet)"), (head, "Colin27 head (ch2)")):
        # What ModelInference does with a template-space T1w (Colin27 is in MNI space).
        x, _ = to_model_grid(load_volume(path), bundled)
        result = input_distance(x, bundled.input_summary, what=what)
        print(f"\n{what}: distance {result.distance:.1f} vs threshold {result.threshold:.1f} "
              f"(z: quantiles {result.quantile_z:.1f}, dissimilarity {result.dissimilarity_z:.1f}"
              f", non-zero fraction {result.nonzero_fraction_z:.1f})")
        assert result.outside
        assert result.distance > 2 * result.threshold


# ---------------------------------------------------------------------------------------------
# The spec's input_summary


def test_spec_round_trip_with_a_summary(tmp_path):
    summary = summarize_inputs(toy_inputs(12))
    spec = make_spec(tmp_path, summary=summary)
    path = save_model_spec(spec, tmp_path / "toy.json")
    image = tmp_path / mean_image_name("toy")
    data = json.loads(path.read_text())["input_summary"]
    assert data["mean_image"] == image.name
    assert data["mean_image_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert data["threshold"] == summary.threshold
    loaded = load_model_spec(path)
    assert loaded == spec and loaded.input_summary == summary
    assert loaded.input_summary_file == image
    # Saving again (the file exists now) writes the same JSON and leaves the image as it is.
    before = image.read_bytes()
    save_model_spec(loaded, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(path.read_text())
    assert image.read_bytes() == before == mean_image_bytes(summary.mean_image)
    # A spec without a summary is unchanged by the feature.
    plain = save_model_spec(make_spec(tmp_path, name="plain"), tmp_path / "plain.json")
    assert "input_summary" not in json.loads(plain.read_text())
    assert load_model_spec(plain).input_summary is None


def _write_with_summary(tmp_path: Path) -> tuple[Path, dict]:
    path = save_model_spec(make_spec(tmp_path, summary=summarize_inputs(toy_inputs(12))),
                           tmp_path / "spec.json")
    return path, json.loads(path.read_text())


def _edit(data: dict, dotted: str, value) -> dict:
    data = json.loads(json.dumps(data))
    container = data["input_summary"]
    *parents, last = dotted.split(".")
    for key in parents:
        container = container[key]
    if value is KeyError:
        del container[last]
    else:
        container[last] = value
    return data


@pytest.mark.parametrize("dotted, value, message", [
    ("threshold", -1.0, r"'input_summary\.threshold' must be a number >= 0, got -1\.0"),
    ("threshold", KeyError, r"'input_summary\.threshold' is missing"),
    ("n_inputs", 0, r"'input_summary\.n_inputs' must be a positive integer, got 0"),
    ("intensity_quantiles.sd", [0.1, 0.2], r"'input_summary\.intensity_quantiles\.sd' must be 9 "
                                           r"numbers"),
    ("intensity_quantiles.levels", [0.5] * 9, r"'input_summary\.intensity_quantiles\.levels' "
                                              r"must increase"),
    ("nonzero_fraction.mean", 1.5, r"'input_summary\.nonzero_fraction\.mean' must be a number "
                                   r"in \[0, 1\]"),
    ("dissimilarity", "low", r"'input_summary\.dissimilarity' must be an object, got str"),
    ("mean_image_sha256", "abc", r"'input_summary\.mean_image_sha256' must be 64 hexadecimal"),
    ("mean_image_sha256", "0" * 64, r"input_summary\.mean_image toy_input_mean\.npy does not "
                                    r"match input_summary\.mean_image_sha256 in the spec"),
    ("mean_image", "missing.npy", r"input_summary\.mean_image file not found"),
    ("mean_image", "../outside.npy", r"'input_summary\.mean_image' '\.\./outside\.npy' resolves "
                                     r"to .* outside the spec's folder .*"
                                     r"--allow-external-weights"),
    ("mean_image", "/etc/passwd", r"'input_summary\.mean_image' '/etc/passwd' is an absolute "
                                  r"path"),
])
def test_a_bad_summary_is_one_line_naming_the_spec(tmp_path, dotted, value, message):
    path, data = _write_with_summary(tmp_path)
    (tmp_path.parent / "outside.npy").write_bytes(b"x")
    path.write_text(json.dumps(_edit(data, dotted, value)))
    with pytest.raises(ModelSpecError, match=r"^spec\.json: " + message) as error:
        load_model_spec(path)
    assert "\n" not in str(error.value)


def _swap_image(path: Path, data: dict, content: bytes) -> None:
    image = path.parent / data["input_summary"]["mean_image"]
    image.write_bytes(content)
    data["input_summary"]["mean_image_sha256"] = hashlib.sha256(content).hexdigest()
    path.write_text(json.dumps(data))


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_a_bad_mean_image_file_is_refused_without_unpickling(tmp_path):
    path, data = _write_with_summary(tmp_path)
    shape = tuple(data["input"]["shape"])
    cases = {
        "wrong shape": (mean_image_bytes(np.zeros((3, 3, 3))), r"shape \(3, 3, 3\), not the "
                                                                r"model grid's \(10, 12, 9\)"),
        "int32": (_npy(np.zeros(shape, dtype=np.int32)), "holds int32, not float32"),
        "float64": (_npy(np.zeros(shape)), "bytes, more than a float32 image"),
        "not finite": (mean_image_bytes(np.full(shape, np.nan)), "holds NaN or infinite values"),
        "fortran order": (_npy(np.asfortranarray(np.zeros(shape, np.float32))),
                          "is not in the form nipype-xai writes"),
        "text": (b"hello", "is not a NumPy .npy file readable without pickle"),
        # An object array needs pickle to be read: refused, never unpickled.
        "pickled objects": (_npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
                            "is not a NumPy .npy file readable without pickle"),
    }
    for name, (content, message) in cases.items():
        _swap_image(path, data, content)
        with pytest.raises(ModelSpecError, match=r"^spec\.json: input_summary\.mean_image "
                                                 r"toy_input_mean\.npy .*" + message):
            load_model_spec(path)


def test_an_external_mean_image_needs_external_weights(tmp_path):
    path, data = _write_with_summary(tmp_path)
    inside = tmp_path / data["input_summary"]["mean_image"]
    outside = tmp_path.parent / f"{tmp_path.name}_mean.npy"
    outside.write_bytes(inside.read_bytes())
    data["input_summary"]["mean_image"] = str(outside)
    path.write_text(json.dumps(data))
    with pytest.raises(ModelSpecError, match="--allow-external-weights"):
        load_model_spec(path)
    assert load_model_spec(path, external_weights=True).input_summary_file == outside


# ---------------------------------------------------------------------------------------------
# ModelInference: the check's columns in the predictions TSV, and a warning when outside


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def nipype_warnings():
    handler = _Records()
    # nipype-xai's logger (the CLI tests set Nipype's own to CRITICAL in this process, as the
    # command line does; the warning must get through that).
    logger = logging.getLogger("nipype_xai")
    logger.addHandler(handler)
    nipype_logger = logging.getLogger("nipype.interface")
    level = nipype_logger.level
    nipype_logger.setLevel(logging.CRITICAL)  # as the command line leaves it without -v
    yield handler.messages
    nipype_logger.setLevel(level)
    logger.removeHandler(handler)


def test_model_inference_writes_the_check_and_warns_when_outside(tmp_path, nipype_warnings):
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    arrays = toy_inputs(14)
    spec_path = save_model_spec(make_spec(tmp_path, summary=summarize_inputs(arrays[:12])),
                                tmp_path / "toy.json")
    spec = load_model_spec(spec_path)
    inside = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.where(arrays[13] != 0, arrays[13] + 10, 0), affine), inside)
    outside = tmp_path / "sub-02_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(1, 2, (10, 12, 9)), affine),
             outside)

    rows = {}
    for in_file in (inside, outside):
        result = ModelInference(in_file=str(in_file), model_spec=str(spec_path)).run(
            cwd=str(tmp_path))
        rows[in_file.name] = pd.read_csv(result.outputs.out_tsv, sep="\t").iloc[0]
        table = pd.read_csv(result.outputs.out_tsv, sep="\t")
        assert list(table.columns) == [
            "control", "lesion", "predicted_label", "predicted_index", "input_distance",
            "input_distance_threshold", "outside_training_inputs", "input_quantile_z",
            "input_dissimilarity_z", "input_nonzero_fraction_z"]
        # The very array the model saw.
        expected = input_distance(to_model_grid(load_volume(in_file), spec)[0],
                                  spec.input_summary)
        assert table.loc[0, "input_distance"] == pytest.approx(expected.distance, rel=1e-9)
        assert table.loc[0, "input_distance_threshold"] == pytest.approx(expected.threshold)
    assert not rows[inside.name]["outside_training_inputs"]
    assert rows[outside.name]["outside_training_inputs"]
    assert len(nipype_warnings) == 1
    assert nipype_warnings[0].startswith("sub-02_T1w.nii.gz: the model's input lies outside "
                                         "toy's training inputs")


def test_model_inference_without_a_summary_adds_nothing(tmp_path, nipype_warnings):
    spec_path = save_model_spec(make_spec(tmp_path), tmp_path / "plain.json")
    in_file = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(1, 2, (10, 12, 9)),
                             np.diag([4.0, 4.0, 4.0, 1.0])), in_file)
    result = ModelInference(in_file=str(in_file), model_spec=str(spec_path)).run(cwd=str(tmp_path))
    table = pd.read_csv(result.outputs.out_tsv, sep="\t")
    assert list(table.columns) == ["control", "lesion", "predicted_label", "predicted_index"]
    assert nipype_warnings == []


def test_model_inference_flags_the_real_brain_with_the_bundled_model(tmp_path, real_t1w,
                                                                     nipype_warnings):
    _, brain = real_t1w
    result = ModelInference(in_file=str(brain), model_spec=str(bundled_model_spec("lesion"))
                            ).run(cwd=str(tmp_path))
    row = pd.read_csv(result.outputs.out_tsv, sep="\t").iloc[0]
    print(f"\nModelInference, ch2bet: p(lesion) {row['lesion']:.5f}, input_distance "
          f"{row['input_distance']:.1f}, threshold {row['input_distance_threshold']:.1f}")
    assert row["outside_training_inputs"]
    assert len(nipype_warnings) == 1 and nipype_warnings[0].startswith("ch2bet.nii.gz: ")
