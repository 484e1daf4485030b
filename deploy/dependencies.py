"""Print the requirements of the project and some of its extras, one a line, from pyproject.toml.

    python deploy/dependencies.py pyproject.toml onnx          # dependencies + extra "onnx"
    python deploy/dependencies.py pyproject.toml gpu,train     # extras separated by commas

The Dockerfile installs these before it copies the sources, so that the dependency layer of the
image is rebuilt only when pyproject.toml changes (the project itself is then installed with
``pip install --no-deps .``). Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """``project.dependencies`` followed by every requirement of ``extras``.

    Raises:
        KeyError: if an extra is not declared in ``project.optional-dependencies``.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    found = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise KeyError(f"{pyproject}: no extra {extra!r} (declared: {sorted(optional)})")
        found += [r for r in optional[extra] if r not in found]
    return found


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: dependencies.py PYPROJECT [EXTRA[,EXTRA...]]", file=sys.stderr)
        return 2
    extras = [e.strip() for e in argv[1].split(",") if e.strip()] if len(argv) == 2 else []
    try:
        print("\n".join(requirements(Path(argv[0]), extras)))
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
