"""fl-backdoor core: config, data, partitions, models, triggers, poisoning, training, outputs."""
