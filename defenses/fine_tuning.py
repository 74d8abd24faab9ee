"""Plain fine-tuning on the server's clean set, the simplest centralized repair.

Fine-Pruning and Neural Cleanse's unlearning fine-tune with the same settings, so every
comparison spends the same clean data and optimiser budget.
"""

from __future__ import annotations

import torch
from torch import nn

from fl_backdoor.training import BatchTransform, SGDSettings, TrainStats, train

# lr of the ANP paper's FT baseline (0.01); a short schedule suits a few hundred clean images.
FINE_TUNING = SGDSettings(lr=0.01, epochs=20, batch_size=64, momentum=0.9, weight_decay=5e-4)


def fine_tune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: SGDSettings,
              generator: torch.Generator, batch_transform: BatchTransform | None = None) -> TrainStats:
    """Train ``model`` in place on the clean set (x, y); ``batch_transform`` edits each batch (unlearning)."""
    return train(model, x, y, settings, generator, batch_transform=batch_transform)
