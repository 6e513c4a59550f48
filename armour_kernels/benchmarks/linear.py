"""`armour-bench linear`: see linear_attention.py (the subcommand name is the module name)."""
from .linear_attention import add_arguments, run

__all__ = ["add_arguments", "run"]
