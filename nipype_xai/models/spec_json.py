"""The model spec JSON file: what it holds (:class:`ModelSpec`), reading and validating it
(:func:`load_model_spec`), and writing it (:func:`save_model_spec`).

The format, and the trust boundary the reading enforces for the ``weights`` path and the summary's
mean image (confined to the spec's folder unless ``external_weights``), are described in
:mod:`nipype_xai.models.spec`. Nothing here imports a model or reads its weights: that is
:mod:`nipype_xai.models.build` and :mod:`nipype_xai.models.weights`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from ..atomic import atomic_write
from .domain import InputSummary, mean_image_bytes, mean_image_from_bytes, mean_image_sha256

if TYPE_CHECKING:  # the attribution engine is imported only for a spec that has patterns
    from ..attribution.patterns import Patterns

PathLike = Union[str, os.PathLike]

__all__ = [
    "InputSpec",
    "ModelSpec",
    "ModelSpecError",
    "NORMALIZATIONS",
    "TASKS",
    "add_patterns",
    "load_model_spec",
    "mean_image_name",
    "patterns_name",
    "save_model_spec",
    "write_mean_image",
    "write_patterns",
]

#: Intensity normalisations a spec can ask for.
NORMALIZATIONS = ("zscore", "minmax", "none")
#: Model tasks.
TASKS = ("classification", "regression")
#: Voxels the normalisation statistics are computed over (``None``: the whole grid).
MASKS = (None, "nonzero")

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
    patterns
        PatternNet / PatternAttribution patterns fitted for these weights
        (:class:`~nipype_xai.attribution.patterns.Patterns`), or ``None``: those methods then
        fit each image's own and say so.
    patterns_file
        Absolute path of the patterns file, as for ``input_summary_file``.
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
    patterns: Optional["Patterns"] = None
    patterns_file: Optional[Path] = field(default=None, compare=False)

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
        if self.patterns is not None:
            file = (Path(relative(self.patterns_file)) if self.patterns_file
                    else Path(patterns_name(self.name)))
            out["patterns"] = {"file": file.as_posix(), "sha256": self.patterns.sha256(),
                               **self.patterns.record()}
            if self.weights_sha256 is not None:
                out["patterns"]["weights_sha256"] = self.weights_sha256
        return out


def mean_image_name(name: str) -> str:
    """File name of the training inputs' mean image of the spec called ``name``."""
    return f"{name}_input_mean.npy"


def patterns_name(name: str) -> str:
    """File name of the PatternNet patterns of the spec called ``name``."""
    return f"{name}_patterns.npz"



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
    spec = write_patterns(write_mean_image(spec, path.parent), path.parent)
    text = json.dumps(spec.to_dict(relative_to=path.parent), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def write_mean_image(spec: ModelSpec, folder: Path) -> ModelSpec:
    """Write the summary's mean image into ``folder`` if it has no file yet; the spec with it."""
    if spec.input_summary is None or spec.input_summary_file is not None:
        return spec
    image = Path(folder).absolute() / mean_image_name(spec.name)
    content = mean_image_bytes(spec.input_summary.mean_image)
    atomic_write(image, lambda tmp: tmp.write_bytes(content))
    return dataclasses.replace(spec, input_summary_file=image)


def write_patterns(spec: ModelSpec, folder: Path) -> ModelSpec:
    """Write the spec's patterns into ``folder`` if they have no file yet; the spec with it."""
    if spec.patterns is None or spec.patterns_file is not None:
        return spec
    file = Path(folder).absolute() / patterns_name(spec.name)
    content = spec.patterns.to_bytes()
    atomic_write(file, lambda tmp: tmp.write_bytes(content))
    return dataclasses.replace(spec, patterns_file=file)


def add_patterns(spec_path: PathLike, patterns: "Patterns", out: Optional[PathLike] = None, *,
                 external_weights: bool = False) -> Path:
    """Give a spec JSON the PatternNet patterns fitted for its weights.

    The patterns file is written beside the spec written (:func:`patterns_name`), the spec
    carries its SHA-256, the estimator, the number of images, what they were and the SHA-256 of
    the weights they were fitted for; any earlier patterns are replaced. Keys the spec format
    does not know (a ``"training"`` record) are kept.

    Parameters
    ----------
    spec_path
        The spec the patterns were fitted for.
    patterns
        From :func:`~nipype_xai.attribution.patterns.fit_patterns` on its model.
    out
        Where to write the new spec; default: ``spec_path`` itself. In another folder, the
        weights (and the training summary's mean image) are copied beside it, so that the new
        spec is as self-contained as the old one.
    external_weights
        As for :func:`load_model_spec` (reading ``spec_path``).

    Returns
    -------
    pathlib.Path
        The spec JSON written (atomically).
    """
    import shutil

    from .weights import weights_sha256

    spec_path = Path(spec_path).absolute()
    out = spec_path if out is None else Path(out).absolute()
    spec = load_model_spec(spec_path, external_weights=external_weights)
    data = json.loads(spec_path.read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.parent != spec_path.parent:
        copies = {"weights": spec.weights, "input_summary_file": spec.input_summary_file}
        moved = {}
        for key, source in copies.items():
            if source is not None:
                target = out.parent / source.name
                atomic_write(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
                moved[key] = target
        spec = dataclasses.replace(spec, **moved)
    sha = spec.weights_sha256 or weights_sha256(spec.weights)
    updated = dataclasses.replace(spec, weights_sha256=sha, patterns=patterns,
                                  patterns_file=None, path=None)
    updated = write_patterns(updated, out.parent)
    content = updated.to_dict(relative_to=out.parent)
    content.update({key: value for key, value in data.items() if key not in content
                    and key != "patterns"})
    text = json.dumps(content, indent=2) + "\n"
    return atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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

    _check_object(data, fail, required=_REQUIRED)

    architecture = data["architecture"]
    if not isinstance(architecture, str) or not re.fullmatch(
        r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", architecture
    ):
        raise fail(f"'architecture' must read 'package.module:Class', got {architecture!r}")

    kwargs = data.get("kwargs", {})
    _check_object(kwargs, fail, key="kwargs")

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
        sha = _sha256_value(sha, "weights_sha256", fail)

    input_spec = _parse_input(data["input"], fail)
    summary, summary_file = None, None
    if data.get("input_summary") is not None:
        summary, summary_file = _parse_input_summary(data["input_summary"], input_spec, base_dir,
                                                     external_weights, fail)
    patterns, patterns_file = None, None
    if data.get("patterns") is not None:
        patterns, patterns_file = _parse_patterns(data["patterns"], weights_path, sha, base_dir,
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
        patterns=patterns,
        patterns_file=patterns_file,
    )


def _parse_patterns(data: Any, weights: Path, weights_sha: Optional[str], base_dir: Path,
                    external: bool, fail) -> tuple["Patterns", Path]:
    """The ``patterns`` object and its file, read under the weights' rules: confined to the
    spec's folder, a regular file no larger than the weights could need, its SHA-256 checked
    before it is parsed, no pickle."""
    key = "patterns.file"
    _check_object(data, fail, key="patterns", required=("file", "sha256"))
    name = data["file"]
    if not isinstance(name, str) or not name:
        raise fail(f"'{key}' must be a file path, got {name!r}")
    sha = _sha256_value(data["sha256"], "patterns.sha256", fail)
    fitted_for = data.get("weights_sha256")
    if fitted_for is not None:
        fitted_for = _sha256_value(fitted_for, "patterns.weights_sha256", fail)
        if weights_sha is not None and fitted_for != weights_sha:
            raise fail(f"the patterns {name} were fitted for other weights "
                       f"(patterns.weights_sha256 is not weights_sha256); fit them again "
                       f"for these weights (nipype-xai fit-patterns)")
    # Patterns are shaped like the weights of the layers that have them: float32 values, twice
    # the weights file (float16 weights), and room for the headers.
    weights_size = weights.stat().st_size if weights.is_file() else 0
    largest = 2 * weights_size + 2**20
    content, path = _read_named_file(
        name, base_dir, external, fail, key=key, sha=sha, sha_key="patterns.sha256",
        largest=largest, too_large=f"the patterns of its weights ({weights_size} bytes) can need")
    from ..attribution.patterns import Patterns

    try:
        patterns = Patterns.from_bytes(content, max_bytes=largest)
    except ValueError as error:
        raise fail(f"{key} {path.name} {_one_line(str(error))}") from None
    for field_name in ("estimator", "n_inputs"):
        if field_name in data and data[field_name] != getattr(patterns, field_name):
            raise fail(f"patterns.{field_name} is {data[field_name]!r} but {path.name} holds "
                       f"{getattr(patterns, field_name)!r}")
    return patterns, path


def _read_named_file(name: str, base_dir: Path, external: bool, fail, *, key: str, sha: str,
                     sha_key: str, largest: int, too_large: str) -> tuple[bytes, Path]:
    """The bytes of a file the spec names beside its weights (``key``), under the weights' rules:
    confined to the spec's folder (unless ``external``), a regular file, at most ``largest``
    bytes (``too_large`` says what that bound is) and with the SHA-256 the spec gives
    (``sha_key``); the file's own digest is never shown, as for weights."""
    path = _weights_path(name, base_dir, external, fail, key=key)
    check_regular_file(path, key, fail)
    size = path.stat().st_size
    if size > largest:
        raise fail(f"{key} {path.name} is {size} bytes, more than {too_large}")
    content = path.read_bytes()
    if hashlib.sha256(content).hexdigest() != sha:
        raise fail(f"{key} {path.name} does not match {sha_key} in the spec (expected "
                   f"{sha}); the file was changed, or the spec names the wrong file")
    return content, path


def _parse_input_summary(data: Any, input_spec: InputSpec, base_dir: Path, external: bool,
                         fail) -> tuple[InputSummary, Path]:
    """The ``input_summary`` object and its mean image, read under the weights' rules."""
    key = "input_summary.mean_image"
    _check_object(data, fail, key="input_summary")
    name = data.get("mean_image")
    if not isinstance(name, str) or not name:
        raise fail(f"'{key}' must be a file path, got {name!r}")
    sha = _sha256_value(data.get("mean_image_sha256"), f"{key}_sha256", fail)
    # A float32 volume of the grid and a .npy header (a few hundred bytes): nothing larger is read.
    content, image_path = _read_named_file(
        name, base_dir, external, fail, key=key, sha=sha, sha_key=f"{key}_sha256",
        largest=4 * math.prod(input_spec.shape) + 4096,
        too_large=f"a float32 image of the model grid {list(input_spec.shape)} needs")
    try:
        mean_image = mean_image_from_bytes(content, input_spec.shape)
    except ValueError as error:
        raise fail(f"{key} {image_path.name} {error}") from None
    try:
        summary = InputSummary.from_json(data, mean_image, prefix="input_summary.")
    except ValueError as error:
        raise fail(str(error)) from None
    return summary, image_path


def _check_object(data: Any, fail, *, key: Optional[str] = None, required: Sequence[str] = ()
                  ) -> None:
    """Raise unless ``data`` is a JSON object holding every ``required`` key: the spec itself
    (``key`` None) or its object ``key``."""
    if not isinstance(data, dict):
        what = "expected a JSON object" if key is None else f"'{key}' must be an object"
        raise fail(f"{what}, got {type(data).__name__}")
    missing = [name for name in required if name not in data]
    if missing:
        what = "missing required key(s)" if key is None else f"'{key}' is missing key(s)"
        raise fail(f"{what} {missing}")


def _sha256_value(value: Any, key: str, fail) -> str:
    """``value`` as a lower-case SHA-256 hex digest, or the spec's error naming ``key``."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise fail(f"'{key}' must be 64 hexadecimal digits, got {value!r}")
    return value.lower()


def check_regular_file(path: Path, key: str, fail) -> None:
    """Raise ``fail(...)`` unless the file the spec's ``key`` names (``weights``, or the summary's
    mean image) is a regular file: not a folder, missing, a device or a FIFO (reading could block
    or never end)."""
    if path.is_dir():
        raise fail(f"{key} {path} is a folder, not a file")
    if not path.exists():
        raise fail(f"{key} file not found: {path} (relative paths are resolved against the spec's "
                   f"folder)")
    if not path.is_file():
        raise fail(f"{key} {path} is not a regular file")


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
    _check_object(data, fail, key="input", required=_REQUIRED_INPUT)

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


def _one_line(message: str) -> str:
    """``message`` with its line breaks and runs of spaces collapsed: errors stay one line."""
    return " ".join(message.split())
