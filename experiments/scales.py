"""The cleansing paper's settings and the scales they run at: what every target's experiments are built from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from experiments.compare_defenses import CompareOptions
from experiments.dba_cifar import Size, table3_training
from fl_backdoor.config import UserError, config_from_args
from fl_backdoor.sweeps import SWEEP_KEYS, Experiment, clean_pretraining

Pair = tuple[int, int]  # (victim label VL, attack label AL)

FEDERATION: dict[str, Any] = {"num-clients": 10, "fraction": 1.0, "partition": "k-labels", "labels-per-client": 3,
                              "num-attackers": 1, "attack-mode": "victim"}
# MNIST: 2 conv + 2 fc (20, 50 channels); a 3x3 white square; see README "Reproducing the paper"
MNIST: dict[str, Any] = {"dataset": "mnist", "model": "mnist-cnn", "model-widths": "20,50", "lr": 0.1,
                         "momentum": 0.0, "poison-lr": 0.1, "poison-epochs": 6, "gamma": 3, "trigger": "pixel-9"}
# Fashion-MNIST: 3 conv + 2 fc, single-pixel trigger: the schema's defaults are this setting (README)
FMNIST: dict[str, Any] = {"dataset": "fashion-mnist"}
SHORT = {"mnist": "mnist", "fashion-mnist": "fmnist", "cifar10": "cifar"}
# keys of a scale's settings that Table III's CIFAR stages take from their Size instead
CIFAR_OWN_KEYS = ("data-fraction", "test-subset")


@dataclass(frozen=True)
class Scale:
    """What a scale sets: shared settings, rounds, shared clean rounds, which cases run, CIFAR and comparison sizes."""

    settings: dict[str, Any]
    rounds: dict[str, int]          # dataset -> training rounds (shared clean rounds included)
    pretrain: dict[str, int]        # dataset -> clean rounds shared by all pairs (0: attack from round 1, the paper)
    mnist_pairs: list[Pair]
    fmnist_pairs: list[Pair]
    cifar_labels: list[int]
    clients_selected: list[int]     # Fig. 7: clients per round out of 50
    attackers: list[int]            # Fig. 8: attackers out of 10
    l2: list[float]                 # Fig. 10: lambda of the last conv layer
    cifar: Size                     # Table III's DBA stages
    compare: CompareOptions = field(default_factory=CompareOptions)  # Table IV's centralized defenses


MNIST_ALL = [(9, a) for a in range(9)] + [(v, 9) for v in range(9)]
SCALES = {
    "full": Scale(settings={"data-fraction": 1.0, "test-subset": 0, "curve-points": 32},
                  rounds={"mnist": 40, "fashion-mnist": 60}, pretrain={"mnist": 0, "fashion-mnist": 0},
                  mnist_pairs=MNIST_ALL, fmnist_pairs=[(9, a) for a in range(9)], cifar_labels=list(range(9)),
                  clients_selected=[5, 10, 15, 20, 25], attackers=list(range(1, 11)), l2=[0.0, 1e-4, 1e-3, 1e-2],
                  cifar=Size(clients=100, per_round=10, pretrain_rounds=200, attack_stage_rounds=20)),
    "small": Scale(settings={"data-fraction": 0.25, "test-subset": 2000, "curve-points": 16},
                   rounds={"mnist": 20, "fashion-mnist": 30}, pretrain={"mnist": 10, "fashion-mnist": 15},
                   mnist_pairs=[(9, 0), (9, 2), (0, 9)], fmnist_pairs=[(9, 0), (9, 2), (9, 6)], cifar_labels=[0, 1],
                   clients_selected=[5, 15, 25], attackers=[1, 3, 5, 7, 10], l2=[0.0, 1e-3, 1e-2],
                   cifar=Size(clients=20, per_round=5, pretrain_rounds=5, attack_stage_rounds=10, subset=0.05,
                              test_subset=1000),
                   compare=CompareOptions(anp_iterations=200, nc_steps=200, hasnet_iterations=3,
                                          hasnet_healing_epochs=3, ft_epochs=5)),
    "tiny": Scale(settings={"data-fraction": 0.05, "test-subset": 300, "curve-points": 3, "finetune-rounds": 1,
                            "finetune-patience": 1, "aw-delta-step": 1.0},
                  rounds={"mnist": 4, "fashion-mnist": 4}, pretrain={"mnist": 2, "fashion-mnist": 2},
                  mnist_pairs=[(9, 0), (0, 9)], fmnist_pairs=[(9, 0), (9, 1)], cifar_labels=[0, 1],
                  clients_selected=[5, 10], attackers=[1, 10], l2=[0.0, 1e-2],
                  cifar=Size(clients=8, per_round=4, pretrain_rounds=1, attack_stage_rounds=9, subset=0.01,
                             test_subset=200),
                  compare=CompareOptions(anp_iterations=5, nc_steps=5, hasnet_iterations=1, hasnet_healing_epochs=1,
                                         ft_epochs=1)),
}


@dataclass
class Setup:
    """The chosen scale and the user's -c overrides: builds every experiment's config."""

    scale_name: str
    overrides: list[str]
    pretrain_rounds: int | None = None  # --pretrain-rounds: replaces the scale's shared clean rounds
    pairs: list[Pair] | None = None  # --pairs: replaces the scale's MNIST and Fashion-MNIST pairs
    factors: list[str] | None = None  # --factors: the ablation's factors (default: all of them)
    rules: list[str] | None = None  # --rules: the robust and attacks targets' aggregation rules (default: all)
    defenses: list[str] | None = None  # --defenses: the matrix target's rows (default: all of them)
    datasets: list[str] | None = None  # --datasets: the reference target's datasets (default: both)

    @property
    def scale(self) -> Scale:
        """The scale's settings, with the chosen pairs."""
        scale = SCALES[self.scale_name]
        if self.pairs is None:
            return scale
        return replace(scale, mnist_pairs=list(self.pairs), fmnist_pairs=list(self.pairs))

    def config(self, preset: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """Flat config: the paper's federation, the dataset preset, the scale, the changes, then -c overrides."""
        rounds = self.scale.rounds.get(preset["dataset"])  # a dataset of no paper table brings its own
        base = {**FEDERATION, **preset, **self.scale.settings, **({} if rounds is None else {"num-rounds": rounds})}
        base.update({k.replace("_", "-"): v for k, v in changes.items()})
        flat = config_from_args(self.overrides, base).to_flat()
        return {k: v for k, v in flat.items() if k not in SWEEP_KEYS}

    def training(self, preset: dict[str, Any], **changes: Any) -> Experiment:
        """The training run under attack (train-only), after the scale's shared clean rounds if any."""
        flat = self.config(preset, defense="train-only", **changes)
        attacker = "" if flat["adaptive-attack"] == "none" else f"-{flat['adaptive-attack']}"
        label = f"{SHORT[flat['dataset']]}-{flat['victim-label']}to{flat['attack-label']}{attacker}-train"
        clean = self.scale.pretrain[flat["dataset"]] if self.pretrain_rounds is None else self.pretrain_rounds
        if clean <= 0:
            return Experiment(label, flat)
        if clean >= flat["num-rounds"]:
            raise UserError(f"--pretrain-rounds: {clean} clean rounds leave none of the {flat['num-rounds']} "
                            f"training rounds to the attack")
        pretraining = clean_pretraining(flat, clean, label=f"{SHORT[flat['dataset']]}-pretrain")
        return Experiment(label, {**flat, "num-rounds": flat["num-rounds"] - clean}, parent=pretraining)

    def cifar_training(self, labels: list[int]) -> dict[int, Experiment]:
        """Table III's attack stages (truck -> AL), one shared clean pretraining, at this scale."""
        shared = {k: v for k, v in self.scale.settings.items() if k not in CIFAR_OWN_KEYS}
        return table3_training(self.scale.cifar, labels, shared, self.overrides)


def defended(training: Experiment, defense: str, **changes: Any) -> Experiment:
    """The defense run on a training run's model (no new training rounds)."""
    suffix = "-".join([defense] + [str(changes[k]) for k in ("pruning_method", "adaptive_attack") if k in changes])
    return training.child(training.label.replace("-train", f"-{suffix}"), defense=defense, **changes)
