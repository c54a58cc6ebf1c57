"""Training on synthetic cohorts (nipype_xai.synth.train) and the bundled reference model.

Fast: a 4 mm cohort of a few subjects, toy volumes of 16³, one or two epochs. The bundled
model's full accuracy figure (>= 0.90 balanced accuracy on a fresh cohort of 60) comes from
``scripts/train_bundled_model.py``, not from a timed test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nipype_xai.models import (
    InputSpec,
    ModelSpec,
    load_model,
    load_model_spec,
    to_model_grid,
    weights_sha256,
)
from nipype_xai.models.bundled import BUNDLED_MODELS, bundled_model_spec
from nipype_xai.synth import generate_cohort, load_template_anatomy
from nipype_xai.models.domain import input_distance, mean_image_bytes, summarize_inputs
from nipype_xai.synth.train import (
    add_input_summary,
    augment_batch,
    augmentation_settings,
    balanced_batches,
    cohort_to_template,
    evaluate,
    load_cohort_arrays,
    read_participants,
    save_trained_model,
    summarize_training_inputs,
    train_model,
    train_on_cohort,
    training_inputs,
)

TINY = "nipype_xai.models.architectures:TinyCNN3D"
TPL = "MNI152NLin2009aSym"
#: Fresh seed: no cohort the bundled model was trained or scored on uses it.
FRESH_SEED = 777


def make_spec(shape=(16, 16, 16), resolution=4.0, outputs=("control", "lesion"), **kwargs):
    return ModelSpec(architecture=TINY, kwargs={"n_outputs": 2, "width": 4, **kwargs},
                     weights=Path("unused.pt"),
                     input=InputSpec(space=TPL, resolution_mm=(resolution,) * 3, shape=shape,
                                     normalization="zscore", mask="nonzero"),
                     outputs=outputs, task="classification", name="toy")


def toy_data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise volumes; positives carry a bright 4³ cube at a random place (linearly separable
    by a thresholded filter, so a small CNN learns it in a few epochs)."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 16, 16, 16, generator=generator)
    y = torch.arange(n) % 2
    for i in torch.nonzero(y).flatten():
        a, b, c = torch.randint(2, 10, (3,), generator=generator).tolist()
        X[i, 0, a:a + 4, b:b + 4, c:c + 4] += 3.0
    return X, y


@pytest.fixture(scope="module")
def lesion_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "lesion"
    return generate_cohort(root, "lesion", 8, seed=FRESH_SEED, resolution_mm=4.0,
                           progress=False)


# ---------------------------------------------------------------------------------------------
# Loading a cohort


def test_load_cohort_arrays_labels_and_grid(lesion_cohort):
    spec = make_spec(shape=(50, 59, 48))
    X, y, subjects = load_cohort_arrays(lesion_cohort, spec)
    rows = read_participants(lesion_cohort)
    assert subjects == [pid for pid, _ in rows]
    assert y.tolist() == [spec.outputs.index(label) for _, label in rows]
    assert X.shape == (8, 1, 50, 59, 48) and X.dtype == torch.float32
    # zscore over nonzero voxels: each subject's brain has mean 0 and sd 1.
    for volume in X[:, 0]:
        values = volume[volume != 0]
        assert abs(float(values.mean())) < 1e-4 and abs(float(values.std()) - 1) < 1e-3


def test_groundtruth_transform_brings_subjects_onto_the_template(lesion_cohort):
    """The known transform undoes each subject's warp and affine: inside the brain a control
    matches the template better than with the affine part alone, and far better than its
    unregistered native image (an independent reference: the template itself, through the same
    model-grid preprocessing). Noise and the bias field keep the correlation below 1."""
    spec = make_spec(shape=(50, 59, 48))
    template = to_model_grid(load_template_anatomy(4.0).t1w, spec)[0][0, 0].numpy()
    brain = template != 0  # the template is skull-stripped; the synthetic T1w has noise around
    control = next(pid for pid, label in read_participants(lesion_cohort) if label == "control")

    def correlation(mode):
        x = to_model_grid(cohort_to_template(lesion_cohort, control, mode), spec)[0][0, 0]
        return float(np.corrcoef(x.numpy()[brain], template[brain])[0, 1])

    registered, affine_only, native = (correlation(m) for m in ("groundtruth", "affine",
                                                                   "identity"))
    assert registered > 0.83
    assert registered > affine_only + 0.01
    assert affine_only > native


def test_load_cohort_arrays_rejects_unknown_labels_and_spaces(lesion_cohort):
    with pytest.raises(ValueError, match="not among the spec's outputs"):
        load_cohort_arrays(lesion_cohort, make_spec(outputs=("control", "atrophy")))
    other = dataclasses.replace(make_spec(), input=InputSpec(
        space="MNI152NLin6Asym", resolution_mm=(4.0,) * 3, shape=(16, 16, 16),
        normalization="zscore"))
    with pytest.raises(ValueError, match="MNI152NLin6Asym"):
        load_cohort_arrays(lesion_cohort, other)
    with pytest.raises(ValueError, match="to_template"):
        cohort_to_template(lesion_cohort, "sub-01", "ants")


# ---------------------------------------------------------------------------------------------
# Pure training pieces


def test_balanced_batches_hold_both_classes_equally():
    y = torch.tensor([0] * 9 + [1] * 3)
    batches = balanced_batches(y, 4, torch.Generator().manual_seed(0))
    assert len(batches) == 18 // 4 + 1  # 9 per class after repeating the minority
    for batch in batches[:-1]:
        assert y[batch].sum() == 2  # two of each class per batch of four
    seen = torch.cat(batches)
    assert set(seen[y[seen] == 0].tolist()) == set(range(9))  # every majority sample once
    assert set(seen[y[seen] == 1].tolist()) == {9, 10, 11}


def test_augment_batch_shifts_with_zero_fill_and_keeps_background():
    x = torch.zeros(1, 1, 8, 8, 8)
    x[0, 0, 2:6, 2:6, 2:6] = torch.arange(64, dtype=torch.float32).reshape(4, 4, 4) + 1
    same = augment_batch(x, torch.Generator().manual_seed(0), max_shift=0, intensity_jitter=0)
    assert torch.equal(same, x)
    generator = torch.Generator().manual_seed(3)
    shifted = augment_batch(x, generator, max_shift=2, intensity_jitter=0)
    shift = torch.randint(-2, 3, (1, 3), generator=torch.Generator().manual_seed(3))[0].tolist()
    # No wrap-around: the cube moves as a whole and nothing appears elsewhere.
    assert torch.equal(shifted, torch.roll(x, shifts=shift, dims=(2, 3, 4)))
    jittered = augment_batch(x, torch.Generator().manual_seed(1), max_shift=0,
                             intensity_jitter=0.5)
    assert torch.equal(jittered == 0, x == 0)


def test_training_reduces_the_loss_on_a_separable_toy_task():
    X, y = toy_data()
    model, history = train_model(make_spec(), X, y, epochs=12, batch_size=8, lr=1e-2,
                                 seed=0, augment=False, progress=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    X_test, y_test = toy_data(seed=1)
    scores = evaluate(model, X_test, y_test)
    assert scores["balanced_accuracy"] >= 0.9
    assert not model.training


def test_training_is_seed_reproducible():
    X, y = toy_data(n=8)
    runs = [train_model(make_spec(), X, y, epochs=2, batch_size=4, seed=seed, val_fraction=0.25,
                        progress=False)[0].state_dict() for seed in (5, 5, 6)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
    # The caller's global RNG is left as it was.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train_model(make_spec(), X, y, epochs=1, batch_size=4, seed=1, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_evaluate_against_hand_counts():
    class Fixed(nn.Module):
        """Predicts class 1 for the first three samples, 0 after (logits by index)."""

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            first = (torch.arange(len(x)) + self._offset < 3).float()
            self._offset += len(x)
            return torch.stack([1 - first, first], dim=1) * self.scale

    model = Fixed()
    model._offset = 0
    y = torch.tensor([1, 1, 0, 0, 0, 1])  # predictions 1, 1, 1, 0, 0, 0
    scores = evaluate(model, torch.zeros(6, 1, 2, 2, 2), y, batch_size=4)
    assert scores["confusion"] == [[2, 1], [1, 2]]
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_train_on_cohort_writes_a_loadable_spec(lesion_cohort, tmp_path):
    spec_path = train_on_cohort(lesion_cohort, make_spec(shape=(24, 28, 24)), tmp_path,
                                name="toy_lesion", epochs=1, batch_size=4, seed=0,
                                progress=False, metadata={"note": "test"})
    assert spec_path == tmp_path / "toy_lesion.json"
    spec = load_model_spec(spec_path)
    assert spec.weights == tmp_path / "toy_lesion.pt"
    assert spec.weights_sha256 == weights_sha256(spec.weights)
    record = json.loads(spec_path.read_text())["training"]
    assert record["cohort"]["n_subjects"] == 8 and record["note"] == "test"
    model = load_model(spec)  # weights_only=True and the SHA-256 check inside
    assert isinstance(model, nn.Module)
    # The training inputs' summary, for the input-domain check: the 8 inputs, augmented as in
    # training (train_model's defaults), its mean image beside the spec.
    assert spec.input_summary is not None and spec.input_summary.n_inputs == 8
    assert spec.input_summary_file == tmp_path / "toy_lesion_input_mean.npy"
    assert record["input_summary"]["augmentation"] == {
        "augment": True, "max_shift": 2, "intensity_jitter": 0.1, "flip_x": False, "seed": 0}
    X, _, _ = load_cohort_arrays(lesion_cohort, make_spec(shape=(24, 28, 24)))
    assert spec.input_summary == summarize_training_inputs(X, seed=0, epochs=1)


def test_a_cohort_too_small_to_summarise_trains_without_a_summary(tmp_path):
    cohort = generate_cohort(tmp_path / "three", "lesion", 3, seed=FRESH_SEED, resolution_mm=8.0,
                             progress=False)
    spec_path = train_on_cohort(cohort, make_spec(shape=(24, 28, 24)), tmp_path / "model",
                                epochs=1, batch_size=2, progress=False)
    assert load_model_spec(spec_path).input_summary is None
    record = json.loads(spec_path.read_text())["training"]["input_summary"]
    assert record == {"not_written": "3 training inputs; a summary needs at least 4"}


def test_training_inputs_are_what_the_model_saw():
    X, _ = toy_data(n=6)
    bare = list(training_inputs(X, augment=False, seed=3))
    order = torch.randperm(6, generator=torch.Generator().manual_seed(3)).tolist()
    assert all(torch.equal(x, X[i, 0]) for x, i in zip(bare, order))
    # With augmentation: one augment_batch draw per input, from the function's own generator.
    generator = torch.Generator().manual_seed(3)
    order = torch.randperm(6, generator=generator).tolist()
    expected = [augment_batch(X[i:i + 1], generator, max_shift=1, intensity_jitter=0.2,
                              flip_x=True)[0, 0] for i in order]
    drawn = list(training_inputs(X, max_shift=1, intensity_jitter=0.2, flip_x=True, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))
    assert augmentation_settings({"flip_x": True, "lr": 1.0}) == {
        "augment": True, "max_shift": 2, "intensity_jitter": 0.1, "flip_x": True, "seed": 0}


def test_a_templates_summary_is_not_carried_over(tmp_path):
    X, y = toy_data(n=8)
    model, _ = train_model(make_spec(), X, y, epochs=1, batch_size=4, seed=2, progress=False)
    other = summarize_inputs(x[0] for x in X)
    template = dataclasses.replace(make_spec(), input_summary=other)
    plain = load_model_spec(save_trained_model(model, template, tmp_path / "a", name="m"))
    assert plain.input_summary is None
    assert not (tmp_path / "a" / "m_input_mean.npy").exists()
    mine = summarize_training_inputs(X)
    spec = load_model_spec(save_trained_model(model, template, tmp_path / "b", name="m",
                                              input_summary=mine))
    assert spec.input_summary == mine != other


def test_add_input_summary_leaves_the_weights_untouched(tmp_path):
    X, y = toy_data(n=8)
    model, _ = train_model(make_spec(), X, y, epochs=1, batch_size=4, seed=2, progress=False)
    path = save_trained_model(model, make_spec(), tmp_path, name="m", metadata={"note": "kept"})
    weights = (tmp_path / "m.pt").read_bytes()
    summary = summarize_training_inputs(X, seed=2)
    add_input_summary(path, summary, {"inputs": "test"})
    spec = load_model_spec(path)
    assert (tmp_path / "m.pt").read_bytes() == weights
    assert spec.weights_sha256 == weights_sha256(tmp_path / "m.pt")
    assert spec.input_summary == summary
    assert (tmp_path / "m_input_mean.npy").read_bytes() == mean_image_bytes(summary.mean_image)
    training = json.loads(path.read_text())["training"]
    assert training == {"note": "kept", "input_summary": {"inputs": "test"}}


def test_saved_weights_are_byte_identical_for_equal_models(tmp_path):
    X, y = toy_data(n=8)
    model, _ = train_model(make_spec(), X, y, epochs=1, batch_size=4, seed=2, progress=False)
    first = save_trained_model(model, make_spec(), tmp_path / "a", name="m")
    second = save_trained_model(model, make_spec(), tmp_path / "b", name="m")
    assert (first.with_suffix(".pt").read_bytes() == second.with_suffix(".pt").read_bytes())


# ---------------------------------------------------------------------------------------------
# The bundled model


@pytest.mark.parametrize("task", sorted(BUNDLED_MODELS))
def test_bundled_spec_loads_safely_with_its_checksum(task):
    path = bundled_model_spec(task)
    spec = load_model_spec(path)
    assert spec.weights.is_file() and spec.weights.parent == path.parent
    assert spec.weights_sha256 == weights_sha256(spec.weights)
    assert spec.weights.stat().st_size < 1_500_000
    assert spec.outputs == ("control", task) and spec.input.space == TPL
    assert spec.input.resolution_mm == (4.0, 4.0, 4.0)
    # weights_only: the file holds tensors and nothing else.
    state = torch.load(spec.weights, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    load_model(spec)
    # The training inputs' summary ships beside it, and its record states the false flags on
    # the fresh cohort.
    assert spec.input_summary is not None
    assert spec.input_summary_file.parent == path.parent
    assert spec.input_summary_file.stat().st_size < 1_000_000
    record = json.loads(path.read_text())["training"]["input_summary"]
    assert record["fresh_cohort"]["flagged"] == 0


def test_bundled_spec_unknown_task():
    with pytest.raises(ValueError, match="no bundled model"):
        bundled_model_spec("tumour")


def test_bundled_lesion_model_classifies_a_fresh_cohort(tmp_path):
    """A fresh cohort (a seed no training or scoring used), generated at 2 mm as the bundled
    model's training cohorts were; its full figure (60 subjects) is in the spec's metadata."""
    cohort = generate_cohort(tmp_path / "fresh", "lesion", 8, seed=FRESH_SEED, resolution_mm=2.0,
                             progress=False)
    spec = load_model_spec(bundled_model_spec("lesion"))
    X, y, _ = load_cohort_arrays(cohort, spec)
    scores = evaluate(load_model(spec), X, y)
    assert scores["balanced_accuracy"] >= 0.75, scores
    # Held out, the same generator: inside the model's training inputs.
    assert not any(input_distance(x, spec.input_summary).outside for x in X)
