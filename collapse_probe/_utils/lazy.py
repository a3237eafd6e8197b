"""Lazy package exports (PEP 562): a package's public names are imported on first use.

``import collapse_probe`` (or a light module such as ``collapse_probe.errors``) then costs
milliseconds instead of importing torch, which keeps ``collapse-probe --help`` fast.

>>> import sys
>>> getter = lazy_exports(__name__, {"sqrt": "math"})
>>> getter("sqrt")(9.0)
3.0
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) and returns its ``name``.

    A value of ``""`` means ``name`` is a submodule of ``package``. The value is cached in the
    package's namespace, so each name is resolved once.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name] or f"{package}.{name}")
        value = module if not exports[name] else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
