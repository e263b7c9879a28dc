"""`loraplane <command>`: one entry point for every component.

Each component owns its sub-command in `<component>/cli.py` with two functions:
`configure(parser)` adds its flags, and `run(args) -> int` starts it. They are imported only when
their command runs, so `loraplane operator` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Commands that serve tenants' data: what they write (checkpoints, records) is readable by the
#: service's own user only.
SERVERS = frozenset({"serve", "gateway", "operator", "runtime"})
#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("loraplane.singlenode.cli", "gateway + runtime + embedded control plane in one process (no Kubernetes)"),
    "gateway": ("loraplane.api.cli", "the Tinker-protocol gateway (Kubernetes mode)"),
    "operator": ("loraplane.operator.cli", "the Kopf operator that schedules and follows LoRAJobs"),
    "runtime": ("loraplane.runtime.cli", "the GPU runtime: one base model, many LoRA adapters"),
    "demo": ("loraplane.singlenode.demo", "fine-tune a small real model through the Tinker SDK, end to end"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraplane", description="Multi-tenant LoRA fine-tuning, Tinker API.")
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
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints usage and exits for unknown commands or --help/--version
        return 2
    command, rest = argv[0], argv[1:]
    if command in SERVERS:
        os.umask(0o077)
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"loraplane {command}", description=COMMANDS[command][1])
    module.configure(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


def _version() -> str:
    from loraplane import __version__

    return __version__
