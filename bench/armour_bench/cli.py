"""The `armour-bench` command: thin dispatch to armour_bench.<subcommand>.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. With no
subcommand (`armour-bench`, `armour-bench --quick`) the main job runs (main.py).
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "main": "the main job (also with no subcommand): kernel checks, then DeiT / LeViT vs Armour throughput",
    "tables": "parameter counts of the python_ref models next to the papers' tables",
    "kernels": "attention kernels vs PyTorch SDPA and python_ref: forward and forward+backward",
    "models": "LeViT / DeiT-Ti / ViX inference and training throughput: eager / reparam / compile vs patched",
    "linear_attention": "Nystrom / Performer fused ops vs python_ref and exact SDPA: time, memory, crossover n",
    "linear_act": "CPU Linear + bias + Hardswish op vs F.hardswish(F.linear): LeViT MLP shapes",
    "cubin": "offline: every Triton kernel compiled for an H100 (no GPU needed): registers, spills, shared memory",
    "ab": "one CPU-kernel switch (e.g. the bf16 AMX dense task kernel) on and off in whole served models",
    "summary": "SUMMARY.md of a results folder: headline ratios vs every peer, targets met or not",
    "export": "an AOTInductor package (.pt2) of a timm model, optimized (folded, fused, cast), ready to serve",
}


def _module(name: str):
    return importlib.import_module(f"armour_bench.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="armour-bench", description="armour_kernels benchmarks and paper tables")
    sub = parser.add_subparsers(dest="command")
    for name, help_text in SUBCOMMANDS.items():
        _module(name).add_arguments(sub.add_parser(name, help=help_text))
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["main"] + argv  # no subcommand: the main job, with its flags
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # what the reports record as the command
    return _module(args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
