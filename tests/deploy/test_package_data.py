"""The package data declared in pyproject.toml covers the files the installed package needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> dict[str, list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["package-data"]


def test_every_pattern_matches_files() -> None:
    for package, patterns in _declared().items():
        for pattern in patterns:
            assert list((ROOT / package).glob(pattern)), f"{package}/{pattern} matches nothing"


def test_demo_checkpoint_and_page_are_shipped() -> None:
    declared = _declared()
    shipped = {
        path.relative_to(ROOT).as_posix()
        for package, patterns in declared.items()
        for pattern in patterns
        for path in (ROOT / package).glob(pattern)
    }
    assert {"model/demo/config.json", "model/demo/model.safetensors"} <= shipped
    page = {p.relative_to(ROOT).as_posix() for p in (ROOT / "service/static").iterdir()}
    assert page <= shipped, page - shipped
