"""Import a repository script (``scripts/``, ``bench/``, ``deploy/``) as a module in a test.

The scripts are files, not packages, so tests load them by path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """Execute the Python file ``path`` as a fresh module named ``name`` (default: its stem).

    The module is registered in ``sys.modules`` while it runs, so dataclasses and pickling
    inside it can find it.
    """
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
