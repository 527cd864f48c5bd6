"""Stand-in for sbatch(1) on a login node: records its argv and answers as sbatch does
("Submitted batch job N"). It runs nothing: the test harness starts the script itself and
plays sbatch's ``--signal=[B:]SIG@T`` (sbatch(1): "Use the "B:" option to signal only the
batch shell, none of the other processes will be signaled. By default all job steps will be
signaled, but not the batch shell itself.")."""

from __future__ import annotations

import sys

from fake_slurm import record


def main(argv: list[str]) -> int:
    record("sbatch", argv)
    print("Submitted batch job 77")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
