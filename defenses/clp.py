"""CLP, channel Lipschitzness-based pruning (Zheng et al., "Data-free backdoor removal based on
channel Lipschitzness", ECCV 2022): prune the channels whose output can grow most with their input.

A trigger drives a few channels far beyond their clean range, so those channels have large
Lipschitz constants.  For channel k of a conv layer, with kernel W_k (in x kh x kw), the
paper's upper bound on the channel's Lipschitz constant (UCLC) is the spectral norm of W_k
reshaped to in x (kh kw); a batch norm after the conv scales it by |gamma_k| / sqrt(var_k + eps).
In every conv layer, the channels whose UCLC exceeds mean + u std of the layer's UCLCs
(sample std, as the reference code) are pruned: their batch-norm scale and shift, or without
batch norm their kernel and bias, are set to zero, so the channel outputs zero (before any
residual addition).  No data, no client: the server alone reads the weights.

The reference code divides by sqrt(var_k); the eps that the batch norm itself adds is kept
here, so the bound is that of the layer as it computes.

Within a clean-accuracy budget (defenses/budget.py), u is the strongest candidate: when
pruning at u costs more, u + 0.5, u + 1, ... are tried (each prunes fewer channels) until
one is within the budget or none prunes anything, and the model is then left as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .budget import Budget, strongest_within

U_STEP = 0.5  # how much u grows between the candidates of clp_within_budget


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]]:
    """Every conv layer with the batch norm registered right after it (None where there is none)."""
    modules = list(model.named_modules())
    pairs: list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]] = []
    for i, (name, module) in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            after = modules[i + 1][1] if i + 1 < len(modules) else None
            bn = after if isinstance(after, nn.BatchNorm2d) and after.num_features == module.out_channels else None
            pairs.append((name, module, bn))
    return pairs


def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """UCLC of every output channel: spectral norm of its kernel (in x kh*kw), times the batch-norm scale."""
    with torch.no_grad():
        kernels = conv.weight.detach().float().reshape(conv.out_channels, conv.weight.shape[1], -1)
        bound = torch.linalg.matrix_norm(kernels, ord=2)
        if bn is not None:
            assert bn.running_var is not None  # track_running_stats: every model here keeps them
            bound = bound * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return bound


def clp_prune(model: nn.Module, u: float) -> dict[str, list[int]]:
    """Silence, in every conv layer, the channels with UCLC > mean + u std; returns them per layer."""
    pruned: dict[str, list[int]] = {}
    for name, conv, bn in conv_bn_pairs(model):
        bound = channel_lipschitz(conv, bn)
        if bound.numel() < 2:
            continue
        chosen = torch.nonzero(bound > bound.mean() + u * bound.std()).flatten().tolist()
        if not chosen:
            continue
        with torch.no_grad():
            for module in (bn,) if bn is not None else (conv,):
                module.weight[chosen] = 0.0
                if module.bias is not None:
                    module.bias[chosen] = 0.0
        pruned[name] = chosen
    return pruned


def clp_within_budget(model: nn.Module, u: float, accuracy_of: Callable[[nn.Module], float], budget: Budget
                      ) -> tuple[float | None, dict[str, list[int]], list[tuple[float, float]]]:
    """CLP at the strongest u (``u`` upwards, in steps of 0.5) whose clean accuracy the budget allows:
    (that u, None when none is and nothing is pruned; the channels pruned; (u, accuracy) of every candidate
    measured)."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    candidates = [u]
    while True:  # the candidates up to the first that prunes nothing
        probe = clp_prune(model, candidates[-1])
        model.load_state_dict(saved)
        if not probe:
            break
        candidates.append(candidates[-1] + U_STEP)

    def accuracy_at(value: float) -> float:
        clp_prune(model, value)
        accuracy = accuracy_of(model)
        model.load_state_dict(saved)
        return accuracy

    chosen, seen = strongest_within(candidates[:-1], accuracy_at, budget)
    return chosen, (clp_prune(model, chosen) if chosen is not None else {}), seen
