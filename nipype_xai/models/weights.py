"""Reading a model spec's weights safely (the trust boundary of :mod:`nipype_xai.models.spec`).

The weights file must be a regular file whose digest matches the spec's ``weights_sha256`` (when
given); it is read only with ``torch.load(..., weights_only=True)``, so pickled code or objects are
refused, never unpickled; and its tensors must fit the built architecture exactly. Every error is
one line naming the spec, the file and the fix.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from .spec_json import ModelSpec, ModelSpecError, _one_line, check_regular_file

PathLike = Union[str, os.PathLike]

__all__ = ["check_weights_file", "load_weights", "weights_sha256", "write_weights"]


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


def write_weights(module: nn.Module, path: PathLike) -> Path:
    """Write ``module``'s state dict (on the CPU) to ``path`` atomically, the same weights giving
    the same bytes; return the path.

    Serialised in memory first: ``torch.save`` names the archive's top folder after the file, and
    the atomic writer's temporary name is random, so saving to it would change the bytes (and the
    SHA-256) from run to run. In memory the folder is always "archive".
    """
    import io

    from ..atomic import atomic_write

    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def check_weights_file(spec: ModelSpec) -> None:
    """Raise :class:`ModelSpecError` unless ``spec.weights`` is a regular file whose digest is the
    spec's ``weights_sha256`` (when given). Nothing else is read."""
    weights = spec.weights
    check_regular_file(weights, "weights",
                       lambda problem: ModelSpecError(f"{spec.source}: {problem}"))
    # The file's own digest is never shown: with it, a spec could read out the hash of any file.
    if spec.weights_sha256 is not None and weights_sha256(weights) != spec.weights_sha256:
        raise ModelSpecError(
            f"{spec.source}: weights file {weights.name} does not match weights_sha256 in the spec "
            f"(expected {spec.weights_sha256}); the weights were changed, or the spec names the "
            f"wrong file"
        )


def load_weights(spec: ModelSpec, model: nn.Module) -> None:
    """Read the spec's weights (on the CPU) into ``model``, which must fit them exactly.

    Raises
    ------
    ModelSpecError
        The file is not a PyTorch weights file, holds pickled objects ``weights_only=True``
        refuses, holds no state dict, or does not fit ``model`` (the message names the tensors).
    """
    state_dict = _read_state_dict(spec, "cpu")
    _check_state_dict(spec, model, state_dict)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # e.g. a dtype that cannot be copied
        raise ModelSpecError(
            f"{spec.source}: weights file {spec.weights.name} does not fit {spec.architecture}: "
            f"{_one_line(str(error))}"
        ) from error


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
