"""What a benchmark run records about itself: command, seeds, versions, machine, settings, digests.

``provenance.json`` is written by :func:`provenance_record` + :func:`write_json`;
:func:`state_digest` names a model's weights in the resume cache when no weights file has a
checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_write
from ..synth.train import EASY_COHORT_OPTIONS
from .settings import (
    ARCHITECTURES,
    BASELINES,
    TO_TEMPLATE,
    BenchmarkSettings,
    groundtruth_mask_label,
)


def write_json(path: Path, content: Mapping[str, Any]) -> Path:
    """Write ``content`` as indented JSON, atomically."""
    text = json.dumps(content, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names and values, in order)."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


#: The code a benchmark result depends on, relative to the package: how maps are computed
#: (attribution, models, images), how they are scored (metrics), the cohorts and their loading
#: (synth) and this package's scoring. Its digest names results in the resume cache and in
#: ``provenance.json``, so a cached result or a part computed by other code is never reused or
#: merged.
CODE_PATHS: tuple[str, ...] = ("attribution", "metrics", "models", "synth", "images.py",
                               "benchmark/scoring.py", "benchmark/method_data.py")


def code_digest() -> str:
    """SHA-256 over the source files of :data:`CODE_PATHS` (names and bytes, sorted)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for entry in CODE_PATHS:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of Python and of the packages the numbers depend on."""
    from importlib import metadata

    found = {"nipype_xai": __version__, "torch": torch.__version__,
             "python": platform.python_version()}
    for package in ("numpy", "scipy", "pandas", "nibabel", "nilearn", "captum", "zennit", "monai",
                    "pot"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine(device: str) -> dict[str, Any]:
    """The machine the timings come from: platform, CPU, threads, device (and GPU name)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        # The vector instruction set torch's CPU kernels use (e.g. AVX2, AVX512): trained weights
        # were bit-identical on one VM and differed on another (see synth.train.train_model).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            names = [line.split(":", 1)[1].strip() for line in stream
                     if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def provenance_record(settings: BenchmarkSettings, *, seeds: tuple[int, int, int],
                      names: Sequence[str], models: Mapping[str, Any],
                      skipped: Sequence[Mapping[str, Any]], started: float,
                      finished: float) -> dict[str, Any]:
    """The content of ``provenance.json``.

    Parameters
    ----------
    settings
        The run's settings.
    seeds
        The train, test and easy cohort seeds (:func:`~nipype_xai.benchmark.cohort_seeds`).
    names
        The benchmarked models' names (architectures, or the given spec's name).
    models
        ``"<task>/<name>"`` -> how the model came about (trained, reused or loaded).
    skipped
        Test subjects not scored, with the reason.
    started, finished
        Wall-clock times (seconds since the epoch).
    """
    s = settings
    train_seed, test_seed, easy_seed = seeds
    return {
        "command": s.command if s.command is not None else shlex.join(sys.argv),
        "code_digest": code_digest(),
        "seed": s.seed,
        # The training cohorts' seeds only where they were generated (a given model without
        # a method that takes data has none).
        "cohort_seeds": {**({"train": train_seed} if s.uses_training_cohorts else {}),
                         "test": test_seed,
                         **({"easy": easy_seed} if s.n_easy and s.uses_training_cohorts else {})},
        "versions": versions(),
        "machine": machine(s.device),
        "started": _utc(started),
        "finished": _utc(finished),
        "seconds": round(finished - started, 1),
        "settings": {
            "tasks": list(s.tasks), "n_train": s.n_train, "n_test": s.n_test,
            "n_easy": s.n_easy, "easy_cohort_options": {t: EASY_COHORT_OPTIONS[t] for t in s.tasks},
            "resolution_mm": s.resolution_mm, "model_resolution_mm": s.model_resolution_mm,
            "to_template": {t: TO_TEMPLATE[t] for t in s.tasks},
            # Which mask each ground-truth definition is, per task (groundtruth column).
            "groundtruths": {t: {g: f"label-{groundtruth_mask_label(t, g)}"
                                 for g in s.groundtruths if groundtruth_mask_label(t, g)}
                             for t in s.tasks},
            "methods": list(s.methods), "method_params": s.method_params,
            "random_model_methods": list(s.random_model_methods), "baselines": list(BASELINES),
            "n_sanity": s.n_sanity, "sanity_methods": list(s.sanity_methods),
            "sanity_max_steps": s.sanity_max_steps, "n_boot": s.n_boot, "ci": 0.95,
            "score": "abs", "target": "predicted class", "training": s.training,
            "training_seeds": list(s.training_seeds) if s.model_spec is None else None,
            "min_balanced_accuracy": s.min_balanced_accuracy,
            "part": list(s.part) if s.part is not None else None, "name": s.name,
            "parcellation": (None if s.parcellation is None else {
                "path": str(Path(s.parcellation).absolute()),
                "sha256": hashlib.sha256(Path(s.parcellation).read_bytes()).hexdigest()}),
            "metrics": list(s.metrics),
        },
        "architectures": ({name: {"architecture": ARCHITECTURES[name][0],
                                  "kwargs": ARCHITECTURES[name][1]} for name in names}
                          if s.model_spec is None else {names[0]: {"spec": str(s.model_spec)}}),
        "models": dict(models),
        "skipped_subjects": list(skipped),
    }


def _ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3, 5"``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def part_coverage(records: Sequence[tuple[Path, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Which parts of each run the merged sources hold: ``{"<tasks>/<name>": {"parts": [k...],
    "of": n, "missing": [k...], "training_seeds": [s...], "fewer_seeds": {"k": [s...]}}}``; a
    whole run (no part) has ``parts`` and ``of`` None; ``fewer_seeds`` names the parts that
    scored fewer training seeds than the run's others (an interim part not yet re-run).

    A merge of fewer parts than a run has is legitimate (a costly method set run on its first
    parts only) but its tables then cover those parts' subjects only: the merged record, the
    Markdown and the command say so.
    """
    found: dict[str, dict[str, Any]] = {}
    for _, record in records:
        settings = record.get("settings") or {}
        run = f"{'+'.join(settings.get('tasks') or ['?'])}/{run_name(record)}"
        entry = found.setdefault(run, {"parts": set(), "of": set(), "seeds": {}})
        part = settings.get("part")
        if part is None:
            entry["of"].add(None)
        else:
            entry["parts"].add(int(part[0]))
            entry["of"].add(int(part[1]))
        seeds = settings.get("training_seeds")
        key = "whole" if part is None else str(int(part[0]))
        # The same part given twice (an interim part and its re-run): the seeds of either.
        entry["seeds"].setdefault(key, set()).update(int(s) for s in seeds or ())
    coverage = {}
    for run, entry in sorted(found.items()):
        seeds = set().union(*entry["seeds"].values())
        fewer = {k: sorted(v) for k, v in sorted(entry["seeds"].items(),
                                                 key=lambda item: item[0].zfill(8))
                 if v < seeds}
        common = {"training_seeds": sorted(seeds) or None, "fewer_seeds": fewer}
        if None in entry["of"] or len(entry["of"]) != 1:
            # A whole run, or parts of different splits: nothing to count missing against.
            coverage[run] = {"parts": sorted(entry["parts"]) or None, "of": None, "missing": [],
                             **common}
            continue
        (of,) = entry["of"]
        coverage[run] = {"parts": sorted(entry["parts"]), "of": of,
                         "missing": sorted(set(range(1, of + 1)) - entry["parts"]), **common}
    return coverage


def coverage_lines(coverage: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per run of :func:`part_coverage`: ``lesion/main: parts 1-8 of 8, training seeds
    0, 1, 2``, with the missing parts and the parts of fewer seeds where there are any."""
    lines = []
    for run, entry in coverage.items():
        parts = entry.get("parts") or []
        word = "part" if len(parts) == 1 else "parts"
        if entry.get("of") is None:
            line = f"{run}: {word} {_ranges(parts)}" if parts else f"{run}: a whole run"
        else:
            line = f"{run}: {word} {_ranges(parts)} of {entry['of']}"
        if entry.get("training_seeds"):
            seeds = entry["training_seeds"]
            line += f", training seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        notes = []
        if entry.get("missing"):
            notes.append(f"missing {_ranges(entry['missing'])}: its rows cover the subjects of "
                         f"the {word} present only")
        for part, seeds in (entry.get("fewer_seeds") or {}).items():
            which = "the whole run" if part == "whole" else f"part {part}"
            notes.append(f"{which}: training seed{'s' if len(seeds) != 1 else ''} "
                         f"{', '.join(map(str, seeds)) or 'none'} only")
        if notes:
            line += f" ({'; '.join(notes)})"
        lines.append(line)
    return lines


def run_name(record: Mapping[str, Any]) -> str:
    """The run (method set) a part's ``provenance.json`` belongs to: its ``--name``."""
    return str((record.get("settings") or {}).get("name") or "main")


def merged_provenance(records: Sequence[tuple[Path, Mapping[str, Any]]]) -> dict[str, Any]:
    """``provenance.json`` of merged parts: the first part's record, with the methods of all
    parts, and every part's command, times, machine and versions under ``parts``."""
    first = dict(records[0][1])
    settings = dict(first.get("settings", {}))
    for key in ("methods", "sanity_methods", "random_model_methods"):
        settings[key] = list(dict.fromkeys(m for _, r in records
                                           for m in r.get("settings", {}).get(key) or []))
    settings["method_params"] = {k: v for _, r in records
                                 for k, v in (r.get("settings", {}).get("method_params")
                                              or {}).items()}
    settings["part"] = None
    models: dict[str, Any] = {}
    cohort_seeds: dict[str, Any] = {}  # a given model's run has no training cohorts
    for _, record in records:
        models.update(record.get("models", {}))
        cohort_seeds.update(record.get("cohort_seeds") or {})
    # Each run (method set, its --name) has one code; the merged record names every run's.
    codes = {run_name(r): r.get("code_digest") for _, r in records}
    return {
        **first, "settings": settings, "models": models, "cohort_seeds": cohort_seeds,
        "code_digest": (next(iter(codes.values())) if len(set(codes.values())) == 1
                        else "per run, see code_digests"),
        "code_digests": dict(sorted(codes.items())),
        "command": " && ".join(dict.fromkeys(str(r.get("command")) for _, r in records)),
        "seconds": round(sum(float(r.get("seconds") or 0) for _, r in records), 1),
        "skipped_subjects": [item for _, r in records for item in r.get("skipped_subjects", [])],
        "coverage": part_coverage(records),
        "parts": [{"source": str(source), **{k: r.get(k) for k in (
            "command", "started", "finished", "seconds", "machine", "versions")},
            "part": r.get("settings", {}).get("part"),
            "name": r.get("settings", {}).get("name"), "code_digest": r.get("code_digest"),
            "methods": r.get("settings", {}).get("methods")} for source, r in records],
    }
