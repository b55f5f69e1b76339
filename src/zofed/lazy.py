"""A library imported on its first use, not when the module naming it is imported.

`zofed list` and `zofed config show` read the method registry (names, descriptions, settings
classes), which lives in the methods' own modules next to their round code; that code uses torch,
but only when a round runs. A module on the registry's import path therefore writes

    torch = lazy_import("torch")

instead of `import torch`, and its code reads as before: `torch.zeros(...)` imports torch on its
first call (once per process; each name is looked up once, then kept). Only attribute access triggers
the import, so such a module must not touch torch at import time (no `@torch.no_grad()` decorator,
no torch value in a module-level constant); tests/test_cli.py checks that `zofed list` imports
neither torch nor transformers, peft, flwr or datasets.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any


class LazyModule(types.ModuleType):
    """Stands in for module `name`: the first attribute read imports it, and each name read is kept.

    It never enters `sys.modules`, so `import torch` elsewhere is unaffected and `"torch" in
    sys.modules` still says whether torch has really been imported.
    """

    def __init__(self, name: str, on_load: Callable[[types.ModuleType], None] | None = None) -> None:
        super().__init__(name)
        self.__dict__["_on_load"] = on_load

    def _module(self) -> types.ModuleType:
        module = self.__dict__.get("_loaded")
        if module is None:
            module = importlib.import_module(self.__name__)
            if self._on_load is not None:
                self._on_load(module)
            self.__dict__["_loaded"] = module
        return module

    def __getattr__(self, attribute: str) -> Any:
        # Reached only for a name not yet on the stand-in: read it from the module once and keep it,
        # so the next read is an ordinary attribute hit (round code reads torch.* in its loops).
        value = getattr(self._module(), attribute)
        self.__dict__[attribute] = value
        return value

    def __repr__(self) -> str:
        state = "imported" if "_loaded" in self.__dict__ else "not imported yet"
        return f"<lazy module '{self.__name__}' ({state})>"


def lazy_import(name: str, on_load: Callable[[types.ModuleType], None] | None = None) -> Any:
    """Module `name`, imported when one of its attributes is first read; `on_load(module)` runs then, once."""
    return LazyModule(name, on_load)
