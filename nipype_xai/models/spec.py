"""Model specs: the JSON file that tells the pipeline how to build, load and feed a model (SPEC §4).

.. code-block:: json

    {"architecture": "nipype_xai.models.architectures:TinyCNN3D",
     "kwargs": {"n_outputs": 2},
     "weights": "tiny.pt",
     "input": {"space": "MNI152NLin2009aSym", "resolution_mm": 2, "shape": [96, 112, 96],
               "normalization": "zscore", "mask": "nonzero"},
     "outputs": ["control", "lesion"],
     "task": "classification"}

The trust boundary (SPEC §10)
-----------------------------
A model spec comes from someone else and is untrusted: reading and loading it must not run code
that the user did not install on purpose, nor read files the spec's author chose outside the spec's
folder.

* **Architectures.** ``"package.module:Class"`` is imported only when the module's dotted name is in
  :data:`TRUSTED_ARCHITECTURE_MODULES` (``nipype_xai``, ``monai.networks.nets``,
  ``torchvision.models``) or below one of them (``entry + "."``). The name is checked *before*
  anything is imported, so ``"this:Foo"`` or ``"lab_models.nets:Net"`` runs no module's top-level
  code. The package must also come from where it is installed, never from the working directory:
  its top-level package is looked up by the import system with the relative ``sys.path`` entries
  (``''``, ``'.'``) and the working directory left out (``python -c``, ``python -m`` and the
  interactive interpreter put the latter first), and the package an import would give (already
  imported, or the first found on the full ``sys.path``) must be that one, so a ``monai/`` folder
  in the working directory is refused, not imported. Any other absolute ``sys.path`` entry counts
  as an install location (the ``nipype-xai`` command puts no folder of the user's on
  ``sys.path``). ``nipype_xai`` itself is the package running this code, so it is accepted wherever
  it is installed (an editable install in the working directory included). After the import, the
  class must be a ``torch.nn.Module`` subclass *defined* in an allowed module (``cls.__module__``),
  so a re-export such as ``nipype_xai.models.architectures:nn.Conv3d`` is refused too. Anything
  else needs the explicit opt-in ``trust_code=True`` (the command line's ``--trust-model-code``) on
  :func:`load_model`, :func:`model_output_count` and every function that builds the architecture;
  with it the module is imported as Python would import it.
* **Weights.** A relative ``weights`` path must resolve (``os.path.realpath``: ``..`` and symbolic
  links count) inside the spec's folder (resolved too); ``~`` and absolute paths are refused. The
  opt-in is ``external_weights=True`` (``--allow-external-weights``) on :func:`load_model_spec` and
  :func:`load_model`. The same rules and opt-in hold for the mean image of an ``input_summary``
  (below).
* **Reading weights.** Only ``torch.load(..., weights_only=True)``: a weights file that holds
  pickled code or objects is refused, never unpickled. A ``weights_sha256`` that differs from the file's is
  reported without the file's actual digest (no hash oracle for files the spec may point at), and a
  file that is not a PyTorch weights file (a text file, an empty file, random bytes, a folder) gives
  a one-line :class:`ModelSpecError` naming the spec and the file.

Every error is one line that names the spec file and says what to do.

The training inputs' summary
----------------------------
An optional ``"input_summary"`` object describes the model's training inputs on its grid
(:mod:`nipype_xai.models.domain`: intensity quantiles, the non-zero fraction, the dissimilarity to
their mean image, and the threshold of the input-domain check). Its numbers are inline; the mean
image is a float32 ``.npy`` file beside the spec (``"mean_image"``, confined to the spec's folder
as weights are) with its ``"mean_image_sha256"``. It is read with ``allow_pickle=False`` when the
spec is loaded, after its size and digest are checked. A spec without it works as before: the
check is then not available.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..atomic import atomic_write
from .domain import InputSummary, mean_image_bytes, mean_image_from_bytes, mean_image_sha256

PathLike = Union[str, os.PathLike]

__all__ = [
    "InputSpec",
    "ModelSpec",
    "ModelSpecError",
    "NORMALIZATIONS",
    "TASKS",
    "TRUSTED_ARCHITECTURE_MODULES",
    "check_output_count",
    "load_model",
    "load_model_spec",
    "mean_image_name",
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

#: Modules a spec's architecture may come from without ``trust_code`` (see the module docstring):
#: a module is allowed when its dotted name is an entry or starts with ``entry + "."``. Each is
#: code the user installed on purpose whose network classes build from their arguments alone.
TRUSTED_ARCHITECTURE_MODULES = (
    # Our reference architectures (TinyCNN3D, SFCN, MonaiResNet): the bundled model and the
    # benchmark's specs name them.
    "nipype_xai",
    # MONAI's network zoo (DenseNet, ResNet, ...), the MONAI classes SPEC §4 names. Not MONAI as a
    # whole: monai.losses.perceptual builds its networks with torch.hub.load(..., trust_repo=True)
    # (a GitHub repository's code) and monai.bundle instantiates any dotted path. A few nets fetch
    # *weights* when given pretrained=True; those are read with weights_only=True.
    "monai.networks.nets",
    # torchvision's networks (e.g. the 3D video ResNets). Its downloads of pretrained weights live
    # in builder functions, which are not classes and so cannot be a spec's architecture.
    "torchvision.models",
)

_TRUST_HINT = (
    "if you trust this model spec's code, pass --trust-model-code (Python: trust_code=True)"
)
_EXTERNAL_HINT = (
    "move the weights into that folder, or, if you trust where the spec points, pass "
    "--allow-external-weights (Python: external_weights=True)"
)

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
    input_summary
        The training inputs' summary (:class:`~nipype_xai.models.domain.InputSummary`), or
        ``None``: the input-domain check is then not available.
    input_summary_file
        Absolute path of the summary's mean image file, when the spec was read from JSON (or
        saved); :func:`save_model_spec` writes one for a summary that has none yet.
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
    input_summary: Optional[InputSummary] = None
    input_summary_file: Optional[Path] = field(default=None, compare=False)

    @property
    def source(self) -> str:
        """How error messages name this spec: its file name, or its name if built in memory."""
        return self.path.name if self.path is not None else f"model spec {self.name!r}"

    def to_dict(self, relative_to: Optional[PathLike] = None) -> dict[str, Any]:
        """The JSON form; ``weights`` (and the summary's mean image) are written relative to
        ``relative_to`` when given.

        A summary without a file yet names :func:`mean_image_name` (where :func:`save_model_spec`
        writes it); its digest is that of the bytes the file holds (or will hold).
        """

        def relative(path: Path) -> Union[str, Path]:
            if relative_to is None:
                return path
            try:
                return os.path.relpath(path, Path(relative_to).absolute())
            except ValueError:  # another drive on Windows: keep it absolute
                return path

        weights = relative(self.weights)
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
        if self.input_summary is not None:
            image = (Path(relative(self.input_summary_file)) if self.input_summary_file
                     else Path(mean_image_name(self.name)))
            out["input_summary"] = self.input_summary.to_json(
                mean_image=image.as_posix(),
                mean_image_sha256=mean_image_sha256(self.input_summary.mean_image),
            )
        return out


def mean_image_name(name: str) -> str:
    """File name of the training inputs' mean image of the spec called ``name``."""
    return f"{name}_input_mean.npy"


# --------------------------------------------------------------------------------------------
# Reading and writing specs


def load_model_spec(path: PathLike, *, external_weights: bool = False) -> ModelSpec:
    """Read and validate a model spec JSON file.

    Parameters
    ----------
    path
        The JSON file. A relative ``weights`` path is resolved against the file's folder, so a spec
        and its weights can be moved together.
    external_weights
        Accept a ``weights`` path that leads outside the spec's folder: an absolute path, ``~``, or
        a relative path that ``..`` or a symbolic link takes out of it. Refused by default (the
        spec's author would otherwise choose which file on this machine is read).

    Returns
    -------
    ModelSpec

    Raises
    ------
    ModelSpecError
        The file is missing or not valid JSON, a required key is missing, a value has the wrong
        type or an unknown value, or ``weights`` leads outside the spec's folder without
        ``external_weights``. The message names the file.
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
    return _parse(data, source=source, base_dir=path.parent, default_name=path.stem, path=path,
                  external_weights=external_weights)


def save_model_spec(spec: ModelSpec, path: PathLike) -> Path:
    """Write ``spec`` as JSON (atomically), with the weights path relative to the JSON file.

    A training-input summary that has no file yet (made in memory by
    :func:`~nipype_xai.models.domain.summarize_inputs`) gets its mean image written beside the
    JSON first, as :func:`mean_image_name` (atomically; the same summary gives the same bytes).

    Returns the absolute path written; :func:`load_model_spec` reads it back to an equal spec.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = _write_mean_image(spec, path.parent)
    text = json.dumps(spec.to_dict(relative_to=path.parent), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def _write_mean_image(spec: ModelSpec, folder: Path) -> ModelSpec:
    """Write the summary's mean image into ``folder`` if it has no file yet; the spec with it."""
    if spec.input_summary is None or spec.input_summary_file is not None:
        return spec
    image = Path(folder).absolute() / mean_image_name(spec.name)
    content = mean_image_bytes(spec.input_summary.mean_image)
    atomic_write(image, lambda tmp: tmp.write_bytes(content))
    return dataclasses.replace(spec, input_summary_file=image)


def _parse(
    data: Any,
    *,
    source: str,
    base_dir: Path,
    default_name: str,
    path: Optional[Path],
    external_weights: bool = False,
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
    weights_path = _weights_path(weights, base_dir, external_weights, fail)

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

    input_spec = _parse_input(data["input"], fail)
    summary, summary_file = None, None
    if data.get("input_summary") is not None:
        summary, summary_file = _parse_input_summary(data["input_summary"], input_spec, base_dir,
                                                     external_weights, fail)

    return ModelSpec(
        architecture=architecture,
        kwargs=dict(kwargs),
        weights=weights_path,
        input=input_spec,
        outputs=tuple(outputs),
        task=task,
        name=name,
        weights_sha256=sha,
        path=path,
        input_summary=summary,
        input_summary_file=summary_file,
    )


def _parse_input_summary(data: Any, input_spec: InputSpec, base_dir: Path, external: bool,
                         fail) -> tuple[InputSummary, Path]:
    """The ``input_summary`` object and its mean image, read under the weights' rules."""
    key = "input_summary.mean_image"
    if not isinstance(data, dict):
        raise fail(f"'input_summary' must be an object, got {type(data).__name__}")
    name = data.get("mean_image")
    if not isinstance(name, str) or not name:
        raise fail(f"'{key}' must be a file path, got {name!r}")
    sha = data.get("mean_image_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise fail(f"'{key}_sha256' must be 64 hexadecimal digits, got {sha!r}")
    image_path = _weights_path(name, base_dir, external, fail, key=key)
    if image_path.is_dir():
        raise fail(f"{key} {image_path} is a folder, not a file")
    if not image_path.exists():
        raise fail(f"{key} file not found: {image_path} (relative paths are resolved against "
                   f"the spec's folder)")
    if not image_path.is_file():  # a device or a FIFO: reading could block or never end
        raise fail(f"{key} {image_path} is not a regular file")
    # A float32 volume of the grid and a .npy header (a few hundred bytes): nothing larger is read.
    largest = 4 * math.prod(input_spec.shape) + 4096
    size = image_path.stat().st_size
    if size > largest:
        raise fail(f"{key} {image_path.name} is {size} bytes, more than a float32 image of the "
                   f"model grid {list(input_spec.shape)} needs")
    content = image_path.read_bytes()
    # As for weights, the file's own digest is never shown.
    if hashlib.sha256(content).hexdigest() != sha.lower():
        raise fail(f"{key} {image_path.name} does not match {key}_sha256 in the spec (expected "
                   f"{sha.lower()}); the file was changed, or the spec names the wrong file")
    try:
        mean_image = mean_image_from_bytes(content, input_spec.shape)
    except ValueError as error:
        raise fail(f"{key} {image_path.name} {error}") from None
    try:
        summary = InputSummary.from_json(data, mean_image, prefix="input_summary.")
    except ValueError as error:
        raise fail(str(error)) from None
    return summary, image_path


def _weights_path(weights: str, base_dir: Path, external: bool, fail, key: str = "weights"
                  ) -> Path:
    """The absolute path of the file ``key`` names (the weights, or the summary's mean image);
    unless ``external``, confined to the spec's folder."""
    if external:
        path = Path(weights).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))
    folder = os.path.realpath(base_dir)
    hint = _EXTERNAL_HINT if key == "weights" else _EXTERNAL_HINT.replace("the weights", "it")
    if weights.startswith("~"):
        raise fail(f"'{key}' {weights!r} is in a home folder, not in the spec's folder "
                   f"{folder}; {hint}")
    if os.path.isabs(weights):
        raise fail(f"'{key}' {weights!r} is an absolute path, not a file in the spec's folder "
                   f"{folder}; {hint}")
    path = Path(os.path.normpath(base_dir / weights))
    # realpath: '..' and symbolic links (of the file or of any folder on the way) both count.
    resolved = os.path.realpath(path)
    if os.path.commonpath([folder, resolved]) != folder:
        raise fail(f"'{key}' {weights!r} resolves to {resolved}, outside the spec's folder "
                   f"{folder}; {hint}")
    return path


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
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused:
            raise ModelSpecError(
                f"{source}: weights file {weights.name} contains pickled code/objects "
                f"({refused.group(1)}) and torch.load(weights_only=True) refuses to unpickle it; "
                f"nipype-xai never loads weights unsafely. Save the weights with "
                f"torch.save(model.state_dict(), path) instead"
            ) from None
        raise _unreadable_weights(spec, error) from None
    except Exception as error:
        # Garbage makes the unpickler raise nearly anything (IndexError for a text file, EOFError
        # for an empty one, RuntimeError for a zip that is not torch's, OSError, ...).
        raise _unreadable_weights(spec, error) from None

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


def _unreadable_weights(spec: ModelSpec, error: Exception) -> ModelSpecError:
    """The one-line error for a weights file ``torch.load(weights_only=True)`` cannot read.

    torch's reason is quoted only for a file that looks like a PyTorch file (a zip archive, as
    ``torch.save`` writes, or a pickle): for any other file it would quote the file's own bytes
    (``Unsupported operand 114`` is the first byte of ``root:x:0:0...``).
    """
    source, weights = spec.source, spec.weights
    if isinstance(error, OSError):
        return ModelSpecError(f"{source}: cannot read weights file {weights.name} "
                              f"({error.strerror or type(error).__name__})")
    try:
        with open(weights, "rb") as stream:
            magic = stream.read(4)
    except OSError:
        magic = b""
    if magic.startswith((b"PK\x03\x04", b"\x80")):
        return ModelSpecError(
            f"{source}: cannot read weights file {weights.name} with "
            f"torch.load(weights_only=True) (corrupt or truncated?): "
            f"{_last_line(str(error)) or type(error).__name__}"
        )
    return ModelSpecError(
        f"{source}: weights file {weights.name} is not a PyTorch weights file (neither the zip "
        f"archive torch.save writes nor a pickle); point 'weights' at a state dict saved with "
        f"torch.save(model.state_dict(), path)"
    )


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    # torch's messages end with a generic pointer to the docs; the specific reason comes before.
    lines = [line for line in lines if not line.startswith("Check the documentation")]
    return lines[-1] if lines else _one_line(message)


def _one_line(message: str) -> str:
    """``message`` with its line breaks and runs of spaces collapsed: errors stay one line."""
    return " ".join(message.split())


# --------------------------------------------------------------------------------------------
# Models


def _is_trusted_module(module_name: str) -> bool:
    return any(module_name == entry or module_name.startswith(entry + ".")
               for entry in TRUSTED_ARCHITECTURE_MODULES)


def _location(module_spec: Optional[ModuleSpec]) -> Optional[str]:
    """Where a top-level module's code lies: a package's folder(s), or a module's file."""
    if module_spec is None:
        return None
    if module_spec.submodule_search_locations:
        return os.pathsep.join(os.path.realpath(p) for p in module_spec.submodule_search_locations)
    if module_spec.origin and module_spec.has_location:
        return os.path.realpath(module_spec.origin)
    return module_spec.origin  # "built-in", "frozen"


def _installed_spec(top: str) -> Optional[ModuleSpec]:
    """The import system's spec of the top-level module ``top`` with the current directory and
    relative ``sys.path`` entries left out. Runs no module code."""
    if top == __name__.partition(".")[0]:
        # nipype_xai itself: the code running this check is the installed package by definition
        # (also an editable install whose folder is the working directory).
        return sys.modules[top].__spec__
    cwd = os.path.realpath(os.getcwd())
    path = [entry for entry in sys.path
            if isinstance(entry, str) and os.path.isabs(entry) and os.path.realpath(entry) != cwd]
    # As importlib.util.find_spec, but every meta-path finder gets the filtered list as its path
    # (PathFinder searches it instead of sys.path; finders for fixed locations, such as editable
    # installs' mappings, ignore it).
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        found = find_spec(top, path)
        if found is not None:
            return found
    return None


def _check_trusted_module(spec: ModelSpec, module_name: str) -> None:
    """Raise unless ``module_name``'s top-level package would be imported from where it is
    installed (not the current directory or a relative sys.path entry). Runs no module code."""
    top = module_name.partition(".")[0]
    installed = _location(_installed_spec(top))
    if installed is None:
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r}: package {top!r} is not installed "
            f"(nipype-xai does not import it from the current directory or a relative sys.path "
            f"entry); install it, or, {_TRUST_HINT}"
        )
    try:  # what an import would give: the module already imported, or the first on sys.path
        found = _location(importlib.util.find_spec(top))
    except (ValueError, ImportError):
        found = None
    if found != installed:
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r}: package {top!r} would be imported "
            f"from {found}, not from where it is installed ({installed}); nipype-xai never imports "
            f"an architecture from the current directory or a relative sys.path entry: run from "
            f"another folder, or, {_TRUST_HINT}"
        )


def _import_class(spec: ModelSpec, *, trust_code: bool = False) -> type:
    """The spec's architecture class, imported only inside the trust boundary (module docstring)."""
    module_name, _, qualname = spec.architecture.partition(":")
    if not trust_code:
        # By name first: nothing is imported for a module outside the allow-list.
        if not _is_trusted_module(module_name):
            raise ModelSpecError(
                f"{spec.source}: architecture {spec.architecture!r} is outside the packages "
                f"nipype-xai imports by default ({', '.join(TRUSTED_ARCHITECTURE_MODULES)}); "
                f"{_TRUST_HINT}"
            )
        _check_trusted_module(spec, module_name)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # an import can fail with anything the module raises
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r}: cannot import module "
            f"{module_name!r} ({type(error).__name__}: {_one_line(str(error))})"
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
    if not trust_code:
        # A class re-exported by an allowed module (`from torch import nn`, a user's class
        # imported into a package) is judged by where it is defined.
        defined_in = getattr(obj, "__module__", None) or "?"
        if not _is_trusted_module(defined_in):
            raise ModelSpecError(
                f"{spec.source}: architecture {spec.architecture!r} is a class defined in "
                f"{defined_in!r}, outside the packages nipype-xai imports by default "
                f"({', '.join(TRUSTED_ARCHITECTURE_MODULES)}); {_TRUST_HINT}"
            )
        _check_trusted_module(spec, defined_in)
    return obj


def _instantiate(spec: ModelSpec, cls: type) -> nn.Module:
    try:
        return cls(**spec.kwargs)
    except Exception as error:
        raise ModelSpecError(
            f"{spec.source}: cannot build {spec.architecture} with kwargs {dict(spec.kwargs)} "
            f"({type(error).__name__}: {_one_line(str(error))})"
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


def model_output_count(
    spec: ModelSpec, model: Optional[nn.Module] = None, *, trust_code: bool = False
) -> int:
    """Number of outputs the spec's architecture produces on the spec's input shape.

    The forward pass runs on PyTorch's ``meta`` device (shapes only, no memory, no compute) with a
    fresh instance of the class; when the class cannot be built there, ``model`` (or a new CPU
    instance) runs on a zero volume instead.

    Parameters
    ----------
    spec
        The model spec.
    model
        An instance of the architecture to fall back on.
    trust_code
        Import the architecture even from outside :data:`TRUSTED_ARCHITECTURE_MODULES` (see the
        module docstring): only for a spec whose code you trust.

    Raises
    ------
    ModelSpecError
        The architecture is outside the trust boundary, or cannot run on the spec's input shape.
    """
    cls = _import_class(spec, trust_code=trust_code)
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
                f"{shape} ({type(error).__name__}: {_one_line(str(error))})"
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
    trust_code: bool = False,
    external_weights: bool = False,
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
    trust_code
        Import the architecture even from outside :data:`TRUSTED_ARCHITECTURE_MODULES` or from the
        current directory (see the module docstring): only for a spec whose code you trust.
    external_weights
        When ``spec_or_path`` is a path: accept weights outside the spec's folder (see
        :func:`load_model_spec`). A :class:`ModelSpec` is used as it was parsed.

    Returns
    -------
    torch.nn.Module
        The model in eval mode on ``device``.

    Raises
    ------
    ModelSpecError
        The architecture is outside the trust boundary (without ``trust_code``), or its weights
        outside the spec's folder (without ``external_weights``); the class cannot be imported
        or built; the weights file is missing, not a file, corrupt, differs from
        ``weights_sha256``, holds pickled objects that ``weights_only=True`` refuses, or does not
        fit the architecture (the message names the tensor); or the number of outputs differs from
        ``outputs``. Every message names the spec file.
    """
    spec = (spec_or_path if isinstance(spec_or_path, ModelSpec)
            else load_model_spec(spec_or_path, external_weights=external_weights))
    # The trust boundary first: no weights file is read for a spec whose code is refused.
    cls = _import_class(spec, trust_code=trust_code)
    weights = spec.weights
    if weights.is_dir():
        raise ModelSpecError(f"{spec.source}: weights {weights} is a folder, not a file")
    if not weights.exists():
        raise ModelSpecError(
            f"{spec.source}: weights file not found: {weights} "
            f"(relative paths are resolved against the spec's folder)"
        )
    if not weights.is_file():  # a device or a FIFO: reading could block or never end
        raise ModelSpecError(f"{spec.source}: weights {weights} is not a regular file")
    # The file's own digest is never shown: with it, a spec could read out the hash of any file.
    if spec.weights_sha256 is not None and weights_sha256(weights) != spec.weights_sha256:
        raise ModelSpecError(
            f"{spec.source}: weights file {weights.name} does not match weights_sha256 in the spec "
            f"(expected {spec.weights_sha256}); the weights were changed, or the spec names the "
            f"wrong file"
        )
    model = _instantiate(spec, cls)
    state_dict = _read_state_dict(spec, "cpu")
    _check_state_dict(spec, model, state_dict)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # e.g. a dtype that cannot be copied
        raise ModelSpecError(
            f"{spec.source}: weights file {spec.weights.name} does not fit {spec.architecture}: "
            f"{_one_line(str(error))}"
        ) from error
    model = model.to(device).eval()
    if check_outputs:
        check_output_count(spec, model_output_count(spec, model, trust_code=trust_code))
    return model
