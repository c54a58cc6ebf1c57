"""Running the participant and group levels: Nipype configuration, plugins, and failure records.

A subject fails when any node of its workflow crashes. Nipype (``stop_on_first_crash`` off) then
skips that node's dependents -- the subject's sinks among them, so it gets no derivative -- and
runs every other subject to the end. Each run writes its crash files (pickled, readable with
``nipypecli crash``) to a fresh folder in the work directory; each holds the failing node, whose
workflow names the subject, and the node's result file holds the error. Those become
``failures.tsv`` at the output root, which the group report lists.

One module, longer than most (about 730 lines), because its parts are one run: the Nipype
configuration, the progress callback, the crash records and the two levels share the run's state
(its crash folder, the subject workflows' names) and are used only together.
"""

from __future__ import annotations

import gc
import getpass
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import pandas as pd

from ..atomic import STATE_DIR, atomic_write, dataset_lock
from ..bids import (
    FAILURES_FILE,
    check_output_folder,
    collect_data,
    input_dataset_links,
    write_dataset_description,
)
from ..tables import read_tsv, write_tsv
from .parser import MAX_SUBJECTS_PER_JOB, SUBMITTING_PLUGINS, UsageError

if TYPE_CHECKING:  # the workflows import Nipype's engine: not at the command line's start
    from ..workflows.options import PipelineOptions

__all__ = [
    "Failure",
    "RunProgress",
    "RunSummary",
    "WorkDirectory",
    "configure_logging",
    "plugin_settings",
    "progress_wanted",
    "status_file_path",
    "run_group_level",
    "run_participant_level",
]

LOGGER = logging.getLogger("nipype_xai")

#: failures.tsv's columns: the BIDS identifiers (session_id ``n/a`` without sessions), then why.
FAILURES_COLUMNS = ("participant_id", "session_id", "reason", "node", "crashfile")


@dataclass(frozen=True)
class Failure:
    """A subject (``sub-X[_ses-Y]``) that produced no derivatives, and why."""

    subject: str
    reason: str
    node: str = ""
    crashfile: str = ""

    def row(self) -> dict[str, str]:
        """failures.tsv's row: ``sub-01_ses-2`` -> participant_id ``sub-01``, session_id ``ses-2``."""
        participant, _, session = self.subject.partition("_ses-")
        return {"participant_id": participant, "session_id": f"ses-{session}" if session else "n/a",
                "reason": self.reason, "node": self.node, "crashfile": self.crashfile}


@dataclass
class RunSummary:
    """Outcome of a participant-level run."""

    succeeded: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: Subjects handed to a plugin that returns once they are submitted
    #: (:data:`~nipype_xai.cli.parser.SUBMITTING_PLUGINS`): their outcome is not known yet.
    submitted: list[str] = field(default_factory=list)


# ---- Nipype configuration ----------------------------------------------------------------------


#: Nipype's log level in this process and in the worker processes it starts (see
#: :func:`configure_logging`); None: Nipype's own configuration, untouched.
_NIPYPE_LOG_LEVEL: Optional[str] = None


def configure_logging(verbose: bool) -> None:
    """Nipype's log at INFO with ``-v``; otherwise only what nipype-xai itself reports.

    Nipype logs every crash with its full traceback at ERROR level; without ``-v`` the command
    prints one line per failed subject instead (the crash files keep the tracebacks).
    """
    from nipype import config
    from nipype import logging as nipype_logging

    global _NIPYPE_LOG_LEVEL
    level = _NIPYPE_LOG_LEVEL = "INFO" if verbose else "CRITICAL"
    config.update_config({"logging": {"workflow_level": level, "interface_level": level,
                                      "utils_level": level}})
    nipype_logging.update_logging(config)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="nipype-xai: %(message)s")
    for name in ("nipype_xai", "py.warnings"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # Library deprecation chatter (nilearn, pybids) is not the user's concern.
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)


def plugin_settings(plugin: Optional[str], plugin_args: Optional[str], nprocs: Optional[int],
                    device: str) -> tuple[str, dict[str, Any]]:
    """The Nipype plugin and its arguments from the command-line options.

    Raises
    ------
    UsageError
        ``--plugin-args`` is not a JSON object, or ``--device cuda`` without a CUDA device.
    """
    args: dict[str, Any] = {}
    if plugin_args:
        try:
            args = json.loads(plugin_args)
        except json.JSONDecodeError as error:
            raise UsageError(f"--plugin-args: not valid JSON ({error.msg} at column "
                             f"{error.colno})") from None
        if not isinstance(args, dict):
            raise UsageError(f"--plugin-args: expected a JSON object, got {plugin_args!r}")
    n_procs = nprocs or os.cpu_count() or 1
    if plugin is None:
        plugin = "Linear" if n_procs == 1 else "MultiProc"
    if plugin == "MultiProc":
        args.setdefault("n_procs", n_procs)
        # Spawned, not forked, workers: a process forked after this one has run torch on
        # several threads (OpenMP) hangs at its first parallel region, and the CLI's own checks,
        # or a host application embedding it, may well have.
        args.setdefault("mp_context", "spawn")
    if plugin == "SLURM":
        # Nipype's SLURM plugin names each job after $LOGNAME and raises KeyError without it, as
        # in containers and on CI runners, where no login shell set it.
        os.environ.setdefault("LOGNAME", getpass.getuser())
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: torch finds no CUDA device on this machine")
        if plugin == "MultiProc":
            # Model nodes declare use_gpu; MultiProc runs at most this many of them at once.
            args.setdefault("n_gpu_procs", torch.cuda.device_count())
    elif device != "cpu":
        raise UsageError(f"--device: expected cpu or cuda[:N], got {device!r}")
    return plugin, args


def default_subjects_per_job(n_subjects: int, plugin: str, plugin_args: Mapping[str, Any]
                             ) -> int:
    """Subjects per model node when ``--subjects-per-job`` is not given.

    Local plugins spread the subjects evenly over the processes that run side by side (MultiProc:
    ``n_procs``; Linear: one), so batching never leaves a core idle; a cluster plugin (each node
    a job) takes :data:`MAX_SUBJECTS_PER_JOB`, one job per batch. Never more than
    :data:`MAX_SUBJECTS_PER_JOB`, never less than 1. A plugin that submits the graph and returns
    (:data:`~nipype_xai.cli.parser.SUBMITTING_PLUGINS`) takes 1: a batched run needs its first
    stage's results before it can form its batches (:func:`check_plugin_use`).
    """
    if plugin in SUBMITTING_PLUGINS:
        return 1
    if plugin == "MultiProc":
        workers = int(plugin_args.get("n_procs") or os.cpu_count() or 1)
    elif plugin == "Linear":
        workers = 1
    else:
        workers = 1
    return max(1, min(MAX_SUBJECTS_PER_JOB, -(-max(n_subjects, 1) // workers)))


def check_plugin_use(plugin: str, *, work_dir_given: bool,
                     subjects_per_job: Optional[int]) -> None:
    """Refuse, before anything runs, what a plugin that submits the graph and returns cannot do.

    Raises
    ------
    UsageError
        Such a plugin without ``-w`` (the temporary work folder, which the jobs run from, would
        be removed when the command returns, before any job ran), or with more than one subject
        per job (a batched run forms its batches from its first stage's results, which such a
        plugin has only queued).
    """
    if plugin not in SUBMITTING_PLUGINS:
        return
    if not work_dir_given:
        raise UsageError(f"--plugin {plugin} returns once the jobs are submitted: give -w on a "
                         "filesystem the compute nodes share (the jobs run from it, and a "
                         "temporary work folder would be removed before they start)")
    if subjects_per_job is not None and subjects_per_job > 1:
        raise UsageError(f"--plugin {plugin} returns once the jobs are submitted, but a run with "
                         f"--subjects-per-job {subjects_per_job} batches the subjects that "
                         "reached their model input, which it cannot know then; use "
                         "--plugin SLURM (which waits), or --subjects-per-job 1")


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: ITK (ANTs) reads its thread count from this variable, once per process.
ITK_THREADS = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def _worker_threads(plugin: str, args: Mapping[str, Any],
                    deterministic: bool = True) -> dict[str, Optional[str]]:
    """Give each worker its share of the cores; return the variables replaced.

    Workers read the thread count from the environment when they import torch (they are spawned,
    see :func:`plugin_settings`): with n_procs model nodes side by side, each should use its
    share of the cores, not all of them (oversubscription slows every node). ANTs's registration
    is bit-reproducible for a seed only on one ITK thread, and ITK reads the count once per
    process, so it is set here, before any node runs, in this process and (inherited) in every
    worker: 1 when ``deterministic``; otherwise the user's setting or the worker's share.
    """
    previous = {ITK_THREADS: os.environ.get(ITK_THREADS)}
    n_procs = int(args.get("n_procs", os.cpu_count() or 1)) if plugin == "MultiProc" else 1
    threads = str(max(1, (os.cpu_count() or 1) // max(1, n_procs)))
    if deterministic:
        os.environ[ITK_THREADS] = "1"
    else:
        os.environ.setdefault(ITK_THREADS, threads)
    if plugin != "MultiProc":
        return previous
    previous.update({name: os.environ.get(name) for name in _THREAD_VARIABLES})
    for name in _THREAD_VARIABLES:
        os.environ.setdefault(name, threads)
    return previous


def _worker_log_config(work_dir: Path) -> dict[str, Optional[str]]:
    """Make spawned workers log at this process's Nipype level; return the variable replaced.

    A spawned worker imports Nipype afresh, which reads its configuration from
    ``$NIPYPE_CONFIG_DIR/nipype.cfg`` (default ``~/.nipype``) and knows nothing of this process's
    settings: without this, every worker would print Nipype's INFO log. The file written is the
    user's own ``nipype.cfg`` (if any) with the log levels replaced.
    """
    import configparser

    if _NIPYPE_LOG_LEVEL is None:
        return {}
    user_dir = Path(os.path.expanduser(os.environ.get("NIPYPE_CONFIG_DIR", "~/.nipype")))
    parser = configparser.ConfigParser()
    parser.read([user_dir / "nipype.cfg"])
    if not parser.has_section("logging"):
        parser.add_section("logging")
    for option in ("workflow_level", "interface_level", "utils_level"):
        parser.set("logging", option, _NIPYPE_LOG_LEVEL)
    config_dir = work_dir / "nipype-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    parser.write(text)
    atomic_write(config_dir / "nipype.cfg", lambda tmp: tmp.write_text(text.getvalue()))
    previous = {"NIPYPE_CONFIG_DIR": os.environ.get("NIPYPE_CONFIG_DIR")}
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)
    return previous


def _restore_environment(previous: Mapping[str, Optional[str]]) -> None:
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _workflow_config(work_dir: Path) -> tuple[dict[str, Any], Path]:
    crash_dir = work_dir / "crashfiles" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return {
        "execution": {
            "crashdump_dir": str(crash_dir),
            # Pickled: the failing node and its traceback come back as data (loadcrash).
            "crashfile_format": "pklz",
            "stop_on_first_crash": False,
            # Large images are hashed by size and modification time, never re-read to hash.
            "hash_method": "timestamp",
            # Our nodes take seconds: the default 2 s poll would dominate a small run.
            "poll_sleep_duration": 0.2,
            "check_version": False,
        },
        "monitoring": {"enabled": False},
    }, crash_dir


#: The name of the last node of a subject's workflow (``CommitDerivatives``, in
#: :func:`nipype_xai.workflows.init_xai_derivatives_wf`): it moves the subject's derivatives into
#: place, so the subject is done when it ends.
SUBJECT_DONE_NODE = "commit_derivatives"


def commits_a_subject(node) -> bool:
    """Whether ``node`` is a subject's last one: it runs ``CommitDerivatives`` (by its type)."""
    from ..interfaces.bids import CommitDerivatives

    return isinstance(getattr(node, "interface", None), CommitDerivatives)


def subject_of(node, workflows: Mapping[str, str]) -> Optional[str]:
    """The label of the subject whose workflow holds ``node``, or None (a shared node).

    ``workflows`` maps a subject workflow's name to the subject's label. A node's place is its
    hierarchy (``participant_wf.sub_01_wf.registration_wf.register``); a MapNode's subnode knows
    only its folder, whose parts are the same names.
    """
    parts = set(str(getattr(node, "fullname", "") or getattr(node, "name", "")).split("."))
    base_dir = getattr(node, "base_dir", None)
    if base_dir:
        parts |= set(Path(str(base_dir)).parts)
    return next((label for name, label in workflows.items() if name in parts), None)


def subjects_of(node, workflows: Mapping[str, str],
                groups: Mapping[str, Sequence[str]] = {}) -> list[str]:
    """The labels of the subjects ``node`` works for: its subject's (:func:`subject_of`), or
    those of the group workflow that holds it (``groups``: name -> labels); [] for a node
    shared by all."""
    subject = subject_of(node, workflows)
    if subject is not None:
        return [subject]
    return list(subject_of(node, {name: tuple(labels) for name, labels in groups.items()})
                or ())


def progress_wanted(quiet: bool = False, stream=None) -> bool:
    """Whether to draw progress: not with ``--quiet``, and only on a terminal (``stream``,
    default stderr, where it is drawn): a log file or a pipe gets the result lines only."""
    import sys

    stream = sys.stderr if stream is None else stream
    if quiet:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _iso(seconds: float) -> str:
    """``2026-11-29T23:59:07Z``: a time stamp in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def status_file_path(output_dir: Path, level: str = "participant") -> Path:
    """Where a run writes its status (:meth:`RunProgress.status`), in the dataset's hidden
    bookkeeping folder: one file per job, ``<level>-<job>.json``, so that jobs sharing an output
    folder (one per subject on a cluster) keep apart. The job is ``$SLURM_JOB_ID`` (with
    ``$SLURM_ARRAY_TASK_ID``) under SLURM, else the host and process id."""
    import socket

    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    job = job or f"{socket.gethostname()}-{os.getpid()}"
    return Path(output_dir) / STATE_DIR / "status" / f"{level}-{job}.json"


def _literal(text: str) -> str:
    """``text`` inside a tqdm ``bar_format`` (a ``str.format`` template)."""
    return text.replace("{", "{{").replace("}", "}}")


class RunProgress:
    """Nipype status callback: subjects done / failed / remaining, elapsed time and ETA.

    Nipype calls it with ``(node, "start" | "end" | "exception")`` for every node it runs (the
    MultiProc and Linear plugins). A node belongs to the subject whose workflow
    (:func:`~nipype_xai.workflows.subject_workflow_name`) holds it; a subject has failed at its
    first exception and is done when its last node (:func:`commits_a_subject`) ends. Without subjects (the
    group level) the units are the workflow's steps. The line is redrawn every second, so the
    elapsed time moves during a long node too; the ETA is the remaining units at the mean rate so
    far. Nipype pickles the plugin arguments with the nodes it sends to worker processes: a
    worker's copy draws nothing.

    Parameters
    ----------
    subjects
        Subject workflow name -> label (``sub-01``); empty for the group level.
    total_steps
        The number of steps when there are no subjects.
    enabled
        Draw at all (see :func:`progress_wanted`).
    stream
        Where to draw (default: stderr).
    done_when
        Whether a node's end marks its subject done (default :func:`commits_a_subject`).
    status_file
        A JSON file rewritten (atomically) at every change, for a cluster user or a script to poll
        (:meth:`status`); None: none. Written whether or not anything is drawn.
    """

    def __init__(self, subjects: Mapping[str, str] = (), *, total_steps: int = 0,
                 enabled: bool = True, stream=None,
                 done_when: Callable[[Any], bool] = commits_a_subject,
                 level: str = "participant level", status_file: Optional[Path] = None):
        import sys
        import threading

        self.subjects = dict(subjects)
        #: Shared workflows that serve several subjects (a batch's model node): name -> labels;
        #: their failure fails those subjects.
        self.groups: dict[str, tuple[str, ...]] = {}
        #: A sentence for the status file (``"Note"``), e.g. that the subjects were only submitted.
        self.note: Optional[str] = None
        self._level = level
        self.status_file = Path(status_file) if status_file is not None else None
        self._started = time.time()
        self._finished = False
        self.done: set[str] = set()
        self.failed: set[str] = set()
        # subject (or "group") -> {node's full name: its name} of the nodes running now, in the
        # order they started: a subject whose node ended waits, and is not listed as running.
        self._active: dict[str, dict[str, str]] = {}
        self._steps: set[str] = set()
        self._done_when = done_when
        self._total = len(self.subjects) or max(int(total_steps), 1)
        self._unit = "subjects" if self.subjects else "steps"
        self._lock = threading.Lock()
        self._bar = None
        self._stop = threading.Event()
        self._ticker = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, file=stream or sys.stderr, smoothing=0,
                             dynamic_ncols=True, mininterval=0)
            self._redraw()
            self._ticker = threading.Thread(target=self._tick, daemon=True,
                                            name="nipype-xai-progress")
            self._ticker.start()
        self._write_status()

    # -- what Nipype reports ------------------------------------------------------------------

    def subject_of(self, node) -> Optional[str]:
        """The label of the subject ``node`` belongs to, or None (a shared node)."""
        return subject_of(node, self.subjects)

    @property
    def running(self) -> dict[str, str]:
        """Subject (or ``"group"``) -> the node it runs now (the latest started of its nodes
        that have not ended)."""
        return {unit: list(nodes.values())[-1] for unit, nodes in self._active.items() if nodes}

    def _track(self, unit: str, key: str, name: str, status: str) -> None:
        nodes = self._active.setdefault(unit, {})
        if status == "start":
            nodes[key] = name
        elif status in ("end", "exception"):
            nodes.pop(key, None)
        if not nodes:
            del self._active[unit]

    def __call__(self, node, status: str) -> None:
        with self._lock:
            name = str(getattr(node, "name", ""))
            key = str(getattr(node, "fullname", name))
            if self.subjects:
                affected = [subject for subject in subjects_of(node, self.subjects, self.groups)
                            if subject not in self.done and subject not in self.failed]
                if not affected:
                    return
                for subject in affected:
                    if status == "exception":
                        self.failed.add(subject)
                        self._active.pop(subject, None)
                    elif status == "end" and self._done_when(node):
                        self.done.add(subject)
                        self._active.pop(subject, None)
                    else:
                        self._track(subject, key, name, status)
            else:
                self._track("group", key, name, status)
                if status in ("end", "exception") and not name.startswith("_"):
                    (self.failed if status == "exception" else self._steps).add(key)
            self._redraw()
            self._write_status()

    def finish(self, done: Sequence[str], failed: Sequence[str]) -> None:
        """Record the run's outcome as the failure records have it, and mark it finished.

        Plugins that never call the status callback (SLURMGraph and the other graph plugins
        submit the whole graph at once) get their counts here; with the others this corrects
        nothing but the subjects failed before any node ran (bad inputs).
        """
        with self._lock:
            if self.subjects:
                self.done, self.failed = set(done), set(failed)
            else:
                self.failed |= set(failed)
            self._active.clear()
            self._finished = True
            self._redraw()
            self._write_status()

    def status(self) -> dict[str, Any]:
        """What :attr:`status_file` holds: the level, the units' counts and names (subjects done,
        failed, running with the node each runs, remaining), elapsed seconds, the ETA in seconds
        (remaining units at the mean rate so far; null before the first one finishes), start and
        update times (UTC, ISO 8601), whether the run is over, and the host and process."""
        import socket

        elapsed = time.time() - self._started
        finished = self.finished
        remaining_units = max(self._total - finished, 0)
        eta = None if self._finished else (
            round(remaining_units * elapsed / finished, 1) if finished else None)
        status: dict[str, Any] = {
            "Level": self._level,
            "Unit": self._unit,
            "Total": self._total,
            "Done": len(self.done) + len(self._steps),
            "Failed": len(self.failed),
            "Remaining": remaining_units,
            "ElapsedSeconds": round(elapsed, 1),
            "ETASeconds": eta,
            "Started": _iso(self._started),
            "Updated": _iso(time.time()),
            "Finished": self._finished,
            "Host": socket.gethostname(),
            "PID": os.getpid(),
        }
        if self.note:
            status["Note"] = self.note
        if self.subjects:
            status["Subjects"] = {
                "Done": sorted(self.done),
                "Failed": sorted(self.failed),
                "Running": dict(sorted(self.running.items())),
                "Remaining": sorted(set(self.subjects.values()) - self.done - self.failed),
            }
        else:
            status["Running"] = sorted(self.running.values())
        return status

    def _write_status(self) -> None:
        if self.status_file is None:
            return
        text = json.dumps(self.status(), indent=2) + "\n"
        try:
            atomic_write(self.status_file, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as error:  # a full disk or a vanished folder must not stop the run
            LOGGER.warning("could not update the status file %s: %s", self.status_file, error)

    # -- drawing ------------------------------------------------------------------------------

    @property
    def finished(self) -> int:
        return min(len(self.done) + len(self.failed) + len(self._steps), self._total)

    def status_text(self) -> str:
        """``done 3, failed 1, remaining 4``."""
        done = len(self.done) + len(self._steps)
        remaining = max(self._total - done - len(self.failed), 0)
        return f"done {done}, failed {len(self.failed)}, remaining {remaining}"

    def running_text(self) -> str:
        """What runs now: ``sub-05 attribution, sub-06 register``."""
        return ", ".join(f"{subject} {node}" if self.subjects else node
                         for subject, node in sorted(self.running.items())[:3])

    def _redraw(self) -> None:
        if self._bar is None:
            return
        self._bar.n = self.finished
        # The line: level, bar, counts, times, then what runs (cut first on a narrow terminal).
        now = self.running_text()
        self._bar.bar_format = (
            f"nipype-xai: {_literal(self._level)} " + "|{bar:16}| {n_fmt}/{total_fmt} "
            + f"{self._unit}: {_literal(self.status_text())} "
            + "[elapsed {elapsed}, ETA {remaining}]" + (f" now: {_literal(now)}" if now else ""))
        self._bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        with self._lock:
            self._write_status()
            if self._bar is not None:
                self._redraw()
                self._bar.close()
                self._bar = None

    def __getstate__(self) -> dict:
        return {"subjects": {}, "groups": {}, "note": None, "done": set(), "failed": set(), "_active": {},
                "_steps": set(),
                "_done_when": self._done_when, "_total": self._total, "_unit": self._unit,
                "_level": "", "_bar": None, "_ticker": None, "status_file": None,
                "_started": self._started, "_finished": False}

    def __setstate__(self, state: dict) -> None:
        import threading

        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._stop = threading.Event()


def _count_steps(workflow) -> int:
    """The nodes Nipype will run: identity nodes are dropped from the graph it executes."""
    from nipype.interfaces.utility import IdentityInterface

    return sum(1 for name in workflow.list_node_names()
               if not isinstance(workflow.get_node(name).interface, IdentityInterface))


def _run(workflow, work_dir: Path, plugin: str, plugin_args: dict[str, Any],
         tracker: Optional[RunProgress] = None, deterministic: bool = True) -> tuple[Path, bool]:
    """Run a workflow; return its crash folder and whether Nipype reported a failure.

    ``tracker`` (:class:`RunProgress`) is Nipype's status callback: the MultiProc, Linear and
    batch-system plugins (SLURM, SGE, PBS, ...) call it for every node; the graph plugins
    (SLURMGraph, ...) never do, so its counts come from :meth:`RunProgress.finish` then.
    """
    settings, crash_dir = _workflow_config(work_dir)
    for section, values in settings.items():
        workflow.config.setdefault(section, {}).update(values)
    workflow.base_dir = str(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    environment = _worker_threads(plugin, plugin_args, deterministic)
    if plugin == "MultiProc":
        environment.update(_worker_log_config(work_dir))

    args = dict(plugin_args)
    if tracker is not None:
        args["status_callback"] = tracker
    failed = False
    # Nipype's MultiProc runs a full garbage collection at every scheduling step and after every
    # node run in this process; with torch, pybids and nilearn loaded each one walks millions of
    # objects (~0.7 s here), which made a 4-subject run 3x slower than its nodes. Objects that
    # exist before the run are long-lived: freeze them out of the collector's reach.
    # Nipype builds its execution graph (a deep copy of every node) inside Workflow.run: at 200
    # subjects the collections walked it at every step, and the head process, at 100 % of a core
    # in gc.collect, left both workers idle for the last half hour. Freeze it too, once built.
    gc.freeze()
    try:
        priority = (subject_priority(tracker.subjects, tracker.groups)
                    if tracker is not None and tracker.subjects else None)
        workflow.run(plugin=_frozen_plugin(plugin, args, priority))
    except RuntimeError:
        # Nipype raises after running everything it could; the crash files say what failed.
        failed = True
    finally:
        gc.unfreeze()
        _restore_environment(environment)
    return crash_dir, failed


def subject_priority(subjects: Mapping[str, str],
                     groups: Mapping[str, Sequence[str]] = {}) -> Callable[[Any], int]:
    """A node's place in line: the rank of the first subject it works for, among the subjects'
    labels in order; -1 for a node shared by all (the template selection), which every subject
    waits for."""
    rank = {label: i for i, label in enumerate(sorted(set(subjects.values())))}

    def priority(node) -> int:
        labels = subjects_of(node, subjects, groups)
        return min((rank[label] for label in labels if label in rank), default=-1)

    return priority


def _frozen_plugin(plugin: str, plugin_args: dict[str, Any],
                   priority: Optional[Callable[[Any], int]] = None):
    """Nipype's ``<plugin>Plugin`` whose ``run`` first freezes the objects alive then (the
    execution graph Workflow.run has just built) out of the garbage collector's reach.

    ``priority`` (MultiProc, with its default scheduler): the ready nodes go to the workers in
    this order (lowest first; ties in Nipype's topological order). Nipype hands them out in
    topological order, which runs a cohort breadth first: at 200 subjects none was complete for
    1 h 39 min, the progress had no ETA until then, and a run stopped early left few complete
    subjects. With :func:`subject_priority` the first subjects go through every step first and
    complete one after the other; the work, and so the throughput, is the same.
    """
    from nipype.pipeline import plugins

    runner = getattr(plugins, f"{plugin}Plugin")(plugin_args=plugin_args)
    run_graph = runner.run

    def run(graph, config, updatehash=False):
        gc.freeze()
        return run_graph(graph, config, updatehash=updatehash)

    runner.run = run
    sort_jobs = getattr(runner, "_sort_jobs", None)
    if (priority is not None and sort_jobs is not None
            and plugin_args.get("scheduler", "tsort") == "tsort"):
        places: dict[int, int] = {}  # job id -> priority: a node's place never changes

        def place(jobid: int) -> int:
            if jobid not in places:
                places[jobid] = priority(runner.procs[jobid])
            return places[jobid]

        def prioritized(jobids, scheduler="tsort"):
            # sorted() is stable: equal places keep the order Nipype gave them.
            return sorted(sort_jobs(jobids, scheduler=scheduler), key=place)

        runner._sort_jobs = prioritized
    return runner


def _reason(crash: Mapping[str, Any]) -> str:
    """The error of a crash, in one line (``Type: message``).

    From the failing node's result file, where the interface's exception is kept as data
    (``runtime.traceback_args``: its message, then Nipype's sentence naming its type); a node that
    failed before its interface ran (no result) falls back to the crash's own traceback, whose
    last line is the exception.
    """
    from nipype.interfaces.base.support import InterfaceResult

    node = crash.get("node")
    try:
        result = node.result if node is not None else None
    except Exception:  # noqa: BLE001 - no (readable) result file: the node never ran
        result = None
    runtime = getattr(result, "runtime", None) if isinstance(result, InterfaceResult) else None
    args = getattr(runtime, "traceback_args", None)
    if args:
        *message, sentence = str(args[0]).splitlines() or [""]
        kind = sentence.removeprefix("An exception of type ").partition(" occurred")[0]
        # The exception as Python printed it (str(error), not only its first argument): the
        # last line of the interface's traceback that starts with that type.
        for line in reversed(str(getattr(runtime, "traceback", "")).splitlines()):
            head, separator, text = line.partition(": ")
            if separator and head.strip().rsplit(".", 1)[-1] == kind and text.strip():
                return f"{kind}: {text.strip()}"
        text = next((line.strip() for line in message if line.strip()), "")
        if kind and text:
            return f"{kind}: {text}"
    lines = [line.strip() for line in "".join(crash.get("traceback") or []).splitlines()
             if line.strip()]
    if not lines:
        return "unknown error (empty crash file)"
    kind, _, text = lines[-1].partition(": ")
    return f"{kind.rsplit('.', 1)[-1]}: {text}" if text else lines[-1]


def _crash_failures(crash_dir: Path, workflows: Mapping[str, str],
                    groups: Mapping[str, Sequence[str]] = {}) -> dict[str, Failure]:
    """The first crash of each subject: ``{sub-X[_ses-Y]: Failure}``.

    ``workflows`` maps a subject workflow's name to the subject's label; ``groups`` a shared
    workflow's name (a batch of subjects' model node) to the labels of the subjects it serves.
    A crash outside every subject and group workflow (the shared template selection) fails every
    subject; with no subject workflows (the group level) it is recorded under ``group``.
    """
    from nipype.utils.filemanip import loadcrash

    failures: dict[str, Failure] = {}
    if not crash_dir.is_dir():
        return failures
    for path in sorted(crash_dir.glob("crash-*.pklz"), key=lambda p: p.stat().st_mtime):
        try:
            crash = loadcrash(str(path))
        except Exception:  # noqa: BLE001 - an unreadable crash file is still a failure
            crash = {}
        node = crash.get("node")
        affected = subjects_of(node, workflows, groups) if node is not None else []
        affected = affected or list(workflows.values()) or ["group"]
        where = str(getattr(node, "fullname", "") or path.name)
        for label in affected:
            failures.setdefault(label, Failure(label, _reason(crash), where, str(path)))
    return failures


def _write_failures(output_dir: Path, failures: Sequence[Failure],
                    processed: Sequence[str]) -> Path:
    """Update ``failures.tsv``: rows of the subjects processed now are replaced, others kept.

    Under the dataset's lock (:func:`~nipype_xai.atomic.dataset_lock`): concurrent runs into one
    output folder (one job per subject on a cluster) each read, update and rewrite the table.
    """
    with dataset_lock(output_dir):
        return _update_failures(output_dir, failures, processed)


def _update_failures(output_dir: Path, failures: Sequence[Failure],
                     processed: Sequence[str]) -> Path:
    path = output_dir / FAILURES_FILE
    rows = []
    if path.is_file():
        previous = read_tsv(path, all_text=True)
        # Rebuilt through Failure, so a table written before 0.2 (a ``subject`` column) is upgraded.
        rows = [Failure(_label(row), row.get("reason", ""), row.get("node", ""),
                        row.get("crashfile", "")).row()
                for row in previous.to_dict("records") if _label(row) not in processed]
    rows += [failure.row() for failure in failures]
    if not rows:
        path.unlink(missing_ok=True)
        return path
    table = pd.DataFrame(rows, columns=list(FAILURES_COLUMNS)).sort_values(
        ["participant_id", "session_id"])
    write_tsv(table, path)
    return path


def _label(row: Mapping[str, str]) -> str:
    """``sub-01[_ses-2]`` of a failures.tsv row (a table from before 0.2 has ``subject``)."""
    if "participant_id" not in row:
        return str(row.get("subject", ""))
    session = row.get("session_id", "n/a")
    return row["participant_id"] + (f"_{session}" if session not in ("", "n/a") else "")


def _add_to_bidsignore(output_dir: Path, *entries: str) -> None:
    """Add entries to ``.bidsignore`` under the dataset's lock (concurrent runs lose none)."""
    ignore = output_dir / ".bidsignore"
    with dataset_lock(output_dir):
        lines = ignore.read_text().splitlines() if ignore.is_file() else []
        lines += [entry for entry in entries if entry not in lines]
        atomic_write(ignore, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


# ---- the work directory -------------------------------------------------------------------------


class WorkDirectory:
    """The Nipype work directory of a run: the one given (``-w``), kept; or a new temporary one.

    fMRIPrep's default is ``work`` in the current folder (its container starts in ``/tmp``, so
    there it lands in ``/tmp/work``). A BIDS-App run from a project or home folder should not
    leave gigabytes of intermediate files there: without ``-w`` the run works in a new private
    folder under the system's temporary folder (``$TMPDIR``, else ``/tmp``), removed when the
    run ends well (nothing left to resume or to read) and kept, and named, when a subject failed
    or the run was interrupted: its crash files are there (``failures.tsv`` points at them), and
    ``-w`` with it resumes from the steps already done.
    """

    def __init__(self, given: Optional[Path] = None):
        self.temporary = given is None
        self.path = (Path(tempfile.mkdtemp(prefix="nipype-xai-work-")) if given is None
                     else Path(given).absolute())
        self.keep = not self.temporary

    def __enter__(self) -> "WorkDirectory":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if not self.temporary:
            return
        # Bad input stops a run before anything ran (UsageError and the like): nothing to keep.
        ran_into_trouble = kind is not None and issubclass(kind, KeyboardInterrupt)
        if self.keep or ran_into_trouble:
            import sys

            print(f"nipype-xai: the work directory is kept: {self.path} (its crash files; "
                  "'-w' with it resumes from the steps already done)", file=sys.stderr)
            return
        shutil.rmtree(self.path, ignore_errors=True)


# ---- the two levels -----------------------------------------------------------------------------


def run_participant_level(
    *,
    bids_dir: Path,
    output_dir: Path,
    work_dir: Path,
    options: Optional[PipelineOptions] = None,
    participant_labels: Optional[Sequence[str]] = None,
    ground_truth_dir: Optional[Path] = None,
    gt_label: str = "lesion",
    transforms_dir: Optional[Path] = None,
    anat_dir: Optional[Path] = None,
    plugin: str = "MultiProc",
    plugin_args: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
    status_file: Optional[Path] = None,
    **option_values: Any,
) -> RunSummary:
    """Query the dataset, build one workflow per subject, run them, record the failures.

    ``options``: the pipeline options (:class:`~nipype_xai.workflows.options.PipelineOptions`),
    passed down to every subject's workflow; keyword arguments of the same names (``methods=``,
    ``seed=``, ...) replace or give them. With ``deterministic`` (the default), a ``seed`` gives
    byte-identical derivatives (the HTML reports' "generated" time aside, which
    ``SOURCE_DATE_EPOCH`` fixes): the registration runs on one ITK thread.

    ``progress``: draw the subjects done, failed and remaining, the elapsed time and an ETA on
    stderr while the subjects run (:class:`RunProgress`; see :func:`progress_wanted`).
    ``status_file``: where the same counts (and the subjects' names) are kept as JSON while it
    runs (:meth:`RunProgress.status`); default :func:`status_file_path`.

    Raises
    ------
    nipype_xai.bids.BIDSInputError
        The dataset (or a derivatives folder) cannot be used at all: nothing is run.
    """
    from ..workflows import init_participant_wf, pipeline_options, subject_workflow_name
    from ..workflows.base import batch_workflow_name, subject_batches

    options = pipeline_options(options, **option_values)
    started = time.perf_counter()
    # Resolved and checked here too (the CLI checks first): an embedding script must not be able
    # to write into the raw dataset either.
    output_dir = check_output_folder(output_dir, bids_dir)
    subjects, problems = collect_data(
        bids_dir, participant_labels, ground_truth_dir=ground_truth_dir, gt_label=gt_label,
        transforms_dir=transforms_dir, anat_dir=anat_dir,
        **({"template": options.template} if options.template else {}),
    )
    with dataset_lock(output_dir):  # it rewrites .bidsignore too
        write_dataset_description(output_dir, dataset_links=input_dataset_links(
            bids_dir, ground_truth_dir, transforms_dir, anat_dir))
    _add_to_bidsignore(output_dir, FAILURES_FILE)

    failures = [Failure(f"sub-{p.subject}" + (f"_ses-{p.session}" if p.session else ""),
                        p.problem, "inputs") for p in problems]
    labels = {subject_workflow_name(s.subject, s.session): s.label for s in subjects}
    # Subjects refused at the inputs count too: the status file lists every subject asked for.
    everyone = {**labels, **{f"inputs:{f.subject}": f.subject for f in failures}}
    tracker = RunProgress(everyone, enabled=progress, level="participant level",
                          status_file=status_file or status_file_path(output_dir, "participant"))
    crashed: dict[str, Failure] = {}
    try:
        for failure in failures:
            tracker.failed.add(failure.subject)
        if options.subjects_per_job is None:
            options = pipeline_options(options, subjects_per_job=default_subjects_per_job(
                len(subjects), plugin, plugin_args or {}))
        ready, model_inputs = list(subjects), {}
        if options.subjects_per_job > 1 and len(subjects) > 1:
            # A batch's model node waits for all its subjects: first every subject's model
            # input, then batches of the subjects that got one (the whole workflow, which finds
            # the first half done in the work directory).
            workflow = init_participant_wf(subjects=subjects, output_dir=output_dir,
                                           options=options, stage="model_input")
            crash_dir, _ = _run(workflow, work_dir, plugin, dict(plugin_args or {}), tracker,
                                deterministic=options.deterministic)
            crashed = _crash_failures(crash_dir, labels)
            model_inputs = _model_inputs(work_dir / workflow.name, subjects)
            for entry in subjects:
                if entry.label not in crashed and entry.label not in model_inputs:
                    crashed[entry.label] = Failure(
                        entry.label, "its model input (the t1w_model step's result) was not "
                        f"found in {work_dir}", "t1w_model")
            ready = [s for s in subjects if s.label not in crashed]
            if len(ready) < len(subjects):
                LOGGER.info("participant level: %d of %d subjects have a model input and go on",
                            len(ready), len(subjects))
        if ready:
            workflow = init_participant_wf(subjects=ready, output_dir=output_dir,
                                           options=options, model_inputs=model_inputs)
            groups = {batch_workflow_name(index): tuple(entry.label for entry in batch)
                      for index, batch in enumerate(subject_batches(
                          ready, options.subjects_per_job)) if options.subjects_per_job > 1}
            tracker.groups = groups
            crash_dir, _ = _run(workflow, work_dir, plugin, dict(plugin_args or {}), tracker,
                                deterministic=options.deterministic)
            crashed.update(_crash_failures(crash_dir, labels, groups))
        failures += list(crashed.values())
        processed = list(labels.values()) + [f.subject for f in failures]
        _write_failures(output_dir, failures, processed)
        succeeded = [label for label in labels.values() if label not in crashed]
        submitted = []
        if plugin in SUBMITTING_PLUGINS:
            # The jobs are only queued: nothing is known of them yet.
            submitted, succeeded = succeeded, []
            tracker.note = (f"{len(submitted)} subject(s) submitted to {plugin}, not run yet: "
                            "follow the jobs with the scheduler; the same command with --plugin "
                            "MultiProc and the same -w collects their results")
        tracker.finish(succeeded, [f.subject for f in failures])
    finally:
        tracker.close()
    return RunSummary(succeeded=succeeded, failures=failures,
                      elapsed_s=time.perf_counter() - started, submitted=submitted)


def _model_inputs(workflow_dir: Path, subjects: Sequence[Any]) -> dict[str, str]:
    """Each subject's model input from a ``stage="model_input"`` run whose folder in the work
    directory is ``workflow_dir``: label -> the file its ``t1w_model`` step wrote (subjects
    whose step has no result are left out)."""
    from nipype.pipeline.engine.utils import load_resultfile

    from ..workflows import subject_workflow_name

    found = {}
    for entry in subjects:
        folder = workflow_dir / subject_workflow_name(entry.subject, entry.session) / "t1w_model"
        result_file = folder / "result_t1w_model.pklz"
        if not result_file.is_file():
            continue
        try:
            out_file = load_resultfile(str(result_file)).outputs.out_file
        except Exception:  # noqa: BLE001 - an unreadable result file: no model input known
            continue
        if out_file and Path(out_file).is_file():
            found[entry.label] = str(out_file)
    return found


def run_group_level(
    *,
    output_dir: Path,
    work_dir: Path,
    template: Optional[str] = None,
    n_boot: int = 2000,
    seed: int = 0,
    reports: bool = True,
    provenance: Optional[Mapping[str, Any]] = None,
    plugin: str = "MultiProc",
    plugin_args: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
) -> tuple[Optional[Path], list[Failure]]:
    """Summarise the participant-level derivatives; return the report (or None) and failures.

    ``progress``: draw the group workflow's steps done and remaining, the elapsed time and an
    ETA on stderr (:class:`RunProgress`).
    """
    from ..workflows import collect_group_inputs, init_group_wf

    inputs = collect_group_inputs(output_dir, template)
    for label, why in inputs.incomplete:
        LOGGER.warning("group level: %s left out: %s", label, why)
    for label, why in inputs.outside_domain:
        LOGGER.warning("group level: %s's input lies outside the model's training inputs (%s); "
                       "its maps are summarised with the others", label, why)
    provenance = {
        "Subjects": len(inputs.subjects),
        "Methods": ", ".join(dict.fromkeys(inputs.methods)),
        "Space": inputs.template + (f" (res-{inputs.res})" if inputs.res else ""),
        **dict(provenance or {}),
    }
    workflow = init_group_wf(inputs=inputs, output_dir=output_dir, reports=reports,
                             n_boot=n_boot, seed=seed, provenance=provenance)
    tracker = RunProgress(total_steps=_count_steps(workflow), enabled=progress,
                          level="group level", status_file=status_file_path(output_dir, "group"))
    try:
        crash_dir, failed = _run(workflow, work_dir, plugin, dict(plugin_args or {}), tracker)
        failures = list(_crash_failures(crash_dir, {}).values())
        if failed and not failures:
            failures = [Failure("group",
                                "the group workflow failed (run with -v for Nipype's log)")]
        tracker.finish((), [f.subject for f in failures])
    finally:
        tracker.close()
    from ..interfaces.reports import group_report_name

    report = output_dir / group_report_name()
    return (report if reports and report.is_file() and not failures else None), failures
