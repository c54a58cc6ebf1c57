"""Rotations and the Dice overlap shared by the registration and anatomy tests."""

from __future__ import annotations

import numpy as np


def rotation(axis: int, degrees: float) -> np.ndarray:
    """The 3x3 rotation by ``degrees`` about array axis ``axis`` (0, 1 or 2)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    out = np.eye(3)
    out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
    return out


def dice(a, b) -> float:
    """Dice overlap of two masks (or images) binarised at 0.5."""
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))
