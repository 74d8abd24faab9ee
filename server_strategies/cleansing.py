"""Post-training federated cleansing (Sec. IV, Algorithm 1): the context the phases run in.

The phases themselves (server_strategies/phases: prune, finetune, aw, ...) are registered
components; the config key ``defense`` lists them.  This module gives them what they
share: the layer to act on, clean accuracy (the server's validation set, or, with
pruning-accuracy = clients, accuracies the clients report in a federated round), the
way to ask the clients a phase's registered query (clients/jobs.py), and the bookkeeping
of each step's result.  The attack set is only ever evaluated for reporting.

No defense hands back a model whose validation accuracy fell by more than ``clean-budget``
from the trained model's: when the last step leaves one, the trained model is restored and
the last step's result records why (``guard``), beside what the method itself reached.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import MessageType, RecordDict

from clients.jobs import QUERIES
from defenses.budget import Budget
from fl_backdoor import protocol
from fl_backdoor.federation_data import client_partitions, validation_set
from fl_backdoor.masks import NeuronMask, install_mask
from fl_backdoor.models import layer_neurons, resolve_layer
from fl_backdoor.run_dir import load_checkpoint
from fl_backdoor.training import accuracy, to_device
from server_strategies.phases import CLEAN_BUDGET, PHASES, PRUNING_ACCURACY, PRUNING_LAYER, Step, defense_steps
from server_strategies.reply_checks import Checker, evaluate_checker
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
        self.layer = resolve_layer(model, PRUNING_LAYER.of(self.cfg))
        self.size = layer_neurons(model, self.layer)
        self.aw_layer = str(model.last_conv)
        device = next(model.parameters()).device
        val = validation_set(self.cfg)
        self.val_x, self.val_y = to_device(val.x, device), val.y.to(device)
        self.sizes = [len(part) for part in client_partitions(self.cfg)]
        self.results = run.state.results
        self.report_seconds = 0.0  # time spent on report-only curves, kept out of the phase times
        self.reply_bytes: dict[str, list[int]] = {}  # the current step's valid client replies, by query, on the wire

    # --- clean accuracy: the only input of every decision -------------------------------------
    def validation_accuracy(self) -> float:
        """Accuracy of the global model on the server's held-out clean set."""
        return accuracy(self.run.global_model.model, self.val_x, self.val_y, self.cfg.eval_batch_size)

    def query_clients(self, query: str, entries: dict[str, Any], check: Checker, what: str
                      ) -> list[tuple[int, Any]]:
        """Ask every client a registered query (clients/jobs.py) about the global model; (client, parsed payload)
        of the replies its check accepted."""
        if query not in QUERIES:  # fail here, not on every client
            raise ValueError(f"no client query '{query}' is registered (clients/jobs.py)")
        return self._ask(protocol.PHASE_QUERY, {protocol.QUERY_NAME: query, **entries}, check, what)

    def _ask(self, message_type: str, entries: dict[str, Any], check: Checker, what: str) -> list[tuple[int, Any]]:
        gm, federation = self.run.global_model, self.run.federation
        sizes = self.reply_bytes.setdefault(what, [])

        def measured(content: RecordDict) -> Any:
            parsed = check(content)
            sizes.append(protocol.wire_bytes(content))
            return parsed

        valid = federation.ask(federation.everyone, message_type, gm.arrays(), entries, gm.round, "cleanse",
                               gm.mask, measured)
        if len(valid) < self.cfg.min_replies:
            raise CleansingAborted(f"{what}: only {len(valid)} valid client replies "
                                   f"(min-replies {self.cfg.min_replies})")
        return valid

    def weighted_mean(self, reports: Sequence[tuple[int, Sequence[float], int]]) -> np.ndarray:
        """The clients' reported values (client, values, example count) averaged as bounded_mean says."""
        return bounded_mean(reports, self.sizes)

    def model_accuracy(self) -> float:
        """Clean accuracy of the current global model: validation set, or a federated evaluate round."""
        if PRUNING_ACCURACY.of(self.cfg) == "server":
            return self.validation_accuracy()
        reports = self._ask(MessageType.EVALUATE, {}, evaluate_checker(), "evaluate round")
        return float(self.weighted_mean([(c, [acc], n) for c, (acc, n) in reports])[0])

    # --- bookkeeping ------------------------------------------------------------------------
    def finish(self, name: str, note: str, **facts: Any) -> None:
        """Evaluate (report only), checkpoint and print the outcome of a phase."""
        measured = self.run.evaluate()
        if self.reply_bytes:  # the mean size of a client's reply to each of the step's queries
            facts["reply_bytes"] = {**facts.get("reply_bytes", {}),
                                    **{what: float(np.mean(sizes)) for what, sizes in self.reply_bytes.items()
                                       if sizes}}
            self.reply_bytes = {}
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
        if "guard" not in self.run.state.done:
            self.guard()
            self.run.complete("guard")
        return self.results

    def guard(self) -> None:
        """The defense's clean-accuracy budget, checked on the model it hands back (the last applied step's)."""
        applied = [s.result for s in defense_steps(self.cfg.defense) if not s.probe and s.result in self.results]
        if not applied:
            return
        gm, last = self.run.global_model, applied[-1]
        trained = load_checkpoint(self.run.run_dir.checkpoint("trained"))
        start = copy.deepcopy(gm.model)
        start.load_state_dict(trained["state_dict"])
        install_mask(start, NeuronMask.from_dict(trained["mask"]) if trained.get("mask") else None)
        budget = Budget(accuracy(start, self.val_x, self.val_y, self.cfg.eval_batch_size), CLEAN_BUDGET.of(self.cfg))
        reached = self.validation_accuracy()
        if budget.allows(reached):
            self.results[last]["guard"] = budget.record(reached, reverted=False)
            return
        method = {"method_ta": self.results[last]["ta"], "method_aa": self.results[last]["aa"]}
        gm.model.load_state_dict(trained["state_dict"])
        gm.set_mask(NeuronMask.from_dict(trained["mask"]) if trained.get("mask") else None)
        reason = (f"the defense left validation accuracy {reached:.4f}, more than clean-budget {budget.budget:g} below "
                  f"the trained model's {budget.baseline:.4f}: the trained model is handed back unchanged")
        self.results[last] = {**self.results[last], **self.run.evaluate(),
                              "guard": budget.record(reached, reverted=True, reason=reason, **method)}
        print(f"[guard] {reason}", flush=True)

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
