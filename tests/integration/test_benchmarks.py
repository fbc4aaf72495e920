"""Every benchmark script runs at its smoke size, prints its figures and records nothing.

Each script runs as a user runs it (``python benchmarks/X.py --smoke``) in a subprocess
from an empty folder. A smoke run's timings mean nothing; what is checked is that the
script gets through both sides of its comparison, prints the figures its BENCHMARKS.md
row would hold, and leaves BENCHMARKS.md as it was.
"""

import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, cli_env, scenario

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


SCRIPTS = ("memory.py", "scale.py", "time_to_accuracy.py", "overhead.py", "small_search.py",
           "data_sharing.py", "throughput.py")
# Each script's smoke run alone on 2 cores, in seconds (memory, scale and
# time_to_accuracy start two Ray runtimes each).
SECONDS = {"time_to_accuracy.py": 77, "small_search.py": 38, "overhead.py": 28,
           "memory.py": 22, "scale.py": 22, "data_sharing.py": 11, "throughput.py": 6}
# As collected, before any smoke run (they run with the session's other scenarios).
BEFORE = BENCHMARKS_MD.read_bytes()


def _run(script: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=cli_env(RAY_ADDRESS="local"))  # never join another Ray


for _script in SCRIPTS:  # each in its own folder and its own Ray runtime
    scenario(f"smoke {_script}", needed_by="smoke_runs", seconds=SECONDS[_script])(
        lambda folder, script=_script: _run(script, folder))


@pytest.fixture(scope="module")
def smoke_runs(scenario_runs):
    """Every CPU script's smoke run (most of a smoke run is starting Ray and importing
    torch, so they overlap well with each other and the session's other scenarios)."""
    runs = {s: scenario_runs.result(f"smoke {s}") for s in SCRIPTS}
    assert BENCHMARKS_MD.read_bytes() == BEFORE, "a --smoke run changed BENCHMARKS.md"
    return runs


def smoke(script: str, runs: dict) -> str:
    """The stdout of ``benchmarks/<script> --smoke``, after checking it exited 0 and
    recorded nothing."""
    proc = runs[script]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "recorded in" not in proc.stdout
    return proc.stdout


def test_overhead_compares_ray_defaults_reuse_and_the_suite(smoke_runs):
    out = smoke("overhead.py", smoke_runs)
    workers = {side: int(n) for side, n in
               re.findall(r"^((?:raw Ray Tune|suite), [^\n]*?)\s+[\d.]+\s+\d+ ms\s+(\d+)$", out,
                          re.M)}
    assert workers["raw Ray Tune, defaults"] == 4  # a fresh worker process per trial
    at_once = min(4, os.cpu_count())  # with reuse, at most one worker per running trial
    for side in ("raw Ray Tune, reuse_actors=True", "suite, MLflow off",
                 "suite, MLflow on (SQLite)"):
        assert workers[side] <= at_once, (side, workers)
    for suite in ("suite, MLflow off", "suite, MLflow on (SQLite)"):
        assert re.search(rf"^{re.escape(suite)}: [\d.]+x \(aim (NOT )?met: >= 10x\) less "
                         r"overhead per trial than Ray's defaults; [\d.]+x \(aim (NOT )?met: "
                         r"<= 1.05x\)", out, re.M), out[-2000:]
    assert "MLflow (SQLite) adds" in out


def test_time_to_accuracy_runs_every_peer(smoke_runs):
    out = smoke("time_to_accuracy.py", smoke_runs)
    for side in ("hand grid", "raw Ray Tune", "Optuna", "suite", "suite, Optuna TPE + ASHA",
                 "suite, random + ASHA"):
        # 2 trials x 2 epochs a side, each side a process timed from its launch: each
        # searched, its results were counted, its first result came before its exit
        found = re.search(rf"^=== {re.escape(side)}: 2 trials, (\d+) results; from launch: "
                          r"first result ([\d.]+) s, val_accuracy >= 0\.975 at \S+ s.*, "
                          r"exit ([\d.]+) s$", out, re.M)
        assert found, (side, out[-3000:])
        assert int(found.group(1)) == 4, (side, found.group(0))
        assert 0 < float(found.group(2)) < float(found.group(3)), found.group(0)
    assert re.search(r"^median time to val_accuracy >= 0\.975 \(s\): hand grid \S+; "
                     r"raw Ray Tune \S+; Optuna \S+; suite \S+$", out, re.M), out[-3000:]
    assert re.search(r"^hand grid / suite: .*\(aim (NOT )?met: >= 3x\)$", out, re.M)
    assert re.search(r"^suite / Optuna: .*\(aim (NOT )?met: <= 1x\)$", out, re.M)
    assert re.search(r"^suite (never worse at equal wall-clock than hand grid, raw Ray Tune, "
                     r"Optuna in 1 seed|worse at equal wall-clock in seed\(s\) 0 )", out, re.M)
    assert re.search(r"^median first result from launch \(s\): hand grid [\d.]+; raw Ray Tune "
                     r"[\d.]+; Optuna [\d.]+; suite [\d.]+$", out, re.M)
    assert re.search(r"^median time to target after the side's first result \(s\): hand grid "
                     r"\S+; raw Ray Tune \S+; Optuna \S+; suite \S+$", out, re.M)
    assert re.search(r"^the suite's other searchers, median time to target from launch \(s\): "
                     r"suite, Optuna TPE \+ ASHA \S+; suite, random \+ ASHA \S+$", out, re.M)
    # each side's best configuration trained again and scored on the test split
    assert re.search(r"^median test accuracy .*: hand grid [\d.]+; raw Ray Tune [\d.]+; "
                     r"Optuna [\d.]+; suite [\d.]+$", out, re.M)


def test_small_search_times_the_suite_and_optuna_from_launch(smoke_runs):
    out = smoke("small_search.py", smoke_runs)
    for side in ("suite, MLflow off", "suite, MLflow on (SQLite)", "Optuna"):
        # 4 trials x 3 epochs: every side reports; its first result comes before its exit
        found = re.search(rf"^seed 0: {re.escape(side)}: first result ([\d.]+) s, "
                          r"val_accuracy >= 0.5 at (?:[\d.]+|never) s, all done ([\d.]+) s; "
                          r"best [\d.]+; (\d+) results$", out, re.M)
        assert found, (side, out[-2000:])
        assert 0 < float(found.group(1)) < float(found.group(2))
        assert 4 <= int(found.group(3)) <= 12
    assert re.search(r"^suite \(MLflow off\) / Optuna, median time to val_accuracy >= 0.5: "
                     r"(?:[\d.]+x \(aim (NOT )?met: <= 1.5x\)|not measured)", out, re.M)


def test_throughput_compares_tutorial_and_trainer(smoke_runs):
    out = smoke("throughput.py", smoke_runs)
    assert re.search(r"suite / tutorial W=0: [\d.]+x", out)


def test_data_sharing_samples_concurrent_trials(smoke_runs):
    out = smoke("data_sharing.py", smoke_runs)
    assert "node total PSS peak" in out and "both running" in out


def test_memory_measures_the_node_at_1_and_2_trials(smoke_runs):
    out = smoke("memory.py", smoke_runs)
    assert re.search(r"^large data, 2 trial\(s\)\s+[\d,]+\s+[\d,]+\s+2\s", out, re.M)
    assert re.search(r"^2 trials: node PSS per extra trial, raw [\d,]+ MB", out, re.M)


def test_scale_runs_on_a_simulated_cluster_with_mlflow(smoke_runs):
    out = smoke("scale.py", smoke_runs)
    for side in ("raw Ray Tune, reuse", "suite, MLflow on"):
        assert re.search(rf"^{side}: 12 trials, 36 results, 0 errored in [\d.]+ s = [\d.]+ "
                         r"trials/s", out, re.M), side
    # every request counted, by what it does and by the process that made it
    assert re.search(r"^  MLflow: \d+ requests \(.*\) = [\d.]+ per trial: [\d.]+ to create "
                     r"and end a run, [\d.]+ log_batch per result; \d+ in the writer process",
                     out, re.M)
    assert re.search(r"^suite with MLflow on vs raw Ray Tune with reuse: [\d.]+x the trials/s",
                     out, re.M)
    assert "growth per 1,000 trials" in out and "kB per trial" in out


@pytest.mark.gpu
def test_gpu_packing_packs_trials_on_one_gpu(tmp_path):
    out = smoke("gpu_packing.py", {"gpu_packing.py": _run("gpu_packing.py", tmp_path)})
    assert re.search(r"gpu 0.5 / gpu 1: [\d.]+x \(aim (NOT )?met", out)
