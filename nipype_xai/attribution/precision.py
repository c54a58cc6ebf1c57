"""The numeric precision of the attribution passes: ``fp32`` (default), ``bf16`` or ``fp16``.

Reduced precision runs the model's forward and backward passes under :func:`torch.autocast`
(Micikevicius et al. 2018, "Mixed precision training", ICLR): the weights stay float32, the
matrix products and convolutions run in the 16-bit type, and every map is returned in the
input's dtype. It only pays on a GPU with tensor cores; on a CPU ``bf16`` is slower than
``fp32`` and exists so that the reduced-precision path can be checked where there is no GPU.
``fp16`` is refused on a CPU (:func:`check_precision`).

Predictions are never computed in reduced precision: the prediction and the explained target
come from one float32 forward pass (cheap, one per image), so a map explains the class the
predictions table reports.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator, Union

import torch

__all__ = [
    "FP32_ONLY",
    "PRECISIONS",
    "PrecisionError",
    "autocast",
    "check_precision",
    "method_precision",
]

#: The precisions an attribution run can use; the first is the default (float32, no autocast).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_CAPTUM_DEEPLIFT = ("captum's DeepLIFT rules scatter 16-bit activations into float32 tensors "
                    "and fail under autocast")
_PATTERNS = ("in bf16 its maps moved from the fp32 maps by 21-98 % (relative L2) on the bundled "
             "model, more than any other method's (at most 24 %)")

#: Methods that run in float32 whatever the precision asked for, with the reason (written into
#: their maps' sidecars). Measured with bf16 on CPU for every method on the bundled model
#: (tests/test_precision.py, run as a script, at the model grid and at every 2nd voxel): the
#: DeepLIFT pair fails; the pattern family runs but its maps move by 0.21-0.45 (relative L2
#: error) with the spec's patterns and up to 0.98 with patterns fitted on the image (the fit's
#: statistics then come from 16-bit activations), against at most 0.24 for every other method.
#: A family's members share their passes: list all or none.
FP32_ONLY: dict[str, str] = {
    "deeplift": _CAPTUM_DEEPLIFT, "deeplift_shap": _CAPTUM_DEEPLIFT,
    "pattern_net": _PATTERNS, "pattern_attribution": _PATTERNS,
}


class PrecisionError(ValueError):
    """A precision that does not exist, or that the device cannot run."""


def _device_type(device: Union[str, torch.device]) -> str:
    return torch.device(device).type


def check_precision(precision: str, device: Union[str, torch.device] = "cpu") -> None:
    """Refuse a precision that is not one of :data:`PRECISIONS`, or one ``device`` cannot run.

    Raises
    ------
    PrecisionError
        An unknown precision, or ``fp16`` on a device that is not CUDA (CPU autocast to float16
        has no fast kernels and float16's narrow range underflows small gradients; bf16 is the
        reduced precision a CPU runs).
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and _device_type(device) != "cuda":
        raise PrecisionError(f"precision fp16 needs a CUDA device, not {str(device)!r}; use bf16 "
                             "on a CPU (or fp32)")


def method_precision(method: str, precision: str) -> str:
    """The precision ``method``'s map is computed in when ``precision`` is asked for: float32
    for the methods in :data:`FP32_ONLY`, ``precision`` for the others."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[0] if method in FP32_ONLY else precision


@contextmanager
def autocast(precision: str, device: Union[str, torch.device]) -> Iterator[None]:
    """Run the block's model passes (forward and backward) in ``precision`` on ``device``.

    ``fp32`` is no context at all (the default code path, unchanged). Backward passes started
    inside the block run under the same autocast state (autograd carries it to its threads).

    Raises
    ------
    PrecisionError
        See :func:`check_precision`.
    """
    check_precision(precision, device)
    if precision == PRECISIONS[0]:
        context = nullcontext()
    else:
        context = torch.autocast(device_type=_device_type(device), dtype=_DTYPES[precision])
    with context:
        yield
