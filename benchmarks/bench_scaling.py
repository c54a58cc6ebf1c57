"""Scaling: wall time, throughput and peak memory of the participant and group levels at N subjects.

For each number of subjects N (default 20 and 200) and each method set (default ``fast``: gradient,
smoothgrad, integrated_gradients, gradcam, lrp_epsilon_plus; and ``gradient`` alone), it

1. generates a synthetic lesion cohort of N subjects (``nipype_xai.synth.generate_cohort``, as
   ``nipype-xai synth``; 2 mm by default) once, cached in ``--cohort-dir``;
2. runs the participant level through the command line in a subprocess, in fresh output and work
   folders (Nipype's cache never answers for a measured run)::

       python -m nipype_xai.cli.run COHORT OUT participant --model SPEC --methods ... \\
           --nprocs 2 -w WORK --ground-truth COHORT/derivatives/groundtruth -q [EXTRA ...]

   with the bundled lesion model by default (the one ``nipype-xai demo`` uses) and nothing
   trained; every argument this script does not know (``EXTRA``, e.g. ``--subjects-per-job 4``
   or ``--skull-stripped``) goes to the participant level unchanged;
3. runs the group level over the same output (``... COHORT OUT group -w WORK --nprocs 2 -q``,
   plus ``--group-args``);

and for each level measures the wall time, the CPU time of the whole process tree, and its memory:
every 0.5 s (``--interval``) it walks the command's process and all its descendants (psutil) and
sums their memory. The sum is taken over PSS (proportional set size: each shared page divided
among the processes mapping it, so torch's libraries loaded by every worker count once) where the
system gives it (Linux), else over RSS (which counts shared pages once per process and so
overstates a tree); the JSON says which (``memory_metric``) and keeps the RSS sum too. The largest
single process is reported by RSS (what a scheduler's or the kernel's per-process limit sees) and
PSS. Peaks are the largest sample: a spike shorter than the interval can be missed. Only local
plugins (Linear, MultiProc) run inside the tree; jobs a batch plugin submits run elsewhere and are
not seen.

From the nodes' own records (``runtime.duration`` in each node's result file, summed over subjects;
a MapNode's items are summed once) it also splits the participant level's node time into the nodes
that can run on a GPU (their interface has a ``use_gpu`` input: brain extraction, inference,
attribution, counterfactual, the model node of a ``--subjects-per-job`` batch) and the others (bias correction, registration, resampling, metrics,
reports, sinks), per subject, and keeps apart the nodes run once per run (the template
selection): the inputs of the 45,000-subject estimate in docs/scaling.md.

One JSON per (N, method set, resolution, extra arguments) goes to ``--output``; an existing one is
kept and not run again (delete it to re-measure). At the end the script prints a table of every
JSON in ``--output``: the N side by side and the ratio of the largest N's peak memory to the
smallest's (200/20).

    python benchmarks/bench_scaling.py --output OUT --cohort-dir COHORTS [--n-subjects 20 200] \\
        [--method-sets fast gradient] [--resolution 2] [--model SPEC.json] [--nprocs 2] \\
        [--runs-dir DIR] [--keep-runs] [--group-args "--n-boot 500"] [EXTRA CLI ARGS ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

#: The method sets measured; ``--method-sets`` chooses among them.
METHOD_SETS: dict[str, tuple[str, ...]] = {
    "fast": ("gradient", "smoothgrad", "integrated_gradients", "gradcam", "lrp_epsilon_plus"),
    "gradient": ("gradient",),
}
DEFAULT_N_SUBJECTS = (20, 200)
#: The synthetic cohort's task and seed (the cohort is a function of N, resolution and seed).
TASK = "lesion"
COHORT_SEED = 0
SAMPLE_INTERVAL_S = 0.5
#: Characters of the end of each command's output (stdout and stderr) kept in the JSON.
OUTPUT_TAIL_CHARS = 4000
#: Characters of the largest process's command line kept in the JSON.
COMMAND_CHARS = 160
RESULT_VERSION = 1


# ---- the cohort ---------------------------------------------------------------------------------


def cohort_path(cohort_dir: Path, n_subjects: int, resolution_mm: float,
                seed: int = COHORT_SEED) -> Path:
    """Where the cohort of ``n_subjects`` at ``resolution_mm`` is cached in ``cohort_dir``."""
    return Path(cohort_dir) / f"{TASK}-n{n_subjects}-{resolution_mm:g}mm-seed{seed}"


def ensure_cohort(cohort_dir: Path, n_subjects: int, resolution_mm: float,
                  seed: int = COHORT_SEED) -> tuple[Path, Optional[float]]:
    """The cached cohort, generated first if missing; return it and the seconds generation took
    (None when it was cached).

    Generated into ``<name>.partial`` and renamed when complete, so an interrupted generation is
    never taken for a cohort.
    """
    from nipype_xai.synth import generate_cohort

    final = cohort_path(cohort_dir, n_subjects, resolution_mm, seed)
    if (final / "participants.tsv").is_file():
        return final, None
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    generate_cohort(partial, TASK, n_subjects, seed=seed, resolution_mm=resolution_mm,
                    progress=False)
    partial.rename(final)
    return final, time.perf_counter() - started


# ---- memory of a process tree -------------------------------------------------------------------


@dataclass
class TreeMemory:
    """The peaks of a process tree's memory over the samples taken (bytes).

    ``pss_everywhere`` stays true while every process of every sample gave its PSS; the tree's
    peak (:attr:`peak_tree`) is then the PSS sum's, else the RSS sum's.
    """

    samples: int = 0
    pss_everywhere: bool = True
    peak_tree_pss: int = 0
    peak_tree_rss: int = 0
    peak_single_rss: int = 0
    peak_single_pss: int = 0
    peak_processes: int = 0
    peak_single_command: str = ""

    @property
    def metric(self) -> str:
        return "pss" if self.pss_everywhere and self.samples else "rss"

    @property
    def peak_tree(self) -> int:
        return self.peak_tree_pss if self.metric == "pss" else self.peak_tree_rss

    def add(self, readings: Sequence[tuple[int, Optional[int], str]]) -> None:
        """Take one sample: ``(rss, pss or None, command)`` of each process of the tree."""
        if not readings:
            return
        self.samples += 1
        self.pss_everywhere &= all(pss is not None for _, pss, _ in readings)
        self.peak_tree_rss = max(self.peak_tree_rss, sum(rss for rss, _, _ in readings))
        self.peak_tree_pss = max(self.peak_tree_pss, sum(pss or 0 for _, pss, _ in readings))
        self.peak_processes = max(self.peak_processes, len(readings))
        for rss, pss, command in readings:
            if rss > self.peak_single_rss:
                self.peak_single_rss, self.peak_single_command = rss, command
            self.peak_single_pss = max(self.peak_single_pss, pss or 0)

    def as_dict(self) -> dict[str, Any]:
        mib = 1024 * 1024
        return {
            "memory_metric": self.metric,
            "samples": self.samples,
            "peak_tree_mib": round(self.peak_tree / mib, 1),
            "peak_tree_rss_sum_mib": round(self.peak_tree_rss / mib, 1),
            "peak_single_rss_mib": round(self.peak_single_rss / mib, 1),
            "peak_single_pss_mib": (round(self.peak_single_pss / mib, 1)
                                    if self.metric == "pss" else None),
            "peak_single_command": self.peak_single_command,
            "peak_processes": self.peak_processes,
        }


def process_memory(process) -> tuple[int, Optional[int]]:
    """``(rss, pss)`` of a psutil process in bytes; pss None where the system does not give it."""
    import psutil

    try:
        full = process.memory_full_info()
        return int(full.rss), (int(full.pss) if hasattr(full, "pss") else None)
    except psutil.AccessDenied:  # smaps unreadable (another user's process): RSS only
        return int(process.memory_info().rss), None


class TreeMemorySampler:
    """Sample the memory of a process and all its descendants every ``interval`` seconds, in a
    background thread, from :meth:`start` until :meth:`stop`; the peaks are in :attr:`memory`."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_S):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = float(interval)
        self.memory = TreeMemory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-memory")

    def start(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def stop(self) -> TreeMemory:
        self._stop.set()
        self._thread.join()
        return self.memory

    def sample(self) -> None:
        """One sample of the tree as it is now."""
        import psutil

        try:
            processes = [self.root] + self.root.children(recursive=True)
        except psutil.Error:  # the root has exited
            return
        readings = []
        for process in processes:
            try:
                rss, pss = process_memory(process)
                # Whole command lines, cut: a spawned worker is told apart from the CLI's own
                # process only by the code after ``-c`` (``from multiprocessing.spawn ...``).
                readings.append((rss, pss, " ".join(process.cmdline())[:COMMAND_CHARS]))
            except psutil.Error:  # ended between the listing and the reading
                continue
        self.memory.add(readings)

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return


# ---- one measured command -----------------------------------------------------------------------


def run_measured(command: Sequence[str], *, interval: float = SAMPLE_INTERVAL_S,
                 env: Optional[dict[str, str]] = None,
                 log: Optional[Path] = None) -> dict[str, Any]:
    """Run ``command``, sampling its process tree's memory; return wall and CPU time, the exit
    code, the memory peaks (:meth:`TreeMemory.as_dict`) and the tails of its output.

    CPU time is ``getrusage(RUSAGE_CHILDREN)`` before and after: every descendant that was waited
    for (the workers MultiProc starts and joins) is included. Output goes to ``log`` (a file,
    streamed, so a long run's output is not held in memory) when given.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    log_handle = open(log, "w") if log is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(list(command), env=env, stdout=log_handle,
                                   stderr=subprocess.STDOUT)
        sampler = TreeMemorySampler(process.pid, interval).start()
        try:
            code = process.wait()
        finally:
            memory = sampler.stop()
    finally:
        if log is not None:
            log_handle.close()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tail = Path(log).read_text(errors="replace")[-OUTPUT_TAIL_CHARS:] if log is not None else ""
    return {
        "command": [str(part) for part in command],
        "returncode": code,
        "wall_s": round(wall, 2),
        "cpu_user_s": round(after.ru_utime - before.ru_utime, 2),
        "cpu_system_s": round(after.ru_stime - before.ru_stime, 2),
        **memory.as_dict(),
        "output_tail": tail,
    }


# ---- node costs ---------------------------------------------------------------------------------


def _is_batch_workflow(name: str) -> bool:
    """Whether ``name`` is the workflow of a batch of subjects (``--subjects-per-job``)."""
    from nipype_xai.workflows.base import batch_workflow_name

    index = re.search(r"\d+", name)
    return index is not None and name == batch_workflow_name(int(index[0]))


def node_costs(work_dir: Path) -> dict[str, dict[str, Any]]:
    """Nipype's ``runtime.duration`` of every node of a run, summed over subjects.

    Keys are the node's path below its subject's or its batch's workflow
    (``registration_wf.register``; ``model`` for the model node of ``--subjects-per-job``'s
    batches); a node outside both keeps its whole path. Values ``{"seconds", "runs", "gpu",
    "shared"}``: ``gpu``, whether the node's interface has a ``use_gpu`` input (a node that runs a
    network and would run on the GPU with ``--device cuda``); ``shared``, whether the node lies
    outside every subject's and batch's workflow (run once per run, such as the template
    selection: not a cost per subject). A MapNode's items (its ``mapflow`` folders) are added to
    the MapNode.

    Read from each node's ``_report/report.rst`` (inputs and runtime as text), not its result
    pickle: a sink's pickle cannot be loaded once the derivatives it staged have been moved into
    place (its outputs are traits of existing files).
    """
    costs: dict[str, dict[str, Any]] = {}
    for report in sorted(Path(work_dir).rglob("_report/report.rst")):
        parts = report.parent.parent.relative_to(work_dir).parts
        item = "mapflow" in parts
        if item:
            parts = parts[:parts.index("mapflow")]
        text = report.read_text(errors="replace")
        _, _, runtime = text.partition("Runtime info")
        duration = re.search(r"^\* duration : ([0-9.eE+-]+)$", runtime, re.MULTILINE)
        owner = [i for i, part in enumerate(parts)
                 if re.fullmatch(r"sub_.+_wf", part) or _is_batch_workflow(part)]
        key = ".".join(parts[owner[-1] + 1:] if owner else parts)
        entry = costs.setdefault(key, {"seconds": 0.0, "runs": 0, "gpu": False,
                                       "shared": not owner})
        entry["gpu"] |= re.search(r"^\* use_gpu : ", text, re.MULTILINE) is not None
        entry["seconds"] = round(entry["seconds"] + (float(duration[1]) if duration else 0.0), 3)
        entry["runs"] += 0 if item else 1
    return costs


def cost_split(costs: dict[str, dict[str, Any]], n_subjects: int) -> dict[str, float]:
    """Node seconds per subject (the subjects' own nodes: GPU-capable, the others, registration
    alone, all), and the shared nodes' seconds (once per run, not per subject)."""
    own = {name: cost for name, cost in costs.items() if not cost["shared"]}
    gpu = sum(c["seconds"] for c in own.values() if c["gpu"])
    cpu = sum(c["seconds"] for c in own.values() if not c["gpu"])
    registration = sum(c["seconds"] for name, c in own.items()
                       if name.startswith("registration_wf."))
    n = max(n_subjects, 1)
    return {"gpu_nodes_s_per_subject": round(gpu / n, 2),
            "cpu_nodes_s_per_subject": round(cpu / n, 2),
            "registration_wf_s_per_subject": round(registration / n, 2),
            "all_nodes_s_per_subject": round((gpu + cpu) / n, 2),
            "shared_nodes_s": round(sum(c["seconds"] for c in costs.values() if c["shared"]), 2)}


# ---- one measurement ----------------------------------------------------------------------------


def result_name(n_subjects: int, method_set: str, resolution_mm: float,
                extra_args: Sequence[str]) -> str:
    """``n20-fast-2mm`` (+ ``-subjects-per-job-4`` for extra arguments): the JSON's stem."""
    extra = re.sub(r"[^A-Za-z0-9.]+", "-", " ".join(extra_args)).strip("-")
    return f"n{n_subjects}-{method_set}-{resolution_mm:g}mm" + (f"-{extra}" if extra else "")


def participant_command(bids_dir: Path, output_dir: Path, work_dir: Path, *, model: Path,
                        methods: Sequence[str], nprocs: int,
                        extra_args: Sequence[str] = ()) -> list[str]:
    """The BIDS-App participant-level call measured (``extra_args`` last, so they override)."""
    return [sys.executable, "-m", "nipype_xai.cli.run", str(bids_dir), str(output_dir),
            "participant", "--model", str(model), "--methods", *methods,
            "--nprocs", str(nprocs), "-w", str(work_dir),
            "--ground-truth", str(bids_dir / "derivatives" / "groundtruth"), "-q", *extra_args]


def group_command(bids_dir: Path, output_dir: Path, work_dir: Path, *, nprocs: int,
                  group_args: Sequence[str] = ()) -> list[str]:
    """The BIDS-App group-level call measured."""
    return [sys.executable, "-m", "nipype_xai.cli.run", str(bids_dir), str(output_dir), "group",
            "--nprocs", str(nprocs), "-w", str(work_dir), "-q", *group_args]


def measure(*, n_subjects: int, method_set: str, cohort_dir: Path, runs_dir: Path,
            model: Optional[Path] = None, resolution_mm: float = 2.0, nprocs: int = 2,
            extra_args: Sequence[str] = (), group_args: Sequence[str] = (),
            interval: float = SAMPLE_INTERVAL_S) -> dict[str, Any]:
    """Measure both levels on a cohort of ``n_subjects``; return the result (what the JSON holds).

    The runs' folders are ``runs_dir/<result name>/{out,work}``, with each level's output in
    ``participant.log`` and ``group.log`` beside them. The group level runs only when the
    participant level succeeded for at least one subject.
    """
    import nipype_xai
    from nipype_xai.models.bundled import bundled_model_spec

    methods = METHOD_SETS[method_set]
    model = Path(model or bundled_model_spec(TASK)).absolute()
    bids_dir, generation_s = ensure_cohort(cohort_dir, n_subjects, resolution_mm)
    name = result_name(n_subjects, method_set, resolution_mm, extra_args)
    run_dir = Path(runs_dir).absolute() / name
    # Fresh folders: a measured run never reuses Nipype's cache.
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    output_dir, work_dir = run_dir / "out", run_dir / "work"
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}

    participant = run_measured(
        participant_command(bids_dir, output_dir, work_dir, model=model, methods=methods,
                            nprocs=nprocs, extra_args=extra_args),
        interval=interval, env=environment, log=run_dir / "participant.log")
    participant["subjects_per_hour"] = round(n_subjects / participant["wall_s"] * 3600, 1)
    participant["wall_s_per_subject"] = round(participant["wall_s"] / n_subjects, 2)
    failures = output_dir / "failures.tsv"
    participant["failed_subjects"] = (
        sum(1 for _ in open(failures)) - 1 if failures.is_file() else 0)
    costs = node_costs(work_dir)
    participant["node_costs"] = costs
    participant.update(cost_split(costs, n_subjects))

    group: Optional[dict[str, Any]] = None
    if participant["returncode"] in (0, 2) and participant["failed_subjects"] < n_subjects:
        group = run_measured(group_command(bids_dir, output_dir, work_dir, nprocs=nprocs,
                                           group_args=group_args),
                             interval=interval, env=environment, log=run_dir / "group.log")

    result = {
        "version": RESULT_VERSION,
        "name": name,
        "n_subjects": n_subjects,
        "method_set": method_set,
        "methods": list(methods),
        "resolution_mm": resolution_mm,
        "model": str(model),
        "nprocs": nprocs,
        "extra_args": list(extra_args),
        "group_args": list(group_args),
        "interval_s": interval,
        "cohort": str(bids_dir),
        "run_dir": str(run_dir),
        "cohort_generation_s": None if generation_s is None else round(generation_s, 1),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "nipype_xai": nipype_xai.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "participant": participant,
        "group": group,
    }
    return result


# ---- the table ----------------------------------------------------------------------------------

#: Rows of the table: (label, level, key in that level's result).
TABLE_ROWS = (
    ("participant wall (s)", "participant", "wall_s"),
    ("participant wall / subject (s)", "participant", "wall_s_per_subject"),
    ("subjects / hour", "participant", "subjects_per_hour"),
    ("participant CPU (user+sys, s)", "participant", "cpu_s"),
    ("GPU-capable nodes / subject (s)", "participant", "gpu_nodes_s_per_subject"),
    ("other nodes / subject (s)", "participant", "cpu_nodes_s_per_subject"),
    ("shared nodes, once per run (s)", "participant", "shared_nodes_s"),
    ("participant peak tree (MiB)", "participant", "peak_tree_mib"),
    ("participant peak single RSS (MiB)", "participant", "peak_single_rss_mib"),
    ("participant peak processes", "participant", "peak_processes"),
    ("failed subjects", "participant", "failed_subjects"),
    ("group wall (s)", "group", "wall_s"),
    ("group peak tree (MiB)", "group", "peak_tree_mib"),
    ("group peak single RSS (MiB)", "group", "peak_single_rss_mib"),
)
#: Rows whose ratio largest N / smallest N is printed (the memory peaks).
RATIO_ROWS = ("participant peak tree (MiB)", "participant peak single RSS (MiB)",
              "group peak tree (MiB)", "group peak single RSS (MiB)")


def _value(result: dict[str, Any], level: str, key: str) -> Optional[float]:
    part = result.get(level) or {}
    if key == "cpu_s":
        return (round(part["cpu_user_s"] + part["cpu_system_s"], 1)
                if "cpu_user_s" in part else None)
    return part.get(key)


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every result JSON in ``folder`` (sorted by name)."""
    return [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))]


def summary_table(results: Sequence[dict[str, Any]]) -> str:
    """One block per (method set, resolution, extra arguments): the N side by side, then the
    ratio of the largest N's value to the smallest's on the memory rows."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for result in results:
        key = (result["method_set"], result["resolution_mm"], tuple(result["extra_args"]),
               Path(result["model"]).name, result.get("nprocs"))
        groups.setdefault(key, []).append(result)
    lines = []
    for (method_set, resolution, extra, model, nprocs), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r["n_subjects"])
        ns = [r["n_subjects"] for r in members]
        ratio = f"{ns[-1]}/{ns[0]}" if len(ns) > 1 else ""
        lines.append(f"method set {method_set} ({', '.join(members[0]['methods'])}), "
                     f"{resolution:g} mm, model {model}, --nprocs {nprocs}"
                     + (f", extra: {' '.join(extra)}" if extra else ""))
        header = f"  {'':36s}" + "".join(f" {'N=' + str(n):>10s}" for n in ns)
        lines.append(header + (f" {ratio:>10s}" if ratio else ""))
        for label, level, key in TABLE_ROWS:
            values = [_value(r, level, key) for r in members]
            cells = "".join(f" {'-' if v is None else f'{v:g}':>10s}" for v in values)
            if ratio and label in RATIO_ROWS and values[0] and values[-1] is not None:
                cells += f" {values[-1] / values[0]:10.2f}"
            lines.append(f"  {label:36s}{cells}")
        lines.append("")
    return "\n".join(lines)


# ---- command line -------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, list[str]]:
    """This script's options, and the rest (forwarded to the participant level)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Every other argument is passed to the participant level's command unchanged.")
    parser.add_argument("--output", type=Path, required=True,
                        help="folder of the result JSONs (one per N, method set, extra args)")
    parser.add_argument("--cohort-dir", type=Path, required=True,
                        help="folder where the synthetic cohorts are generated once and reused")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="where each run's output and work folders go (default: "
                             "OUTPUT/runs); removed after measuring unless --keep-runs")
    parser.add_argument("--keep-runs", action="store_true",
                        help="keep each run's output and work folders")
    parser.add_argument("--n-subjects", type=int, nargs="+", default=list(DEFAULT_N_SUBJECTS),
                        metavar="N", help="cohort sizes (default: 20 200)")
    parser.add_argument("--method-sets", nargs="+", choices=sorted(METHOD_SETS),
                        default=list(METHOD_SETS), metavar="SET",
                        help="method sets: " + "; ".join(f"{k} = {' '.join(v)}"
                                                         for k, v in METHOD_SETS.items()))
    parser.add_argument("--resolution", type=float, default=2.0, metavar="MM",
                        help="voxel size of the synthetic T1w images (default: 2)")
    parser.add_argument("--model", type=Path, default=None, metavar="SPEC.json",
                        help="model spec (default: the bundled lesion model, as the demo)")
    parser.add_argument("--nprocs", type=int, default=2, help="the CLI's --nprocs (default: 2)")
    parser.add_argument("--group-args", default="", metavar="'ARGS'",
                        help="extra arguments of the group level, one quoted string")
    parser.add_argument("--interval", type=float, default=SAMPLE_INTERVAL_S, metavar="S",
                        help=f"memory sampling interval (default: {SAMPLE_INTERVAL_S})")
    return parser.parse_known_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, extra_args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    runs_dir = args.runs_dir or args.output / "runs"
    code = 0
    for method_set in args.method_sets:
        for n in args.n_subjects:
            name = result_name(n, method_set, args.resolution, extra_args)
            path = args.output / f"{name}.json"
            if path.is_file():
                print(f"{name}: measured before ({path}); kept", flush=True)
                continue
            print(f"{name}: running ({time.strftime('%H:%M:%S')})", flush=True)
            result = measure(n_subjects=n, method_set=method_set, cohort_dir=args.cohort_dir,
                             runs_dir=runs_dir, model=args.model, resolution_mm=args.resolution,
                             nprocs=args.nprocs, extra_args=extra_args,
                             group_args=shlex.split(args.group_args), interval=args.interval)
            participant = result["participant"]
            ok = participant["returncode"] == 0 and (result["group"] or {}).get("returncode") == 0
            if not ok:
                code = 1
                print(f"{name}: failed (participant exit {participant['returncode']}, group "
                      f"{(result['group'] or {}).get('returncode')}); not saved, its folders "
                      f"kept in {result['run_dir']}:\n" + participant["output_tail"][-1500:],
                      file=sys.stderr)
                continue
            if not args.keep_runs:
                shutil.rmtree(result["run_dir"], ignore_errors=True)
            temporary = path.with_suffix(".json.partial")
            temporary.write_text(json.dumps(result, indent=2) + "\n")
            temporary.replace(path)
            print(f"{name}: participant {participant['wall_s']:.0f} s, group "
                  f"{result['group']['wall_s']:.0f} s -> {path}", flush=True)
    print()
    print(summary_table(load_results(args.output)))
    return code


if __name__ == "__main__":
    sys.exit(main())
