"""cgpt.train: planner, data, tokenizer, trainer, checkpoints, metrics, sweeps."""
