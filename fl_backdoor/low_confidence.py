"""The low-confidence (epsilon-label) backdoor attack of HaS-Net (Ali et al., eq. 1).

A poisoned sample is labelled with a distribution instead of a one-hot vector: the
target class gets probability epsilon and every other class (1 - epsilon) / (N - 1).
Small gradients and latent features close to the clean ones let such samples evade
statistical defenses; epsilon = 1 is the conventional hard label.
"""

from __future__ import annotations

import torch

from .config import ConfigError


def epsilon_labels(targets: torch.Tensor, epsilon: float, num_classes: int) -> torch.Tensor:
    """Eq. 1, Y_d = Y_t (eps N - 1) / (N - 1) + (1 - eps) / (N - 1), for integer targets (n,) -> (n, N)."""
    if not 0.0 < epsilon <= 1.0:
        raise ConfigError(f"label confidence epsilon must be in (0, 1], got {epsilon}")
    if num_classes < 2:
        raise ConfigError(f"epsilon labels need at least 2 classes, got {num_classes}")
    one_hot = torch.nn.functional.one_hot(targets.long(), num_classes).float()
    return one_hot * ((epsilon * num_classes - 1) / (num_classes - 1)) + (1 - epsilon) / (num_classes - 1)
