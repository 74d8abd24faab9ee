"""Post-training federated cleansing (Sec. IV, Algorithm 1): the context the phases run in.

The phases themselves (server_strategies/phases: prune, finetune, aw) are registered
components; the config key ``defense`` lists them.  This module gives them what they
share: the layer to act on, clean accuracy (the server's validation set, or, with
pruning-accuracy = clients, accuracies the clients report in a federated round), the
clients' neuron reports, and the bookkeeping of each step's result.  The attack set
is only ever evaluated for reporting.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import MessageType

from defenses.neuron_ranking import mvp_order, pruning_levels, rap_order
from fl_backdoor import protocol
from fl_backdoor.federation_data import client_partitions, validation_set
from fl_backdoor.models import layer_neurons, resolve_layer
from fl_backdoor.training import accuracy, to_device
from server_strategies.phases import PHASES, Step, defense_steps
from server_strategies.reply_checks import Checker, accuracies_checker, evaluate_checker, ranking_checker, votes_checker
from server_strategies.server_run import ServerRun, percent


def bounded_mean(reports: Sequence[tuple[int, Sequence[float], int]], sizes: Sequence[int]) -> np.ndarray:
    """Mean of the clients' values weighted by the example counts they report, each count capped at the
    size of the client's partition (the server computes the partitions from the config as the clients do).

    A client that claims more examples than it holds weighs as much as its data, not more: one
    attacker reporting 10^12 examples cannot decide a pruning level or a Delta on its own.
    """
    weights = np.array([float(min(max(n, 0), sizes[c])) for c, _, n in reports])
    values = np.array([list(v) for _, v, _ in reports], dtype=np.float64)
    return (weights[:, None] * values).sum(0) / max(weights.sum(), 1.0)


class CleansingAborted(RuntimeError):
    """Too few valid client replies to take a cleansing decision."""


class Cleansing:
    """What the cleansing phases of one run share; they act on the run's global model."""

    def __init__(self, run: ServerRun) -> None:
        self.run = run
        self.cfg = run.cfg
        model = run.global_model.model
        self.layer = resolve_layer(model, self.cfg.pruning_layer)
        self.size = layer_neurons(model, self.layer)
        self.aw_layer = str(model.last_conv)
        device = next(model.parameters()).device
        val = validation_set(self.cfg)
        self.val_x, self.val_y = to_device(val.x, device), val.y.to(device)
        self.sizes = [len(part) for part in client_partitions(self.cfg)]
        self.results = run.state.results
        self.report_seconds = 0.0  # time spent on report-only curves, kept out of the phase times

    # --- clean accuracy: the only input of every decision -------------------------------------
    def validation_accuracy(self) -> float:
        """Accuracy of the global model on the server's held-out clean set."""
        return accuracy(self.run.global_model.model, self.val_x, self.val_y, self.cfg.eval_batch_size)

    def query_clients(self, message_type: str, entries: dict[str, Any], check: Checker, what: str
                      ) -> list[tuple[int, Any]]:
        """Send a query with the global model to every client; (client, parsed payload) of the valid replies."""
        gm, federation = self.run.global_model, self.run.federation
        valid = federation.ask(federation.everyone, message_type, gm.arrays(), entries, gm.round, "cleanse",
                               gm.mask, check)
        if len(valid) < self.cfg.min_replies:
            raise CleansingAborted(f"{what}: only {len(valid)} valid client replies "
                                   f"(min-replies {self.cfg.min_replies})")
        return valid

    def client_accuracies(self, kind: str, candidates: Sequence[float], order: Sequence[int] = ()) -> list[float]:
        """One federated round: every client's accuracy per candidate, averaged by example count."""
        entries: dict[str, Any] = {"kind": kind, "layer": self.layer if kind == "pruning" else self.aw_layer,
                                   "candidates": [float(c) for c in candidates]}
        if order:
            entries["order"] = [int(i) for i in order]
        reports = self.query_clients(protocol.CANDIDATE_ACCURACY, entries, accuracies_checker(len(candidates)),
                                     "candidate accuracies")
        return list(self.weighted_mean([(c, accs, n) for c, (accs, n) in reports]))

    def weighted_mean(self, reports: Sequence[tuple[int, Sequence[float], int]]) -> np.ndarray:
        """The clients' reported values (client, values, example count) averaged as bounded_mean says."""
        return bounded_mean(reports, self.sizes)

    def model_accuracy(self) -> float:
        """Clean accuracy of the current global model: validation set, or a federated evaluate round."""
        if self.cfg.pruning_accuracy == "server":
            return self.validation_accuracy()
        reports = self.query_clients(MessageType.EVALUATE, {}, evaluate_checker(), "evaluate round")
        return float(self.weighted_mean([(c, [acc], n) for c, (acc, n) in reports])[0])

    # --- the clients' neuron reports ---------------------------------------------------------
    def neuron_order(self, method: str) -> list[int]:
        """Aggregate the clients' rankings (RAP) or votes (MVP) into a pruning order."""
        entries = {"layer": self.layer, "method": method, "rate": self.cfg.mvp_rate}
        check = ranking_checker(self.size) if method == "rap" else votes_checker(self.size, self.cfg.mvp_rate)
        reports = [report for _, report in self.query_clients(protocol.RANK_NEURONS, entries, check,
                                                               f"{method.upper()} reports")]
        already = set(self.run.global_model.mask.pruned) if self.run.global_model.mask else set()
        order = rap_order(reports) if method == "rap" else mvp_order(reports)
        return [i for i in order if i not in already]

    def levels(self, method: str, order: list[int], max_levels: int) -> list[int]:
        """Pruning levels to try: up to every MVP candidate, up to all but one neuron for RAP."""
        limit = len(order) if method == "mvp" else min(len(order), self.size - 1)
        return pruning_levels(limit, max_levels)

    # --- bookkeeping ------------------------------------------------------------------------
    def finish(self, name: str, note: str, **facts: Any) -> None:
        """Evaluate (report only), checkpoint and print the outcome of a phase."""
        measured = self.run.evaluate()
        self.results[name] = {**measured, **facts}
        self.run.checkpoint(name, phase=name)
        print(f"[{name}] {note}  TA {percent(measured['ta'])}  AA {percent(measured['aa'])}", flush=True)

    def run_defense(self) -> dict[str, dict[str, Any]]:
        """Run the steps of the configured defense not done yet; returns the per-step results.

        A step that cannot get enough valid client replies is skipped with a message;
        the model stays as the previous step left it.
        """
        for step in defense_steps(self.cfg.defense):
            if step.token in self.run.state.done:
                continue
            started, self.report_seconds = time.perf_counter(), 0.0
            try:
                self.run_step(step)
            except CleansingAborted as exc:
                print(f"[{step.token}] skipped: {exc}", flush=True)
                self.results[f"skipped-{step.token}"] = {"reason": str(exc)}
            seconds = self.run.phase_seconds
            seconds[step.token] = round(seconds.get(step.token, 0.0) + time.perf_counter() - started
                                        - self.report_seconds, 3)
            seconds["curves"] = round(seconds.get("curves", 0.0) + self.report_seconds, 3)
            self.run.complete(step.token)
        return self.results

    def run_step(self, step: Step) -> None:
        """Apply one phase to the global model; a probe is undone once its result is recorded."""
        phase = PHASES[step.phase]
        if not step.probe:
            phase(self, step.result)
            return
        model = self.run.global_model.model
        saved = copy.deepcopy(model.state_dict())
        phase(self, step.result)
        model.load_state_dict(saved)
