"""`python -m cgpt.train RUN.yaml [--set k=v ...] [--resume]` (cgpt.train.loop.entry)."""

import sys

from cgpt.train.loop.entry import main

if __name__ == "__main__":
    sys.exit(main())
