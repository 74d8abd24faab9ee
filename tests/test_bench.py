"""The simulation benchmark's arithmetic and its warning about a busy machine."""

from experiments.bench_simulation import load_warning, steady


def test_steady_leaves_out_the_first_round():
    assert steady([10.0, 2.0, 4.0]) == 3.0
    assert steady([5.0]) == 5.0


def test_load_warning_only_above_the_threshold():
    assert load_warning(threshold=float("inf")) == ""
    warning = load_warning(threshold=-1.0)
    assert warning.startswith("WARNING: 1-minute load average") and "nice 15" in warning
