"""cgpt.train.fits: scaling-law fits, pure numerics over result records."""
