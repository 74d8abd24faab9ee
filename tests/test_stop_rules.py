"""The cleansing stop rules on hand-made accuracy curves: pruning, AW and fine-tuning."""

import numpy as np
import pytest

from defenses.stop_rules import Patience, last_passing, stop_at_drop

# accuracy after pruning 0..6 neurons: a slow slide, then a cliff at 6
SLIDE = {0: 0.900, 1: 0.897, 2: 0.894, 3: 0.891, 4: 0.888, 5: 0.885, 6: 0.860}


def walk(curve, **rule):
    measured = []

    def accuracy_of(candidate):
        measured.append(candidate)
        return curve[candidate]
    chosen, seen = stop_at_drop(list(curve), accuracy_of, curve[next(iter(curve))], 0.01, **rule)
    assert [c for c, _ in seen] == measured, "seen holds every measurement, in order"
    return chosen, measured


def test_cumulative_stop_keeps_the_last_count_within_one_point_of_the_unpruned_model():
    assert walk(SLIDE) == (3, [0, 1, 2, 3, 4]), "0.888 < 0.900 - 0.01 ends the walk at 4"


def test_per_step_stop_follows_a_slow_slide_and_stops_before_the_cliff():
    assert walk(SLIDE, per_step=True) == (5, [0, 1, 2, 3, 4, 5, 6]), "each step loses 0.003; 6 loses 0.025"


def test_per_step_compares_with_the_previous_count_not_the_best():
    rising = {0: 0.80, 1: 0.85, 2: 0.845, 3: 0.836, 4: 0.825}
    assert walk(rising, per_step=True) == (3, [0, 1, 2, 3, 4]), "4 is 0.011 below 3"
    assert walk(rising) == (4, [0, 1, 2, 3, 4]), "cumulatively nothing falls below 0.79"


def test_keep_crossing_returns_the_candidate_that_crossed():
    assert walk(SLIDE, keep_crossing=True)[0] == 4
    assert walk(SLIDE, per_step=True, keep_crossing=True)[0] == 6
    flat = {0: 0.9, 1: 0.9}
    assert walk(flat, keep_crossing=True)[0] == 1, "nothing crossed: the last candidate"


def test_aw_walk_over_shrinking_deltas_against_the_model_without_aw():
    deltas = {10.0: 0.84, 9.75: 0.838, 9.5: 0.829, 9.25: 0.80}
    assert stop_at_drop(list(deltas), deltas.__getitem__, 0.84, 0.01)[0] == 9.75
    assert stop_at_drop(list(deltas), deltas.__getitem__, 0.84, 0.01, keep_crossing=True)[0] == 9.5
    assert stop_at_drop([10.0], {10.0: 0.5}.__getitem__, 0.84, 0.01)[0] is None, "the first Delta already fails"
    assert stop_at_drop([10.0], {10.0: 0.5}.__getitem__, 0.84, 0.01, keep_crossing=True)[0] == 10.0


def test_last_passing_is_the_cumulative_rule_with_a_fixed_threshold():
    accs = {0: 0.90, 1: 0.90, 2: 0.89, 3: 0.87, 4: 0.91}
    chosen, seen = last_passing([0, 1, 2, 3, 4], accs.__getitem__, threshold=0.88)
    assert chosen == 2 and [k for k, _ in seen] == [0, 1, 2, 3], "stops at the first failure"
    assert last_passing([5.0, 4.0], {5.0: 0.1, 4.0: 0.9}.__getitem__, 0.5)[0] is None


def finetune(curve, patience, max_rounds, keep):
    """Run the fine-tuning rule over a hand-made curve: round 0 is the pruned model's accuracy."""
    rule = Patience(patience, max_rounds, baseline=curve[0])
    while not rule.stop:
        rule.update(curve[rule.rounds + 1])
    return rule.rounds, rule.kept_round(keep)


@pytest.mark.parametrize("curve, rounds, best, last", [
    ([0.80, 0.79, 0.795], 2, 0, 2),                  # never beats the pruned model: best hands on round 0 unchanged
    ([0.80, 0.82, 0.84, 0.83, 0.835], 4, 2, 4),      # improves twice, then two rounds without a new best
    ([0.80, 0.81, 0.82, 0.83, 0.84, 0.85], 5, 5, 5),  # still improving at the cap of 5 rounds
])
def test_finetune_stops_after_patience_rounds_and_hands_on_last_or_best(curve, rounds, best, last):
    assert finetune(curve, 2, 5, "best") == (rounds, best)
    assert finetune(curve, 2, 5, "last") == (rounds, last)


def test_patience_counts_rounds_since_the_best():
    rule = Patience(patience=2, max_rounds=10, baseline=0.5)
    assert rule.update(0.6) and not rule.stop
    assert not rule.update(0.55) and not rule.stop
    assert not rule.update(0.6) and rule.stop and rule.best_round == 1, "equal to the best is no improvement"


def test_cumulative_passing_rule_is_the_previous_rule_on_random_curves():
    """The earlier pruning and AW stop (last_passing at base - max_drop) is still what cumulative/passing does."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        curve = dict(enumerate(0.9 - np.cumsum(rng.uniform(0.0, 0.006, size=20))))
        base = curve[0]
        assert stop_at_drop(list(curve), curve.__getitem__, base, 0.01) == \
            last_passing(list(curve), curve.__getitem__, base - 0.01)
