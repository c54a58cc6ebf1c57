"""A real adult head T1w and its brain-extracted version, for tests of the anatomical steps.

Debian's ``mricron-data`` package (MRIcron's templates, Chris Rorden; Debian Med) ships
``usr/share/mricron/templates/``:

- ``ch2.nii.gz``: Colin Holmes' 27-average T1w head ("Colin27"), 1 mm, 181x217x181, RAS,
  uint8, in MNI space (origin (-90, -125, -71) mm);
- ``ch2bet.nii.gz``: the same image brain-extracted, on the very same grid (same shape and
  affine), its voxels equal to ``ch2``'s inside the brain and 0 outside: ``> 0`` is its brain mask
  (1,736,387 voxels in one component, no holes, and 99 specks of a few voxels that
  :func:`real_brain_mask` drops);
- ``ch2better.nii.gz``: the head at 0.5 mm (301x370x316), unused here.

The files are looked for in ``$NIPYPE_XAI_TEST_DATA/mricron`` (default
``~/.cache/nipype-xai/test-data/mricron``); if absent, the package is fetched with
``apt-get download mricron-data`` (no root needed) into a temporary folder, unpacked with
``dpkg -x`` and the two files copied into the cache (atomically). When that fails (no apt, no
network, no package lists), the tests that need the data are skipped with the reason.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

PACKAGE = "mricron-data"
_MEMBER_DIR = Path("usr/share/mricron/templates")
HEAD = "ch2.nii.gz"
BRAIN = "ch2bet.nii.gz"
#: What the files must be (checked after every fetch, so a changed package fails loudly).
SHAPE = (181, 217, 181)
AFFINE = np.array([[1.0, 0, 0, -90], [0, 1.0, 0, -125], [0, 0, 1.0, -71], [0, 0, 0, 1]])


def cache_dir() -> Path:
    """``$NIPYPE_XAI_TEST_DATA/mricron``, default ``~/.cache/nipype-xai/test-data/mricron``."""
    root = os.environ.get("NIPYPE_XAI_TEST_DATA")
    base = Path(root) if root else Path.home() / ".cache" / "nipype-xai" / "test-data"
    return base / "mricron"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)


def _last_line(process: subprocess.CompletedProcess) -> str:
    lines = (process.stderr or process.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {process.returncode}"


def _fetch(target: Path) -> None:
    """apt-get download + dpkg -x into a temporary folder, then copy the two files to ``target``.

    Raises ``RuntimeError`` with the reason when the package cannot be had.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("apt-get/dpkg not available (not a Debian-like system)")
    with tempfile.TemporaryDirectory(prefix="nipype_xai_mricron_") as tmp:
        tmp = Path(tmp)
        done = _run(["apt-get", "download", PACKAGE], tmp)
        if done.returncode != 0:
            # Fresh containers often have no package lists; updating them needs root.
            update = _run(["apt-get", "update", "-qq"], tmp)
            done = _run(["apt-get", "download", PACKAGE], tmp)
            if done.returncode != 0:
                reason = _last_line(done)
                if update.returncode != 0:
                    reason += f"; apt-get update: {_last_line(update)}"
                raise RuntimeError(f"apt-get download {PACKAGE} failed: {reason}")
        debs = sorted(tmp.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {PACKAGE} wrote no .deb")
        unpacked = tmp / "root"
        done = _run(["dpkg", "-x", str(debs[-1]), str(unpacked)], tmp)
        if done.returncode != 0:
            raise RuntimeError(f"dpkg -x {debs[-1].name} failed: {_last_line(done)}")
        target.mkdir(parents=True, exist_ok=True)
        for name in (HEAD, BRAIN):
            source = unpacked / _MEMBER_DIR / name
            if not source.is_file():
                raise RuntimeError(f"{debs[-1].name} has no {_MEMBER_DIR / name}")
            # Copy next to the destination, then rename: a concurrent test run never sees half.
            partial = target / f".{name}.partial-{os.getpid()}"
            shutil.copyfile(source, partial)
            os.replace(partial, target / name)


def _check(path: Path) -> None:
    img = nib.load(path)
    if img.shape != SHAPE or not np.allclose(img.affine, AFFINE):
        raise RuntimeError(f"{path}: expected a {SHAPE} image with affine {AFFINE.tolist()}, got "
                           f"{img.shape} {img.affine.tolist()}")


@functools.lru_cache(maxsize=1)
def _paths() -> tuple[Path, Path] | str:
    """The two files, or the reason they cannot be had (computed once per process)."""
    target = cache_dir()
    head, brain = target / HEAD, target / BRAIN
    try:
        if not (head.is_file() and brain.is_file()):
            _fetch(target)
        _check(head)
        _check(brain)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"real T1w test data ({PACKAGE}) not available: {exc}"
    return head, brain


def real_head() -> tuple[Path, Path]:
    """``(head_path, brain_path)``: mricron's ``ch2.nii.gz`` and ``ch2bet.nii.gz``.

    Skips the calling test (``pytest.skip``) with the reason when they cannot be fetched.
    """
    found = _paths()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def real_brain_mask() -> nib.Nifti1Image:
    """The reference brain mask of ``ch2``: ``ch2bet > 0``, largest component, holes filled (uint8).

    On the grid of ``ch2`` (same shape and affine). Skips like :func:`real_head`.
    """
    from scipy import ndimage

    _, brain = real_head()
    img = nib.load(brain)
    labels, _ = ndimage.label(np.asanyarray(img.dataobj) > 0)
    largest = labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
    mask = ndimage.binary_fill_holes(largest).astype(np.uint8)
    return nib.Nifti1Image(mask, img.affine)


@pytest.fixture(scope="session")
def real_t1w() -> tuple[Path, Path]:
    """Session fixture: ``(head_path, brain_path)`` of :func:`real_head` (skips if unavailable)."""
    return real_head()


#: The rigid pose of the head in :func:`head_in_scanner_pose`: turned 15, 10 and -8 degrees about
#: x, y and z, and moved (12, -50, 30) mm, as a head lies in a scanner rather than in MNI space.
POSE_DEGREES = (15.0, 10.0, -8.0)
POSE_SHIFT_MM = (12.0, -50.0, 30.0)


def head_in_scanner_pose(voxel_mm: float = 1.0) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """``ch2`` (skull, scalp and neck on) rigidly moved away from MNI, as a raw BIDS T1w is.

    The head is resampled (cubic) onto an axis-aligned grid of ``voxel_mm`` voxels that holds it
    whole, as a scanner's field of view does; ``ch2bet``'s brain (nearest neighbour) comes with
    it, on the same grid, as an independent reference brain mask. Skips like :func:`real_head`.

    Returns
    -------
    (t1w, brain_mask) : nibabel images, float32 and uint8, RAS voxel order.
    """
    from scipy import ndimage

    from geometry import rotation

    head_path, _ = real_head()
    head = nib.load(head_path)
    motion = np.eye(4)
    for axis, degrees in enumerate(POSE_DEGREES):
        motion[:3, :3] = motion[:3, :3] @ rotation(axis, degrees)
    motion[:3, 3] = POSE_SHIFT_MM
    corners = np.array([[i, j, k, 1] for i in (0, SHAPE[0] - 1) for j in (0, SHAPE[1] - 1)
                        for k in (0, SHAPE[2] - 1)]).T
    world = (motion @ head.affine @ corners)[:3]
    low = np.floor(world.min(axis=1)) - 2
    shape = tuple(int(n) for n in np.ceil((world.max(axis=1) + 2 - low) / voxel_mm) + 1)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = low
    # output voxel -> world -> the head before the motion -> its voxel
    mapping = np.linalg.inv(head.affine) @ np.linalg.inv(motion) @ affine

    def resample(data: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(data.astype(np.float32), mapping[:3, :3], mapping[:3, 3],
                                        output_shape=shape, order=order)

    t1w = np.clip(resample(np.asanyarray(head.dataobj), 3), 0, None).astype(np.float32)
    brain = resample(np.asanyarray(real_brain_mask().dataobj), 0) > 0.5
    return (nib.Nifti1Image(t1w, affine), nib.Nifti1Image(brain.astype(np.uint8), affine))
