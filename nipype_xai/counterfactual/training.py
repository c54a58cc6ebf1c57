"""Training a simulator against a frozen classifier, and asking it for counterfactuals.

Liu, Adeli, Pohl and Zhao (IPMI 2021) train the simulator ``S`` with the classifier ``F`` frozen.
For an image ``x`` of class ``c`` and a requested class ``c'`` (here: another class, drawn
uniformly), ``S(x, c')`` is a velocity field whose exponential ``phi`` gives the simulated image
``x' = x o phi``; ``S(x', c)`` must bring it back (``x'' = x' o phi_back``). The loss, with the
weights of :class:`SimulatorSettings`, is

* **target** (``weight_classification``, 1): the cross-entropy of ``F(x')`` towards ``c'`` and of
  ``F(x'')`` towards ``c``, averaged: each leg asks the classifier to see the requested class;
* **smoothness** (``weight_smoothness``, 1): the squared spatial gradient of both velocity
  fields (MONAI's :class:`~monai.losses.DiffusionLoss`, VoxelMorph's regulariser), voxel units;
* **cycle consistency** (``weight_cycle``, 1): the mean squared difference between ``x''`` and
  ``x`` (the round trip ``c -> c' -> c`` gives the image back);
* **magnitude** (``weight_magnitude``, 0.01): the mean squared velocity, voxels: of all the
  deformations that convince the classifier, the smallest (a counterfactual should change as
  little as it can). Small, so it breaks ties rather than fighting the target term.

``c`` is the subject's label (the class the cohort says it has). The classifier never changes:
it is put in eval mode with no parameter gradients for the duration of the call
(:func:`~nipype_xai.attribution.model_state.model_guard`), and its weights are compared before
and after.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..attribution.model_state import forward, model_guard
from ..synth.training_data import balanced_batches
from .deformation import (
    integrate_velocity,
    log_jacobian_determinant,
    to_world_units,
    warp_image,
)
from .simulator import DEFAULT_FEATURES, Simulator

__all__ = [
    "CounterfactualResult",
    "SimulatorSettings",
    "class_log_probabilities",
    "counterfactual",
    "train_simulator",
]


@dataclass(frozen=True)
class SimulatorSettings:
    """How a simulator is built and trained (written into its spec).

    Attributes
    ----------
    epochs, batch_size, lr, seed
        AdamW optimisation (no weight decay), class-balanced batches; ``seed`` fixes the initial
        weights, the batch order and the requested classes.
    weight_classification, weight_smoothness, weight_cycle, weight_magnitude
        Weights of the loss terms (see the module notes).
    features, max_velocity_voxels, smoothing_voxels, downsample
        The :class:`~nipype_xai.counterfactual.simulator.Simulator`'s architecture.
    n_squarings
        Scaling-and-squaring steps of the integration.
    """

    epochs: int = 5
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    weight_classification: float = 1.0
    weight_smoothness: float = 1.0
    weight_cycle: float = 1.0
    weight_magnitude: float = 0.01
    features: tuple[int, ...] = DEFAULT_FEATURES
    max_velocity_voxels: float = 3.0
    smoothing_voxels: float = 1.0
    downsample: int = 2
    n_squarings: int = 7

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "downsample", "n_squarings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"simulator setting {name} must be a positive integer, got "
                                 f"{value!r}")
        for name in ("lr", "max_velocity_voxels"):
            if not _number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"simulator setting {name} must be a positive number, got "
                                 f"{getattr(self, name)!r}")
        for name in ("weight_classification", "weight_smoothness", "weight_cycle",
                     "weight_magnitude", "smoothing_voxels"):
            if not _number(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"simulator setting {name} must be a number >= 0, got "
                                 f"{getattr(self, name)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"simulator setting seed must be an integer, got {self.seed!r}")
        features = tuple(self.features)
        if len(features) != 6 or not all(isinstance(f, int) and not isinstance(f, bool)
                                         and f > 0 for f in features):
            raise ValueError(f"simulator setting features must be six positive integers, got "
                             f"{self.features!r}")
        object.__setattr__(self, "features", features)

    def simulator_kwargs(self) -> dict[str, Any]:
        """The :class:`Simulator` keyword arguments these settings describe."""
        return {"features": list(self.features), "max_velocity_voxels": self.max_velocity_voxels,
                "smoothing_voxels": self.smoothing_voxels, "downsample": self.downsample}

    def to_dict(self) -> dict[str, Any]:
        """JSON form (lists for tuples)."""
        out = dataclasses.asdict(self)
        out["features"] = list(self.features)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SimulatorSettings":
        """Settings from :meth:`to_dict`'s form; an unknown key or a bad value is a ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown simulator setting(s) {unknown}")
        values = dict(data)
        if "features" in values and isinstance(values["features"], list):
            values["features"] = tuple(values["features"])
        return cls(**values)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def class_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(B, K)`` of a classifier's output ``(B, K)``.

    A single logit is a binary classifier scoring its second class (SPEC §4): its two classes get
    ``log sigmoid(-z)`` and ``log sigmoid(z)``.
    """
    if logits.shape[1] == 1:
        return torch.cat([nn.functional.logsigmoid(-logits), nn.functional.logsigmoid(logits)],
                         dim=1)
    return torch.log_softmax(logits, dim=1)


def _n_classes(classifier: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        n_outputs = forward(classifier, x[:1]).shape[1]
    return 2 if n_outputs == 1 else n_outputs


def _other_classes(labels: torch.Tensor, n_classes: int, generator: torch.Generator
                   ) -> torch.Tensor:
    """A class other than each label, drawn uniformly among the others."""
    step = torch.randint(1, n_classes, labels.shape, generator=generator)
    return (labels + step) % n_classes


def _leg(simulator: Simulator, classifier: nn.Module, x: torch.Tensor, target: torch.Tensor,
         n_squarings: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One simulated step: velocity, moved image, classifier log-probabilities of the result."""
    velocity = simulator(x, target)
    moved = warp_image(x, integrate_velocity(velocity, n_squarings))
    return velocity, moved, class_log_probabilities(forward(classifier, moved))


def _smoothness(diffusion: nn.Module, velocity: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        # MONAI 1.6 indexes with a list of slices, which torch >= 2.9 warns about; same values.
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence")
        return diffusion(velocity)


def train_simulator(
    classifier: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    settings: Optional[SimulatorSettings] = None,
    *,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
) -> tuple[Simulator, dict[str, Any]]:
    """Train a simulator to move ``classifier``'s answer, the classifier frozen.

    Parameters
    ----------
    classifier
        The model to explain. It is not changed (eval mode, no parameter gradients during the
        call; its weights are checked afterwards).
    inputs
        ``(N, C, X, Y, Z)`` images on the classifier's grid, prepared as for inference.
    labels
        ``(N,)`` class index of each image (the class the cycle returns to).
    settings
        :class:`SimulatorSettings` (default: its defaults).
    device
        Where to train.
    progress
        A tqdm bar over the epochs.

    Returns
    -------
    simulator : Simulator
        Trained, in eval mode, on ``device``.
    history : dict
        Per epoch: ``loss`` (weighted total) and its terms ``classification``, ``smoothness``,
        ``cycle``, ``magnitude`` (unweighted means over the samples), ``flip_rate`` (share of
        first legs the classifier assigns to the requested class); ``seconds`` (wall),
        ``cpu_seconds`` (this process's CPU time: the cost on a shared machine), ``n_parameters``,
        ``n_classes``, ``n_inputs``.

    Notes
    -----
    The same seed, data, settings, PyTorch build and thread count give bit-identical weights on
    the CPU (deterministic algorithms are switched on for the call; the global RNG is restored).
    """
    from monai.losses import DiffusionLoss
    from tqdm.auto import tqdm

    settings = settings or SimulatorSettings()
    if inputs.ndim != 5 or labels.ndim != 1 or len(inputs) != len(labels):
        raise ValueError(f"expected inputs (N, C, X, Y, Z) and labels (N,), got "
                         f"{tuple(inputs.shape)} and {tuple(labels.shape)}")
    labels = labels.to(torch.int64)
    device = torch.device(device)
    before = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    generator = torch.Generator().manual_seed(settings.seed)
    diffusion = DiffusionLoss(normalize=False, reduction="mean")
    terms = ("classification", "smoothness", "cycle", "magnitude")
    history: dict[str, Any] = {"loss": [], **{t: [] for t in terms}, "flip_rate": []}
    started, cpu_started = time.perf_counter(), time.process_time()
    with model_guard(classifier), \
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        try:
            n_classes = _n_classes(classifier, inputs[:1].to(device))
            if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
                raise ValueError(f"labels must lie in 0..{n_classes - 1} (the classifier's "
                                 f"classes), got {sorted(set(labels.tolist()))}")
            simulator = Simulator(n_classes=n_classes, in_channels=inputs.shape[1],
                                  **settings.simulator_kwargs()).to(device)
            optimizer = torch.optim.AdamW(simulator.parameters(), lr=settings.lr,
                                          weight_decay=0.0)
            for _ in tqdm(range(settings.epochs), desc="train simulator", unit="epoch",
                          disable=not progress):
                simulator.train()
                sums = dict.fromkeys((*terms, "loss", "flip_rate"), 0.0)
                seen = 0
                for batch in balanced_batches(labels, settings.batch_size, generator):
                    x = inputs[batch].to(device)
                    source = labels[batch].to(device)
                    target = _other_classes(labels[batch], n_classes, generator).to(device)
                    v1, x1, logp1 = _leg(simulator, classifier, x, target, settings.n_squarings)
                    v2, x2, logp2 = _leg(simulator, classifier, x1, source, settings.n_squarings)
                    values = {
                        "classification": 0.5 * (nn.functional.nll_loss(logp1, target)
                                                 + nn.functional.nll_loss(logp2, source)),
                        "smoothness": 0.5 * (_smoothness(diffusion, v1)
                                             + _smoothness(diffusion, v2)),
                        "cycle": torch.mean((x2 - x) ** 2),
                        "magnitude": 0.5 * (torch.mean(v1 ** 2) + torch.mean(v2 ** 2)),
                    }
                    loss = sum(getattr(settings, f"weight_{t}") * values[t] for t in terms)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    n = len(batch)
                    seen += n
                    sums["loss"] += float(loss.detach()) * n
                    for t in terms:
                        sums[t] += float(values[t].detach()) * n
                    sums["flip_rate"] += float((logp1.argmax(dim=1) == target).sum())
                for key, total in sums.items():
                    history[key].append(total / seen)
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    after = classifier.state_dict()
    if any(not torch.equal(before[k], after[k]) for k in before):
        raise RuntimeError("training the simulator changed the classifier; this is a bug")
    history.update(seconds=time.perf_counter() - started,
                   cpu_seconds=time.process_time() - cpu_started,
                   n_parameters=sum(p.numel() for p in simulator.parameters()),
                   n_classes=n_classes, n_inputs=len(inputs))
    return simulator.eval(), history


@dataclass(frozen=True)
class CounterfactualResult:
    """What :func:`counterfactual` returns for a batch (all on the CPU).

    Attributes
    ----------
    image
        ``(B, C, X, Y, Z)``: the counterfactual, ``x o phi``.
    displacement
        ``(B, 3, X, Y, Z)`` RAS mm: ``phi(p) = p + u(p)`` at each voxel ``p`` of the
        counterfactual reads the subject's image there (an ITK/ANTs displacement field on the
        grid, :func:`nipype_xai.synth.warps.displacement_field_image` writes it).
    log_jacobian
        ``(B, X, Y, Z)``: ``log det`` of the Jacobian of the map from the subject to its
        counterfactual (``phi``'s inverse, the exponential of ``-v``) at each voxel of the
        subject's image: > 0 where the tissue there takes more volume in the counterfactual,
        < 0 where it shrinks.
    intensity_difference
        ``image - x``.
    target
        ``(B,)`` requested class.
    probabilities_before, probabilities_after
        ``(B, K)`` class probabilities of ``x`` and of the counterfactual.
    n_folded
        Voxels (over the batch) where the discrete map folds (a non-positive determinant of
        either direction); 0 for a diffeomorphism.
    """

    image: torch.Tensor
    displacement: torch.Tensor
    log_jacobian: torch.Tensor
    intensity_difference: torch.Tensor
    target: torch.Tensor
    probabilities_before: torch.Tensor
    probabilities_after: torch.Tensor
    n_folded: int

    @property
    def predicted_before(self) -> torch.Tensor:
        """Class the classifier assigns to each input."""
        return self.probabilities_before.argmax(dim=1)

    @property
    def predicted_after(self) -> torch.Tensor:
        """Class the classifier assigns to each counterfactual."""
        return self.probabilities_after.argmax(dim=1)


@torch.no_grad()
def counterfactual(
    simulator: Simulator,
    classifier: nn.Module,
    x: torch.Tensor,
    target: Union[int, Sequence[int], torch.Tensor],
    *,
    affine: Optional[np.ndarray] = None,
    n_squarings: int = 7,
    batch_size: int = 4,
) -> CounterfactualResult:
    """The counterfactual of each image in ``x`` for the requested class ``target``.

    Parameters
    ----------
    simulator
        A trained :class:`Simulator` for ``classifier``.
    classifier
        The model; unchanged (eval mode for the call, then restored).
    x
        ``(B, C, X, Y, Z)`` on the classifier's grid.
    target
        One class, or one per image.
    affine
        The grid's voxel-to-world affine, for the displacement in mm (None: 1 mm voxels) and the
        log-Jacobian's derivatives.
    n_squarings
        Scaling-and-squaring steps (as in training).
    batch_size
        Images per pass.
    """
    if x.ndim != 5:
        raise ValueError(f"expected x of shape (B, C, X, Y, Z), got {tuple(x.shape)}")
    targets = torch.as_tensor(target, dtype=torch.int64).reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(len(x)).clone()
    if targets.numel() != len(x):
        raise ValueError(f"target: expected one class per image ({len(x)}), got "
                         f"{targets.numel()}")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "image", "displacement", "log_jacobian", "before", "after")}
    n_folded = 0
    was_training = simulator.training
    simulator.eval()
    try:
        with model_guard(classifier) as device:
            sim_device = next(simulator.parameters()).device
            for start in range(0, len(x), batch_size):
                xb = x[start:start + batch_size]
                tb = targets[start:start + batch_size]
                velocity = simulator(xb.to(sim_device), tb.to(sim_device))
                pull = integrate_velocity(velocity, n_squarings)
                push = integrate_velocity(-velocity, n_squarings)
                moved = warp_image(xb.to(sim_device), pull)
                displacement = to_world_units(pull, affine).cpu()
                log_jac, folded_push = log_jacobian_determinant(
                    to_world_units(push, affine).cpu(), affine)
                _, folded_pull = log_jacobian_determinant(displacement, affine)
                n_folded += max(folded_push, folded_pull)
                parts["image"].append(moved.cpu())
                parts["displacement"].append(displacement)
                parts["log_jacobian"].append(log_jac)
                parts["before"].append(class_log_probabilities(
                    forward(classifier, xb.to(device))).exp().cpu())
                parts["after"].append(class_log_probabilities(
                    forward(classifier, moved.to(device))).exp().cpu())
    finally:
        simulator.train(was_training)
    image = torch.cat(parts["image"])
    return CounterfactualResult(
        image=image,
        displacement=torch.cat(parts["displacement"]),
        log_jacobian=torch.cat(parts["log_jacobian"]),
        intensity_difference=image - x.cpu(),
        target=targets,
        probabilities_before=torch.cat(parts["before"]),
        probabilities_after=torch.cat(parts["after"]),
        n_folded=n_folded,
    )
