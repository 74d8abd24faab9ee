"""Post-training federated cleansing (Sec. IV, Algorithm 1) as Flower phases.

1. Federated pruning: a ``query.rank_neurons`` message asks every client for its
   ranking (RAP) or votes (MVP) of the layer's neurons; the server aggregates them
   and prunes in that order until clean accuracy drops (per step or cumulatively).
2. Federated fine-tuning: FedAvg rounds on the pruned model, mask enforced on every
   client (attackers take part), until accuracy stops improving; the last model
   (Algorithm 1) or the best one goes on.
3. Adjusting extreme weights (AW): zero the last conv layer's weights outside
   mu +/- Delta*sigma, shrinking Delta until accuracy drops (or a fixed Delta).

Clean accuracy comes from the server's validation set, or (pruning-accuracy =
clients) from accuracies the clients report in a federated round.  The attack set
is only ever evaluated for reporting.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Sequence

import numpy as np
from flwr.app import ConfigRecord

from defenses.candidates import extreme_weights_zeroed, pruned
from defenses.extreme_weights import delta_schedule, weight_stats, zero_extreme_weights
from fl_backdoor.masks import mask_on
from defenses.neuron_ranking import MAX_PRUNING_LEVELS, mask_for, mvp_order, pruning_levels, rap_order
from defenses.stop_rules import Patience, stop_at_drop
from fl_backdoor import protocol
from fl_backdoor.federation_data import validation_set
from fl_backdoor.models import layer_neurons, resolve_layer
from fl_backdoor.plots import plot_curves
from fl_backdoor.run_dir import load_checkpoint, write_csv
from fl_backdoor.training import accuracy, to_device
from server_strategies.reply_checks import Checker, accuracies_checker, ranking_checker, votes_checker
from server_strategies.server_run import ServerRun, percent

PHASES = {
    "train-only": (),
    "fp": ("prune",),
    "fp-aw": ("prune", "aw"),
    "all": ("prune", "fp-aw-branch", "finetune", "aw"),
    "aw": ("aw",),
}


class CleansingAborted(RuntimeError):
    """Too few valid client replies to take a cleansing decision."""


class Cleansing:
    """The cleansing phases of one run, acting on the run's global model."""

    def __init__(self, run: ServerRun) -> None:
        self.run = run
        self.cfg = run.cfg
        model = run.global_model.model
        self.layer = resolve_layer(model, self.cfg.pruning_layer)
        self.size = layer_neurons(model, self.layer)
        self.aw_layer = model.last_conv
        device = next(model.parameters()).device
        val = validation_set(self.cfg)
        self.val_x, self.val_y = to_device(val.x, device), val.y.to(device)
        self.results = run.state.results
        self.report_seconds = 0.0  # time spent on report-only curves, kept out of the phase times

    # --- clean accuracy: the only input of every decision -------------------------------------
    def validation_accuracy(self) -> float:
        """Accuracy of the global model on the server's held-out clean set."""
        return accuracy(self.run.global_model.model, self.val_x, self.val_y, self.cfg.eval_batch_size)

    def query_clients(self, message_type: str, entries: dict[str, Any], check: Checker, what: str) -> list[Any]:
        """Send a query with the global model to every client; the parsed payloads of the valid replies."""
        gm, strategy = self.run.global_model, self.run.strategy
        strategy.mask, strategy.phase = gm.mask, "cleanse"
        messages = strategy.client_messages(list(range(self.cfg.num_clients)), gm.arrays(), ConfigRecord(entries),
                                            gm.round, message_type)
        replies = self.run.grid.send_and_receive(messages, timeout=self.cfg.round_timeout)
        valid = [payload for _, payload in strategy.screen(replies, check)]
        if len(valid) < self.cfg.min_replies:
            raise CleansingAborted(f"{what}: only {len(valid)} valid client replies (min-replies {self.cfg.min_replies})")
        return valid

    def client_accuracies(self, kind: str, candidates: Sequence[float], order: Sequence[int] = ()) -> list[float]:
        """One federated round: every client's accuracy per candidate, averaged by example count."""
        entries: dict[str, Any] = {"kind": kind, "layer": self.layer if kind == "pruning" else self.aw_layer,
                                   "candidates": [float(c) for c in candidates]}
        if order:
            entries["order"] = [int(i) for i in order]
        reports = self.query_clients(protocol.CANDIDATE_ACCURACY, entries, accuracies_checker(len(candidates)),
                                     "candidate accuracies")
        weights = np.array([float(n) for _, n in reports])
        accs = np.array([accs for accs, _ in reports], dtype=np.float64)
        return list((weights[:, None] * accs).sum(0) / max(weights.sum(), 1.0))

    def model_accuracy(self) -> float:
        """Clean accuracy of the current global model: validation set, or a federated evaluate round."""
        if self.cfg.pruning_accuracy == "server":
            return self.validation_accuracy()
        gm, strategy = self.run.global_model, self.run.strategy
        strategy.mask = gm.mask
        messages = strategy.configure_evaluate(gm.round, gm.arrays(), ConfigRecord(), self.run.grid)
        metrics = strategy.aggregate_evaluate(gm.round, self.run.grid.send_and_receive(
            messages, timeout=self.cfg.round_timeout))
        if metrics is None or int(metrics["replies"]) < self.cfg.min_replies:
            raise CleansingAborted("evaluate round: too few valid client replies")
        return float(metrics["accuracy"])

    # --- phase 1: federated pruning -----------------------------------------------------------
    def neuron_order(self, method: str) -> list[int]:
        """Aggregate the clients' rankings (RAP) or votes (MVP) into a pruning order."""
        entries = {"layer": self.layer, "method": method, "rate": self.cfg.mvp_rate}
        check = ranking_checker(self.size) if method == "rap" else votes_checker(self.size, self.cfg.mvp_rate)
        reports = self.query_clients(protocol.RANK_NEURONS, entries, check, f"{method.upper()} reports")
        already = set(self.run.global_model.mask.pruned) if self.run.global_model.mask else set()
        order = rap_order(reports) if method == "rap" else mvp_order(reports)
        return [i for i in order if i not in already]

    def levels(self, method: str, order: list[int], max_levels: int) -> list[int]:
        """Pruning levels to try: up to every MVP candidate, up to all but one neuron for RAP."""
        limit = len(order) if method == "mvp" else min(len(order), self.size - 1)
        return pruning_levels(limit, max_levels)

    def prune(self) -> None:
        """Rank or vote, then prune in aggregate order while clean accuracy stays above the threshold."""
        cfg, gm = self.cfg, self.run.global_model
        order = self.neuron_order(cfg.pruning_method)
        levels = self.levels(cfg.pruning_method, order, MAX_PRUNING_LEVELS)
        if cfg.pruning_accuracy == "server":
            def accuracy_of(count: int) -> float:
                with pruned(gm.model, order, count, self.layer, self.size):
                    return self.validation_accuracy()
        else:
            reported = dict(zip(levels, self.client_accuracies("pruning", levels, order)))
            accuracy_of = reported.__getitem__
        base = accuracy_of(0)
        per_step = cfg.pruning_stop == "per-step"
        chosen, seen = stop_at_drop(levels, accuracy_of, base, cfg.pruning_max_drop, per_step=per_step)
        chosen = chosen or 0
        reached = dict(seen).get(chosen, base)
        self.pruning_curves(order)
        gm.set_mask(mask_for(order, chosen, self.layer, self.size, gm.mask))
        self.finish("fp", pruned=chosen, candidates=len(order), clean_accuracy=reached, clean_base=base,
                    clean_threshold=(reached if per_step else base) - cfg.pruning_max_drop, stop=cfg.pruning_stop,
                    note=f"{cfg.pruning_method.upper()} pruned {chosen} of {self.size} neurons of {self.layer}")

    def pruning_curves(self, order: list[int]) -> None:
        """Fig. 5 data: TA and AA against the number of pruned neurons, for RAP and for MVP (report only)."""
        if self.cfg.curve_points <= 0:
            return
        started = time.perf_counter()
        gm, rows = self.run.global_model, []
        orders = {self.cfg.pruning_method: order}
        for method in ("rap", "mvp"):
            orders.setdefault(method, self.neuron_order(method))
        for method, method_order in orders.items():
            for count in self.levels(method, method_order, self.cfg.curve_points):
                with pruned(gm.model, method_order, count, self.layer, self.size):
                    rows.append({"method": method, "pruned": count, "validation": self.validation_accuracy(),
                                 **self.run.evaluate()})
        write_csv(self.run.run_dir.path / "pruning_curve.csv", rows)
        curves = {}
        for method in orders:
            mine = [r for r in rows if r["method"] == method]
            counts = [r["pruned"] for r in mine]
            curves[f"TA {method.upper()}"] = (counts, [r["ta"] for r in mine])
            curves[f"AA {method.upper()}"] = (counts, [r["aa"] for r in mine])
        plot_curves(self.run.run_dir.path / "pruning_curve.png", curves, xlabel="pruned neurons",
                    title=f"Federated pruning of {self.layer}")
        self.report_seconds += time.perf_counter() - started

    # --- phase 2: federated fine-tuning ---------------------------------------------------------
    def finetune(self) -> None:
        """FedAvg rounds on the pruned model until clean accuracy stops improving.

        The model that goes on is the last one (finetune-keep = last, as Algorithm 1's
        loop leaves it) or the one of best clean accuracy, round 0 included (best).
        The patience counters (and, for 'best', the best model) are saved every round, so a
        resumed run continues fine-tuning where it stopped.
        """
        cfg, gm, state = self.cfg, self.run.global_model, self.run.state
        keep_best = cfg.finetune_keep == "best"
        if state.finetune:
            rule = Patience(cfg.finetune_patience, cfg.finetune_rounds, baseline=state.finetune["best"])
            rule.best_round, rule.rounds = state.finetune["best_round"], state.finetune["rounds"]
        else:
            rule = Patience(cfg.finetune_patience, cfg.finetune_rounds, baseline=self.model_accuracy())
            if keep_best:
                self.run.checkpoint("ft-best", phase="finetune")
        while not rule.stop:
            self.run.federated_round("finetune", gm.round + 1)
            if rule.update(self.model_accuracy()) and keep_best:
                self.run.checkpoint("ft-best", phase="finetune")
            state.finetune = {"best": rule.best, "best_round": rule.best_round, "rounds": rule.rounds}
            state.save(self.run.run_dir)
        kept_round = rule.kept_round(cfg.finetune_keep)
        if keep_best:
            gm.model.load_state_dict(load_checkpoint(self.run.run_dir.checkpoint("ft-best"))["state_dict"])
        self.finish("ft", rounds=rule.rounds, best_round=rule.best_round, kept_round=kept_round, best_accuracy=rule.best,
                    keep=cfg.finetune_keep,
                    note=f"fine-tuned {rule.rounds} rounds (best validation in round {rule.best_round}), "
                         f"kept the model of round {kept_round}")

    # --- phase 3: adjusting extreme weights -----------------------------------------------------
    def adjust_weights(self, name: str) -> None:
        """AW on the last conv layer: a fixed Delta, or Delta shrunk until clean accuracy drops (aw-keep)."""
        cfg, gm = self.cfg, self.run.global_model
        weight = gm.model.get_submodule(self.aw_layer).weight
        mask = mask_on(gm.mask, self.aw_layer)
        stats = weight_stats(weight, mask, cfg.aw_stats)
        deltas = delta_schedule(cfg.aw_delta_start, cfg.aw_delta_step, cfg.aw_delta_min)
        if cfg.aw_delta > 0:
            chosen, base, threshold = cfg.aw_delta, float("nan"), float("nan")
        else:
            if cfg.pruning_accuracy == "server":
                def accuracy_of(delta: float) -> float:
                    with extreme_weights_zeroed(gm.model, self.aw_layer, stats, delta):
                        return self.validation_accuracy()
            else:
                accuracy_of = dict(zip(deltas, self.client_accuracies("aw", deltas))).__getitem__
            base = self.model_accuracy()
            threshold = base - cfg.aw_max_drop
            chosen, _ = stop_at_drop(deltas, accuracy_of, base, cfg.aw_max_drop, keep_crossing=cfg.aw_keep == "crossing")
        self.delta_curve(name, deltas, stats)
        zeroed = zero_extreme_weights(gm.model, self.aw_layer, stats, chosen, mask) if chosen is not None else 0
        self.finish(name, delta=chosen, zeroed=zeroed, mu=stats.mu, sigma=stats.sigma, clean_base=base,
                    clean_threshold=threshold, note=f"AW Delta={chosen} zeroed {zeroed} weights of {self.aw_layer}")

    def delta_curve(self, name: str, deltas: list[float], stats: Any) -> None:
        """Fig. 6 data: TA and AA against Delta (report only); the first row is the model without AW."""
        if self.cfg.curve_points <= 0:
            return
        started = time.perf_counter()
        gm = self.run.global_model
        rows = [{"delta": "none", "zeroed": 0, "validation": self.validation_accuracy(), **self.run.evaluate()}]
        for delta in deltas:
            with extreme_weights_zeroed(gm.model, self.aw_layer, stats, delta) as zeroed:
                rows.append({"delta": delta, "zeroed": zeroed, "validation": self.validation_accuracy(),
                             **self.run.evaluate()})
        write_csv(self.run.run_dir.path / f"aw_curve_{name}.csv", rows)
        xs = [r["delta"] for r in rows[1:]]
        plot_curves(self.run.run_dir.path / f"aw_curve_{name}.png",
                    {"TA": (xs, [r["ta"] for r in rows[1:]]), "AA": (xs, [r["aa"] for r in rows[1:]])},
                    xlabel="Delta", title=f"Adjusting extreme weights ({name})", invert_x=True)
        self.report_seconds += time.perf_counter() - started

    # --- bookkeeping ------------------------------------------------------------------------
    def finish(self, name: str, note: str, **facts: Any) -> None:
        """Evaluate (report only), checkpoint and print the outcome of a phase."""
        measured = self.run.evaluate()
        self.results[name] = {**measured, **facts}
        self.run.checkpoint(name, phase=name)
        print(f"[{name}] {note}  TA {percent(measured['ta'])}  AA {percent(measured['aa'])}", flush=True)

    def run_mode(self) -> dict[str, dict[str, Any]]:
        """Run the phases of the configured defense mode not done yet; returns the per-phase results.

        A phase that cannot get enough valid client replies is skipped with a message;
        the model stays as the previous phase left it.
        """
        for step in PHASES[self.cfg.defense]:
            if step in self.run.state.done:
                continue
            started, self.report_seconds = time.perf_counter(), 0.0
            try:
                if step == "prune":
                    self.prune()
                elif step == "fp-aw-branch":
                    self.branch(lambda: self.adjust_weights("fp-aw"))
                elif step == "finetune":
                    self.finetune()
                else:
                    self.adjust_weights("all" if self.cfg.defense == "all" else self.cfg.defense)
            except CleansingAborted as exc:
                print(f"[{step}] skipped: {exc}", flush=True)
                self.results[f"skipped-{step}"] = {"reason": str(exc)}
            seconds = self.run.phase_seconds
            key = {"fp-aw-branch": "fp-aw"}.get(step, step)
            seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - started - self.report_seconds, 3)
            seconds["curves"] = round(seconds.get("curves", 0.0) + self.report_seconds, 3)
            self.run.complete(step)
        return self.results

    def branch(self, step: Callable[[], None]) -> None:
        """Run a step on the current model for its result and checkpoint, then undo it."""
        model = self.run.global_model.model
        saved = copy.deepcopy(model.state_dict())
        step()
        model.load_state_dict(saved)
