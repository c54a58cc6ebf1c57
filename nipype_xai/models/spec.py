"""Model specs: the JSON file that tells the pipeline how to build, load and feed a model (SPEC §4).

.. code-block:: json

    {"architecture": "nipype_xai.models.architectures:TinyCNN3D",
     "kwargs": {"n_outputs": 2},
     "weights": "tiny.pt",
     "input": {"space": "MNI152NLin2009aSym", "resolution_mm": 2, "shape": [96, 112, 96],
               "normalization": "zscore", "mask": "nonzero"},
     "outputs": ["control", "lesion"],
     "task": "classification"}

Weights are read with ``torch.load(..., weights_only=True)`` only: a weights file that holds pickled
code or objects is refused, never unpickled (a model file from the internet must not be able to run
code on a cluster node).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..atomic import atomic_write

PathLike = Union[str, os.PathLike]

__all__ = [
    "InputSpec",
    "ModelSpec",
    "ModelSpecError",
    "NORMALIZATIONS",
    "TASKS",
    "check_output_count",
    "load_model",
    "load_model_spec",
    "model_output_count",
    "save_model_spec",
    "weights_sha256",
]

#: Intensity normalisations a spec can ask for.
NORMALIZATIONS = ("zscore", "minmax", "none")
#: Model tasks.
TASKS = ("classification", "regression")
#: Voxels the normalisation statistics are computed over (``None``: the whole grid).
MASKS = (None, "nonzero")

_REQUIRED = ("architecture", "weights", "input", "outputs", "task")
_REQUIRED_INPUT = ("space", "resolution_mm", "shape", "normalization")


class ModelSpecError(ValueError):
    """A model spec, or the model or weights it names, cannot be used. The message names the spec."""


@dataclass(frozen=True)
class InputSpec:
    """What the model expects as input.

    Attributes
    ----------
    space
        Template space of the input images (a TemplateFlow id, e.g. ``MNI152NLin2009aSym``).
    resolution_mm
        Voxel size in mm along the three array axes.
    shape
        Grid shape (X, Y, Z) the model was trained on.
    normalization
        ``"zscore"``, ``"minmax"`` or ``"none"``.
    mask
        ``"nonzero"``: normalisation statistics over nonzero voxels only, and zero voxels stay zero
        (as MONAI's ``NormalizeIntensity(nonzero=True)``, for skull-stripped inputs); ``None``: over
        the whole grid.
    orientation
        Axis codes of the model grid (nibabel's, e.g. ``"RAS"``, the TemplateFlow convention; an FSL
        MNI-trained model would be ``"LAS"``).
    channels
        Number of input channels.
    """

    space: str
    resolution_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    normalization: str = "zscore"
    mask: Optional[str] = None
    orientation: str = "RAS"
    channels: int = 1


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec; see :func:`load_model_spec`.

    Attributes
    ----------
    architecture
        ``"package.module:Class"`` of a ``torch.nn.Module``.
    kwargs
        Keyword arguments for the class.
    weights
        Absolute path of the state-dict file.
    input
        The expected input, an :class:`InputSpec`.
    outputs
        Names of the model outputs (class names, or regression targets). A binary classifier with a
        single logit lists two names, ``[negative, positive]``; its logit scores the second.
    task
        ``"classification"`` or ``"regression"``.
    name
        Short name of the model (default: the JSON file's stem).
    weights_sha256
        Expected SHA-256 of the weights file, checked when the model is loaded.
    path
        The JSON file the spec was read from, if any (used in error messages).
    """

    architecture: str
    kwargs: Mapping[str, Any]
    weights: Path
    input: InputSpec
    outputs: tuple[str, ...]
    task: str
    name: str
    weights_sha256: Optional[str] = None
    path: Optional[Path] = field(default=None, compare=False)

    @property
    def source(self) -> str:
        """How error messages name this spec: its file name, or its name if built in memory."""
        return self.path.name if self.path is not None else f"model spec {self.name!r}"

    def to_dict(self, relative_to: Optional[PathLike] = None) -> dict[str, Any]:
        """The JSON form; ``weights`` is written relative to ``relative_to`` when given."""
        weights: Union[str, Path] = self.weights
        if relative_to is not None:
            try:
                weights = os.path.relpath(self.weights, Path(relative_to).absolute())
            except ValueError:  # another drive on Windows: keep it absolute
                weights = self.weights
        resolution = list(self.input.resolution_mm)
        input_dict: dict[str, Any] = {
            "space": self.input.space,
            "resolution_mm": resolution[0] if len(set(resolution)) == 1 else resolution,
            "shape": list(self.input.shape),
            "normalization": self.input.normalization,
        }
        if self.input.mask is not None:
            input_dict["mask"] = self.input.mask
        if self.input.orientation != "RAS":
            input_dict["orientation"] = self.input.orientation
        if self.input.channels != 1:
            input_dict["channels"] = self.input.channels
        out: dict[str, Any] = {
            "name": self.name,
            "architecture": self.architecture,
            "kwargs": dict(self.kwargs),
            "weights": Path(weights).as_posix(),
            "input": input_dict,
            "outputs": list(self.outputs),
            "task": self.task,
        }
        if self.weights_sha256 is not None:
            out["weights_sha256"] = self.weights_sha256
        return out


# --------------------------------------------------------------------------------------------
# Reading and writing specs


def load_model_spec(path: PathLike) -> ModelSpec:
    """Read and validate a model spec JSON file.

    Parameters
    ----------
    path
        The JSON file. A relative ``weights`` path is resolved against the file's folder, so a spec
        and its weights can be moved together.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ModelSpecError
        The file is missing or not valid JSON, a required key is missing, or a value has the wrong
        type or an unknown value. The message names the file.
    """
    path = Path(path).absolute()
    source = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelSpecError(f"{source}: model spec not found ({path})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelSpecError(f"{source}: cannot read the model spec ({error})") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelSpecError(
            f"{source}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from error
    return _parse(data, source=source, base_dir=path.parent, default_name=path.stem, path=path)


def save_model_spec(spec: ModelSpec, path: PathLike) -> Path:
    """Write ``spec`` as JSON (atomically), with the weights path relative to the JSON file.

    Returns the absolute path written; :func:`load_model_spec` reads it back to an equal spec.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(spec.to_dict(relative_to=path.parent), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def _parse(
    data: Any, *, source: str, base_dir: Path, default_name: str, path: Optional[Path]
) -> ModelSpec:
    def fail(problem: str) -> ModelSpecError:
        return ModelSpecError(f"{source}: {problem}")

    if not isinstance(data, dict):
        raise fail(f"expected a JSON object, got {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise fail(f"missing required key(s) {missing}")

    architecture = data["architecture"]
    if not isinstance(architecture, str) or not re.fullmatch(
        r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", architecture
    ):
        raise fail(f"'architecture' must read 'package.module:Class', got {architecture!r}")

    kwargs = data.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise fail(f"'kwargs' must be an object, got {type(kwargs).__name__}")

    weights = data["weights"]
    if not isinstance(weights, str) or not weights:
        raise fail(f"'weights' must be a file path, got {weights!r}")
    weights_path = Path(weights).expanduser()
    if not weights_path.is_absolute():
        weights_path = base_dir / weights_path
    weights_path = Path(os.path.normpath(weights_path))

    task = data["task"]
    if task not in TASKS:
        raise fail(f"'task' must be one of {list(TASKS)}, got {task!r}")

    outputs = data["outputs"]
    if (
        not isinstance(outputs, list)
        or not outputs
        or not all(isinstance(name, str) and name for name in outputs)
    ):
        raise fail(f"'outputs' must be a non-empty list of names, got {outputs!r}")
    if len(set(outputs)) != len(outputs):
        raise fail(f"'outputs' names must be unique, got {outputs!r}")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise fail(f"'name' must be a non-empty string, got {name!r}")

    sha = data.get("weights_sha256")
    if sha is not None:
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise fail(f"'weights_sha256' must be 64 hexadecimal digits, got {sha!r}")
        sha = sha.lower()

    return ModelSpec(
        architecture=architecture,
        kwargs=dict(kwargs),
        weights=weights_path,
        input=_parse_input(data["input"], fail),
        outputs=tuple(outputs),
        task=task,
        name=name,
        weights_sha256=sha,
        path=path,
    )


def _parse_input(data: Any, fail) -> InputSpec:
    if not isinstance(data, dict):
        raise fail(f"'input' must be an object, got {type(data).__name__}")
    missing = [key for key in _REQUIRED_INPUT if key not in data]
    if missing:
        raise fail(f"'input' is missing key(s) {missing}")

    space = data["space"]
    if not isinstance(space, str) or not space:
        raise fail(f"'input.space' must be a template name, got {space!r}")

    resolution = data["resolution_mm"]
    if _is_number(resolution):
        resolution = [resolution] * 3
    if (
        not isinstance(resolution, list)
        or len(resolution) != 3
        or not all(_is_number(r) and r > 0 for r in resolution)
    ):
        raise fail(
            f"'input.resolution_mm' must be a positive number or three of them, "
            f"got {data['resolution_mm']!r}"
        )

    shape = data["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise fail(f"'input.shape' must be three positive integers, got {shape!r}")

    normalization = data["normalization"]
    if normalization not in NORMALIZATIONS:
        raise fail(
            f"'input.normalization' must be one of {list(NORMALIZATIONS)}, got {normalization!r}"
        )
    mask = data.get("mask")
    if mask not in MASKS:
        raise fail(f"'input.mask' must be one of {list(MASKS)}, got {mask!r}")

    orientation = data.get("orientation", "RAS")
    if (
        not isinstance(orientation, str)
        or len(orientation) != 3
        or sorted(_AXIS_OF.get(code, "?") for code in orientation.upper()) != ["x", "y", "z"]
    ):
        raise fail(
            f"'input.orientation' must be three axis codes such as 'RAS' or 'LAS', "
            f"got {orientation!r}"
        )

    channels = data.get("channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise fail(f"'input.channels' must be a positive integer, got {channels!r}")

    return InputSpec(
        space=space,
        resolution_mm=tuple(float(r) for r in resolution),
        shape=tuple(shape),
        normalization=normalization,
        mask=mask,
        orientation=orientation.upper(),
        channels=channels,
    )


_AXIS_OF = {"R": "x", "L": "x", "A": "y", "P": "y", "S": "z", "I": "z"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Weights


def weights_sha256(path: PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (weights can be hundreds of MB).

    The digest is cached by path, size and modification time, so a node processing many subjects
    reads the file once.
    """
    path = Path(path).absolute()
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(spec: ModelSpec, device: Union[str, torch.device]) -> dict[str, torch.Tensor]:
    source, weights = spec.source, spec.weights
    try:
        loaded = torch.load(weights, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if refused:
            raise ModelSpecError(
                f"{source}: weights file {weights.name} contains pickled code/objects "
                f"({refused.group(1)}) and torch.load(weights_only=True) refuses to unpickle it; "
                f"nipype-xai never loads weights unsafely. Save the weights with "
                f"torch.save(model.state_dict(), path) instead"
            ) from None
        raise ModelSpecError(
            f"{source}: weights file {weights.name} is not a PyTorch weights file that "
            f"torch.load(weights_only=True) can read (it may be corrupt, or contain objects that "
            f"weights_only=True refuses): {_last_line(message)}"
        ) from None
    except (RuntimeError, OSError, EOFError) as error:
        raise ModelSpecError(
            f"{source}: cannot read weights file {weights.name} (corrupt or truncated?): "
            f"{_last_line(str(error))}"
        ) from error

    state_dict = loaded
    if isinstance(loaded, dict) and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        # Training checkpoints often wrap the state dict with the epoch, optimiser state, ...
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                state_dict = loaded[key]
                break
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise ModelSpecError(
            f"{source}: weights file {weights.name} does not hold a state dict (a mapping of "
            f"parameter names to tensors); got {type(loaded).__name__}"
        )
    if state_dict and all(k.startswith("module.") for k in state_dict):
        # Saved from a DataParallel / DistributedDataParallel wrapper (as SFCN's released weights).
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    # torch's messages end with a generic pointer to the docs; the specific reason comes before.
    lines = [line for line in lines if not line.startswith("Check the documentation")]
    return lines[-1] if lines else message


# --------------------------------------------------------------------------------------------
# Models


def _import_class(spec: ModelSpec) -> type:
    module_name, _, qualname = spec.architecture.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # an import can fail with anything the module raises
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r}: cannot import module "
            f"{module_name!r} ({type(error).__name__}: {error})"
        ) from error
    for attribute in qualname.split("."):
        try:
            obj = getattr(obj, attribute)
        except AttributeError:
            raise ModelSpecError(
                f"{spec.source}: architecture {spec.architecture!r}: module {module_name!r} has no "
                f"class {qualname!r}"
            ) from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r} is not a torch.nn.Module class"
        )
    return obj


def _instantiate(spec: ModelSpec, cls: type) -> nn.Module:
    try:
        return cls(**spec.kwargs)
    except Exception as error:
        raise ModelSpecError(
            f"{spec.source}: cannot build {spec.architecture} with kwargs {dict(spec.kwargs)} "
            f"({type(error).__name__}: {error})"
        ) from error


def _check_state_dict(spec: ModelSpec, model: nn.Module, state_dict: Mapping[str, torch.Tensor]):
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if wrong:
        problems += [
            f"tensor {k!r} has shape {got} in the file but {want} in the model"
            for k, got, want in wrong[:5]
        ]
        if len(wrong) > 5:
            problems.append(f"... and {len(wrong) - 5} more tensors of the wrong shape")
    if missing:
        problems.append(f"missing tensor(s) {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {_few(unexpected)}")
    if problems:
        raise ModelSpecError(
            f"{spec.source}: weights file {spec.weights.name} does not fit "
            f"{spec.architecture} with kwargs {dict(spec.kwargs)}: " + "; ".join(problems)
        )


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)} in all)"


def model_output_count(spec: ModelSpec, model: Optional[nn.Module] = None) -> int:
    """Number of outputs the spec's architecture produces on the spec's input shape.

    The forward pass runs on PyTorch's ``meta`` device (shapes only, no memory, no compute) with a
    fresh instance of the class; when the class cannot be built there, ``model`` (or a new CPU
    instance) runs on a zero volume instead.

    Raises
    ------
    ModelSpecError
        The architecture cannot run on the spec's input shape.
    """
    cls = _import_class(spec)
    shape = (1, spec.input.channels, *spec.input.shape)
    try:
        with torch.device("meta"):
            probe = cls(**spec.kwargs)
        probe.eval()
        with torch.no_grad():
            output = probe(torch.empty(shape, device="meta"))
    except Exception:
        # Some classes create tensors on an explicit device or use data-dependent operations that
        # meta tensors cannot run: fall back to a real (slower) forward pass.
        probe = model if model is not None else _instantiate(spec, cls)
        device = next((p.device for p in probe.parameters()), torch.device("cpu"))
        was_training = probe.training
        probe.eval()
        try:
            with torch.no_grad():
                output = probe(torch.zeros(shape, device=device))
        except Exception as error:
            raise ModelSpecError(
                f"{spec.source}: {spec.architecture} cannot run on the spec's input shape "
                f"{shape} ({type(error).__name__}: {error})"
            ) from error
        finally:
            probe.train(was_training)
    if isinstance(output, (tuple, list)):
        output = output[0]
    return int(output.reshape(output.shape[0], -1).shape[1])


def check_output_count(spec: ModelSpec, n_outputs: int) -> None:
    """Raise :class:`ModelSpecError` unless a model with ``n_outputs`` outputs fits ``spec.outputs``.

    They fit when the counts are equal, or for a single-logit binary classifier with two names.
    """
    if n_outputs == len(spec.outputs):
        return
    if spec.task == "classification" and n_outputs == 1 and len(spec.outputs) == 2:
        return  # binary classifier with one logit: it scores outputs[1]
    hint = ""
    if spec.task == "classification" and n_outputs == 1:
        hint = " (a single-logit binary classifier lists two names: [negative, positive])"
    raise ModelSpecError(
        f"{spec.source}: the model has {n_outputs} output(s) but 'outputs' names "
        f"{len(spec.outputs)}: {list(spec.outputs)}{hint}"
    )


def load_model(
    spec_or_path: Union[ModelSpec, PathLike],
    device: Union[str, torch.device] = "cpu",
    *,
    check_outputs: bool = True,
) -> nn.Module:
    """Build the model a spec describes, load its weights safely, and put it in eval mode.

    Parameters
    ----------
    spec_or_path
        A :class:`ModelSpec` or the path of its JSON file.
    device
        Where the model and its weights go (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    check_outputs
        Check the number of outputs against ``outputs`` with a shape-only pass
        (:func:`model_output_count`). Its first use in a process costs about two seconds of
        imports (PyTorch's meta-tensor decompositions); callers that run the model right away can
        skip it and check the real output with :func:`check_output_count` instead, as
        :func:`nipype_xai.models.inference.predict` does.

    Returns
    -------
    torch.nn.Module
        The model in eval mode on ``device``.

    Raises
    ------
    ModelSpecError
        The class cannot be imported or built; the weights file is missing, corrupt, differs from
        ``weights_sha256``, holds pickled objects that ``weights_only=True`` refuses, or does not fit
        the architecture (the message names the tensor); or the number of outputs differs from
        ``outputs``. Every message names the spec file.
    """
    spec = spec_or_path if isinstance(spec_or_path, ModelSpec) else load_model_spec(spec_or_path)
    if not spec.weights.is_file():
        raise ModelSpecError(
            f"{spec.source}: weights file not found: {spec.weights} "
            f"(relative paths are resolved against the spec's folder)"
        )
    if spec.weights_sha256 is not None:
        actual = weights_sha256(spec.weights)
        if actual != spec.weights_sha256:
            raise ModelSpecError(
                f"{spec.source}: weights file {spec.weights.name} has SHA-256 {actual}, "
                f"but the spec expects {spec.weights_sha256}"
            )
    cls = _import_class(spec)
    model = _instantiate(spec, cls)
    state_dict = _read_state_dict(spec, "cpu")
    _check_state_dict(spec, model, state_dict)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # e.g. a dtype that cannot be copied
        raise ModelSpecError(
            f"{spec.source}: weights file {spec.weights.name} does not fit {spec.architecture}: "
            f"{error}"
        ) from error
    model = model.to(device).eval()
    if check_outputs:
        check_output_count(spec, model_output_count(spec, model))
    return model
