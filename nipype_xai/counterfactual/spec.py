"""The simulator spec: a JSON file beside the simulator's weights that names the classifier it was
trained for.

.. code-block:: json

    {"format": "nipype-xai-simulator",
     "name": "atrophy_simulator",
     "weights": "atrophy_simulator.pt",
     "weights_sha256": "…",
     "simulator": {"n_classes": 2, "in_channels": 1, "features": [8, 16, 16, 32, 32, 8],
                   "max_velocity_voxels": 3.0, "smoothing_voxels": 1.0, "downsample": 2},
     "n_squarings": 7,
     "classifier": {"name": "atrophy_tinycnn-flat_seed-0", "weights_sha256": "…",
                    "outputs": ["control", "atrophy"],
                    "input": {"space": "MNI152NLin2009aSym", "resolution_mm": [4, 4, 4],
                              "shape": [50, 59, 48]}},
     "training": {"settings": {…}, "seconds": …, "final_losses": {…}, …}}

A simulator explains one classifier: it learnt to move *that* model's answer. The spec records the
SHA-256 of the classifier's weights, and :func:`check_classifier` refuses any other (a retrained
model with the same name included).

The trust boundary is that of model specs (:mod:`nipype_xai.models.spec`): the architecture is
always :class:`~nipype_xai.counterfactual.simulator.Simulator` (a spec names no code, only its
numeric arguments, checked); ``weights`` must resolve inside the spec's folder (``..`` and
symbolic links count; ``~`` and absolute paths are refused), ``weights_sha256`` is required and
checked before the file is read, and the file is read with ``torch.load(weights_only=True)``
only. Every error is one line naming the spec file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..atomic import atomic_write
from ..models.spec import ModelSpec, ModelSpecError, weights_sha256
from ..models.spec_json import _weights_path, check_regular_file
from ..models.weights import write_weights
from .simulator import Simulator
from .training import SimulatorSettings

PathLike = Union[str, os.PathLike]

__all__ = [
    "SIMULATOR_FORMAT",
    "SimulatorSpec",
    "SimulatorSpecError",
    "check_classifier",
    "load_simulator",
    "load_simulator_spec",
    "save_simulator",
    "simulator_record",
]

#: The ``format`` value of a simulator spec.
SIMULATOR_FORMAT = "nipype-xai-simulator"

_SIMULATOR_KEYS = ("n_classes", "in_channels", "features", "max_velocity_voxels",
                   "smoothing_voxels", "downsample")


class SimulatorSpecError(ModelSpecError):
    """A simulator spec, or its weights, cannot be used. The message names the spec."""


@dataclass(frozen=True)
class SimulatorSpec:
    """A parsed simulator spec (see the module notes).

    Attributes
    ----------
    name
        Short name of the simulator.
    weights
        Absolute path of its state-dict file (inside the spec's folder).
    weights_sha256
        SHA-256 of that file.
    simulator_kwargs
        :class:`~nipype_xai.counterfactual.simulator.Simulator` keyword arguments.
    n_squarings
        Scaling-and-squaring steps it was trained with.
    classifier_name, classifier_weights_sha256, classifier_outputs
        The classifier it explains.
    classifier_input
        ``space``, ``resolution_mm`` and ``shape`` of the classifier's grid.
    training
        The training record, as written.
    path
        The JSON file.
    """

    name: str
    weights: Path
    weights_sha256: str
    simulator_kwargs: Mapping[str, Any]
    n_squarings: int
    classifier_name: str
    classifier_weights_sha256: str
    classifier_outputs: tuple[str, ...]
    classifier_input: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    path: Optional[Path] = field(default=None, compare=False)

    @property
    def source(self) -> str:
        """How error messages name the spec."""
        return self.path.name if self.path is not None else f"simulator spec {self.name!r}"


def _classifier_input(spec: ModelSpec) -> dict[str, Any]:
    return {"space": spec.input.space, "resolution_mm": list(spec.input.resolution_mm),
            "shape": list(spec.input.shape)}


def save_simulator(simulator: Simulator, settings: SimulatorSettings, classifier: ModelSpec,
                   out_dir: PathLike, *, name: str,
                   training: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``<name>.pt`` (the state dict) and ``<name>.json`` (the spec) into ``out_dir``.

    Parameters
    ----------
    simulator
        The trained simulator.
    settings
        The settings it was trained with (recorded; its architecture's arguments come from the
        simulator itself).
    classifier
        The classifier's spec; the SHA-256 of its weights file is recorded.
    out_dir, name
        Where, and the base name of both files.
    training
        Extra training record (cohort, time, losses), written under ``"training"``.

    Returns
    -------
    pathlib.Path
        The spec JSON, written atomically after the weights.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"simulator name {name!r}: use letters, digits, '.', '_' and '-'")
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = write_weights(simulator, out_dir / f"{name}.pt")
    content = {
        "format": SIMULATOR_FORMAT,
        "name": name,
        "weights": weights.name,
        "weights_sha256": weights_sha256(weights),
        "simulator": {"n_classes": simulator.n_classes, "in_channels": simulator.in_channels,
                      **settings.simulator_kwargs()},
        "n_squarings": settings.n_squarings,
        "classifier": {"name": classifier.name,
                       "weights_sha256": weights_sha256(classifier.weights),
                       "outputs": list(classifier.outputs),
                       "input": _classifier_input(classifier)},
        "training": {"settings": settings.to_dict(), **dict(training or {})},
    }
    text = json.dumps(content, indent=2) + "\n"
    return atomic_write(out_dir / f"{name}.json",
                        lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_simulator_spec(path: PathLike) -> SimulatorSpec:
    """Read and check a simulator spec JSON file (no weights are read).

    Raises
    ------
    SimulatorSpecError
        Missing or unreadable file, not JSON, not a simulator spec, a missing key, a value of
        the wrong type, or ``weights`` outside the spec's folder.
    """
    path = Path(path).absolute()
    source = path.name

    def fail(problem: str) -> SimulatorSpecError:
        return SimulatorSpecError(f"{source}: {problem}")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(f"simulator spec not found ({path})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"cannot read the simulator spec ({error})") from None
    except json.JSONDecodeError as error:
        raise fail(f"not valid JSON (line {error.lineno}, column {error.colno}: "
                   f"{error.msg})") from None
    if not isinstance(data, dict) or data.get("format") != SIMULATOR_FORMAT:
        raise fail(f"not a simulator spec (expected \"format\": \"{SIMULATOR_FORMAT}\"; "
                   f"'nipype-xai train-simulator' writes one)")
    missing = [k for k in ("name", "weights", "weights_sha256", "simulator", "n_squarings",
                           "classifier") if k not in data]
    if missing:
        raise fail(f"missing required key(s) {missing}")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise fail(f"'name' must be a non-empty string, got {name!r}")
    weights = data["weights"]
    if not isinstance(weights, str) or not weights:
        raise fail(f"'weights' must be a file path, got {weights!r}")
    weights_path = _weights_path(weights, path.parent, False, fail)
    sha = _digest(data["weights_sha256"], "weights_sha256", fail)
    kwargs = data["simulator"]
    if not isinstance(kwargs, dict) or sorted(kwargs) != sorted(_SIMULATOR_KEYS):
        raise fail(f"'simulator' must be an object with exactly the keys "
                   f"{sorted(_SIMULATOR_KEYS)}")
    for key in ("n_classes", "in_channels"):
        if not isinstance(kwargs[key], int) or isinstance(kwargs[key], bool) or kwargs[key] < 1:
            raise fail(f"'simulator.{key}' must be a positive integer, got {kwargs[key]!r}")
    try:
        # The settings' own checks cover the architecture's arguments.
        SimulatorSettings(features=tuple(kwargs["features"]) if isinstance(
            kwargs["features"], list) else kwargs["features"],
            max_velocity_voxels=kwargs["max_velocity_voxels"],
            smoothing_voxels=kwargs["smoothing_voxels"], downsample=kwargs["downsample"],
            n_squarings=data["n_squarings"])
    except (TypeError, ValueError) as error:
        raise fail(str(error)) from None
    classifier = data["classifier"]
    if not isinstance(classifier, dict) or not {"name", "weights_sha256", "outputs",
                                                "input"} <= set(classifier):
        raise fail("'classifier' must be an object with 'name', 'weights_sha256', 'outputs' and "
                   "'input'")
    outputs = classifier["outputs"]
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise fail(f"'classifier.outputs' must be a list of names, got {outputs!r}")
    training = data.get("training", {})
    return SimulatorSpec(
        name=name, weights=weights_path, weights_sha256=sha,
        simulator_kwargs=dict(kwargs), n_squarings=int(data["n_squarings"]),
        classifier_name=str(classifier["name"]),
        classifier_weights_sha256=_digest(classifier["weights_sha256"],
                                          "classifier.weights_sha256", fail),
        classifier_outputs=tuple(outputs), classifier_input=dict(classifier["input"]),
        training=training if isinstance(training, dict) else {}, path=path)


def _digest(value: Any, key: str, fail) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise fail(f"'{key}' must be 64 hexadecimal digits, got {value!r}")
    return value.lower()


def check_classifier(spec: SimulatorSpec, classifier: ModelSpec) -> None:
    """Refuse a classifier other than the one the simulator was trained for.

    Raises
    ------
    SimulatorSpecError
        The classifier's weights file has another SHA-256 than the one recorded, or its
        outputs or input grid differ.
    """
    digest = weights_sha256(classifier.weights)
    if digest != spec.classifier_weights_sha256:
        raise SimulatorSpecError(
            f"{spec.source}: trained for classifier {spec.classifier_name!r} with weights "
            f"sha256 {spec.classifier_weights_sha256}, but {classifier.source}'s weights "
            f"{classifier.weights.name} differ; a simulator explains only the model it was "
            f"trained against: train one for this model with 'nipype-xai train-simulator'")
    if tuple(classifier.outputs) != spec.classifier_outputs:
        raise SimulatorSpecError(
            f"{spec.source}: classifier outputs {list(spec.classifier_outputs)} recorded, "
            f"{classifier.source} lists {list(classifier.outputs)}")
    if _classifier_input(classifier) != {k: spec.classifier_input.get(k) for k in
                                         ("space", "resolution_mm", "shape")}:
        raise SimulatorSpecError(
            f"{spec.source}: trained on the grid {dict(spec.classifier_input)}, but "
            f"{classifier.source} expects {_classifier_input(classifier)}")


def load_simulator(spec: Union[SimulatorSpec, PathLike],
                   classifier: Optional[ModelSpec] = None,
                   device: Union[str, torch.device] = "cpu") -> Simulator:
    """Build the simulator and read its weights (checked, ``weights_only=True``).

    Parameters
    ----------
    spec
        A :class:`SimulatorSpec` or the JSON path.
    classifier
        The classifier's spec: when given, :func:`check_classifier` is applied first.
    device
        Where the simulator goes.

    Returns
    -------
    Simulator
        In eval mode.
    """
    if not isinstance(spec, SimulatorSpec):
        spec = load_simulator_spec(spec)
    if classifier is not None:
        check_classifier(spec, classifier)

    def fail(problem: str) -> SimulatorSpecError:
        return SimulatorSpecError(f"{spec.source}: {problem}")

    check_regular_file(spec.weights, "weights", fail)
    if weights_sha256(spec.weights) != spec.weights_sha256:
        raise fail(f"weights file {spec.weights.name} does not match weights_sha256 in the spec "
                   f"(expected {spec.weights_sha256}); the weights were changed, or the spec "
                   f"names the wrong file")
    kwargs = dict(spec.simulator_kwargs)
    kwargs["features"] = tuple(kwargs["features"])
    simulator = Simulator(**kwargs)
    try:
        state = torch.load(spec.weights, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - garbage makes the unpickler raise anything
        raise fail(f"cannot read weights file {spec.weights.name} with "
                   f"torch.load(weights_only=True): {type(error).__name__}") from None
    if not isinstance(state, dict):
        raise fail(f"weights file {spec.weights.name} does not hold a state dict")
    try:
        simulator.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        raise fail(f"weights file {spec.weights.name} does not fit the simulator: "
                   f"{first}") from None
    return simulator.to(device).eval()


def simulator_record(spec: SimulatorSpec) -> dict[str, Any]:
    """What a derivative's sidecar says about the simulator and its classifier."""
    return {"Name": spec.name, "WeightsSHA256": spec.weights_sha256,
            "ClassifierName": spec.classifier_name,
            "ClassifierWeightsSHA256": spec.classifier_weights_sha256}
