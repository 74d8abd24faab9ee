"""HaS-Net (Ali et al., "A Heal and Select Mechanism to Securely Train DNNs against
Backdoor Attacks", Algorithm 1): a training-time defense for the data-collection scenario.

The defender trains on collected data D_T, some of it poisoned, and holds a small trusted
healing set D_H.  Each iteration:

1. train one epoch on the selected samples D_S (all of D_T at first);
2. l1 <- per-sample loss on every sample of D_T;
3. heal: train N epochs on D_H;
4. l2 <- per-sample loss on every sample of D_T;
5. trust index gamma = l1 - l2; keep for the next epoch the samples with
   l2 - l1 < 0 (healing lowered their loss) and l1 > tau (a near-zero loss before
   healing hints at a memorised trigger).

The per-sample loss of steps 2 and 4 is the algorithm's squared error between the
softmax output and the label distribution.  Training itself uses cross-entropy against
the label distributions, so low-confidence (epsilon-label) poison trains as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fl_backdoor.attacks import poisoned_training_data
from fl_backdoor.config import NUM_CLASSES, ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.low_confidence import epsilon_labels
from fl_backdoor.training import SGDSettings, train


@dataclass(frozen=True)
class HaSNetSettings:
    """HaS-Net hyperparameters (paper: N = 10, tau = 1e-8, 10 iterations on Fashion-MNIST)
    and the SGD settings of both its training and its healing stage."""

    iterations: int = 10        # i_max
    healing_epochs: int = 10    # N
    tau: float = 1e-8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64

    def sgd(self, epochs: int) -> SGDSettings:
        """The optimiser settings of a stage of ``epochs`` epochs."""
        return SGDSettings(self.lr, epochs, self.batch_size, self.momentum, self.weight_decay)


@dataclass(frozen=True)
class HaSNetIteration:
    """Bookkeeping of one iteration; ``kept_watched`` counts watched (e.g. poisoned) samples selected."""

    iteration: int
    trained_on: int
    selected: int
    kept_watched: int
    train_loss: float


@torch.no_grad()
def squared_errors(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Per-sample sum over classes of (softmax output - target distribution)^2, in eval mode."""
    model.eval()
    out = [(model(x[i:i + batch_size]).softmax(1) - targets[i:i + batch_size]).pow(2).sum(1)
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, device=x.device)


def select_trusted(l1: torch.Tensor, l2: torch.Tensor, tau: float) -> torch.Tensor:
    """Algorithm 1, line 11: True where l2 - l1 < 0 and l1 > tau."""
    return (l2 - l1 < 0) & (l1 > tau)


def hasnet_train(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, heal_x: torch.Tensor,
                 heal_targets: torch.Tensor, settings: HaSNetSettings, generator: torch.Generator, *,
                 watch: torch.Tensor | None = None,
                 progress: Callable[[HaSNetIteration], None] | None = None) -> list[HaSNetIteration]:
    """Train ``model`` in place with HaS-Net on (x, targets), healing on (heal_x, heal_targets).

    Targets are label distributions (n, classes).  ``watch`` only feeds the report,
    never the selection.
    """
    one_epoch, healing = settings.sgd(1), settings.sgd(settings.healing_epochs)
    selected = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    history = []
    for iteration in range(1, settings.iterations + 1):
        stats = train(model, x[selected], targets[selected], one_epoch, generator)
        l1 = squared_errors(model, x, targets)
        train(model, heal_x, heal_targets, healing, generator)
        l2 = squared_errors(model, x, targets)
        trained_on = int(selected.sum())
        selected = select_trusted(l1, l2, settings.tau)
        kept = int((selected & watch).sum()) if watch is not None else 0
        history.append(HaSNetIteration(iteration, trained_on, int(selected.sum()), kept, stats.loss))
        if progress is not None:
            progress(history[-1])
    return history


@dataclass
class CollectedData:
    """The data-collection scenario: every client's training data pooled, poison included."""

    x: torch.Tensor
    targets: torch.Tensor    # label distributions (n, classes)
    poisoned: torch.Tensor   # bool (n,): which samples the attackers poisoned (report only)


def collected_data(cfg: ExperimentConfig, device: torch.device, label_confidence: float = 1.0,
                   generator: torch.Generator | None = None) -> CollectedData:
    """The union of all clients' data; attackers contribute their poisoned data.

    Poisoned samples are labelled with eq. 1's epsilon-labels of confidence
    ``label_confidence`` (1.0 = hard labels).  In all-to-one mode the attacker's batch
    poisoning is applied once to its data in shuffled batches of batch-size (``generator``).
    """
    xs, labels, flags = [], [], []
    for client in range(cfg.num_clients):
        x, y = client_data(cfg, client, device)
        poisoned = torch.zeros(y.shape[0], dtype=torch.bool, device=device)
        if client in cfg.attackers:
            px, py, transform = poisoned_training_data(cfg, client, x, y)
            if transform is None:
                poisoned = torch.arange(py.shape[0], device=device) >= y.shape[0]
            else:
                order = torch.randperm(y.shape[0], generator=generator).to(device)
                px, py = x[order], y[order]
                for start in range(0, py.shape[0], cfg.batch_size):
                    rows = slice(start, start + cfg.batch_size)
                    px[rows], py[rows] = transform(px[rows], py[rows])
                poisoned = (px != x[order]).flatten(1).any(1) | (py != y[order])
            x, y = px, py
        xs.append(x)
        labels.append(y)
        flags.append(poisoned)
    y, poisoned = torch.cat(labels), torch.cat(flags)
    targets = epsilon_labels(y, 1.0, NUM_CLASSES)
    targets[poisoned] = epsilon_labels(y[poisoned], label_confidence, NUM_CLASSES)
    return CollectedData(torch.cat(xs), targets, poisoned)
