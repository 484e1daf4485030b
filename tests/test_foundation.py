"""Packaging, the import rule and the ``ctvis`` dispatcher."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import NOT_IMPLEMENTED_EXIT, SUBCOMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[1]

# package -> top-level packages it must never import
FORBIDDEN = {
    "model": {"service", "training", "cli", "fastapi", "pydantic", "redis", "starlette"},
    "service": {"training", "cli"},
    "training": {"service", "cli", "fastapi", "redis", "starlette"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = _imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_import_linter_contracts_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip()


def test_unimplemented_subcommand_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    import cli.main as cli_main

    monkeypatch.setitem(cli_main.SUBCOMMANDS, "not-a-command-yet", "placeholder")
    assert main(["not-a-command-yet"]) == NOT_IMPLEMENTED_EXIT


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == NOT_IMPLEMENTED_EXIT
    assert "usage" in capsys.readouterr().out


def test_console_script_installed() -> None:
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "serve" in proc.stdout
    assert build_parser().prog == "ctvis"


def test_cpu_install_path_pins_cpu_torch() -> None:
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "torch==2.13.0" in setup
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
