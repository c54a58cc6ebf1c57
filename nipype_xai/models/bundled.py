"""The reference models shipped with nipype-xai (``nipype_xai/data/models``, SPEC §4).

Each is a small :class:`~nipype_xai.models.TinyCNN3D` trained on one synthetic task of
:mod:`nipype_xai.synth` (MNI152NLin2009aSym, 4 mm model grid), so the demo and the validation
benchmark need nothing from outside. ``nipype_xai/data/models/README.md`` gives the command that
reproduces the weights, the training time and the balanced accuracy on a fresh cohort.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED_MODELS", "bundled_model_spec"]

#: Synthetic task -> spec JSON file under ``nipype_xai/data/models``. Only tasks whose model
#: reached the accuracy bar on a fresh cohort are shipped (see the README there).
BUNDLED_MODELS = {
    "lesion": "lesion_tinycnn3d.json",
}


def bundled_model_spec(task: str = "lesion") -> Path:
    """Path of the spec JSON of the reference model trained on a synthetic ``task``.

    Parameters
    ----------
    task
        A synthetic task with a shipped model (:data:`BUNDLED_MODELS`).

    Returns
    -------
    pathlib.Path
        The spec file, for :func:`~nipype_xai.models.load_model` or the CLI's ``--model``; its
        weights sit next to it and its architecture is nipype_xai's, so it loads inside the
        default trust boundary (no ``trust_code`` or ``external_weights``).

    Raises
    ------
    ValueError
        No model is shipped for ``task``.
    FileNotFoundError
        The package was installed without its data files, or from an archive that is not
        unpacked on disk (the spec's weights must be a real file next to it).
    """
    if task not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model for task {task!r}; available: "
                         f"{', '.join(sorted(BUNDLED_MODELS))}")
    resource = resources.files("nipype_xai").joinpath("data", "models", BUNDLED_MODELS[task])
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"{BUNDLED_MODELS[task]}: the bundled model spec is missing from "
                                f"the installed package ({path}); reinstall nipype-xai with its "
                                f"package data")
    return path
