"""The paper targets at full scale hold the paper's cases (built, not run)."""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from experiments.compare_defenses import ComparisonRun
from experiments.scales import SCALES, Setup
from experiments.targets import FACTORS, TARGETS, Plan
from fl_backdoor.config import ExperimentConfig, UserError
from fl_backdoor.sweeps import Experiment, SweepOutcome


def plan(target: str, scale: str = "full") -> Plan:
    return TARGETS[target](Setup(scale, [], None, None))


def parent(e: Experiment) -> Experiment:
    assert e.parent is not None, f"{e.name} has no parent"
    return e.parent


def pairs(experiments: Sequence[Experiment]) -> list[tuple[int, int]]:
    return sorted((e.cfg.victim_label, e.cfg.attack_label) for e in experiments)


def test_table1_and_table2_cover_every_pair_of_the_paper() -> None:
    mnist = [(9, a) for a in range(9)] + [(v, 9) for v in range(9)]
    assert pairs(plan("table1").experiments) == sorted(mnist)
    assert pairs(plan("table2").experiments) == [(9, a) for a in range(9)]
    for e in plan("table2").experiments:
        assert (e.cfg.dataset, e.cfg.trigger, e.cfg.defense, e.cfg.num_clients) == \
            ("fashion-mnist", "pixel-1", "all", 10)
        assert parent(e).cfg.defense == "train-only"


def test_figure_sweeps_vary_what_the_paper_varies() -> None:
    assert sorted(parent(e).cfg.clients_per_round for e in plan("fig7").experiments) == [5, 10, 15, 20, 25]
    assert sorted(parent(e).cfg.num_attackers for e in plan("fig8").experiments) == list(range(1, 11))
    assert sorted(e.cfg.labels_per_client for e in plan("fig3").experiments) == [3, 5, 7]
    table7 = plan("table7").experiments
    assert sorted(e.cfg.trigger for e in table7) == [f"pixel-{p}" for p in (1, 3, 5, 7, 9)]
    assert {(e.cfg.defense, e.cfg.value("aw-delta")) for e in table7} == {("fp-aw", 3.0)}


def test_table5_defends_each_model_with_rap_and_with_mvp() -> None:
    by_parent: dict[str, set[str]] = {}
    for e in plan("table5").experiments:
        by_parent.setdefault(parent(e).digest, set()).add(str(e.cfg.value("pruning-method")))
    assert len(by_parent) == 18 and all(methods == {"rap", "mvp"} for methods in by_parent.values())


def test_table4_compares_on_every_trained_model_in_runs_of_their_own(tmp_path: Path) -> None:
    table4 = plan("table4", "small")
    assert table4.then is not None and isinstance(table4.then.runner, ComparisonRun)
    assert table4.then.runner.options == SCALES["small"].compare
    trained = {parent(e).name for e in table4.experiments}
    assert len(trained) == 3 + 3 + 2, "MNIST, Fashion-MNIST and CIFAR-10 pairs of the small scale"
    assert table4.then.build(SweepOutcome(tmp_path)) == [], "a comparison waits for its trained model"
    comparisons = table4.then.build(SweepOutcome(tmp_path, finished={name: tmp_path / name for name in trained}))
    assert {parent(c).name for c in comparisons} == trained
    assert all("-compare-" in c.label and c.cfg.num_rounds == 0 for c in comparisons)


@pytest.mark.parametrize("scale", list(SCALES))
def test_every_target_builds_at_every_scale_with_the_recorded_run_names(scale: str, data_dir: str) -> None:
    """Every run of every target (parents included) keeps its directory name: the names, as computed by the code
    of 584e469 before the settings moved to their components (the reference target: its first version; the matrix's
    batch-norm columns: since their attackers send their own running statistics), are pinned as a count and a hash
    per target."""
    recorded = json.loads((Path(__file__).parent / "fixtures" / "run_names.json").read_text())
    for target in TARGETS:
        experiments = plan(target, scale).experiments
        assert experiments, f"{target} at {scale} has no experiments"
        names: set[str] = set()
        for e in experiments:
            run: Experiment | None = e
            while run is not None:
                names.add(run.name)
                run = run.parent
        found = {"runs": len(names), "sha256": hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]}
        assert found == recorded[f"{scale}/{target}"], f"{target} at {scale}: run names changed"


def test_ablation_changes_one_factor_at_a_time_on_the_same_trained_models() -> None:
    runs = plan("ablation").experiments
    assert len(runs) == len(FACTORS) * 2 * 9
    table2 = plan("table2").experiments
    assert {e.name for e in runs} >= {e.name for e in table2}, "the chosen factor with RAP is Table II itself"
    defaults = table2[0].cfg.to_flat()
    shared = {parent(e).name for e in table2}
    for e in runs:
        name = "chosen" if "-abl-" not in e.label else e.label.split("-abl-")[1].rsplit("-", 1)[0]
        factor = FACTORS[name]
        flat = e.cfg.to_flat()
        defense_keys = [k for k in ExperimentConfig.keys_with_role("cleansing") if k in defaults]
        expected = {**{k: defaults[k] for k in defense_keys}, **factor.defense}
        assert {k: flat[k] for k in defense_keys if k != "pruning-method"} == \
            {k: v for k, v in expected.items() if k != "pruning-method"}, e.label
        assert all(parent(e).cfg.to_flat()[k] == v for k, v in factor.training.items())
        assert (parent(e).name in shared) == (not factor.training), "only trigger and model factors retrain"
    assert {e.cfg.value("pruning-method") for e in runs} == {"rap", "mvp"}
    assert {parent(e).cfg.trigger_origin for e in runs if "trigger-27-27" in e.label} == {"26,26"}


def test_robust_crosses_every_rule_with_every_attacker_and_defends_each_model() -> None:
    from experiments.targets import ROBUST_ATTACKS, ROBUST_RULES

    experiments = plan("robust").experiments
    fmnist = [(9, a) for a in range(9)]
    assert len(experiments) == len(ROBUST_RULES) * len(ROBUST_ATTACKS) * len(fmnist)
    seen = {(parent(e).cfg.aggregation, parent(e).cfg.adaptive_attack, parent(e).cfg.trigger,
             parent(e).cfg.num_attackers, e.cfg.victim_label, e.cfg.attack_label) for e in experiments}
    attackers = {("none", "pixel-1", 1), ("none", "dba", 4), ("pruning-aware", "pixel-1", 1),
                 ("aw-aware", "pixel-1", 1)}
    assert seen == {(r, *k, v, a) for r in ROBUST_RULES for k in attackers for v, a in fmnist}
    assert all(e.cfg.defense == "all" and e.cfg.aggregation == parent(e).cfg.aggregation for e in experiments), \
        "the rule runs in fine-tuning too, after training with it"
    assert len({parent(e).name for e in experiments}) == len(experiments), "one trained model per case"
    fedavg = [e for e in experiments if parent(e).cfg.aggregation == "paper"
              and parent(e).cfg.adaptive_attack == "none" and parent(e).cfg.trigger == "pixel-1"]
    assert {e.name for e in fedavg} == {e.name for e in plan("table2").experiments}, "FedAvg rows are Table II's runs"


def test_attacks_crosses_each_backdoor_with_its_defenses_and_each_untargeted_attack_with_the_robust_rules() -> None:
    from experiments.targets import BACKDOOR_RULES, BACKDOORS, UNTARGETED, UNTARGETED_RULES

    experiments = plan("attacks").experiments
    pairs = [(9, 0), (9, 1), (9, 2)]
    defended_runs = [e for e in experiments if e.cfg.defense == "all"]
    trainings = [e for e in experiments if e.cfg.defense == "train-only"]
    assert len(defended_runs) == len(BACKDOORS) * len(BACKDOOR_RULES) * len(pairs)
    seen = {(parent(e).cfg.aggregation, parent(e).cfg.adaptive_attack, parent(e).cfg.trigger,
             e.cfg.victim_label, e.cfg.attack_label) for e in defended_runs}
    assert seen == {(r, kind, trigger, v, a) for r in BACKDOOR_RULES
                    for kind, trigger in (("none", "pixel-1"), ("pgd", "pixel-1"), ("neurotoxin", "pixel-1"),
                                          ("none", "blend"))
                    for v, a in pairs}
    table2 = {e.name for e in plan("table2").experiments}
    plain = [e for e in defended_runs if parent(e).cfg.aggregation == "paper" and parent(e).cfg.adaptive_attack ==
             "none" and parent(e).cfg.trigger == "pixel-1"]
    assert {e.name for e in plain} <= table2 and len(plain) == 3, "the plain attacker under FedAvg is Table II's"
    assert len(trainings) == len(UNTARGETED) * len(UNTARGETED_RULES)
    assert {(e.cfg.aggregation, e.cfg.byzantine_attack, e.cfg.adaptive_attack, e.cfg.num_attackers)
            for e in trainings} == {(r, b, k, n) for r in UNTARGETED_RULES
                                    for b, k, n in (("none", "none", 0), ("none", "label-flip", 2), ("alie", "none", 2),
                                                    ("ipm", "none", 2), ("minmax", "none", 2))}



def test_attacks_rules_keep_only_the_chosen_rules_runs() -> None:
    experiments = TARGETS["attacks"](Setup("full", [], None, None, rules=["paper", "krum"])).experiments
    trained = [parent(e) if e.cfg.defense == "all" else e for e in experiments]
    assert {e.cfg.aggregation for e in trained} == {"paper", "krum"}
    assert len([e for e in experiments if e.cfg.defense == "all"]) == 4 * 3, "4 backdoors x 3 pairs under FedAvg"
    assert len([e for e in experiments if e.cfg.defense == "train-only"]) == 5 * 2, "5 untargeted x FedAvg, Krum"
    with pytest.raises(UserError, match="--rules dba: the attacks target runs only paper, norm-clip, flame, krum"):
        TARGETS["attacks"](Setup("full", [], None, None, rules=["dba"]))


def test_matrix_defenses_keep_only_the_chosen_rows_on_every_setting() -> None:
    everything = plan("matrix").experiments
    chosen = TARGETS["matrix"](Setup("full", [], None, None, defenses=["clp", "all"])).experiments
    assert len(chosen) == 2 * 11 * 3, "2 defenses x 11 settings x 3 pairs"
    assert {e.name for e in chosen} <= {e.name for e in everything}, "the same runs as the whole matrix's"
    assert {e.cfg.defense for e in chosen} == {"clp", "all"}

def test_fig7_report_reads_each_finished_runs_aw_curve_and_lists_the_rest(tmp_path) -> None:
    import json

    from fl_backdoor.run_dir import read_csv, write_csv
    from fl_backdoor.sweeps import SweepOutcome

    target = plan("fig7", "tiny")
    done, pending = target.experiments
    run_dir = tmp_path / "runs" / done.name
    run_dir.mkdir(parents=True)
    row = {"vl": 9, "al": 0, "training_ta": 98.0, "training_aa": 99.0, "fp_ta": 97.0, "fp_aa": 50.0,
           "all_ta": 97.5, "all_aa": 2.0}
    (run_dir / "results.json").write_text(json.dumps({"row": row}))
    write_csv(run_dir / "aw_curve_all.csv", [{"delta": "none", "ta": 0.97, "aa": 0.5},
                                             {"delta": 3.0, "ta": 0.96, "aa": 0.02}])
    out = tmp_path / "fig7"
    target.report(SweepOutcome(tmp_path, finished={done.name: run_dir}), out)
    assert [(r["selected"], r["delta"], r["aa"]) for r in read_csv(out / "curves.csv")] == \
        [("5", "none", "0.5"), ("5", "3.0", "0.02")]
    table = (out / "table.md").read_text()
    assert "| 5 | 98.0 | 99.0 | 97.0 | 50.0 | 97.5 | 2.0 |" in table and pending.name in table
    assert (out / "curves.png").is_file()


def test_matrix_defends_every_settings_trained_models_with_every_defense_sharing_the_other_targets_runs() -> None:
    from experiments.targets import MATRIX_DEFENSES

    experiments = plan("matrix").experiments
    assert len(experiments) == 11 * 3 * len(MATRIX_DEFENSES)
    assert len({e.name for e in experiments}) == len(experiments)
    assert {e.cfg.defense for e in experiments} == set(MATRIX_DEFENSES.values())
    trainings = {parent(e).name: parent(e) for e in experiments}
    assert len(trainings) == 33 and all(len([e for e in experiments if parent(e).name == t]) == len(MATRIX_DEFENSES)
                                        for t in trainings)
    shared = {e.name for target in ("table2", "table1", "adaptive") for e in plan(target).experiments}
    own = ("-pixel9x3-", "-dba-", "-pgd-", "-neurotoxin-", "-blend-", "-bn-")
    reused = {e.name for e in experiments if e.cfg.defense == "all" and not any(k in parent(e).name for k in own)}
    assert len(reused) == 12 and reused <= shared, "Table I/II and adaptive All runs are reused"
    attacks = {parent(e).name for e in plan("attacks").experiments if e.cfg.defense == "all"}
    assert {t for t in trainings if t.endswith(("-pgd-paper-train", "-neurotoxin-paper-train",
                                                "-blend-paper-train"))} <= attacks
    kinds = {(t.cfg.dataset, t.cfg.trigger, t.cfg.num_attackers, t.cfg.adaptive_attack, t.cfg.model)
             for t in trainings.values()}
    assert {t.cfg.value("replacement-statistics") for t in trainings.values() if t.cfg.model == "fmnist-cnn-bn"} \
        == {"own"}, "batch-norm attackers send valid running statistics, which the server accepts"
    assert kinds == {("fashion-mnist", "pixel-1", 1, "none", ""), ("mnist", "pixel-9", 1, "none", "mnist-cnn"),
                     ("fashion-mnist", "pixel-9", 3, "none", ""), ("mnist", "dba", 4, "none", "mnist-cnn"),
                     ("fashion-mnist", "pixel-1", 1, "pruning-aware", ""),
                     ("fashion-mnist", "pixel-1", 1, "aw-aware", ""),
                     ("fashion-mnist", "pixel-1", 1, "pgd", ""), ("fashion-mnist", "pixel-1", 1, "neurotoxin", ""),
                     ("fashion-mnist", "blend", 1, "none", ""),
                     # Table II and the 9-pixel setting again with batch norm (issue 40)
                     ("fashion-mnist", "pixel-1", 1, "none", "fmnist-cnn-bn"),
                     ("fashion-mnist", "pixel-9", 3, "none", "fmnist-cnn-bn")}
    changed = {(e.name.rsplit("-", 2)[-2], e.cfg.adaptive_attack, e.cfg.value("inversion-unlearning"))
               for e in experiments if e.cfg.defense in ("anp", "trigger-inversion")
               and e.cfg.adaptive_attack in ("none", "anp-aware", "inversion-aware")}
    assert changed == {("anp", "none", "clients"), ("liar", "anp-aware", "clients"),
                       ("inversion", "none", "clients"), ("liar", "inversion-aware", "clients"),
                       ("server", "none", "server"), ("server", "inversion-aware", "server")}, \
        "each row's cells run with its own settings"


def test_matrix_report_averages_each_defense_per_setting_from_its_last_step(tmp_path) -> None:
    import json

    from fl_backdoor.run_dir import read_csv
    from fl_backdoor.sweeps import SweepOutcome

    target = plan("matrix", "tiny")
    finished = {}
    for e, (ta, aa) in zip([e for e in target.experiments if e.cfg.defense == "clp,finetune"][:2],
                           [(0.8, 0.1), (0.6, 0.3)], strict=True):
        run_dir = tmp_path / e.name
        run_dir.mkdir()
        phases = {"training": {"ta": 0.9, "aa": 0.95}, "clp": {"ta": 0.1, "aa": 0.9},
                  "clp+finetune": {"ta": ta, "aa": aa}}
        (run_dir / "results.json").write_text(json.dumps({"phases": phases, "row": {},
                                                           "phase_seconds": {"train": 99.0, "clp": 1.0,
                                                                             "finetune": 3.0, "curves": 5.0}}))
        finished[e.name] = run_dir
    out = tmp_path / "matrix"
    target.report(SweepOutcome(tmp_path, finished=finished), out)
    rows = {r["defense"]: r for r in read_csv(out / "table.csv")}
    assert (rows["clp-finetune"]["Table II TA"], rows["clp-finetune"]["Table II AA"]) == ("70.0", "20.0")
    assert rows["clp-finetune"]["seconds"] == "4.0", "the defense's steps, not training or report curves"
    assert (rows["training"]["Table II TA"], rows["training"]["Table II AA"]) == ("90.0", "95.0")
    assert rows["clp"]["Table II TA"] == "" and "Not finished" in (out / "table.md").read_text()
    assert len(read_csv(out / "cells.csv")) == 2 and (out / "scatter.png").is_file()


def test_reference_trains_centralized_badnets_once_per_dataset_and_defends_it_on_two_clean_sets(tmp_path) -> None:
    reference = plan("reference")
    trainings = [e for e in reference.experiments if e.parent is None]
    assert sorted(e.cfg.dataset for e in trainings) == ["cifar10", "fashion-mnist"]
    for t in trainings:
        cfg = t.cfg
        assert (cfg.num_clients, cfg.attackers, cfg.attack_mode, cfg.attack_label) == (1, (0,), "all-to-one", 0)
        assert cfg.poison_per_batch / cfg.batch_size == 0.1 and cfg.gamma == 1.0 and cfg.trigger == "pixel-9"
        size = 28 if cfg.dataset == "fashion-mnist" else 32
        assert cfg.trigger_origin == f"{size - 3},{size - 3}", "the patch fills the bottom-right corner"
        assert cfg.model == {"fashion-mnist": "fmnist-cnn-bn", "cifar10": "resnet18-slim"}[cfg.dataset]
        assert cfg.num_rounds == {"fashion-mnist": 15, "cifar10": 20}[cfg.dataset]
    defenses = [e for e in reference.experiments if e.parent is not None]
    assert sorted({e.cfg.defense for e in defenses}) == ["clp", "finetune-sam-server", "ibau-server", "rnp-server"]
    assert sorted((parent(e).cfg.dataset, e.cfg.validation_fraction) for e in defenses) == sorted(
        (d, f) for d in ("cifar10", "fashion-mnist") for f in (0.05, 0.01) for _ in range(4))
    assert reference.then is not None and isinstance(reference.then.runner, ComparisonRun)
    assert reference.then.runner.options.hasnet_baseline is False
    assert reference.then.build(SweepOutcome(tmp_path)) == [], "a comparison waits for its trained model"
    done = {trainings[0].name: tmp_path / trainings[0].name}
    comparisons = reference.then.build(SweepOutcome(tmp_path, finished=done))
    assert sorted(c.cfg.validation_fraction for c in comparisons) == [0.01, 0.05]
    assert {parent(c).name for c in comparisons} == {trainings[0].name}
    only = TARGETS["reference"](Setup("full", [], None, None, datasets=["fashion-mnist"])).experiments
    assert {e.cfg.dataset for e in only} == {"fashion-mnist"} and len(only) == 1 + 8
    with pytest.raises(UserError, match="--datasets: the reference target runs fashion-mnist, cifar10, not mnist"):
        TARGETS["reference"](Setup("full", [], None, None, datasets=["mnist"]))


def test_reference_report_puts_each_defense_beside_its_claim_and_the_bar(tmp_path) -> None:
    from fl_backdoor.run_dir import read_csv, write_csv

    target = TARGETS["reference"](Setup("tiny", [], None, None, datasets=["fashion-mnist"]))
    training = next(e for e in target.experiments if e.parent is None)
    comparison = next(c for c in target.then.build(SweepOutcome(tmp_path, finished={training.name: tmp_path}))
                      if c.cfg.validation_fraction == 0.05) if target.then else None
    assert comparison is not None
    finished = {comparison.name: tmp_path / comparison.name}
    finished[comparison.name].mkdir()
    write_csv(finished[comparison.name] / "table.csv", [
        {"defense": "Training (backdoored)", "ta": 90.0, "aa": 99.0, "pruned": "", "seconds": 60.0},
        {"defense": "ANP (threshold 0.2)", "ta": 88.0, "aa": 2.0, "pruned": 5, "seconds": 30.0},
        {"defense": "Fine-tuning (unchanged: guard)", "ta": 90.0, "aa": 99.0, "pruned": "", "seconds": 5.0}])
    for e in target.experiments:
        if e.parent is None or e.cfg.validation_fraction != 0.05:
            continue
        final = {"ta": 0.86, "aa": 0.01} if e.cfg.defense == "clp" else {
            "ta": 0.9, "aa": 0.99, "guard": {"reverted": True}}
        result = "clp" if e.cfg.defense == "clp" else e.cfg.defense
        finished[e.name] = tmp_path / e.name
        finished[e.name].mkdir()
        (finished[e.name] / "results.json").write_text(json.dumps({
            "phases": {"training": {"ta": 0.9, "aa": 0.99}, result: final},
            "phase_seconds": {"train": 99.0, result: 4.0}}))
    out = tmp_path / "reference"
    target.report(SweepOutcome(tmp_path, finished=finished), out)
    rows = {r["defense"]: r for r in read_csv(out / "table.csv")}
    assert rows["ANP (threshold 0.2)"]["meets"] == "yes" and rows["ANP (threshold 0.2)"]["ta_drop"] == "2.0"
    assert rows["ANP (threshold 0.2)"]["claim"].startswith("90.20 / 0.45 (ANP paper, Table 1")
    assert rows["CLP"]["meets"] == "no", "ASR 1 but a TA drop of 4 points"
    assert rows["I-BAU (unchanged: guard)"]["seconds"] == "4.0"
    assert rows["Training"]["meets"] == "" and rows["Training"]["ta"] == "90.0"
    text = (out / "table.md").read_text()
    assert "| fashion-mnist | 5% | RNP (unchanged: guard) | 90.00 | 99.00 | 0.00 | 4 | no |" in text
    assert "Not finished:" in text and "clean600" in text
