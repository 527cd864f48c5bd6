"""cgpt.train.mup."""
