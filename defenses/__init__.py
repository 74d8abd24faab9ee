"""Backdoor defenses: federated cleansing (RAP/MVP pruning, fine-tuning, AW) and centralized baselines."""
