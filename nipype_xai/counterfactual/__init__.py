"""Simulator-network counterfactuals (Liu, Adeli, Pohl and Zhao, IPMI 2021): how would this brain
have to change, by a smooth diffeomorphic deformation, for the model to change its mind?

Pure torch / numpy cores:

* :mod:`~nipype_xai.counterfactual.deformation`: velocity -> displacement (scaling and squaring),
  warping, the log-Jacobian determinant;
* :mod:`~nipype_xai.counterfactual.simulator`: the 3D U-Net that predicts the velocity field;
* :mod:`~nipype_xai.counterfactual.training`: :func:`train_simulator` (classifier frozen) and
  :func:`counterfactual`;
* :mod:`~nipype_xai.counterfactual.scoring`: scores on the atrophy task.

>>> simulator, history = train_simulator(classifier, X, y)            # doctest: +SKIP
>>> result = counterfactual(simulator, classifier, x, target=0, affine=grid.affine)  # doctest: +SKIP
"""

from .deformation import (
    integrate_velocity,
    jacobian_determinant,
    log_jacobian_determinant,
    to_voxel_units,
    to_world_units,
    warp_image,
)
from .scoring import atrophy_counterfactual_scores
from .simulator import Simulator
from .training import (
    CounterfactualResult,
    SimulatorSettings,
    class_log_probabilities,
    counterfactual,
    train_simulator,
)

__all__ = [
    "CounterfactualResult",
    "Simulator",
    "SimulatorSettings",
    "atrophy_counterfactual_scores",
    "class_log_probabilities",
    "counterfactual",
    "integrate_velocity",
    "jacobian_determinant",
    "log_jacobian_determinant",
    "to_voxel_units",
    "to_world_units",
    "train_simulator",
    "warp_image",
]
