"""Neural Cleanse (Wang et al., S&P 2019) on the server's clean set.

1. Reverse engineering: for every class k, find the smallest trigger (mask m_k in
   [0, 1]^{HxW}, pattern p_k in [0, 1]^{CxHxW}) that sends clean images to k:
   min CE(f((1 - m_k) x + m_k p_k), k) + lambda |m_k|_1, with Adam (NC's betas 0.5, 0.9)
   on tanh-parametrised mask and pattern.  All classes are optimised together in one
   batched forward pass; their losses are independent.
2. Detection: the anomaly index of class k is |n_k - median(n)| / (1.4826 MAD(n)) over
   the mask L1 norms n; a class whose index exceeds 2 with a norm below the median is
   flagged as a backdoor target.
3. Mitigation (unlearning): fine-tune on the clean set where a share of every batch
   carries a flagged class's reversed trigger while keeping its true label.  With no
   flagged class the model is declared clean and left unchanged.

The cleansing paper's setup (Sec. V-B): 1000 optimisation steps, L1 (Lasso) on the mask,
lr 0.1-0.5; that paper picked the lr with the lowest attack success, which a defender
cannot do, so here the lr is fixed in advance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fl_backdoor.training import SGDSettings, TrainStats, train

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of a normal's standard deviation


@dataclass(frozen=True)
class NCSettings:
    """Neural Cleanse hyperparameters."""

    steps: int = 1000
    lr: float = 0.1
    l1: float = 0.01                # lambda of the mask's L1 norm
    batch_size: int = 128
    anomaly_threshold: float = 2.0
    unlearn_fraction: float = 0.2   # share of each unlearning batch stamped with a reversed trigger


@dataclass
class ReversedTriggers:
    """One reversed trigger per label of ``labels`` (every class unless a subset was asked for)."""

    masks: torch.Tensor      # (L, 1, H, W) in [0, 1]
    patterns: torch.Tensor   # (L, C, H, W) in [0, 1]
    norms: np.ndarray        # (L,) L1 norm of each mask
    success: np.ndarray      # (L,) share of clean images of other classes sent to the label
    labels: list[int]        # the label of each trigger

    def stamp(self, label: int, images: torch.Tensor) -> torch.Tensor:
        """Images carrying class ``label``'s reversed trigger."""
        i = self.labels.index(label)
        return (1 - self.masks[i]) * images + self.masks[i] * self.patterns[i]


def _mask_and_pattern(mask_logit: torch.Tensor, pattern_logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tanh(mask_logit) + 1) / 2, (torch.tanh(pattern_logit) + 1) / 2


def reverse_triggers(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, settings: NCSettings,
                     generator: torch.Generator, progress: Callable[[int, float], None] | None = None,
                     every: int = 200, labels: Sequence[int] | None = None) -> ReversedTriggers:
    """Optimise a (mask, pattern) for every class (or every label of ``labels``) on clean images x; the model is
    not changed."""
    model.eval()
    chosen = list(range(num_classes)) if labels is None else [int(label) for label in labels]
    k, (channels, height, width) = len(chosen), x.shape[1:]
    target = torch.tensor(chosen, device=x.device)
    mask_logit = torch.zeros(k, 1, height, width, device=x.device, requires_grad=True)
    pattern_logit = torch.zeros(k, channels, height, width, device=x.device, requires_grad=True)
    optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=settings.lr, betas=(0.5, 0.9))
    n = int(x.shape[0])
    order, start = torch.randperm(n, generator=generator).to(x.device), 0
    for step in range(1, settings.steps + 1):
        if start >= n:
            order, start = torch.randperm(n, generator=generator).to(x.device), 0
        xb = x[order[start:start + settings.batch_size]]
        start += settings.batch_size
        mask, pattern = _mask_and_pattern(mask_logit, pattern_logit)
        stamped = (1 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]  # (K, B, C, H, W)
        targets = target.repeat_interleave(xb.shape[0])
        ce = F.cross_entropy(model(stamped.flatten(0, 1)), targets, reduction="none").view(k, -1).mean(1)
        loss = (ce + settings.l1 * mask.flatten(1).sum(1)).sum()
        grads = torch.autograd.grad(loss, [mask_logit, pattern_logit])
        mask_logit.grad, pattern_logit.grad = grads
        optimiser.step()
        if progress is not None and (step % every == 0 or step == settings.steps):
            progress(step, float(loss.detach()) / k)
    with torch.no_grad():
        mask, pattern = _mask_and_pattern(mask_logit, pattern_logit)
        triggers = ReversedTriggers(mask.detach(), pattern.detach(), mask.flatten(1).sum(1).cpu().numpy(),
                                    np.zeros(k), chosen)
        for i, label in enumerate(chosen):
            others = x[y != label]
            hits = sum(int((model(triggers.stamp(label, others[j:j + 1000])).argmax(1) == label).sum())
                       for j in range(0, others.shape[0], 1000))
            triggers.success[i] = hits / max(others.shape[0], 1)
    return triggers


def anomaly_indices(norms: np.ndarray) -> np.ndarray:
    """|n - median| / (1.4826 MAD) for every norm (inf where it deviates from a zero MAD)."""
    norms = np.asarray(norms, dtype=np.float64)
    deviation = np.abs(norms - np.median(norms))
    mad = MAD_CONSISTENCY * np.median(deviation)
    if mad == 0:
        return np.where(deviation > 0, np.inf, 0.0)
    return deviation / mad


def flagged_classes(norms: np.ndarray, threshold: float) -> list[int]:
    """Classes with anomaly index above ``threshold`` and a norm below the median, smallest norm first."""
    norms = np.asarray(norms, dtype=np.float64)
    index = anomaly_indices(norms)
    median = np.median(norms)
    chosen = [i for i in range(len(norms)) if index[i] > threshold and norms[i] < median]
    return sorted(chosen, key=lambda i: (norms[i], i))


class TriggerStamper:
    """Unlearning batch transform: the first share of a batch gets the flagged classes' triggers, labels kept."""

    def __init__(self, triggers: ReversedTriggers, labels: list[int], fraction: float) -> None:
        self.triggers = triggers
        self.labels = labels
        self.fraction = fraction

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stamp in place (batches are fresh copies); samples are shared round-robin among the labels."""
        count = round(self.fraction * xb.shape[0])
        for j, label in enumerate(self.labels):
            rows = slice(j, count, len(self.labels))
            xb[rows] = self.triggers.stamp(label, xb[rows])
        return xb, yb


@dataclass
class NeuralCleanseResult:
    """Reversed triggers, the detection outcome and the unlearning run (None when nothing was flagged)."""

    triggers: ReversedTriggers
    anomaly: np.ndarray
    flagged: list[int]
    unlearning: TrainStats | None


def neural_cleanse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, settings: NCSettings,
                   finetune: SGDSettings, generator: torch.Generator,
                   progress: Callable[[int, float], None] | None = None) -> NeuralCleanseResult:
    """Detect backdoor targets on the clean set (x, y) and unlearn their triggers from ``model`` in place."""
    triggers = reverse_triggers(model, x, y, num_classes, settings, generator, progress)
    flagged = flagged_classes(triggers.norms, settings.anomaly_threshold)
    stats = None
    if flagged:
        stats = train(model, x, y, finetune, generator,
                          batch_transform=TriggerStamper(triggers, flagged, settings.unlearn_fraction))
    return NeuralCleanseResult(triggers, anomaly_indices(triggers.norms), flagged, stats)
