"""Atomic file writes: a temporary file in the destination folder, then one ``os.replace``.

Every file nipype-xai writes goes through :func:`atomic_write`, so a crash or a killed job never
leaves a half-written NIfTI, table or sidecar for a reader (or Nipype's cache) to pick up.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def _file_mode() -> int:
    # mkstemp creates 0600 files; a derivative should get the permissions any new file gets.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _file_mode()


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move ``tmp_path`` onto ``path`` in one ``os.replace``.

    The temporary file is hidden, lives in the destination folder (same file system, so the rename
    is atomic) and keeps the destination's suffixes, so writers that infer the format from the name
    (nibabel, pandas) behave. On any error the temporary file is removed and ``path`` is untouched.

    Returns
    -------
    pathlib.Path
        The absolute path written.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, _MODE)
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path
