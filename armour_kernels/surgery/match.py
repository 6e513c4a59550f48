"""Recognising the modules a conversion applies to: exact classes named "package.module:Class".

One matcher for every conversion (patch's converters, armourize's attention rewrite): a class is
named, not imported, so the table can list timm's classes without importing timm, and a package
that is not installed simply contributes no class. Matching is by exact type — a subclass may
compute something else, so it is never taken for its base.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


class ClassTable:
    """Exact classes (by name) → a value, resolved on the first lookup."""

    def __init__(self):
        self._named: dict[str, Any] = {}
        self._by_type: dict[type, Any] | None = None

    def add(self, names: tuple[str, ...], value: Any) -> None:
        for name in names:
            if ":" not in name:
                raise ValueError(f"class names are 'package.module:Class', got {name!r}")
            self._named[name] = value
        self._by_type = None

    def _resolve(self) -> dict[type, Any]:
        table = {}
        for name, value in self._named.items():
            module_name, class_name = name.split(":")
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError):  # not installed here: nothing of it to recognise
                continue
            table[cls] = value
        return table

    def get(self, module: object) -> Any:
        """The value registered for module's exact class, else None."""
        if self._by_type is None:
            self._by_type = self._resolve()
        return self._by_type.get(type(module))

    def register(self, *names: str) -> Callable:
        """Decorator: `@table.register("timm.models.levit:Attention", ...)` stores the decorated function."""
        def decorate(fn):
            self.add(names, fn)
            return fn
        return decorate


__all__ = ["ClassTable"]
