"""cgpt.train.loop."""
