"""`cgpt configs [NAME] [--path]`: the run and sweep configs shipped with cgpt.

Every verb that takes a config file also takes one of these names from any folder
(cgpt.configs.resolve_config): `cgpt train cerebras-gpt-111m`, `cgpt sweep sweep-cpu`.
"""

from __future__ import annotations

import argparse

from cgpt.configs import available, find
from cgpt.model.errors import CgptError

EPILOG = """\
Examples:
  cgpt configs                              list the shipped configs
  cgpt configs cerebras-gpt-111m --path     where the 111M recipe's file is
  cgpt configs demo-cpu                     print a config (redirect it to a file to edit it)
"""


def register(sub) -> None:
    p = sub.add_parser(
        "configs",
        help="list the run and sweep configs shipped with cgpt (usable by name)",
        description="The run and sweep configs shipped with cgpt. Every verb that takes a "
        "config file takes one of these names too, from any folder: "
        "`cgpt train cerebras-gpt-111m`, `cgpt launch cerebras-gpt-111m`, "
        "`cgpt sweep sweep-cpu`, `cgpt bench demo-cpu`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="print this config's text")
    p.add_argument("--path", action="store_true", help="with NAME: print its file's path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        if args.path:
            raise CgptError("--path goes with a NAME: cgpt configs NAME --path")
        rows = available()
        width = max(len(name) for name, _ in rows)
        for name, about in rows:
            print(f"{name:<{width}}  {about}")
        return 0
    path = find(args.name)
    if args.path:
        print(path)
    else:
        print(path.read_text(encoding="utf-8"), end="")
    return 0
