"""cgpt.train.data."""
