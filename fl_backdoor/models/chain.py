"""Models computed as ``classifier(features(x).flatten(1))``, which can be cut before any module.

Cleansing measures many candidates (pruning levels, Deltas) that change one layer and
leave everything before it alone.  Cut there, the part before runs once per data set
and only the rest runs per candidate (``candidate_measure`` of the defenses' candidates module).
Residual networks are not chains; their candidates are measured on the whole model.
"""

from __future__ import annotations

import torch
from torch import nn


class ChainNet(nn.Module):
    """A ``features`` chain, a flatten, a ``classifier`` (a chain or one layer)."""

    features: nn.Sequential
    classifier: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def cut_before(self, module: str) -> tuple[nn.Module, nn.Module]:
        """(head, tail) with ``tail(head(x)) == self(x)`` exactly, ``module`` the first one the tail runs.

        Both share this model's modules, so masks (forward hooks) and weight changes on the tail act.
        """
        part, _, name = module.partition(".")
        chain = self.features if part == "features" else self.classifier
        if part not in ("features", "classifier") or not isinstance(chain, nn.Sequential) \
                or name not in chain._modules:
            raise ValueError(f"{module} is not a module of {type(self).__name__}'s features or classifier chain")
        at = list(chain._modules).index(name)
        if part == "features":
            return chain[:at], nn.Sequential(chain[at:], nn.Flatten(1), self.classifier)
        return nn.Sequential(self.features, nn.Flatten(1), chain[:at]), chain[at:]
