"""The simulation benchmark's arithmetic and its warning about a busy machine."""

import os

from experiments.bench_simulation import busy_cpus, load_warning, steady


def test_steady_leaves_out_the_first_round() -> None:
    assert steady([10.0, 2.0, 4.0]) == 3.0
    assert steady([5.0]) == 5.0


def test_load_warning_only_above_the_threshold() -> None:
    assert load_warning(None) == "" and load_warning(0.2) == ""
    warning = load_warning(1.5)
    assert warning.startswith("WARNING: other processes kept 1.5 CPUs busy") and "nice 15" in warning


def test_busy_cpus_is_a_share_of_this_machine() -> None:
    busy = busy_cpus(0.2)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1)


def test_the_aggregator_benchmark_times_every_rule_against_fedavg(data_dir) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from server_strategies.aggregators import AGGREGATORS

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "experiments" / "bench_aggregators.py"), "--repeats", "1",
                          "-c", "dataset=mnist", "-c", "data-fraction=0.02", "-c", f"data-dir={data_dir}"],
                         capture_output=True, text=True, timeout=300, check=True, cwd=root).stdout
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    # the rules shipped here (this process may hold more: other tests register plugins)
    shipped = {"paper", "dba", "krum", "multikrum", "bulyan", "median", "trimmed-mean", "norm-clip", "flame", "fltrust",
               "foolsgold", "dp-fixed-clip"}
    assert set(rows[1:]) == shipped and shipped <= set(AGGREGATORS.names())
    assert "| paper | " in out and "| 1.0 |" in out


def test_the_candidate_benchmark_checks_the_cut_model_against_the_whole_one(data_dir) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "experiments" / "bench_candidates.py"), "--repeats", "1",
                          "-c", "dataset=mnist", "-c", "data-fraction=0.02", "-c", f"data-dir={data_dir}"],
                         capture_output=True, text=True, timeout=300, check=True, cwd=root).stdout
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()
            if line.startswith("| ") and "---" not in line}
    # levels 0..49 of mnist-cnn's 50 conv2 neurons, and AW's Deltas 10, 9.75, ..., 0.5
    assert rows == {"candidates": "count", "pruning": "50", "aw": "39"}
