"""cgpt.train.plan."""
