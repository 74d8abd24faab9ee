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
