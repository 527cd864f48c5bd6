"""The `cgpt` command line.

Each verb lives in its own module, which defines ``register(subparsers)``: it adds its
parser and sets ``func`` (called with the parsed args, returns an exit code or None).
Modules are listed here by import path; a user error (:class:`CgptError`) anywhere becomes
one line on stderr and exit code 2, never a traceback; a reader that closes the pipe early
(`cgpt plan 111M | head -1`) ends the command quietly with exit code 141.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap

from cgpt.launch.examples import EXAMPLES, examples_block
from cgpt.model.errors import CgptError
from cgpt.train.provenance import git_revision, version

# verb modules, in the order `cgpt --help` lists them
COMMAND_MODULES = [
    "cgpt.launch.cmd_plan",  # plan
    "cgpt.launch.cmd_configs",  # configs
    "cgpt.launch.cmd_data",  # tokenizer train, prepare
    "cgpt.launch.cmd_train",  # train
    "cgpt.launch.cmd_bench",  # bench
    "cgpt.launch.cmd_launch",  # launch, demo
    "cgpt.launch.cmd_sweep",  # sweep, sweep fit
    "cgpt.launch.cmd_mup",  # mup coord-check, mup transfer
    "cgpt.launch.cmd_export",  # export, import-hf
    "cgpt.launch.cmd_eval",  # eval
    "cgpt.launch.cmd_branch",  # branch
]


def _version_line() -> str:
    rev = git_revision()
    return f"cgpt {version()}" + (f" (git {rev})" if rev else "")


class HelpFormatter(argparse.HelpFormatter):
    """Every cgpt --help: text laid out in lines (an Examples: block, a table) is kept as
    written, a one-line description is wrapped; an option's default is shown where the help
    does not say it already, never a "(default: None)" of a required or unset option."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip("\n"):  # as argparse.RawDescriptionHelpFormatter
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))

    def _split_lines(self, text: str, width: int) -> list[str]:
        # as argparse's, without breaking "Cerebras-GPT" or "--max-steps" at a hyphen
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        quiet = default is None or isinstance(default, bool) or default in ("", [], ())
        if (
            quiet
            or default is argparse.SUPPRESS
            or action.required
            or "default" in text.lower()
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return action.help
        return f"{text} (default: %(default)s)".lstrip()


def command_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command path, parser) of every verb and sub-verb, depth first: ("sweep",), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from command_parsers(sub, (*prefix, name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgpt",
        description="Compute-optimal GPT pretraining: plan, prepare, train, sweep, export.",
        epilog=examples_block(
            [
                "cgpt configs                     the shipped configs, usable by name",
                "cgpt plan 111M                   the published 111M recipe",
                "cgpt demo                        the whole pipeline on this CPU",
                "cgpt plan --help                 a verb's options and examples",
            ]
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    for path, p in command_parsers(parser):
        p.formatter_class = HelpFormatter
        if "examples:" not in f"{p.epilog or ''}".lower() and " ".join(path) in EXAMPLES:
            block = examples_block(EXAMPLES[" ".join(path)])
            p.epilog = f"{p.epilog.rstrip()}\n\n{block}" if p.epilog else block
    return parser


# `cgpt plan ... | head -1`: the reader left; 128 + SIGPIPE, what a program that the signal
# ends (the default for C tools such as `yes | head -1`) reports, so `set -o pipefail` sees
# the same as for them
CLOSED_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:  # also after --help/--version (SystemExit): a closed pipe shows here, where
            sys.stdout.flush()  # we catch it, not in the interpreter's last flush
    except BrokenPipeError:
        # the recipe of Python's signal docs ("Note on SIGPIPE"): point stdout at devnull so
        # the interpreter's own flush at exit cannot fail again, then exit quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return CLOSED_PIPE
    except KeyboardInterrupt:  # Ctrl-C while torch/DeepSpeed load: one line, not a traceback
        print("cgpt: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CgptError as e:
        print(f"cgpt {args.command}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))  # cgpt.train.exit_codes; 2: bad input
    except KeyboardInterrupt:
        print(f"cgpt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
