"""The paper targets at full scale hold the paper's cases (built, not run)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
from paper import SCALES, TARGETS, Setup  # noqa: E402


def plan(target: str, scale: str = "full"):
    return TARGETS[target](Setup(scale, [], None, None))


def pairs(experiments) -> list[tuple[int, int]]:
    return sorted((e.cfg.victim_label, e.cfg.attack_label) for e in experiments)


def test_table1_and_table2_cover_every_pair_of_the_paper():
    mnist = [(9, a) for a in range(9)] + [(v, 9) for v in range(9)]
    assert pairs(plan("table1").experiments) == sorted(mnist)
    assert pairs(plan("table2").experiments) == [(9, a) for a in range(9)]
    for e in plan("table2").experiments:
        assert (e.cfg.dataset, e.cfg.trigger, e.cfg.defense, e.cfg.num_clients) == ("fashion-mnist", "pixel-1", "all", 10)
        assert e.parent is not None and e.parent.cfg.defense == "train-only"


def test_figure_sweeps_vary_what_the_paper_varies():
    assert sorted(e.parent.cfg.clients_per_round for e in plan("fig7").experiments) == [5, 10, 15, 20, 25]
    assert sorted(e.parent.cfg.num_attackers for e in plan("fig8").experiments) == list(range(1, 11))
    assert sorted(e.cfg.labels_per_client for e in plan("fig3").experiments) == [3, 5, 7]
    table7 = plan("table7").experiments
    assert sorted(e.cfg.trigger for e in table7) == [f"pixel-{p}" for p in (1, 3, 5, 7, 9)]
    assert {(e.cfg.defense, e.cfg.aw_delta) for e in table7} == {("fp-aw", 3.0)}


def test_table5_defends_each_model_with_rap_and_with_mvp():
    by_parent: dict[str, set[str]] = {}
    for e in plan("table5").experiments:
        by_parent.setdefault(e.parent.digest, set()).add(e.cfg.pruning_method)
    assert len(by_parent) == 18 and all(methods == {"rap", "mvp"} for methods in by_parent.values())


@pytest.mark.parametrize("scale", list(SCALES))
def test_every_target_builds_at_every_scale(scale):
    for target in TARGETS:
        assert plan(target, scale).experiments, f"{target} at {scale} has no experiments"
