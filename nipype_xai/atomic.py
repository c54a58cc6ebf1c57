"""Atomic file writes (a temporary file in the destination folder, then one ``os.replace``), and a
lock for read-modify-write updates of files shared by concurrent runs.

Every file nipype-xai writes goes through :func:`atomic_write`, so a crash or a killed job never
leaves a half-written NIfTI, table or sidecar for a reader (or Nipype's cache) to pick up.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

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


#: Folder of nipype-xai's own bookkeeping inside a derivatives dataset (hidden: BIDS tools and
#: the validator skip dot-folders).
STATE_DIR = ".nipype-xai"


@contextmanager
def dataset_lock(root: PathLike, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold an exclusive lock on a derivatives dataset while a shared file is read and rewritten.

    Several runs write into one output folder at once (on a cluster, one job per subject):
    ``failures.tsv``, ``.bidsignore`` and ``dataset_description.json`` are read, updated and
    rewritten, and without a lock two runs can each write their own update over the other's.
    ``filelock`` (``fcntl``/``msvcrt`` locks; torch depends on it) on ``<root>/.nipype-xai/lock``.
    On network file systems without working locks (some NFS set-ups), run one job per output
    folder or merge at the group level.
    """
    from filelock import FileLock

    state = Path(root) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    with FileLock(str(state / "lock"), timeout=timeout_s):
        yield
