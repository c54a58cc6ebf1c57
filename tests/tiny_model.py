"""A randomly initialised TinyCNN3D model spec for the pipeline tests: the pipeline, not the
model, is under test (test_workflows, test_cli, test_reliability)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nipype_xai.models import TinyCNN3D

TPL = "MNI152NLin2009aSym"
#: The model grid: 8 mm voxels in a box around the template brain.
MODEL_SHAPE = (24, 28, 24)


def write_tiny_model(folder: Path, shape=MODEL_SHAPE, resolution=8, name: str = "tiny") -> Path:
    """Write ``tiny.json`` (and its weights ``tiny.pt``) in ``folder``; return the spec's path.

    ``name`` is the model's name: ``desc-<name>_predictions.tsv`` (alphanumeric part).
    """
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(TinyCNN3D(n_outputs=2, width=4).state_dict(), folder / "tiny.pt")
    spec = {"name": name, "architecture": "nipype_xai.models.architectures:TinyCNN3D",
            "kwargs": {"n_outputs": 2, "width": 4}, "weights": "tiny.pt",
            "input": {"space": TPL, "resolution_mm": resolution, "shape": list(shape),
                      "normalization": "zscore", "mask": "nonzero"},
            "outputs": ["control", "lesion"], "task": "classification"}
    (folder / "tiny.json").write_text(json.dumps(spec))
    return folder / "tiny.json"
