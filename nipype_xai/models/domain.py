"""How far a model input lies from the model's training inputs (the input-domain check, SPEC §10).

A model is only known to work on inputs like those it was trained on. A real head given to a model
trained on synthetic brains, a T1w with its skull left on, an image that missed the template: the
model still answers, often with confidence, and its explanation looks as plausible as any. This
module measures how unlike the training inputs a subject's input is, on the model grid, after the
preprocessing the model saw (:func:`nipype_xai.models.to_model_grid`), so the pipeline can say so.

What is summarised (:func:`summarize_inputs`, one streaming pass)
-----------------------------------------------------------------
Over the voxels of the model input that are not 0 (the voxels a ``mask="nonzero"`` normalisation
works on; every voxel that is not exactly 0 otherwise):

* the **intensity quantiles** at :data:`QUANTILE_LEVELS` of each training input: their mean and
  standard deviation across the inputs (the shape of the normalised histogram: a T2w, an image with
  skull or a histogram of another tissue mix moves them);
* the **fraction of the grid that is not 0**: its mean and standard deviation (a skull-stripped
  brain among inputs with a background, or the reverse; a brain that missed the grid);
* the **mean image** of the training inputs, and each input's **dissimilarity** to it, ``1 - r``
  with ``r`` Pearson's correlation over the whole grid: its mean and standard deviation (anatomy,
  position and background unlike the training inputs').

Each feature of a new input becomes a z-score against the training spread, and the **distance** is
the largest of them (:func:`input_distance`): "the input's most atypical feature lies that many
training standard deviations from the training mean". Only a *larger* dissimilarity counts (an
input closer to the mean image than usual is not unusual); the quantile z-score is the root mean
square over the levels.

The threshold, from the training inputs' own distances
--------------------------------------------------------
The features that compare one input with the others (the dissimilarity and the distance itself) are
measured *prequentially*: each training input against the summary of the inputs before it, never
against a summary it is part of. That needs only one pass, and it is a held-out measurement, as a
new subject's is (an input scored against a mean it contributed to looks closer than it is). The
first :data:`MIN_REFERENCE_INPUTS` inputs only build the reference (a spread estimated from a
handful of inputs is noise). An input is flagged **outside** when its distance exceeds
:data:`THRESHOLD_MARGIN` times the largest of these training distances: the farthest training input
is by construction inside, and the margin leaves room for what a fresh cohort of the same
generator and the pipeline's own registration and resampling bring (the constant's note gives the
figures; the bundled model's spec records the false-flag rate on its fresh cohort).

Memory does not grow with the number of inputs: one image-sized running sum, running moments of a
few numbers, and one float per input for the distances' quantiles.

One module of about 560 lines (a quarter of them this note and the summary's JSON form), on
purpose: the features are defined once (:func:`_histogram_features`, :func:`_dissimilarity`) and
the summary, its prequential threshold and the check of a new input must use them identically;
split apart, a change to one feature could reach the summary but not the check.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np

__all__ = [
    "DISTANCE_LEVELS",
    "InputDistance",
    "InputSummary",
    "MIN_INPUTS",
    "MIN_REFERENCE_INPUTS",
    "QUANTILE_LEVELS",
    "SPREAD_FLOOR",
    "THRESHOLD_MARGIN",
    "input_distance",
    "mean_image_bytes",
    "mean_image_from_bytes",
    "mean_image_sha256",
    "summarize_inputs",
]

#: Levels of the per-input intensity quantiles: the tails (background, CSF, the brightest white
#: matter or a lesion) and the body of the histogram alike.
QUANTILE_LEVELS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)

#: Fewest training inputs a summary can be made of: the first one scored (the fourth) is compared
#: with three before it, the fewest that give a spread of their dissimilarities.
MIN_INPUTS = 4

#: Training inputs that only build the reference before the prequential distances are recorded (a
#: standard deviation from fewer inputs is too noisy to score against). With fewer inputs in all,
#: every input from the fourth on is scored (three give the first spread of dissimilarities).
MIN_REFERENCE_INPUTS = 10

#: ``threshold = THRESHOLD_MARGIN * (largest prequential distance of a training input)``. The
#: farthest training input is inside by construction; the margin is for what the pipeline itself
#: does to inputs of the same kind. Measured on the bundled model (largest training distance 2.4):
#: fresh synthetic subjects through the known transforms reach 2.3; the demo's synthetic subjects,
#: registered by ANTs and resampled straight onto the model grid, reach 6.4, all of it the
#: non-zero fraction (their background fills the grid's front and back edges, which the training
#: inputs' template-grid path left at 0; a grid filled to its edges is at most 7.0); a real
#: healthy brain is at 34 and a real head with its skull at 23. Three times the farthest training
#: input (7.2) keeps every one of the former inside and the real images 3 to 5 times above it.
THRESHOLD_MARGIN = 3.0

#: Levels at which the training inputs' distances are recorded in the summary (1.0: the largest).
DISTANCE_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.99, 1.0)

#: Smallest standard deviation a z-score divides by: a feature that did not vary over the training
#: inputs (one input, identical inputs) makes any change of it far outside instead of dividing by 0.
SPREAD_FLOOR = 1e-6

ArrayLike = Union[np.ndarray, Any]  # numpy arrays and torch tensors


def _volume(array: ArrayLike, what: str = "input") -> np.ndarray:
    """A 3D float64 array from a numpy array or tensor; leading axes of size 1 are dropped."""
    if hasattr(array, "detach"):  # a torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    data = np.asarray(array)
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise ValueError(f"{what}: expected a 3D volume on the model grid, got shape {data.shape}")
    data = data.astype(np.float64, copy=False)
    if not np.isfinite(data).all():
        raise ValueError(f"{what}: holds NaN or infinite values")
    return data


def _histogram_features(data: np.ndarray, what: str, levels: tuple[float, ...]
                        ) -> tuple[np.ndarray, float]:
    """Quantiles at ``levels`` of the voxels that are not 0, and the fraction of those voxels."""
    nonzero = data != 0
    count = int(nonzero.sum())
    if count == 0:
        raise ValueError(f"{what}: every voxel is 0; nothing to compare with the training inputs")
    return np.quantile(data[nonzero], levels), count / data.size


def _dissimilarity(data: np.ndarray, mean_image: np.ndarray) -> float:
    """``1 - r``, Pearson's r of two volumes over every voxel (1 when either is constant)."""
    a = data.ravel() - data.mean()
    b = mean_image.ravel() - mean_image.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return 1.0 - (float(a @ b) / norm if norm > 0 else 0.0)


def _z(value: Union[float, np.ndarray], mean, sd) -> Union[float, np.ndarray]:
    return (value - mean) / np.maximum(sd, SPREAD_FLOOR)


@dataclass(frozen=True)
class InputDistance:
    """How far one model input lies from the training inputs; see :func:`input_distance`.

    Attributes
    ----------
    quantile_z
        Root mean square over :data:`QUANTILE_LEVELS` of the z-scores of the input's intensity
        quantiles.
    dissimilarity_z
        z-score of ``1 - r`` with the training inputs' mean image (signed: negative is closer to
        the mean image than a typical training input).
    nonzero_fraction_z
        z-score of the fraction of the grid that is not 0 (signed).
    distance
        ``max(quantile_z, dissimilarity_z, |nonzero_fraction_z|)`` (0 at least).
    threshold
        The summary's threshold.
    outside
        ``distance > threshold``.
    """

    quantile_z: float
    dissimilarity_z: float
    nonzero_fraction_z: float
    distance: float
    threshold: float
    outside: bool

    def as_row(self) -> dict[str, Any]:
        """The predictions-TSV columns of the check."""
        return {
            "input_distance": self.distance,
            "input_distance_threshold": self.threshold,
            "outside_training_inputs": self.outside,
            "input_quantile_z": self.quantile_z,
            "input_dissimilarity_z": self.dissimilarity_z,
            "input_nonzero_fraction_z": self.nonzero_fraction_z,
        }


@dataclass(frozen=True, eq=False)
class InputSummary:
    """A model's training inputs, summarised on its grid; made by :func:`summarize_inputs`.

    Attributes
    ----------
    n_inputs
        How many training inputs were summarised.
    quantile_levels, quantile_mean, quantile_sd
        The levels, and the mean and standard deviation (``ddof=1``) across the inputs of each
        input's intensity quantile at that level (voxels that are not 0).
    nonzero_fraction_mean, nonzero_fraction_sd
        The fraction of the grid that is not 0: mean and standard deviation across the inputs.
    dissimilarity_mean, dissimilarity_sd
        ``1 - r`` of each input with the mean image of the inputs before it (prequential; see the
        module notes): mean and standard deviation.
    distance_levels, distance_quantiles
        The training inputs' prequential distances (:func:`input_distance` against the summary of
        the inputs before each) at these levels; 1.0 is the largest.
    n_distances
        How many training inputs were scored.
    threshold
        An input whose distance exceeds it is outside the training inputs.
    mean_image
        The mean of the training inputs on the model grid (float32, read-only).
    """

    n_inputs: int
    quantile_levels: tuple[float, ...]
    quantile_mean: tuple[float, ...]
    quantile_sd: tuple[float, ...]
    nonzero_fraction_mean: float
    nonzero_fraction_sd: float
    dissimilarity_mean: float
    dissimilarity_sd: float
    distance_levels: tuple[float, ...]
    distance_quantiles: tuple[float, ...]
    n_distances: int
    threshold: float
    mean_image: np.ndarray = field(repr=False)

    def __post_init__(self):
        image = np.array(self.mean_image, dtype=np.float32)  # a copy: the caller keeps theirs
        image.flags.writeable = False
        object.__setattr__(self, "mean_image", image)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputSummary):
            return NotImplemented
        numbers = [name for name in self.__dataclass_fields__ if name != "mean_image"]
        return (all(getattr(self, n) == getattr(other, n) for n in numbers)
                and np.array_equal(self.mean_image, other.mean_image))

    __hash__ = None  # type: ignore[assignment]  # equal summaries need not share a hash

    @property
    def shape(self) -> tuple[int, int, int]:
        """The model grid's shape (the mean image's)."""
        return tuple(int(n) for n in self.mean_image.shape)

    def to_json(self, mean_image: str, mean_image_sha256: str) -> dict[str, Any]:
        """The ``input_summary`` object of a model spec; the mean image is a file beside it.

        ``mean_image`` is the file's path as the spec writes it; ``mean_image_sha256`` its digest
        (``hashlib.sha256(mean_image_bytes(summary))``).
        """
        return {
            "n_inputs": self.n_inputs,
            "intensity_quantiles": {"levels": list(self.quantile_levels),
                                    "mean": list(self.quantile_mean),
                                    "sd": list(self.quantile_sd)},
            "nonzero_fraction": {"mean": self.nonzero_fraction_mean,
                                 "sd": self.nonzero_fraction_sd},
            "dissimilarity": {"mean": self.dissimilarity_mean, "sd": self.dissimilarity_sd},
            "training_distance": {"n": self.n_distances, "levels": list(self.distance_levels),
                                  "values": list(self.distance_quantiles)},
            "threshold": self.threshold,
            "mean_image": mean_image,
            "mean_image_sha256": mean_image_sha256,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], mean_image: np.ndarray, *, prefix: str = ""
                  ) -> "InputSummary":
        """Read :meth:`to_json`'s numbers (``mean_image`` is the array its file holds).

        Raises
        ------
        ValueError
            A key is missing or a value is not what it should be; the message names the key,
            after ``prefix`` (a spec passes ``"input_summary."``).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"'{prefix.rstrip('.')}' must be an object, got "
                             f"{type(data).__name__}")

        def where(*keys: str) -> str:
            return "'" + prefix + ".".join(keys) + "'"

        def part(key: str) -> Mapping[str, Any]:
            if key not in data:
                raise ValueError(f"{where(key)} is missing")
            value = data[key]
            if not isinstance(value, Mapping):
                raise ValueError(f"{where(key)} must be an object, got {type(value).__name__}")
            return value

        def number(value: Any, name: str, *, low: float = -math.inf, high: float = math.inf
                   ) -> float:
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and low <= value <= high):
                bounds = (f"a number in [{low:g}, {high:g}]" if math.isfinite(high) else
                          f"a number >= {low:g}" if math.isfinite(low) else "a finite number")
                raise ValueError(f"{name} must be {bounds}, got {value!r}")
            return float(value)

        def field_number(container: Mapping[str, Any], *keys: str, **bounds: float) -> float:
            if keys[-1] not in container:
                raise ValueError(f"{where(*keys)} is missing")
            return number(container[keys[-1]], where(*keys), **bounds)

        def field_numbers(container: Mapping[str, Any], *keys: str, length: Optional[int] = None,
                          **bounds: float) -> tuple[float, ...]:
            if keys[-1] not in container:
                raise ValueError(f"{where(*keys)} is missing")
            values = container[keys[-1]]
            if not isinstance(values, list) or not values or (
                    length is not None and len(values) != length):
                size = f"{length} numbers" if length is not None else "a non-empty list of numbers"
                raise ValueError(f"{where(*keys)} must be {size}, got {values!r}")
            return tuple(number(v, where(*keys), **bounds) for v in values)

        def count(container: Mapping[str, Any], *keys: str) -> int:
            value = container.get(keys[-1])
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where(*keys)} must be a positive integer, got {value!r}")
            return value

        quantiles = part("intensity_quantiles")
        levels = field_numbers(quantiles, "intensity_quantiles", "levels", low=0, high=1)
        if any(b <= a for a, b in zip(levels, levels[1:])):
            raise ValueError(f"{where('intensity_quantiles', 'levels')} must increase, got "
                             f"{list(levels)}")
        fraction = part("nonzero_fraction")
        dissimilarity = part("dissimilarity")
        distances = part("training_distance")
        distance_levels = field_numbers(distances, "training_distance", "levels", low=0, high=1)
        return cls(
            n_inputs=count(data, "n_inputs"),
            quantile_levels=levels,
            quantile_mean=field_numbers(quantiles, "intensity_quantiles", "mean",
                                        length=len(levels)),
            quantile_sd=field_numbers(quantiles, "intensity_quantiles", "sd", length=len(levels),
                                      low=0),
            nonzero_fraction_mean=field_number(fraction, "nonzero_fraction", "mean", low=0,
                                               high=1),
            nonzero_fraction_sd=field_number(fraction, "nonzero_fraction", "sd", low=0),
            dissimilarity_mean=field_number(dissimilarity, "dissimilarity", "mean", low=0, high=2),
            dissimilarity_sd=field_number(dissimilarity, "dissimilarity", "sd", low=0),
            distance_levels=distance_levels,
            distance_quantiles=field_numbers(distances, "training_distance", "values",
                                             length=len(distance_levels), low=0),
            n_distances=count(distances, "training_distance", "n"),
            threshold=field_number(data, "threshold", low=0),
            mean_image=mean_image,
        )


# ---- the check ----------------------------------------------------------------------------------


def _scores(quantiles: np.ndarray, fraction: float, dissimilarity: float, *, quantile_mean,
            quantile_sd, fraction_mean, fraction_sd, dissimilarity_mean, dissimilarity_sd
            ) -> tuple[float, float, float, float]:
    """The three z-scores and the distance (their maximum; see the module notes)."""
    quantile_z = float(np.sqrt(np.mean(_z(quantiles, np.asarray(quantile_mean),
                                          np.asarray(quantile_sd)) ** 2)))
    dissimilarity_z = float(_z(dissimilarity, dissimilarity_mean, dissimilarity_sd))
    fraction_z = float(_z(fraction, fraction_mean, fraction_sd))
    # Only a larger dissimilarity is unusual: an input closer to the mean image than a typical
    # training input is not outside anything.
    return quantile_z, dissimilarity_z, fraction_z, max(quantile_z, dissimilarity_z,
                                                        abs(fraction_z), 0.0)


def input_distance(array: ArrayLike, summary: InputSummary, *, what: str = "input"
                   ) -> InputDistance:
    """How far one model input lies from the training inputs ``summary`` describes.

    Parameters
    ----------
    array
        The input on the model grid exactly as the model sees it (after
        :func:`~nipype_xai.models.to_model_grid`): a 3D array, or a tensor whose leading axes are
        of size 1 (``(1, 1, X, Y, Z)``).
    summary
        The training inputs' summary (a model spec's ``input_summary``).
    what
        Names the input in messages.

    Returns
    -------
    InputDistance
        The three z-scores, their maximum (``distance``), the threshold and ``outside``.

    Raises
    ------
    ValueError
        The array is not 3D, not on the summary's grid, not finite, or all 0.
    """
    data = _volume(array, what)
    if data.shape != summary.shape:
        raise ValueError(f"{what}: shape {data.shape} differs from the model grid of the training "
                         f"inputs' summary {summary.shape}")
    quantiles, fraction = _histogram_features(data, what, summary.quantile_levels)
    scores = _scores(
        quantiles, fraction, _dissimilarity(data, summary.mean_image.astype(np.float64)),
        quantile_mean=summary.quantile_mean, quantile_sd=summary.quantile_sd,
        fraction_mean=summary.nonzero_fraction_mean, fraction_sd=summary.nonzero_fraction_sd,
        dissimilarity_mean=summary.dissimilarity_mean, dissimilarity_sd=summary.dissimilarity_sd,
    )
    quantile_z, dissimilarity_z, fraction_z, distance = scores
    return InputDistance(quantile_z=quantile_z, dissimilarity_z=dissimilarity_z,
                         nonzero_fraction_z=fraction_z, distance=distance,
                         threshold=summary.threshold, outside=bool(distance > summary.threshold))


# ---- the summary --------------------------------------------------------------------------------


class _Moments:
    """Running mean and standard deviation (``ddof=1``) of numbers or vectors (Welford, float64)."""

    def __init__(self, size: int = 1):
        self.n = 0
        self.mean = np.zeros(size)
        self._m2 = np.zeros(size)

    def add(self, value) -> None:
        self.n += 1
        delta = np.asarray(value, dtype=np.float64) - self.mean
        self.mean = self.mean + delta / self.n
        self._m2 = self._m2 + delta * (np.asarray(value, dtype=np.float64) - self.mean)

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(self._m2 / (self.n - 1)) if self.n > 1 else np.zeros_like(self.mean)


def summarize_inputs(arrays: Iterable[ArrayLike], *, threshold_margin: float = THRESHOLD_MARGIN
                     ) -> InputSummary:
    """Summarise a model's training inputs in one pass (memory flat in their number).

    Parameters
    ----------
    arrays
        The training inputs on the model grid, exactly as the model saw them (after
        :func:`~nipype_xai.models.to_model_grid`, and through the training augmentation when there
        was one; see :func:`nipype_xai.synth.train.training_inputs`): 3D arrays or tensors with
        leading axes of size 1, one at a time (a generator is read once). Their order matters only
        for the prequential figures (the dissimilarity's spread, the training distances and so
        the threshold); pass them in a random order rather than grouped by kind.
    threshold_margin
        ``threshold = threshold_margin * (largest training distance)``.

    Returns
    -------
    InputSummary

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_INPUTS` inputs, inputs of different shapes, or an input that is all 0 or not finite.
    """
    quantile_moments = _Moments(len(QUANTILE_LEVELS))
    fraction_moments = _Moments()
    dissimilarity_moments = _Moments()
    total: Optional[np.ndarray] = None
    distances: list[tuple[int, float]] = []
    count = 0
    for index, array in enumerate(arrays):
        what = f"training input {index}"
        data = _volume(array, what)
        if total is None:
            total = np.zeros(data.shape, dtype=np.float64)
        elif data.shape != total.shape:
            raise ValueError(f"{what}: shape {data.shape} differs from the first input's "
                             f"{total.shape}")
        quantiles, fraction = _histogram_features(data, what, QUANTILE_LEVELS)
        if index >= 1:
            # Prequential: this input against the inputs before it (module notes).
            dissimilarity = _dissimilarity(data, total / index)
            if dissimilarity_moments.n >= 2:
                distance = _scores(
                    quantiles, fraction, dissimilarity,
                    quantile_mean=quantile_moments.mean, quantile_sd=quantile_moments.sd,
                    fraction_mean=fraction_moments.mean[0], fraction_sd=fraction_moments.sd[0],
                    dissimilarity_mean=dissimilarity_moments.mean[0],
                    dissimilarity_sd=dissimilarity_moments.sd[0],
                )[3]
                distances.append((index, distance))
            dissimilarity_moments.add(dissimilarity)
        quantile_moments.add(quantiles)
        fraction_moments.add(fraction)
        total += data
        count += 1
    if count < MIN_INPUTS or total is None:
        raise ValueError(f"summarize_inputs needs at least {MIN_INPUTS} training inputs (the "
                         f"first one scored is compared with the 3 before it), got {count}")
    scored = [d for index, d in distances if index >= MIN_REFERENCE_INPUTS]
    scored = scored or [d for _, d in distances]
    return InputSummary(
        n_inputs=count,
        quantile_levels=QUANTILE_LEVELS,
        quantile_mean=tuple(float(v) for v in quantile_moments.mean),
        quantile_sd=tuple(float(v) for v in quantile_moments.sd),
        nonzero_fraction_mean=float(fraction_moments.mean[0]),
        nonzero_fraction_sd=float(fraction_moments.sd[0]),
        dissimilarity_mean=float(dissimilarity_moments.mean[0]),
        dissimilarity_sd=float(dissimilarity_moments.sd[0]),
        distance_levels=DISTANCE_LEVELS,
        distance_quantiles=tuple(float(v) for v in np.quantile(scored, DISTANCE_LEVELS)),
        n_distances=len(scored),
        threshold=float(threshold_margin * max(scored)),
        mean_image=total / count,
    )


# ---- the mean image's file ----------------------------------------------------------------------


def mean_image_bytes(mean_image: np.ndarray) -> bytes:
    """The mean image as the bytes of its file: a float32 ``.npy`` (format 1.0), C order.

    The same array always gives the same bytes, so a spec can carry their SHA-256 before the file
    is written, and a rerun writes an identical file.
    """
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(mean_image, dtype="<f4"),
                              version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


def mean_image_sha256(mean_image: np.ndarray) -> str:
    """SHA-256 (hex) of :func:`mean_image_bytes`."""
    return hashlib.sha256(mean_image_bytes(mean_image)).hexdigest()


def mean_image_from_bytes(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Read a mean image file's bytes (as :func:`mean_image_bytes` writes them).

    No pickle is ever read (``allow_pickle=False``), and the array must be float32, of ``shape``,
    finite, and in exactly the form :func:`mean_image_bytes` writes (so that a spec's digest and
    the file always agree).

    Raises
    ------
    ValueError
        Anything else; the message says what.
    """
    try:
        image = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # a truncated or foreign file fails in numpy's own ways
        raise ValueError(f"is not a NumPy .npy file readable without pickle ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if image.dtype != np.dtype("<f4"):
        raise ValueError(f"holds {image.dtype}, not float32")
    if tuple(image.shape) != tuple(shape):
        raise ValueError(f"holds an array of shape {tuple(image.shape)}, not the model grid's "
                         f"{tuple(shape)}")
    if not np.isfinite(image).all():
        raise ValueError("holds NaN or infinite values")
    if mean_image_bytes(image) != data:
        raise ValueError("is not in the form nipype-xai writes (float32 .npy 1.0, C order)")
    return image
