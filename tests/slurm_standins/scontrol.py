"""Stand-in for scontrol(1): ``show hostnames LIST`` and ``requeue JOB``.

- ``show hostnames``: one host name per line (scontrol(1): "Print all host names in a
  hostlist expression, one per line"); the allocation's names come from $CGPT_FAKE_NODES
  (comma-separated) instead of expanding LIST;
- ``requeue JOB``: "Requeue a running, suspended or finished Slurm batch job into pending
  state" (scontrol(1)); recorded in requeue.log, and the test harness then starts the batch
  script again with the same SLURM_JOB_ID, as SLURM does (SLURM_RESTART_COUNT + 1).
"""

from __future__ import annotations

import os
import sys

from fake_slurm import record, say, state


def main(argv: list[str]) -> int:
    record("scontrol", argv)
    if argv[:2] == ["show", "hostnames"]:
        for name in os.environ.get("CGPT_FAKE_NODES", "localhost").split(","):
            print(name)
        return 0
    if argv[:1] == ["requeue"] and len(argv) == 2:
        with open(state() / "requeue.log", "a") as f:
            f.write(argv[1] + "\n")
        return 0
    say("scontrol", f"error: this stand-in does not know {argv}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
