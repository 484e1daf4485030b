"""Tests of the scripts in ``scripts/``."""

from __future__ import annotations

from types import ModuleType

from tests.modules import REPO, load_module


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package)."""
    return load_module(REPO / "scripts" / f"{name}.py")
