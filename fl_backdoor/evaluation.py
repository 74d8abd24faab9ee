"""Clean accuracy (TA) and attack success (AA) of a model."""

from __future__ import annotations

import torch
from torch import nn

from .attacks import test_trigger
from .config import ExperimentConfig, UserError
from .datasets import Split
from .training import accuracy, to_device
from .triggers import trigger_pieces


def backdoor_test_images(cfg: ExperimentConfig, test: Split) -> torch.Tensor:
    """Test images the attack should flip: the victim label (victim mode) or every non-target label."""
    if cfg.attack_mode == "victim":
        return test.x[test.y == cfg.victim_label]
    return test.x[test.y != cfg.attack_label]


class Evaluator:
    """Measures TA and AA (and, for a distributed trigger such as DBA's, the AA of each piece) on a fixed test set.

    The triggered copies are built once; every call only runs the model.
    """

    def __init__(self, cfg: ExperimentConfig, test: Split, device: torch.device) -> None:
        self.batch_size = cfg.eval_batch_size
        self.x = to_device(test.x, device)
        self.y = test.y.to(device)
        source = backdoor_test_images(cfg, test)
        trigger = test_trigger(cfg)
        source = source[trigger.selects(source)]
        if source.shape[0] == 0:
            raise UserError(f"trigger {cfg.trigger}: no test image of the victim label has its feature, so there "
                            f"is no attack to measure")
        self.sets: dict[str, torch.Tensor] = {"aa": to_device(trigger.apply(source), device)}
        for piece in range(trigger_pieces(cfg.trigger)):
            self.sets[f"aa_piece{piece}"] = to_device(test_trigger(cfg, piece).apply(source), device)
        self.target = cfg.attack_label

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """{'ta': ..., 'aa': ..., ['aa_piece0'..'aa_piece3']} as fractions in [0, 1]."""
        out = {"ta": accuracy(model, self.x, self.y, self.batch_size)}
        for name, images in self.sets.items():
            target = torch.full((images.shape[0],), self.target, dtype=torch.long, device=images.device)
            out[name] = accuracy(model, images, target, self.batch_size)
        return out
