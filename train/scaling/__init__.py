"""cgpt.train.scaling."""
