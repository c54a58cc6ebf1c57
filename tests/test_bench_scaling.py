"""benchmarks/bench_scaling.py: the process-tree memory sampler against a known allocation, the
table's ratio, and the whole script (participant and group levels through the CLI) on 2 subjects at
4 mm with the tiny model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tiny_model import write_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_scaling",
                                                  ROOT / "benchmarks" / "bench_scaling.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the class is made.
    sys.modules["bench_scaling"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_script()
MIB = 1024 * 1024


def test_tree_memory_keeps_the_peaks_and_falls_back_to_rss():
    memory = bench.TreeMemory()
    memory.add([(100 * MIB, 60 * MIB, "python a"), (50 * MIB, 30 * MIB, "python b")])
    memory.add([(120 * MIB, 70 * MIB, "python a")])
    assert (memory.metric, memory.peak_tree) == ("pss", 90 * MIB)
    assert (memory.peak_tree_rss, memory.peak_single_rss, memory.peak_single_pss) == (
        150 * MIB, 120 * MIB, 70 * MIB)
    assert memory.peak_processes == 2 and memory.samples == 2
    # One process without PSS (another user's): the whole run is reported by RSS sums.
    memory.add([(10 * MIB, None, "other")])
    assert (memory.metric, memory.peak_tree) == ("rss", 150 * MIB)
    assert memory.as_dict()["peak_single_pss_mib"] is None


def test_sampler_sees_a_grandchild_allocation():
    # A parent that starts a child which writes 300 MiB (bytes of b"x": every page touched) and
    # holds it for 3 s: the tree's peak must hold it, and the largest process must be the child.
    size = 300
    child = f"import time; data = b'x' * ({size} * 1024 * 1024); time.sleep(3)"
    parent = textwrap.dedent(f"""
        import subprocess, sys
        subprocess.run([sys.executable, "-c", {child!r}], check=True)
    """)
    result = bench.run_measured([sys.executable, "-c", parent], interval=0.2)
    assert result["returncode"] == 0
    assert result["peak_processes"] == 2
    assert result["memory_metric"] == "pss"
    # Lower bound: the allocation itself. Upper bound: the interpreters add little (measured
    # here, 3 runs: tree 311.0 MiB PSS, 322.3 MiB RSS sum, child 310.7 MiB RSS), so 60 MiB
    # above the allocation leaves room for another Python build without hiding a double count.
    for key in ("peak_tree_mib", "peak_tree_rss_sum_mib", "peak_single_rss_mib"):
        assert size <= result[key] < size + 60, (key, result[key])
    assert "time.sleep(3)" in result["peak_single_command"]
    assert result["wall_s"] >= 3
    assert result["cpu_user_s"] + result["cpu_system_s"] > 0


def test_table_puts_the_sizes_side_by_side_with_the_memory_ratio():
    def result(n, tree, single):
        level = {"wall_s": n * 10.0, "wall_s_per_subject": 10.0, "subjects_per_hour": 360.0,
                 "cpu_user_s": n * 9.0, "cpu_system_s": n * 1.0, "peak_tree_mib": tree,
                 "peak_single_rss_mib": single, "peak_processes": 3, "failed_subjects": 0,
                 "gpu_nodes_s_per_subject": 4.0, "cpu_nodes_s_per_subject": 6.0}
        return {"n_subjects": n, "method_set": "fast", "methods": ["gradient"],
                "resolution_mm": 2.0, "extra_args": [], "model": "/m/spec.json", "nprocs": 2,
                "participant": level, "group": {**level, "peak_tree_mib": tree / 2}}

    table = bench.summary_table([result(200, 3000.0, 1200.0), result(20, 1500.0, 1000.0)])
    lines = table.splitlines()
    assert "N=20" in lines[1] and "N=200" in lines[1] and "200/20" in lines[1]
    assert lines[1].index("N=20 ") < lines[1].index("N=200")
    tree = next(line for line in lines if line.strip().startswith("participant peak tree"))
    assert tree.split()[-3:] == ["1500", "3000", "2.00"]
    single = next(line for line in lines if line.strip().startswith("participant peak single"))
    assert single.split()[-1] == "1.20"
    wall = next(line for line in lines if line.strip().startswith("participant wall (s)"))
    assert wall.split()[-2:] == ["200", "2000"]  # no ratio on a time row


def test_script_measures_both_levels_end_to_end(tmp_path):
    spec = write_tiny_model(tmp_path / "model")
    output = tmp_path / "results"
    argv = ["--output", str(output), "--cohort-dir", str(tmp_path / "cohorts"),
            "--n-subjects", "2", "--method-sets", "gradient", "--resolution", "4",
            "--model", str(spec), "--group-args", "--n-boot 50 --no-reports",
            # Not the script's: forwarded to the participant level (the synthetic heads are
            # skull-stripped; no reports keeps the test short; both subjects in one model node).
            "--skull-stripped", "--no-reports", "--subjects-per-job", "2"]
    assert bench.main(argv) == 0
    [path] = output.glob("*.json")
    assert path.name == "n2-gradient-4mm-skull-stripped-no-reports-subjects-per-job-2.json"
    result = json.loads(path.read_text())
    assert result["extra_args"] == ["--skull-stripped", "--no-reports", "--subjects-per-job",
                                    "2"]
    assert result["methods"] == ["gradient"] and result["n_subjects"] == 2
    participant, group = result["participant"], result["group"]
    assert participant["command"][-4:] == result["extra_args"]
    assert group["command"][-3:] == ["--n-boot", "50", "--no-reports"]
    assert participant["returncode"] == 0 and group["returncode"] == 0
    assert participant["failed_subjects"] == 0
    for level in (participant, group):
        # A python process that imported torch and Nipype holds well over 100 MiB.
        assert level["memory_metric"] == "pss"
        assert 100 < level["peak_single_rss_mib"] <= level["peak_tree_rss_sum_mib"]
        assert 100 < level["peak_tree_mib"] <= level["peak_tree_rss_sum_mib"]
        assert level["samples"] >= 1 and level["peak_processes"] >= 1
        assert level["wall_s"] > 0 and level["cpu_user_s"] > 0
    # --nprocs 2: the CLI's process and MultiProc's workers.
    assert participant["peak_processes"] >= 2
    assert participant["subjects_per_hour"] == pytest.approx(2 * 3600 / participant["wall_s"],
                                                             rel=1e-2)
    costs = participant["node_costs"]
    # The batch's model node (inference and attribution of both subjects, in the batch's
    # workflow) is a cost of the subjects, not a shared one.
    assert costs["model"] == {**costs["model"], "runs": 1, "gpu": True, "shared": False}
    assert costs["model_grid"]["runs"] == 2 and not costs["model_grid"]["gpu"]
    # The template selection runs once per run, outside the subjects' workflows.
    assert costs["participant_wf.template_select"] == {
        **costs["participant_wf.template_select"], "runs": 1, "shared": True, "gpu": False}
    # The JSON rounds the split to 0.01 s.
    assert participant["shared_nodes_s"] == pytest.approx(
        costs["participant_wf.template_select"]["seconds"], abs=0.005)
    # Sinks' result pickles cannot be loaded once their files moved: read from the reports.
    assert costs["derivatives_wf.commit_derivatives"]["runs"] == 2
    registration = [name for name in costs if name.startswith("registration_wf.")]
    assert registration and not any(costs[name]["gpu"] for name in registration)
    assert 0 < participant["gpu_nodes_s_per_subject"] < participant["wall_s"]
    assert 0 < participant["registration_wf_s_per_subject"] <= participant[
        "cpu_nodes_s_per_subject"]
    # The runs' folders are removed after a successful measurement; the cohort is cached.
    assert not Path(result["run_dir"]).exists()
    assert (tmp_path / "cohorts" / "lesion-n2-4mm-seed0" / "participants.tsv").is_file()

    # Resumable: a second call keeps the JSON and runs nothing.
    before = path.read_text()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"), *argv],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "measured before" in done.stdout and "N=2" in done.stdout
    assert path.read_text() == before
