"""`loraplane <command>`: one entry point for every component.

Each component owns its sub-command in `<component>/cli.py` with two functions:
`configure(parser)` adds its flags, and `run(args) -> int` starts it. They are imported only when
their command runs, so `loraplane operator` never imports torch.

Design notes
============
A mistake on the command line or in the configuration is answered with one line on stderr that
names the problem and what to do, and exit code 2; the traceback is shown only with `--debug`.
Components say "this is the user's mistake" by raising `loraplane.core.errors.UserError` (or by
returning 2 after printing their line); anything else that escapes is a fault of ours, reported in
one line with exit code 1. Ctrl-C stops a command quietly with the shell's code for SIGINT (130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

#: Commands that serve tenants' data: what they write (checkpoints, records) is readable by the
#: service's own user only.
SERVERS = frozenset({"serve", "gateway", "operator", "runtime"})
#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("loraplane.singlenode.cli", "gateway + runtime + embedded control plane in one process (no Kubernetes)"),
    "gateway": ("loraplane.api.cli", "the Tinker-protocol gateway (Kubernetes mode)"),
    "operator": ("loraplane.operator.cli", "the Kopf operator that schedules and follows LoRAJobs"),
    "runtime": ("loraplane.runtime.cli", "the GPU runtime: one base model, many LoRA adapters"),
    "jobs": ("loraplane.jobsctl.cli", "apply, get, describe and delete LoRAJobs on a running `loraplane serve`"),
    "demo": ("loraplane.singlenode.demo", "fine-tune a small real model through the Tinker SDK, end to end"),
}

#: exit code of a usage or configuration mistake (as argparse uses), and of Ctrl-C (128 + SIGINT)
USAGE_ERROR, INTERRUPTED = 2, 130


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line that points at `--help`, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def port(value: str) -> int:
    """argparse type of a TCP port: 0 (any free port) to 65535. Pure; used by every command's --port."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number; use 0-65535") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{number} is not a port; use 1-65535 (0 = any free port)")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="loraplane", description="Multi-tenant LoRA fine-tuning, Tinker API.")
    parser.add_argument("--version", action="version", version=f"loraplane {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if not argv:
            parser.print_help(sys.stderr)
            return USAGE_ERROR
        parser.parse_args(argv)  # prints usage and exits for unknown commands or --help/--version
        return USAGE_ERROR
    command, rest = argv[0], argv[1:]
    if command in SERVERS:
        os.umask(0o077)
    prog = f"loraplane {command}"
    module = importlib.import_module(COMMANDS[command][0])
    parser = OneLineParser(prog=prog, description=COMMANDS[command][1])
    module.configure(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(rest)
    return run_command(prog, module.run, args)


def run_command(prog: str, run: object, args: argparse.Namespace) -> int:
    """Run a component's `run(args)`, turning what escapes it into one line and an exit code."""
    from loraplane.core import errors

    try:
        return int(run(args) or 0)  # type: ignore[operator]
    except KeyboardInterrupt:
        print(f"{prog}: stopped (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
    except errors.UserError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return USAGE_ERROR
    except errors.LoraplaneError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: {exc.message} (run again with --debug for the traceback)", file=sys.stderr)
        return 1
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        return 1


def _version() -> str:
    from loraplane import __version__

    return __version__
