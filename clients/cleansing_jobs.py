"""A client's part in the federated cleansing phases, independent of Flower."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clients.behaviours import conduct_of
from clients.local_training import client_model, job_generator
from defenses.candidates import aw_accuracies, candidate_measure, pruning_accuracies
from defenses.extreme_weights import weight_stats
from defenses.neuron_ranking import local_ranking, local_votes, mean_activations
from defenses.rnp import RNPSettings, flatten_masks, rnp_masks
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.masks import NeuronMask, mask_on, neuron_output_name
from fl_backdoor.models import layer_neurons
from fl_backdoor.training import layer_weight, pick_device


def neuron_report(cfg: ExperimentConfig, client_id: int, state: dict[str, torch.Tensor], mask: NeuronMask | None,
                  layer: str, method: str, rate: float) -> list[int]:
    """RAP: rank position of every neuron (1 = most active); MVP: a 0/1 prune vote per neuron."""
    model = client_model(cfg, state, mask)
    x, _ = client_data(cfg, client_id, pick_device(cfg.device))
    conduct = conduct_of(cfg, client_id)
    activations = conduct.activations(model, layer, x, mean_activations(model, layer, x, cfg.eval_batch_size))
    report = local_ranking(activations) if method == "rap" else local_votes(activations, rate)
    return conduct.neuron_report(method, report, rate)


def candidate_report(cfg: ExperimentConfig, client_id: int, state: dict[str, torch.Tensor],
                     mask: NeuronMask | None, kind: str, layer: str, order: Sequence[int],
                     candidates: Sequence[float]) -> tuple[list[float], int]:
    """Local clean accuracy of each candidate: pruning levels (kind 'pruning') or Deltas (kind 'aw')."""
    model = client_model(cfg, state, mask)
    x, y = client_data(cfg, client_id, pick_device(cfg.device))
    # pruning silences the layer's neuron outputs; AW changes the layer's weights
    changed = neuron_output_name(model, layer) if kind == "pruning" else layer
    measure = candidate_measure(model, x, y, cfg.eval_batch_size, changed)
    if kind == "pruning":
        accs = pruning_accuracies(model, list(order), [int(c) for c in candidates], layer,
                                  layer_neurons(model, layer), measure)
    else:
        weight = layer_weight(model, layer)
        stats = weight_stats(weight, mask_on(mask, layer), cfg.aw_stats)
        accs = aw_accuracies(model, layer, stats, list(candidates), measure)
    return conduct_of(cfg, client_id).candidate_accuracies(accs), int(y.shape[0])


def rnp_report(cfg: ExperimentConfig, client_id: int, state: dict[str, torch.Tensor], mask: NeuronMask | None,
               server_round: int) -> tuple[list[float], int, int, float]:
    """Federated RNP: (channel masks recovered after unlearning this client's clean data, its example count,
    unlearning epochs, unlearned accuracy)."""
    model = client_model(cfg, state, mask)
    x, y = client_data(cfg, client_id, pick_device(cfg.device))
    found = rnp_masks(model, x, y, RNPSettings(), job_generator(cfg, client_id, server_round, "cleanse"))
    masks = conduct_of(cfg, client_id).rnp_masks(flatten_masks(found.masks))
    return masks, int(y.shape[0]), found.unlearning_epochs, found.unlearned_accuracy
