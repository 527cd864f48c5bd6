"""cgpt.launch: the `cgpt` command line and the launchers (local, deepspeed, torchrun, SLURM)."""
