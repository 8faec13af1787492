"""Lazy public names for a package's ``__init__``: import the defining module on first use.

A curated ``__init__`` lists its public names in ``__all__`` and maps each to the module that defines
it; ``lazy_exports`` builds the module-level ``__getattr__`` (PEP 562) that imports that module the
first time the name is read. Importing a package therefore imports none of its modules: ``edgereg
--help`` starts fast, and a module may import a sibling through its full name without running the
package's other modules first (no import cycle through an ``__init__``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: ``names`` maps a public name to its module's dotted name."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
