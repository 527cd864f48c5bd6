"""cgpt.train.bench."""
