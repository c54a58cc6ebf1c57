"""PatternNet and PatternAttribution: backpropagation with learned signal directions.

Kindermans, Schütt, Alber, Müller, Erhan, Kim, Dähne 2018, "Learning how to explain neural
networks: PatternNet and PatternAttribution", ICLR. A linear neuron y = wᵀx sees signal and
distractor mixed in its input; its weight w cancels the distractor, so it points away from the
signal. The *pattern* a, fitted on data, is the direction of the signal the neuron detects
(Haufe et al. 2014): wᵀa = 1 and x = a·y + distractor. PatternNet backpropagates y_t with each
layer's weights replaced by its patterns (the input-space signal that produced y_t);
PatternAttribution with weights ⊙ patterns (how much each input voxel's signal contributes).
ReLU gates, max-pool switches and residual sums come from the forward pass, as for the gradient.

Definitions follow iNNvestigate 1.x (``innvestigate/tools/pattern.py``,
``analyzer/pattern_based.py``; removed in 2.0), the authors' implementation:

- statistics per output unit j of each layer with weights (``nn.Linear``, ``nn.Conv{1,2,3}d``),
  from the layer's input x (for a convolution, every input patch: all positions of all images,
  zero padding included) and its output without bias, y_j = w_jᵀx;
- ``"linear"`` estimator: a_j = Cov(x, y_j) / (w_jᵀ Cov(x, y_j)), over all samples;
- ``"relu"`` (two-component) estimator, iNNvestigate's ``"relu"`` = ``"relu.positive"``:
  a_j⁺ = (E₊[x y_j] − E₊[x] E[y_j]) / w_jᵀ(E₊[x y_j] − E₊[x] E[y_j]), E₊ over the samples where
  the unit is active (the ReLU it feeds is positive; E[y_j] over *all* samples, as in the
  paper and iNNvestigate). ``"relu.negative"`` uses the samples where it is not; only a⁺ matters
  for backpropagation, the ReLU's gradient being zero elsewhere. The ReLU a unit "feeds" is found
  as iNNvestigate's activation search does: the first ReLU its output reaches through batch
  norms, dropout and residual additions (so a ResNet block's second convolution and its
  shortcut are gated by the ReLU after the addition), and here also through max pools (which
  commute with the ReLU: SFCN's conv → norm → pool → ReLU);
- one deliberate difference: a layer that reaches no ReLU (the classifier) gets the linear
  estimator. Nothing rectifies its output, so both regimes pass on and the two-component
  premise does not hold; iNNvestigate instead masks it by its own output > 0, which for a
  classifier's output unit keeps only the images where that logit is positive and gives a unit
  never positive on the fitting images a zero pattern, hence an all-zero map for its class
  (seen on a randomly initialised 3D CNN);
- a unit whose statistics do not define a pattern (never active, or Cov = 0) gets a zero pattern
  (iNNvestigate's safe division).

Batch norm that follows a convolution / linear layer is merged into it first
(:mod:`.canonizers`): patterns belong to the merged layer, whose weight PatternAttribution
multiplies. iNNvestigate supports no batch norm at all; one that cannot be merged (DenseNet's
norm → ReLU → conv) is a per-channel affine map whose units have one input each, so its
pattern is 1/scale in closed form (:func:`_affine_pattern`). Layers with weights of other kinds
(grouped convolutions, layer / group norm, PReLU, ...) are refused.

iNNvestigate 1.x rescales the backpropagated signal at every bottleneck tensor to max |·| = 1
per sample (``reverse_project_bottleneck_layers``, against overflow in deep networks): positive
factors per sample, so its maps are these divided by their largest |value|. Maps here are raw
(SPEC §3); PatternNet's grow with depth (~10⁹ on a small MONAI ResNet), PatternAttribution's do
not (wᵀa = 1 at every unit).

Hand-written: captum, zennit and MONAI have no PatternNet, and iNNvestigate is TensorFlow 1/2
Keras only (and dropped it in 2.0). The statistics of a convolution are accumulated with
``torch.nn.grad.conv*d_weight``: Σ over positions of patch ⊗ g for several g at once, without
unfolding the patches; all sums in float64, in one streaming pass (memory does not grow with
the number of images).
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Container, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .canonizers import MergeFollowingBatchNorm, batch_norm_affine, batch_norm_layout
from .engine import AttributionWarning
from .model_state import forward, model_guard, target_output
from .registry import register_family

__all__ = [
    "ESTIMATORS",
    "PATTERN_METHODS",
    "PatternError",
    "PatternStatistics",
    "Patterns",
    "collect_statistics",
    "fit_patterns",
    "pattern_family",
]

#: Signal estimators :func:`fit_patterns` fits (iNNvestigate's names).
ESTIMATORS = ("linear", "relu")
#: Estimators :meth:`PatternStatistics.patterns` can compute (``"relu.negative"``: the other
#: component of the two-component estimator, for inspection; backpropagation uses ``"relu"``).
_ALL_ESTIMATORS = ("linear", "relu", "relu.negative")
#: The methods computed here (the ``pattern`` family).
PATTERN_METHODS = ("pattern_net", "pattern_attribution")

_KERNELS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_WEIGHT = {nn.Conv1d: torch.nn.grad.conv1d_weight, nn.Conv2d: torch.nn.grad.conv2d_weight,
                nn.Conv3d: torch.nn.grad.conv3d_weight}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules an activation search walks through: identities at inference once batch norm is merged.
_PASS_THROUGH = (*_BATCH_NORMS, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout, nn.Identity)
_ADDITIONS = (operator.add, operator.iadd, torch.add)
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
              nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# Parameter-free modules PatternNet backpropagates through as the gradient does.
_NON_RELU = (nn.ELU, nn.LeakyReLU, nn.PReLU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
             nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.ReLU6, nn.Hardswish,
             nn.Hardsigmoid, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink)

_FILE_FORMAT = "nipype-xai patterns"
_FILE_VERSION = 1


class PatternError(ValueError):
    """Patterns cannot be fitted for, or used with, this model (the message says why)."""


# --------------------------------------------------------------------------------------------
# The fitted patterns


@dataclass(frozen=True, eq=False)
class Patterns:
    """Fitted patterns of a model: one per layer with weights, shaped like its (merged) weight.

    Attributes
    ----------
    estimator
        ``"linear"`` or ``"relu"`` (see the module notes).
    layers
        ``{module name: pattern}``, float32 CPU tensors of the shape of the layer's weight after
        batch norm is merged into it.
    n_inputs
        Number of images the statistics came from.
    fitted_on
        What those images were (free text, recorded in sidecars and specs).
    undetermined
        ``{module name: number of units}`` whose statistics defined no pattern (zero patterns).
    """

    estimator: str
    layers: Mapping[str, torch.Tensor]
    n_inputs: int
    fitted_on: str = ""
    undetermined: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.estimator not in _ALL_ESTIMATORS:
            raise PatternError(f"estimator must be one of {list(ESTIMATORS)}, got "
                               f"{self.estimator!r}")
        layers = {}
        for name, tensor in self.layers.items():
            tensor = torch.as_tensor(tensor).detach().to("cpu", torch.float32).contiguous()
            if not bool(torch.isfinite(tensor).all()):
                raise PatternError(f"the pattern of layer {name!r} holds NaN or infinite values")
            layers[str(name)] = tensor
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "undetermined",
                           {str(k): int(v) for k, v in dict(self.undetermined).items()})
        object.__setattr__(self, "n_inputs", int(self.n_inputs))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Patterns):
            return NotImplemented
        return (self.estimator == other.estimator and self.n_inputs == other.n_inputs
                and self.fitted_on == other.fitted_on
                and dict(self.undetermined) == dict(other.undetermined)
                and list(self.layers) == list(other.layers)
                and all(torch.equal(self.layers[k], other.layers[k]) for k in self.layers))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # What a sidecar records (its Parameters hold this object): enough to identify it.
        fitted = f" ({self.fitted_on})" if self.fitted_on else ""
        return (f"<{self.estimator} patterns of {len(self.layers)} layers fitted on "
                f"{self.n_inputs} images{fitted}, sha256 {self.sha256()[:16]}>")

    def record(self) -> dict[str, Any]:
        """The description a model spec carries beside the file (JSON types)."""
        return {"estimator": self.estimator, "n_inputs": self.n_inputs,
                "fitted_on": self.fitted_on,
                "undetermined_units": sum(self.undetermined.values())}

    # ---- bytes (no files here: the model spec reads and writes them) -----------------------

    def to_bytes(self) -> bytes:
        """The patterns as an ``.npz`` archive (uncompressed; readable by ``np.load`` without
        pickle): ``meta.npy`` (a JSON string) and one float32 ``layer<i>.npy`` per layer.

        The same patterns always give the same bytes (fixed member dates), so a spec can carry
        their SHA-256 and a rerun writes an identical file.
        """
        meta = {"format": _FILE_FORMAT, "version": _FILE_VERSION, "estimator": self.estimator,
                "n_inputs": self.n_inputs, "fitted_on": self.fitted_on,
                "layers": list(self.layers), "undetermined": dict(self.undetermined)}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            members = [("meta.npy", np.array([json.dumps(meta, sort_keys=True)]))]
            members += [(f"layer{index}.npy", tensor.numpy())
                        for index, tensor in enumerate(self.layers.values())]
            for name, array in members:
                content = io.BytesIO()
                np.lib.format.write_array(content, np.ascontiguousarray(array), version=(1, 0),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                archive.writestr(info, content.getvalue())
        return buffer.getvalue()

    def sha256(self) -> str:
        """SHA-256 (hex) of :meth:`to_bytes`."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: Optional[int] = None) -> "Patterns":
        """Read :meth:`to_bytes`' archive: no pickle, members' sizes checked before reading.

        Parameters
        ----------
        data
            The archive's bytes.
        max_bytes
            Refuse an archive whose members would take more than this, unpacked.

        Raises
        ------
        ValueError
            Not such an archive, or not in exactly the form :meth:`to_bytes` writes (so that a
            spec's digest and the file always agree); the message says what.
        """
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                unpacked = sum(info.file_size for info in archive.infolist())
                if max_bytes is not None and unpacked > max_bytes:
                    raise ValueError(f"unpacks to {unpacked} bytes, more than the {max_bytes} "
                                     f"its model's weights could need")
        except zipfile.BadZipFile as error:
            raise ValueError(f"is not an .npz archive ({error})") from None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(str(archive["meta.npy"].reshape(-1)[0]))
                arrays = [archive[f"layer{index}.npy"] for index in range(len(meta["layers"]))]
        except Exception as error:  # noqa: BLE001 - numpy and json fail in their own ways
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise ValueError(f"is not a patterns archive readable without pickle "
                             f"({type(error).__name__}: {first_line})") from None
        if meta.get("format") != _FILE_FORMAT or meta.get("version") != _FILE_VERSION:
            raise ValueError(f"is not a {_FILE_FORMAT!r} archive of version {_FILE_VERSION}")
        for index, array in enumerate(arrays):
            if array.dtype != np.dtype("<f4"):
                raise ValueError(f"layer{index}.npy holds {array.dtype}, not float32")
        try:
            patterns = cls(meta["estimator"], {name: torch.from_numpy(np.array(array))
                                            for name, array in zip(meta["layers"], arrays)},
                           meta["n_inputs"], meta["fitted_on"], meta.get("undetermined", {}))
        except (KeyError, TypeError, PatternError) as error:
            raise ValueError(f"has an invalid description ({error})") from None
        if patterns.to_bytes() != data:
            raise ValueError("is not in the form nipype-xai writes (uncompressed .npz of float32 "
                             ".npy 1.0 members)")
        return patterns


# --------------------------------------------------------------------------------------------
# The model: its layers with weights, batch norm merged, the ReLU each layer feeds


def _layers(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """``(kernels, affines)`` by module name: the layers patterns are fitted for, and the batch
    norms that follow no such layer (per-channel affine maps, see :func:`_affine_pattern`).

    Raises for layers PatternNet does not define (other layers with weights, grouped
    convolutions, batch norm without running statistics).
    """
    kernels, affines, refused = {}, {}, []
    layout = batch_norm_layout(model)
    merged = {bn for _, bn in layout.merge}
    standalone = set(layout.standalone)
    for name, module in model.named_modules():
        if isinstance(module, _KERNELS):
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
                refused.append(f"{name or type(module).__name__} (grouped convolution)")
            else:
                kernels[name] = module
        elif isinstance(module, _BATCH_NORMS):
            if name in standalone:
                affines[name] = module
            elif name not in merged:
                refused.append(f"{name} (batch norm without running statistics)")
        elif any(True for _ in module.parameters(recurse=False)):
            refused.append(f"{name or type(module).__name__} ({type(module).__name__})")
    if refused:
        raise PatternError(
            "PatternNet / PatternAttribution are defined for networks of convolution / linear "
            "layers, inference-mode batch norm, ReLU, pooling, concatenation and residual "
            f"sums; this model has {', '.join(refused[:5])}"
            f"{f' and {len(refused) - 5} more' if len(refused) > 5 else ''}")
    if not kernels:
        raise PatternError("the model has no convolution or linear layer to fit patterns for")
    return kernels, affines


def _affine_pattern(batch_norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, pattern)`` of a batch norm that follows no linear layer (DenseNet's norm → ReLU
    → conv): a per-channel affine map y = s·x + t, each unit one input. The pattern of a
    one-input unit needs no statistics: the signal lies along its only input, and wᵀa = 1 gives
    a = 1/s for every estimator (Cov(x, y) = s·Var(x)). PatternNet divides by s there and
    PatternAttribution (s · 1/s) passes its signal on unchanged; a unit with s = 0 has none."""
    scale, _ = batch_norm_affine(batch_norm)
    pattern = torch.where(scale != 0, 1.0 / torch.where(scale != 0, scale, 1.0), 0.0)
    return scale, pattern


def _non_relu_activations(model: nn.Module) -> list[str]:
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, _NON_RELU)})


@contextmanager
def _merged_batch_norm(model: nn.Module) -> Iterator[None]:
    """Batch norm merged into the layer it follows for the duration of the block (restored
    exactly afterwards; :class:`~nipype_xai.attribution.canonizers.MergeFollowingBatchNorm`)."""
    layout = batch_norm_layout(model)
    instances = []
    try:
        if layout.merge:
            canonizer = MergeFollowingBatchNorm([((linear,), bn) for linear, bn in layout.merge])
            instances = canonizer.apply(model)
        yield
    finally:
        for instance in reversed(instances):
            instance.remove()


#: Where the "active" mask of a layer's units is read: ``"output"``, the layer's own output
#: (bias included); ``(ReLU module name, index of its call in one forward pass)``, that ReLU's
#: output; ``"none"``, nowhere: no ReLU rectifies the layer (the linear estimator applies).
Gate = Union[str, tuple[str, int]]


def _is_relu(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _passes_through(node: torch.fx.Node, source: torch.fx.Node,
                    modules: Mapping[str, nn.Module], affines: Container[str]) -> Optional[str]:
    """``"module"`` (an identity at inference), ``"affine"`` (a batch norm not merged),
    ``"pool"`` or ``"add"`` if an activation search walks on from ``source`` through ``node``,
    else None."""
    if node.op == "call_module" and node.target in affines:
        return "affine"
    if node.op == "call_module" and isinstance(modules[node.target], _PASS_THROUGH):
        return "module"
    if node.op == "call_module" and isinstance(modules[node.target], _MAX_POOLS):
        return "pool"
    is_add = ((node.op == "call_function" and node.target in _ADDITIONS)
              or (node.op == "call_method" and node.target in ("add", "add_")))
    if is_add and len(node.args) == 2 and not node.kwargs and all(
            isinstance(arg, torch.fx.Node) for arg in node.args) and source in node.args:
        return "add"
    return None


def relu_gates(model: nn.Module, kernels: Mapping[str, nn.Module],
               affines: Container[str] = ()) -> dict[str, Gate]:
    """For each layer with weights, where its units' "active" mask is read (iNNvestigate's
    activation search; see the module notes and :data:`Gate`).

    The search follows the layer's output while it has a single consumer that is a batch norm
    (merged: the identity; or one of ``affines``, not merged), dropout (off), a max pool (which
    commutes with the ReLU: the unit is active where its own output is positive) or a residual
    addition. A layer that reaches a ReLU through identities and max pools only is gated by its
    own output (the ReLU's input *is* it, pooled); through an addition or an unmerged batch
    norm, by that ReLU's output, which must then be an ``nn.ReLU`` module (so a hook can read
    it) and not come after a max pool (its output would not be laid out like the layer's). A
    layer that reaches no ReLU this way (the classifier; DenseNet's convolutions, whose output
    is concatenated first) is not gated: the linear estimator describes it.

    Raises
    ------
    PatternError
        The model cannot be traced by ``torch.fx``, a layer runs more than once per forward
        pass, or a residual path ends in a ReLU whose output cannot be read as the mask.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as error:  # noqa: BLE001 - data-dependent control flow and the like
        raise PatternError(
            f"the 'relu' estimator needs the model's data flow (torch.fx could not trace it: "
            f"{type(error).__name__}) to find the ReLU each layer feeds; use estimator='linear'"
        ) from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    gates: dict[str, Gate] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        index = calls.get(node.target, 0)
        calls[node.target] = index + 1
        if node.target not in kernels:
            continue
        if index:
            raise PatternError(f"layer {node.target!r} runs more than once per forward pass "
                               f"(shared weights); patterns are defined per layer application")
        current, kinds, gate = node, set(), None
        while len(current.users) == 1:
            (user,) = current.users
            if _is_relu(user, modules):
                gate = user
                break
            kind = _passes_through(user, current, modules, affines)
            if kind is None:
                break
            kinds.add(kind)
            current = user
        if gate is None:
            gates[node.target] = "none"
        elif not kinds & {"add", "affine"}:
            gates[node.target] = "output"
        elif gate.op != "call_module" or "pool" in kinds:
            raise PatternError(
                f"layer {node.target!r} reaches its ReLU through a residual addition or batch "
                f"norm{' after a max pool' if 'pool' in kinds else ''}, where its mask cannot "
                f"be read{'' if 'pool' in kinds else ' (a functional ReLU: make it nn.ReLU)'}; "
                "use estimator='linear'")
        else:
            gates[node.target] = (gate.target, _call_index(graph, gate))
    return gates


def _call_index(graph: torch.fx.Graph, target: torch.fx.Node) -> int:
    index = 0
    for node in graph.nodes:
        if node is target:
            return index
        if node.op == "call_module" and node.target == target.target:
            index += 1
    raise AssertionError("node not in its graph")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Statistics: one streaming pass


def _channels_last(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """(positions, units): a linear layer's units are its last axis, a convolution's axis 1."""
    if isinstance(module, nn.Linear):
        return tensor.reshape(-1, tensor.shape[-1])
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


def _neuronwise_sums(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Σ over all positions of the layer's input patch ⊗ g: shape (channels of g, patch size).

    ``g`` is laid out like the layer's output (any number of channels). For a convolution the
    patches are those it computes on (stride, dilation, padding and padding mode included).
    """
    if isinstance(module, nn.Linear):
        return _channels_last(g, module).T @ x.reshape(-1, x.shape[-1])
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        # As _ConvNd._conv_forward: pad first ('same' may pad one more on the right).
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    weight_size = (g.shape[1], *module.weight.shape[1:])
    sums = _CONV_WEIGHT[type(module)](x, weight_size, g, stride=module.stride, padding=padding,
                                      dilation=module.dilation, groups=1)
    return sums.reshape(g.shape[1], -1)


class PatternStatistics:
    """Running sums from which :meth:`patterns` computes every estimator.

    Per layer (J units, patch size d): the sample count n, the per-unit active counts n₊, Σx,
    Σy_j, and Σ x y_j, Σ x·[active_j], Σ x y_j·[active_j] (J × d each), all float64. Their size
    is fixed by the model: it does not grow with the number of images (:meth:`state_size`).

    Build it with :func:`collect_statistics` (which runs the model); :meth:`add` takes one
    layer's batch (used by it, and exposed for tests).
    """

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.weights: dict[str, torch.Tensor] = {}
        #: Per layer, for statistics collected with masks: whether a ReLU rectifies it.
        self.rectified: dict[str, bool] = {}
        self.n_inputs = 0

    def add(self, name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor,
            active: Optional[torch.Tensor]) -> None:
        """Add one batch of layer ``name``: its input ``x``, bias-free output ``y`` and, for the
        two-component estimator, the mask ``active`` (shaped like ``y``)."""
        x = x.detach().to(torch.float64)
        y = y.detach().to(torch.float64)
        units = y.shape[-1] if isinstance(module, nn.Linear) else y.shape[1]
        axis = -1 if isinstance(module, nn.Linear) else 1
        ones = torch.ones_like(y.narrow(axis, 0, 1))
        parts = [ones, y]
        if active is not None:
            mask = active.detach().to(torch.float64)
            parts += [mask, y * mask]
        sums = _neuronwise_sums(module, x, torch.cat(parts, dim=axis))
        flat_y = _channels_last(y, module)
        new = {"n": torch.tensor(float(flat_y.shape[0]), dtype=torch.float64),
               "x": sums[0], "xy": sums[1:1 + units], "y": flat_y.sum(0)}
        if active is not None:
            new.update(xm=sums[1 + units:1 + 2 * units], xym=sums[1 + 2 * units:],
                       m=_channels_last(mask, module).sum(0))
        # Kept on the CPU (a few values per weight): the model may run on a GPU.
        new = {key: value.cpu() for key, value in new.items()}
        old = self.sums.get(name)
        if old is not None and set(old) != set(new):
            raise PatternError(f"layer {name!r}: batches with and without ReLU masks mixed")
        self.sums[name] = new if old is None else {k: old[k] + new[k] for k in old}

    def state_size(self) -> int:
        """Number of values held (constant in the number of images)."""
        return sum(t.numel() for sums in self.sums.values() for t in sums.values())

    def patterns(self, estimator: str = "relu", *, fitted_on: str = "",
                 undetermined: str = "zero") -> Patterns:
        """The patterns of ``estimator`` (``"linear"``, ``"relu"``, ``"relu.negative"``).

        ``undetermined="zero"``: units whose statistics define no pattern get zeros
        (iNNvestigate); ``"filter"``: the filter's own direction w / (wᵀw), which satisfies
        wᵀa = 1 like a pattern (the paper's S_w estimator; used when fitting on the explained
        image alone, where a layer sees one sample per image).
        """
        if estimator not in _ALL_ESTIMATORS:
            raise PatternError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
        if not self.sums:
            raise PatternError("no statistics: no image was seen")
        layers, counts = {}, {}
        for name, s in self.sums.items():
            weight = self.weights[name].to(torch.float64)
            w = weight.reshape(weight.shape[0], -1)
            if estimator != "linear" and name not in self.rectified:
                raise PatternError(f"the statistics of layer {name!r} have no ReLU masks; "
                                   "collect them with masks=True for the 'relu' estimator")
            if estimator == "linear" or not self.rectified[name]:
                # No ReLU rectifies this layer (the classifier): both of its regimes pass on,
                # and the single-component estimator is the one that describes it.
                count, sx, sxy = s["n"].expand(w.shape[0]), s["x"].expand_as(s["xy"]), s["xy"]
            elif estimator == "relu":
                count, sx, sxy = s["m"], s["xm"], s["xym"]
            else:
                count, sx, sxy = s["n"] - s["m"], s["x"] - s["xm"], s["xy"] - s["xym"]
            safe = count.clamp(min=1.0)[:, None]
            mean_x, mean_xy = sx / safe, sxy / safe
            mean_y = (s["y"] / s["n"])[:, None]
            covariance = mean_xy - mean_x * mean_y
            denominator = (w * covariance).sum(1)
            cov_norm = covariance.norm(dim=1)
            # Cancellation level of E[xy] - E[x]E[y] in float64: below it, Cov is rounding.
            scale = mean_xy.norm(dim=1) + mean_x.norm(dim=1) * mean_y[:, 0].abs()
            defined = ((count > 0) & (cov_norm > 1e-10 * scale)
                       & (denominator.abs() > 1e-10 * cov_norm * w.norm(dim=1)))
            pattern = torch.zeros_like(w)
            pattern[defined] = covariance[defined] / denominator[defined, None]
            if undetermined == "filter":
                missing = ~defined & (w.norm(dim=1) > 0)
                pattern[missing] = w[missing] / (w[missing] ** 2).sum(1, keepdim=True)
            elif undetermined != "zero":
                raise ValueError(f"undetermined must be 'zero' or 'filter', got {undetermined!r}")
            layers[name] = pattern.reshape(weight.shape)
            counts[name] = int((~defined).sum())
        return Patterns(estimator, layers, self.n_inputs, fitted_on,
                        {k: v for k, v in counts.items() if v})


def _check_input_batch(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else ""
        raise PatternError(f"each batch of inputs must be a float tensor (B, C, ...), got "
                           f"{type(x).__name__}{shape}")
    if not bool(torch.isfinite(x).all()):
        raise PatternError("an input batch holds NaN or infinite values")
    return x


def collect_statistics(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    masks: bool = True,
) -> PatternStatistics:
    """One pass of ``model`` over ``batches``, accumulating every layer's statistics.

    Parameters
    ----------
    model
        The network (left exactly as it was: eval mode during the pass, batch norm merged only
        during it, hooks removed).
    batches
        An iterable of input batches (B, C, X, Y, Z), consumed once (a generator reading images
        one at a time keeps memory flat).
    masks
        Also collect the two-component (``"relu"``) estimator's masked sums (needs a model
        ``torch.fx`` can trace, see :func:`relu_gates`).

    Returns
    -------
    PatternStatistics
    """
    statistics = PatternStatistics()
    with model_guard(model) as device, _merged_batch_norm(model):
        kernels, affines = _layers(model)
        gates = relu_gates(model, kernels, set(affines)) if masks else {}
        calls: dict[str, int] = {}
        pending: dict[tuple[str, int], list] = {}
        handles = []

        def kernel_hook(name: str, module: nn.Module, inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise PatternError(f"layer {name!r} runs more than once per forward pass "
                                   "(shared weights); patterns are defined per layer application")
            x = inputs[0]
            y = output if module.bias is None else output - _bias_view(module, output)
            # A bare layer traced as a function (the model is one nn.Linear) feeds nothing.
            gate = gates.get(name, "none")
            if masks:
                statistics.rectified[name] = gate != "none"
            if not masks or gate == "none":
                statistics.add(name, module, x, y, None)
            elif gate == "output":
                statistics.add(name, module, x, y, output > 0)
            else:  # the mask comes with the ReLU after the residual addition
                pending.setdefault(gates[name], []).append((name, module, x.detach().clone(),
                                                            y.detach().clone()))

        def gate_hook(relu: str, module: nn.Module, inputs, output) -> None:
            index = calls.get(f"relu:{relu}", 0)
            calls[f"relu:{relu}"] = index + 1
            for name, kernel, x, y in pending.pop((relu, index), []):
                if output.shape != y.shape:
                    raise PatternError(f"layer {name!r}: the ReLU {relu!r} it feeds has output "
                                       f"shape {tuple(output.shape)}, not {tuple(y.shape)}")
                statistics.add(name, kernel, x, y, output > 0)

        try:
            modules = dict(model.named_modules())
            for name, module in kernels.items():
                handles.append(module.register_forward_hook(partial(kernel_hook, name)))
            for relu in sorted({gate[0] for gate in gates.values() if isinstance(gate, tuple)}):
                handles.append(modules[relu].register_forward_hook(partial(gate_hook, relu)))
            with torch.no_grad():
                for batch in batches:
                    batch = _check_input_batch(batch)
                    calls.clear()
                    forward(model, batch.to(device))
                    if pending:  # pragma: no cover - a traced gate always runs
                        raise PatternError(f"the ReLU(s) {sorted(pending)} never ran")
                    statistics.n_inputs += int(batch.shape[0])
        finally:
            for handle in handles:
                handle.remove()
        statistics.weights = {name: module.weight.detach().to("cpu", torch.float64).clone()
                              for name, module in kernels.items() if name in statistics.sums}
    return statistics


def _bias_view(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return module.bias
    return module.bias.reshape(1, -1, *([1] * (output.ndim - 2)))


def _batches(inputs: Union[torch.Tensor, Iterable[torch.Tensor]], batch_size: int
             ) -> Iterator[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield from inputs.split(batch_size)
    else:
        for batch in inputs:
            # A lone volume (C, X, Y, Z) from a generator of images is a batch of one.
            yield batch.unsqueeze(0) if isinstance(batch, torch.Tensor) and batch.ndim == 4 \
                else batch


def fit_patterns(
    model: nn.Module,
    inputs: Union[torch.Tensor, Iterable[torch.Tensor]],
    *,
    estimator: str = "relu",
    batch_size: int = 8,
    fitted_on: str = "",
) -> Patterns:
    """Fit the patterns of ``model`` on ``inputs`` in one streaming pass.

    Parameters
    ----------
    model
        The network to explain later (its batch norm merged during the pass; see the module
        notes for the layers it may have).
    inputs
        Images on the model grid as the model sees them (normalised): a tensor (N, C, X, Y, Z),
        split into ``batch_size`` chunks, or an iterable of batches (or of single volumes
        (C, X, Y, Z)), read once.
    estimator
        ``"relu"`` (the two-component estimator; default) or ``"linear"``.
    batch_size
        Images per forward pass when ``inputs`` is a tensor.
    fitted_on
        What the images are, for the record.

    Returns
    -------
    Patterns
    """
    if estimator not in ESTIMATORS:
        raise PatternError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    statistics = collect_statistics(model, _batches(inputs, batch_size),
                                    masks=estimator == "relu")
    return statistics.patterns(estimator, fitted_on=fitted_on)


# --------------------------------------------------------------------------------------------
# Backpropagation with the patterns


def _kernel_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with ``weight`` in place of its own, without bias (a batch
    norm's ``weight``: one factor per channel)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    if isinstance(module, _BATCH_NORMS):
        return x * weight.reshape(1, -1, *([1] * (x.ndim - 2)))
    return module._conv_forward(x, weight, None)


def _swap_backward(module: nn.Module, inputs, output, *, weight: torch.Tensor) -> torch.Tensor:
    # The forward value stays the layer's own (ReLU gates and pooling switches are the model's);
    # the backward pass goes through ``weight``: d(output)/d(input) = that of x -> weight·x.
    surrogate = _kernel_forward(module, inputs[0], weight)
    return output.detach() + (surrogate - surrogate.detach())


def _check_patterns(patterns: Patterns, kernels: Mapping[str, nn.Module]) -> None:
    missing = [name for name in kernels if name not in patterns.layers]
    if missing:
        raise PatternError(f"the patterns have no entry for layer(s) {missing[:5]}: they were "
                           f"fitted for another model")
    for name, module in kernels.items():
        if tuple(patterns.layers[name].shape) != tuple(module.weight.shape):
            raise PatternError(f"the pattern of layer {name!r} has shape "
                               f"{tuple(patterns.layers[name].shape)}, its weight "
                               f"{tuple(module.weight.shape)}: fitted for another model")


def _backpropagate(model: nn.Module, replacements: Mapping[nn.Module, torch.Tensor],
                   x: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """y_t backpropagated to the input with each layer's weight replaced (one forward and one
    backward pass); the output's value y_t starts the pass (iNNvestigate's head mapping)."""
    handles = [module.register_forward_hook(partial(_swap_backward, weight=weight))
               for module, weight in replacements.items()]
    try:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = target_output(forward(model, x), target)
            (signal,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
    finally:
        for handle in handles:
            handle.remove()
    return signal


def _pattern_maps(model: nn.Module, patterns: Patterns, x: torch.Tensor,
                  target: Optional[torch.Tensor], names: Sequence[str]
                  ) -> dict[str, torch.Tensor]:
    """Maps of ``names`` for ``x``; batch norm must be merged (inside ``_merged_batch_norm``)."""
    kernels, affines = _layers(model)
    _check_patterns(patterns, kernels)
    layers = [(module, module.weight.detach(),
               patterns.layers[name].to(module.weight.device, module.weight.dtype))
              for name, module in kernels.items()]
    for module in affines.values():
        scale, pattern = _affine_pattern(module)
        layers.append((module, scale, pattern))
    maps = {}
    for name in names:
        replacements = {module: pattern if name == "pattern_net" else weight * pattern
                        for module, weight, pattern in layers}
        maps[name] = _backpropagate(model, replacements, x, target)
    return maps


_REFERENCE = ("hand computation following iNNvestigate 1.x's definitions (closed-form linear "
              "case: pattern = Cov(x, y)/Var(y)); reduces to y_t·gradient with weights as "
              "patterns")


@register_family(
    "pattern",
    {
        "pattern_net": {
            "row": 31,
            "description": "PatternNet (Kindermans et al. 2018): y_t backpropagated with each "
                           "layer's weights replaced by its signal patterns (estimator 'relu', "
                           "patterns from the model spec or fitted on each explained image)",
            "reference": _REFERENCE},
        "pattern_attribution": {
            "row": 32,
            "description": "PatternAttribution (Kindermans et al. 2018): y_t backpropagated with "
                           "weights ⊙ patterns",
            "reference": _REFERENCE},
    },
)
def pattern_family(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[torch.Tensor],
    names: Iterable[str],
    *,
    patterns: Optional[Patterns] = None,
    estimator: Optional[str] = None,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """PatternNet / PatternAttribution maps.

    ``patterns``: fitted :class:`Patterns` (:func:`fit_patterns`, or the model spec's, which
    :func:`~nipype_xai.models.inference.explain_image` passes). ``None``: each image's patterns
    are fitted on that image alone (its convolutions' statistics over its positions; a layer
    with one sample per image, such as the classifier after global pooling, falls back to its
    filter direction), and an :class:`AttributionWarning` says so: a map from its own image's
    statistics is a map, not one from the model's training distribution. ``estimator``: the
    estimator of that per-image fit (default ``"relu"``); with fitted patterns it must be theirs
    or None. ``batch_size``: images per pass.
    """
    names = list(names)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if patterns is not None and not isinstance(patterns, Patterns):
        raise PatternError(f"patterns must be fitted Patterns (nipype_xai.attribution.patterns."
                           f"fit_patterns), got {type(patterns).__name__}")
    if estimator is not None and estimator not in ESTIMATORS:
        raise PatternError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if patterns is not None and estimator is not None and estimator != patterns.estimator:
        raise PatternError(f"estimator {estimator!r} given with patterns fitted with "
                           f"{patterns.estimator!r}")
    non_relu = _non_relu_activations(model)
    if non_relu:
        warnings.warn(f"PatternNet's estimators assume ReLU networks; this model also has "
                      f"{', '.join(non_relu)}, backpropagated as their gradient",
                      AttributionWarning)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    if patterns is None:
        estimator = estimator or "relu"
        undetermined = 0
        for index in range(x.shape[0]):
            image = x[index:index + 1]
            statistics = collect_statistics(model, [image], masks=estimator == "relu")
            own = statistics.patterns(estimator, undetermined="filter",
                                      fitted_on="the explained image")
            undetermined = max(undetermined, sum(own.undetermined.values()))
            with _merged_batch_norm(model):
                maps = _pattern_maps(model, own, image,
                                     None if target is None else target[index:index + 1], names)
            for name in names:
                chunks[name].append(maps[name])
        warnings.warn(
            f"no fitted patterns given: each image's {estimator!r} patterns were fitted on that "
            f"image alone (convolution statistics over its positions; up to {undetermined} units "
            "per image, such as the classifier's, had too few samples and use their filter "
            "direction w/(wᵀw)). Fit patterns on training images (nipype_xai.attribution."
            "patterns.fit_patterns, or 'nipype-xai fit-patterns' into the model spec) and pass "
            "patterns=", AttributionWarning)
    else:
        with _merged_batch_norm(model):
            for start in range(0, x.shape[0], batch_size):
                stop = start + batch_size
                maps = _pattern_maps(model, patterns, x[start:stop],
                                     None if target is None else target[start:stop], names)
                for name in names:
                    chunks[name].append(maps[name])
    return {name: torch.cat(chunks[name]) for name in names}
