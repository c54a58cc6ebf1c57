"""The benchmark's cohorts and models: seeds, model specs, training or reuse of trained weights."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..synth.train import EASY_COHORT_OPTIONS, TASK_MAX_SHIFT, TASK_OPTIMIZER
from .settings import ARCHITECTURES, TO_TEMPLATE


def cohort_seeds(seed: int) -> tuple[int, int, int]:
    """Seeds of the training, the test and the easy training cohort for a benchmark ``seed``.

    Three different words of ``numpy.random.SeedSequence(seed)``: the test subjects are never
    training subjects, and the same benchmark seed always draws the same cohorts.
    """
    train, test, easy = np.random.SeedSequence(int(seed)).generate_state(3)
    return int(train), int(test), int(easy)


def architecture_spec(architecture: str, task: str, resolution_mm: float):
    """The model spec an architecture is trained under: whole-brain template grid at a resolution.

    Parameters
    ----------
    architecture
        A key of :data:`~nipype_xai.benchmark.ARCHITECTURES`.
    task
        ``"lesion"`` or ``"atrophy"``: the outputs are ``("control", task)``.
    resolution_mm
        Isotropic voxel size of the model grid. The shape is the template's own grid at that
        resolution (the grid the cohort is written on), so going to the model grid is an exact
        copy with no interpolation.

    Returns
    -------
    nipype_xai.models.ModelSpec
        A spec with ``weights`` set to ``<task>_<architecture>.pt`` (relative; not written yet).
    """
    from ..models import InputSpec, ModelSpec
    from ..synth import TEMPLATE_SPACE, load_template_anatomy

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose among "
                         f"{', '.join(ARCHITECTURES)}")
    class_path, kwargs = ARCHITECTURES[architecture]
    shape = load_template_anatomy(float(resolution_mm)).shape
    name = f"{task}_{architecture}"
    kwargs = json.loads(json.dumps(kwargs))  # a private copy, JSON-shaped like a loaded spec
    if kwargs.get("pooling") == "none":  # a position-aware head is built for the grid
        kwargs["input_shape"] = list(shape)
    return ModelSpec(
        architecture=class_path,
        kwargs=kwargs,
        weights=Path(f"{name}.pt"),
        input=InputSpec(space=TEMPLATE_SPACE, resolution_mm=(float(resolution_mm),) * 3,
                        shape=tuple(shape), normalization="zscore", mask="nonzero"),
        outputs=("control", task),
        task="classification",
        name=name,
    )


def seeded_spec(spec, training_seed: int):
    """``spec`` named for one training seed: ``<task>_<architecture>_seed-<t>`` (and its weights
    file), so that the models of several seeds live side by side in ``models/``."""
    name = f"{spec.name}_seed-{int(training_seed)}"
    return dataclasses.replace(spec, name=name, weights=Path(f"{name}.pt"))


def check_runs(spec, name: str) -> None:
    """Fail before any cohort is generated when the architecture cannot take the grid."""
    from ..synth.train import build_model

    model = build_model(spec).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, spec.input.channels, *spec.input.shape))
    except RuntimeError as error:
        raise ValueError(
            f"architecture {name!r} cannot run on the {spec.input.resolution_mm[0]:g} mm grid "
            f"{tuple(spec.input.shape)} ({str(error).splitlines()[0]}); use a finer "
            "--model-resolution"
        ) from error


def cohort(root: Path, task: str, n_subjects: int, seed: int, resolution_mm: float,
           progress: bool, easy: bool = False) -> Path:
    """Generate a cohort, or reuse a complete one (same seed and size: the same bytes).

    ``easy``: with :data:`~nipype_xai.synth.train.EASY_COHORT_OPTIONS` (a stronger signal).
    """
    from ..synth import generate_cohort

    if (root / "participants.tsv").is_file():
        return root
    options = EASY_COHORT_OPTIONS[task] if easy else {}
    return generate_cohort(root, task, n_subjects, seed=seed, resolution_mm=resolution_mm,
                           overwrite=True, progress=progress, **options)


@dataclasses.dataclass
class BenchmarkModel:
    """A trained (or loaded) model and how it came about."""

    name: str
    spec: Any
    model: nn.Module
    record: dict[str, Any]


def task_settings(settings: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The training settings of one task: ``None`` for ``max_shift``, ``lr`` or ``weight_decay``
    becomes the task's default (:data:`~nipype_xai.synth.train.TASK_MAX_SHIFT`,
    :data:`~nipype_xai.synth.train.TASK_OPTIMIZER`)."""
    resolved = dict(settings)
    if resolved.get("max_shift") is None:
        resolved["max_shift"] = TASK_MAX_SHIFT[task]
    for key, value in TASK_OPTIMIZER[task].items():
        if resolved.get(key) is None:
            resolved[key] = value
    return resolved


def train_or_load(name: str, spec, train_roots: Sequence[Path], task: str, out_dir: Path,
                  settings: Mapping[str, Any], arrays: dict, device: str,
                  progress: bool) -> BenchmarkModel:
    """Train ``spec`` on the training cohorts (pooled), or reuse weights trained the same way.

    The spec JSON written beside the weights records how they were trained; the same record asked
    again reloads them. ``arrays`` keeps one pooled training set in memory across architectures.
    """
    from ..models import load_model, load_model_spec
    from ..synth.train import save_trained_model, train_model

    spec_path = out_dir / f"{spec.name}.json"
    wanted = {"train_cohorts": [root.name for root in train_roots],
              "to_template": TO_TEMPLATE[task],
              "settings": dict(settings), "architecture": spec.architecture,
              "kwargs": dict(spec.kwargs)}
    if spec_path.is_file():
        stored = json.loads(spec_path.read_text()).get("training", {})
        if all(stored.get(k) == json.loads(json.dumps(v)) for k, v in wanted.items()):
            loaded = load_model_spec(spec_path)
            return BenchmarkModel(name, loaded, load_model(loaded, device=device),
                                  {**stored, "reused": True})
    X, y = training_arrays(spec, train_roots, task, arrays, progress)
    model, history = train_model(spec, X, y, device=device, progress=progress, **settings)
    record = {**wanted, "final_loss": history["loss"][-1] if history["loss"] else None,
              "train_seconds": round(history["seconds"], 1),
              "n_parameters": history["n_parameters"], "n_train": len(y),
              # what the weights depend on beyond the record above (train_model's Notes)
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": str(device)}
    saved = save_trained_model(model, spec, out_dir, name=spec.name, metadata=record)
    return BenchmarkModel(name, load_model_spec(saved), model, {**record, "reused": False})


def training_arrays(spec, train_roots: Sequence[Path], task: str, arrays: dict,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled training inputs of ``spec`` on its grid, ``(X, y)``, loaded once and kept in
    ``arrays`` (one training set in memory at a time) for every model trained on them."""
    from ..synth.train import load_cohort_arrays

    key = (spec.input, TO_TEMPLATE[task], tuple(str(root) for root in train_roots))
    if key not in arrays:
        arrays.clear()
        parts = [load_cohort_arrays(root, spec, to_template=TO_TEMPLATE[task],
                                    progress=progress)[:2] for root in train_roots]
        arrays[key] = (torch.cat([X for X, _ in parts]), torch.cat([y for _, y in parts]))
    return arrays[key]
