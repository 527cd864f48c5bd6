"""cgpt.train.sweeps: running a scaling sweep and fitting its folder."""
