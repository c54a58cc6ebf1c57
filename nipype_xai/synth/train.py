"""Train a model spec's architecture on a synthetic cohort, with a fixed seed (SPEC §4, §8).

The bundled reference model (``nipype_xai/data/models``) is made with these functions and
``scripts/train_bundled_model.py``; the benchmark uses them to train on its own cohorts.

Data flow: :func:`load_cohort_arrays` is the one loader (BIDS files -> tensors on the spec's model
grid); :func:`train_model` and :func:`evaluate` are pure (tensors in, model and numbers out);
:func:`save_trained_model` writes the weights and the spec JSON, with the summary of the training
inputs (:func:`summarize_training_inputs`) that the pipeline's input-domain check compares each
subject with; :func:`train_on_cohort` chains them.

Loading a cohort onto the model grid, balanced batches and augmentation are in
:mod:`nipype_xai.synth.training_data` (re-exported here).

Why one module of ~560 lines: the training loop, the summary of the inputs it fed the model and the
saved spec share :func:`train_model`'s settings (:func:`augmentation_settings` reads its signature,
so the summary can never describe other inputs than those trained on); apart, they would have to
restate those defaults.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..models.build import build_architecture
from ..models.domain import MIN_INPUTS, InputSummary, summarize_inputs
from ..models.spec import (
    ModelSpec,
    check_output_count,
    load_model_spec,
    weights_sha256,
    write_mean_image,
)
from ..models.weights import write_weights
from .training_data import (
    TASK_TO_TEMPLATE,
    TO_TEMPLATE,
    augment_batch,
    balanced_batches,
    cohort_to_template,
    load_cohort_arrays,
    read_participants,
)

__all__ = [
    "EASY_COHORT_OPTIONS",
    "TASK_MAX_SHIFT",
    "TASK_OPTIMIZER",
    "TASK_TO_TEMPLATE",
    "TO_TEMPLATE",
    "add_input_summary",
    "augment_batch",
    "augmentation_settings",
    "balanced_batches",
    "build_model",
    "cohort_to_template",
    "evaluate",
    "load_cohort_arrays",
    "read_participants",
    "save_trained_model",
    "summarize_training_inputs",
    "train_model",
    "train_on_cohort",
    "training_inputs",
]

PathLike = Union[str, os.PathLike]

#: Default augmentation shift (voxels of the model grid) per task. Lesions may be anywhere, so
#: shifting the image is a free augmentation; the atrophy signal is a millimetre-scale change of
#: shape at one fixed place of an affinely registered image, and a model that knows *where* to
#: look (a position-aware head) would only be taught to ignore the place by shifts of 8 mm.
TASK_MAX_SHIFT: dict[str, int] = {"lesion": 2, "atrophy": 0}

#: Default optimiser settings per task (AdamW). The lesion models train at lr 3e-3 with weight
#: decay 1e-4 (the bundled model's recipe); the atrophy task's position-aware model needed a
#: smaller step and more decay (lr 1e-3, weight decay 1e-2: balanced accuracy 0.95 on a fresh
#: cohort; see docs/benchmark.md).
TASK_OPTIMIZER: dict[str, dict[str, float]] = {
    "lesion": {"lr": 3e-3, "weight_decay": 1e-4},
    "atrophy": {"lr": 1e-3, "weight_decay": 1e-2},
}

#: :func:`~nipype_xai.synth.generate_cohort` options of the auxiliary "easy" training cohort of
#: the curriculum: the same task with a stronger signal (larger, higher-contrast lesions; more
#: volume loss). Trained on the default cohort alone, the small models of the benchmark do not get
#: off the ground in a CPU budget: the default lesions are a few voxels of a 4 mm grid among
#: ~150k others, and the loss stays at chance for tens of epochs. Mixed with easier examples they
#: learn lesion detectors within an epoch or two, which then carry over to the default lesions.
#: Scores are always measured on cohorts with the synth module's *default* settings.
EASY_COHORT_OPTIONS: dict[str, dict[str, Any]] = {
    "lesion": {"lesion_options": {"radius_mm": [8.0, 14.0], "contrast": [0.6, 0.9]}},
    "atrophy": {"atrophy_fraction": [0.35, 0.45]},
}



# --------------------------------------------------------------------------------------------
# Training (pure: tensors in, model out)


#: A freshly initialised instance of a spec's architecture (no weights read).
build_model = build_architecture


def _loss_and_predictions(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    if logits.shape[1] == 1:
        # A single-logit binary classifier scores outputs[1] (see ModelSpec.outputs).
        logit = logits[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logit, y.to(logit.dtype))
        return loss, (logit > 0).long()
    return nn.functional.cross_entropy(logits, y), logits.argmax(dim=1)


def _stratified_split(y: torch.Tensor, fraction: float, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    train, val = [], []
    for c in torch.unique(y):
        indices = torch.nonzero(y == c).flatten()
        indices = indices[torch.randperm(len(indices), generator=generator)]
        n_val = int(round(fraction * len(indices)))
        val.append(indices[:n_val])
        train.append(indices[n_val:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def train_model(
    spec: ModelSpec,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 8,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment: bool = True,
    max_shift: int = 2,
    intensity_jitter: float = 0.1,
    flip_x: bool = False,
    val_fraction: float = 0.0,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    trust_code: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the spec's architecture from scratch on ``(X, y)`` with a fixed seed.

    AdamW with a cosine learning-rate decay over the epochs, cross-entropy (binary cross-entropy
    for a single-logit binary classifier), class-balanced batches (:func:`balanced_batches`) and,
    with ``augment``, :func:`augment_batch`.

    Parameters
    ----------
    spec
        The model spec: architecture, kwargs and outputs (its weights are not read).
    X, y
        Inputs ``(N, C, X, Y, Z)`` on the model grid and class indices ``(N,)``, as from
        :func:`load_cohort_arrays`.
    epochs, batch_size, lr, weight_decay
        Optimisation settings.
    seed
        Seeds the initial weights, the validation split, the batch order and the augmentation.
    augment, max_shift, intensity_jitter, flip_x
        Augmentation; see :func:`augment_batch`. ``flip_x`` only for tasks that are not
        lateralised.
    val_fraction
        Share of each class held out for validation (0: none); its loss and balanced accuracy are
        recorded each epoch (the model returned is the last epoch's either way).
    device
        Where to train.
    progress
        Show a tqdm progress bar over the epochs.
    trust_code
        Build an architecture from outside the packages nipype-xai imports by default (see
        :func:`build_model`).

    Returns
    -------
    model : torch.nn.Module
        The trained model, in eval mode, on ``device``.
    history : dict
        ``loss`` and ``train_accuracy`` per epoch (over the augmented batches); ``val_loss`` and
        ``val_balanced_accuracy`` per epoch when ``val_fraction > 0``; ``val_indices``;
        ``seconds``; ``n_parameters``.

    Notes
    -----
    Reproducibility: the same seed, data, settings, PyTorch build, thread count and CPU
    instruction set (:func:`torch.backends.cpu.get_cpu_capability`) give bit-identical weights
    on the CPU. Another machine can give other weights: the benchmark's lesion model, retrained
    with all of the rest equal on another VM (AVX-512; the first VM's instruction set was not
    recorded), ended at a training loss of 0.164 instead of 0.156 (twice on that VM: the same
    SHA-256). The global RNG state is saved and restored around the call,
    and deterministic algorithms are switched on for its duration (on a GPU some operations have
    no deterministic kernel; they warn instead of failing, and the weights may then differ
    slightly between runs).
    """
    from tqdm.auto import tqdm

    if spec.task != "classification":
        raise ValueError(f"{spec.source}: train_model trains classifiers; the spec's task is "
                         f"{spec.task!r}")
    if X.ndim != 5 or len(X) != len(y):
        raise ValueError(f"expected X of shape (N, C, X, Y, Z) and y of shape (N,), got "
                         f"{tuple(X.shape)} and {tuple(y.shape)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y = y.to(torch.int64)
    if len(torch.unique(y)) < 2:
        raise ValueError("the training set holds a single class; a classifier needs two")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(int(seed))
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        try:
            model = build_model(spec, trust_code=trust_code).to(device)
            train_idx, val_idx = (_stratified_split(y, val_fraction, generator) if val_fraction
                                  else (torch.arange(len(y)), torch.arange(0)))
            history = _fit(model, spec, X, y, train_idx, val_idx, epochs=epochs,
                           batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                           generator=generator, augment=augment, max_shift=max_shift,
                           intensity_jitter=intensity_jitter, flip_x=flip_x, device=device,
                           bar=tqdm(range(epochs), desc="train", unit="epoch",
                                    disable=not progress))
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    history["val_indices"] = val_idx.tolist()
    history["seconds"] = time.perf_counter() - started
    history["n_parameters"] = sum(p.numel() for p in model.parameters())
    return model.eval(), history


def _fit(model: nn.Module, spec: ModelSpec, X: torch.Tensor, y: torch.Tensor,
         train_idx: torch.Tensor, val_idx: torch.Tensor, *, epochs: int, batch_size: int,
         lr: float, weight_decay: float, generator: torch.Generator, augment: bool,
         max_shift: int, intensity_jitter: float, flip_x: bool, device: torch.device,
         bar) -> dict[str, Any]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    history: dict[str, Any] = {"loss": [], "train_accuracy": []}
    if len(val_idx):
        history.update(val_loss=[], val_balanced_accuracy=[])
    checked = False
    for _ in bar:
        model.train()
        total, correct, seen = 0.0, 0, 0
        for batch in balanced_batches(y[train_idx], batch_size, generator):
            rows = train_idx[batch]
            xb = X[rows]
            if augment:
                xb = augment_batch(xb, generator, max_shift=max_shift,
                                   intensity_jitter=intensity_jitter, flip_x=flip_x)
            yb = y[rows].to(device)
            logits = model(xb.to(device))
            if not checked:
                check_output_count(spec, logits.reshape(len(logits), -1).shape[1])
                checked = True
            loss, predicted = _loss_and_predictions(logits.reshape(len(logits), -1), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
            correct += int((predicted == yb).sum())
            seen += len(rows)
        scheduler.step()
        history["loss"].append(total / seen)
        history["train_accuracy"].append(correct / seen)
        postfix = {"loss": f"{total / seen:.3f}"}
        if len(val_idx):
            scores = evaluate(model, X[val_idx], y[val_idx], device=device)
            history["val_loss"].append(scores["loss"])
            history["val_balanced_accuracy"].append(scores["balanced_accuracy"])
            postfix["val_bacc"] = f"{scores['balanced_accuracy']:.3f}"
        bar.set_postfix(postfix)
    return history


@torch.no_grad()
def evaluate(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 8,
    device: Optional[Union[str, torch.device]] = None,
) -> dict[str, Any]:
    """Classification scores of ``model`` (put in eval mode) on ``(X, y)``.

    Returns
    -------
    dict
        ``balanced_accuracy`` (mean recall over the classes present in ``y``), ``accuracy``,
        ``confusion`` (list of rows: true class; columns: predicted class), ``loss`` (mean
        cross-entropy), ``predictions`` (class index per sample) and ``n``.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    y = y.to(torch.int64)
    losses, predictions = [], []
    for start in range(0, len(y), batch_size):
        logits = model(X[start:start + batch_size].to(device))
        logits = logits.reshape(len(logits), -1)
        loss, predicted = _loss_and_predictions(logits, y[start:start + batch_size].to(device))
        losses.append(float(loss) * len(predicted))
        predictions.append(predicted.cpu())
    predicted = torch.cat(predictions)
    n_classes = max(2 if logits.shape[1] == 1 else logits.shape[1], int(y.max()) + 1)
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(confusion, (y.numpy(), predicted.numpy()), 1)
    present = confusion.sum(axis=1) > 0
    recalls = np.diag(confusion)[present] / confusion.sum(axis=1)[present]
    return {
        "balanced_accuracy": float(recalls.mean()),
        "accuracy": float(np.trace(confusion) / len(y)),
        "confusion": confusion.tolist(),
        "loss": sum(losses) / len(y),
        "predictions": predicted.tolist(),
        "n": int(len(y)),
    }


# --------------------------------------------------------------------------------------------
# The training inputs, as the model saw them (for the input-domain check)

#: The :func:`train_model` settings that decide what a training input looks like to the model.
AUGMENTATION_SETTINGS = ("augment", "max_shift", "intensity_jitter", "flip_x", "seed")

#: How the summary's inputs were drawn, as the ``"training"`` record states it.
INPUT_SUMMARY_NOTE = ("every training input on the model grid once, in a random order (the "
                      "training seed), through one draw of the training augmentation")


def training_inputs(
    X: torch.Tensor,
    *,
    augment: bool = True,
    max_shift: int = 2,
    intensity_jitter: float = 0.1,
    flip_x: bool = False,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Each training input once, as the model saw it in training, one at a time.

    With ``augment``, each passes once through :func:`augment_batch` with the training's settings:
    the model learnt from augmented inputs, so the shifts and intensity changes it was taught to
    ignore belong to its domain, and a summary of the bare cohort would call a subject registered
    a voxel off "outside". The order is a random permutation (``seed``), so that
    :func:`~nipype_xai.models.domain.summarize_inputs`' prequential figures do not depend on how
    the cohorts were concatenated. The generator is this function's own: training is unaffected.

    Parameters
    ----------
    X
        ``(N, C, X, Y, Z)`` on the model grid, as from :func:`load_cohort_arrays`.
    augment, max_shift, intensity_jitter, flip_x, seed
        As given to :func:`train_model`.

    Yields
    ------
    torch.Tensor
        ``(X, Y, Z)``: the first channel (every channel holds the same volume).
    """
    generator = torch.Generator().manual_seed(int(seed))
    for index in torch.randperm(len(X), generator=generator).tolist():
        x = X[index:index + 1]
        if augment:
            x = augment_batch(x, generator, max_shift=max_shift,
                              intensity_jitter=intensity_jitter, flip_x=flip_x)
        yield x[0, 0]


def augmentation_settings(train_options: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`AUGMENTATION_SETTINGS` a :func:`train_model` call with ``train_options`` used
    (its defaults where not given)."""
    parameters = inspect.signature(train_model).parameters
    return {name: train_options.get(name, parameters[name].default)
            for name in AUGMENTATION_SETTINGS}


def summarize_training_inputs(X: torch.Tensor, **train_options: Any) -> InputSummary:
    """The summary of ``X`` as :func:`train_model` with ``train_options`` fed it to the model.

    :func:`~nipype_xai.models.domain.summarize_inputs` over :func:`training_inputs` (one pass,
    one augmented draw per input); options other than the augmentation's are ignored.
    """
    return summarize_inputs(training_inputs(X, **augmentation_settings(train_options)))


# --------------------------------------------------------------------------------------------
# Writing the trained model


def _as_spec(spec: Union[ModelSpec, PathLike]) -> ModelSpec:
    # A template's weights are never read (they are replaced), so where they point is no concern.
    return spec if isinstance(spec, ModelSpec) else load_model_spec(spec, external_weights=True)


def save_trained_model(
    model: nn.Module,
    spec_template: Union[ModelSpec, PathLike],
    out_dir: PathLike,
    *,
    name: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    input_summary: Optional[InputSummary] = None,
) -> Path:
    """Write ``model``'s weights and a spec JSON that points at them, with their SHA-256.

    Parameters
    ----------
    model
        The trained model.
    spec_template
        The spec it was trained from (a :class:`ModelSpec` or a JSON path; its ``weights`` are
        replaced).
    out_dir
        Folder for ``<name>.pt`` and ``<name>.json`` (created if needed).
    name
        Base name of both files and the spec's ``name`` (default: the template's name).
    metadata
        Written under the JSON's ``"training"`` key (how the model was made and how it scored).
        :func:`~nipype_xai.models.load_model_spec` ignores keys it does not know, and
        :func:`~nipype_xai.models.save_model_spec` does not write them back.
    input_summary
        The summary of the training inputs (:func:`summarize_training_inputs`): written under
        ``"input_summary"``, its mean image as ``<name>_input_mean.npy`` beside the spec. None: the
        spec has none (a template's own summary is never carried over: it describes another
        model's training inputs).

    Returns
    -------
    pathlib.Path
        The spec JSON written.
    """
    spec = _as_spec(spec_template)
    name = name or spec.name
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = write_weights(model, out_dir / f"{name}.pt")
    # A template's patterns were fitted for other weights: never carried over.
    trained = dataclasses.replace(spec, weights=weights, name=name,
                                  weights_sha256=weights_sha256(weights), path=None,
                                  input_summary=input_summary, input_summary_file=None,
                                  patterns=None, patterns_file=None)
    trained = write_mean_image(trained, out_dir)
    content = trained.to_dict(relative_to=out_dir)
    if metadata:
        content["training"] = dict(metadata)
    text = json.dumps(content, indent=2) + "\n"
    return atomic_write(out_dir / f"{name}.json", lambda tmp: tmp.write_text(text,
                                                                              encoding="utf-8"))


def add_input_summary(
    spec_path: PathLike,
    input_summary: InputSummary,
    record: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Give an existing spec JSON (from :func:`save_trained_model`) a new training-input summary.

    The weights file is not touched (its path and SHA-256 stay as they are); every other key,
    ``"training"`` included, is kept, the summary replaces any earlier one, its mean image is
    written beside the spec, and ``record`` (how the summary was made) goes under
    ``"training"."input_summary"``.

    Returns
    -------
    pathlib.Path
        The spec JSON, rewritten atomically.
    """
    spec_path = Path(spec_path).absolute()
    spec = load_model_spec(spec_path)  # inside the trust boundary: the weights in its folder
    data = json.loads(spec_path.read_text(encoding="utf-8"))
    updated = write_mean_image(dataclasses.replace(spec, input_summary=input_summary,
                                                    input_summary_file=None), spec_path.parent)
    content = updated.to_dict(relative_to=spec_path.parent)
    # Keys the spec format does not know (the "training" record) are kept as they were.
    content.update({key: value for key, value in data.items() if key not in content
                    and key != "input_summary"})
    if record is not None:
        content.setdefault("training", {})["input_summary"] = dict(record)
    text = json.dumps(content, indent=2) + "\n"
    return atomic_write(spec_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def train_on_cohort(
    bids_dir: PathLike,
    spec_template: Union[ModelSpec, PathLike],
    out_dir: PathLike,
    *,
    name: Optional[str] = None,
    to_template: str = "groundtruth",
    metadata: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    trust_code: bool = False,
    **train_options: Any,
) -> Path:
    """Load a cohort, train the spec's architecture on it and write the trained model.

    The spec written carries the summary of the training inputs
    (:func:`summarize_training_inputs`), for the input-domain check; a cohort of fewer than
    :data:`~nipype_xai.models.domain.MIN_INPUTS` subjects is too small to summarise, and its
    ``"training"`` record says so.

    Parameters
    ----------
    bids_dir
        Root of a cohort from :func:`~nipype_xai.synth.generate_cohort`.
    spec_template
        The spec to train (architecture, kwargs, input grid, outputs); its weights are ignored.
    out_dir, name, metadata
        See :func:`save_trained_model`. The cohort, the settings and the training history are
        added to ``metadata``.
    to_template
        See :func:`load_cohort_arrays`.
    progress
        Progress bars while loading and training.
    trust_code
        Build an architecture from outside the packages nipype-xai imports by default (see
        :func:`build_model`).
    **train_options
        Passed to :func:`train_model` (``epochs``, ``batch_size``, ``lr``, ``seed``, ...).

    Returns
    -------
    pathlib.Path
        The spec JSON written; :func:`~nipype_xai.models.load_model` loads the trained model from
        it.
    """
    spec = _as_spec(spec_template)
    X, y, subjects = load_cohort_arrays(bids_dir, spec, to_template=to_template,
                                        progress=progress)
    model, history = train_model(spec, X, y, progress=progress, trust_code=trust_code,
                                 **train_options)
    summary = summarize_training_inputs(X, **train_options) if len(X) >= MIN_INPUTS else None
    summary_record: dict[str, Any] = (
        {"inputs": INPUT_SUMMARY_NOTE, "augmentation": augmentation_settings(train_options)}
        if summary is not None else
        {"not_written": f"{len(X)} training inputs; a summary needs at least {MIN_INPUTS}"})
    record = {
        "cohort": {"path": str(Path(bids_dir)), "n_subjects": len(subjects)},
        "to_template": to_template,
        "settings": {key: value for key, value in train_options.items()
                     if isinstance(value, (int, float, str, bool))},
        "final_loss": history["loss"][-1] if history["loss"] else None,
        "input_summary": summary_record,
        **(dict(metadata) if metadata else {}),
    }
    return save_trained_model(model, spec, out_dir, name=name, metadata=record,
                              input_summary=summary)
