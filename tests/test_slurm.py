"""The participant level through a real SLURM scheduler gives the same files, byte for byte, as a
MultiProc run (SPEC §9), with both of Nipype's SLURM plugins:

- ``SLURM``: one job per node, submitted by a head process that polls ``squeue`` and waits;
- ``SLURMGraph``: the whole graph submitted at once, each job with ``--dependency=afterok`` on its
  predecessors' jobs; the head process returns as soon as everything is submitted (Nipype's
  ``GraphPluginBase.run`` only writes and runs ``submit_jobs.sh``), so the test waits for the
  jobs itself (:func:`wait_for_jobs`) before it compares.

The cluster is real: slurmctld and slurmd on this host, started by ``.ci/slurm-cluster start`` (CI
does it in ``.ci/run``). Without an idle node in ``sinfo`` the tests skip and say why, except where
``NIPYPE_XAI_REQUIRE_SLURM=1`` makes that a failure. The jobs import nipype-xai from the
submitting process's environment (sbatch exports it all by default, ``PYTHONPATH`` included).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

from nipype_xai.synth import generate_cohort

from tiny_model import write_tiny_model  # noqa: E402


def idle_partition() -> Optional[str]:
    """The default partition when sinfo shows an idle node in it, else None."""
    if shutil.which("sinfo") is None:
        return None
    try:
        listing = subprocess.run(["sinfo", "--noheader", "--states=idle", "--format=%P"],
                                 capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in listing.stdout.splitlines() if line.strip()]
    if listing.returncode != 0 or not names:
        return None
    default = [name for name in names if name.endswith("*")]
    return (default or names)[0].rstrip("*")


PARTITION = idle_partition()
needs_slurm = pytest.mark.skipif(
    PARTITION is None,
    reason="no SLURM cluster with an idle node (sinfo); start one with "
           "`sudo .ci/slurm-cluster start` (Debian slurm-wlm + munge, one node on this host)",
)


def test_slurm_is_up_where_ci_requires_it():
    # .ci/run starts the cluster and sets NIPYPE_XAI_REQUIRE_SLURM=1: there the SLURM test must
    # run, not skip, so a green CI says the workflow really went through a scheduler.
    if os.environ.get("NIPYPE_XAI_REQUIRE_SLURM") != "1":
        pytest.skip("NIPYPE_XAI_REQUIRE_SLURM is not set (only CI requires the cluster)")
    assert PARTITION is not None, "NIPYPE_XAI_REQUIRE_SLURM=1 but sinfo shows no idle node"


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file by relative path, less the lock and the runs' status files (a log
    of the run: its host, process and times)."""
    status = folder / ".nipype-xai" / "status"
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock" and status not in p.parents}


def _run(root: Path, name: str, *plugin: str) -> Path:
    """Run the participant level into ``root/name/out``; return that folder."""
    out, work = root / name / "out", root / name / "work"
    command = [sys.executable, "-m", "nipype_xai.cli.run", str(root / "bids"), str(out),
               "participant", "--model", str(root / "model" / "tiny.json"),
               "--methods", "gradient", "random", "--ground-truth",
               str(root / "bids" / "derivatives" / "groundtruth"), "-w", str(work),
               # Fixed: the default depends on the plugin (MultiProc: the subjects spread over its
               # processes; SLURM: up to 8 per job; SLURMGraph: 1, since a batched run forms its
               # batches from its first stage's results, which SLURMGraph has only queued), and
               # a batch's composition is part of its maps' bytes. Batched runs are compared with
               # unbatched ones in tests/test_batch.py.
               "--subjects-per-job", "1", *plugin]
    # SOURCE_DATE_EPOCH fixes the reports' "generated" time, the only timestamp in the outputs.
    environment = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "PYTHONWARNINGS": "ignore"}
    # Nipype's SLURM plugin names each job after $LOGNAME (a KeyError where it is unset, as in
    # containers and CI runners).
    environment.setdefault("LOGNAME", getpass.getuser())
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"{name} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


def wait_for_jobs(comment: str, timeout_s: float = 1500.0) -> None:
    """Wait until no job tagged ``--comment=<comment>`` is left in ``squeue``.

    SLURMGraph's jobs are submitted with ``--kill-on-invalid-dep=yes`` (see the test), so a job
    whose predecessor failed is cancelled by the scheduler instead of pending forever with
    ``DependencyNeverSatisfied``; a failure then shows as missing or different files.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        listing = subprocess.run(["squeue", "--noheader", "--format=%i|%k|%T|%r"],
                                 capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stderr
        ours = [line for line in listing.stdout.splitlines() if line.split("|")[1:2] == [comment]]
        if not ours:
            return
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *(line.split("|")[0] for line in ours)], timeout=60)
            pytest.fail(f"SLURMGraph jobs still queued after {timeout_s:.0f} s:\n"
                        + "\n".join(ours[:20]))
        time.sleep(2)


def _job_errors(work: Path) -> str:
    """The non-empty stderr files of SLURMGraph's batch scripts (for a failure's message)."""
    texts = [f"{path.name}:\n{path.read_text(errors='replace')[-1500:]}"
             for path in sorted(work.rglob("batchscript_*.sh.e")) if path.stat().st_size]
    return "\n".join(texts[:3])


@pytest.fixture(scope="module")
def multiproc_reference(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The cohort, the tiny model and the MultiProc run's snapshot, made once for both plugins."""
    root = tmp_path_factory.mktemp("slurm")
    # One subject: every job is a Python process importing torch (seconds each on CI's two
    # cores), and what is compared (each node's result through the scheduler) is per subject.
    generate_cohort(root / "bids", "lesion", 1, seed=0, resolution_mm=4.0, progress=False)
    write_tiny_model(root / "model")
    reference = _snapshot(_run(root, "multiproc", "--nprocs", "2"))
    assert len(reference) > 20
    return root, reference


@needs_slurm
@pytest.mark.parametrize("plugin", ["SLURM", "SLURMGraph"])
def test_participant_level_through_slurm_equals_multiproc(plugin, multiproc_reference):
    root, reference = multiproc_reference
    # --mem: SLURM's default here is DefMemPerCPU=1024 (.ci/slurm-cluster), too little for a
    # process that imports torch and holds a registration.
    plugin_args = {"sbatch_args": f"-p {PARTITION} --mem=3000"}
    comment = f"nipype-xai-test-{uuid.uuid4().hex[:12]}"
    if plugin == "SLURM":
        plugin_args["poll_sleep_duration"] = 1
    else:
        plugin_args["sbatch_args"] += f" --kill-on-invalid-dep=yes --comment={comment}"
    out = _run(root, plugin.lower(), "--plugin", plugin, "--plugin-args", json.dumps(plugin_args))
    if plugin == "SLURMGraph":
        wait_for_jobs(comment)
    through_slurm = _snapshot(out)
    different = sorted(k for k in reference if through_slurm.get(k) != reference[k])
    extra = sorted(set(through_slurm) - set(reference))
    assert not different and not extra, (
        f"{plugin}: {len(different)} files missing or different, {len(extra)} extra: "
        f"{(different + extra)[:10]}\n{_job_errors(root / plugin.lower() / 'work')}")
