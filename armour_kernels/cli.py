"""The `armour-bench` command: thin dispatch to armour_kernels.benchmarks.<subcommand>.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "tables": "parameter counts of the python_ref models next to the papers' tables",
    "kernels": "attention kernels vs PyTorch SDPA and python_ref: forward and forward+backward",
    "models": "LeViT / DeiT-Ti inference and training throughput: timm eager / reparam / compile vs patched",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="armour-bench", description="armour_kernels benchmarks and paper tables")
    sub = parser.add_subparsers(dest="command")
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"armour_kernels.benchmarks.{name}")
        module.add_arguments(sub.add_parser(name, help=help_text))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "tables"
    if args.command is None:
        args = parser.parse_args([command] + list(argv or sys.argv[1:]))
    module = importlib.import_module(f"armour_kernels.benchmarks.{command}")
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
