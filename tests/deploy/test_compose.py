"""docker-compose.yml, its CPU override and .env.example: services, health, GPUs, settings.

The assertions check that the pieces agree with each other and with the code that reads them
(the ``ctvis`` parser, ``Settings``, the health probe, nginx and Prometheus), not that a value
is the one written in the file.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import ValidationError

from cli.main import build_parser
from service.settings import Settings
from tests.deploy.conftest import (
    DEPLOY,
    REPO,
    ComposeLoader,
    is_subcommand,
    load_yaml,
    setting_env_names,
)
from tests.modules import load_module

INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")
healthcheck = load_module(DEPLOY / "healthcheck.py")


class _Reset:
    """A ``!reset`` value: Compose drops the key from the merged file."""


class _ResetLoader(ComposeLoader):
    pass


_ResetLoader.add_constructor("!reset", lambda loader, node: _Reset())


def _merge(base: Any, override: Any) -> Any:
    """``docker compose -f base -f override`` for what these files use: mappings merge,
    other values replace, ``!reset`` removes."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, _Reset):
            merged.pop(key, None)
        else:
            merged[key] = _merge(base.get(key), value)
    return merged


def _default(value: Any) -> str:
    """``value`` as Compose runs it with an empty ``.env``: every ``${VAR:-x}`` becomes x."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def _args(service: dict[str, Any]) -> argparse.Namespace:
    """The service's command, parsed by the ``ctvis`` parser (the image's entry point)."""
    assert is_subcommand(service["command"]), service["command"]
    return build_parser().parse_args(service["command"])


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) of the service's short-syntax volumes (defaults)."""
    out = {}
    for volume in service["volumes"]:
        source, target, *mode = _default(volume).split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(REPO / "docker-compose.yml")


@pytest.fixture(scope="module")
def nginx() -> str:
    return (DEPLOY / "nginx.conf").read_text()


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    pairs = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def test_services_and_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "api", "worker", "lb", "prometheus"} <= set(services)
    api, worker = _args(services["api"]), _args(services["worker"])
    # API replicas hand frames to the workers through Redis; the workers export metrics.
    assert api.command == "serve" and api.no_worker
    assert worker.command == "worker" and worker.metrics_port > 0
    for name in ("api", "worker"):
        service = services[name]
        assert service["image"] == services["api"]["image"]  # one image, two roles
        mounts = _mounts(service)
        assert mounts["/checkpoints"][1] == "ro", name  # checkpoints are mounted, read-only
        # Video jobs: every API replica and worker sees the same named volume at CTVIS_JOB_DIR.
        job_source, _ = mounts[service["environment"]["CTVIS_JOB_DIR"]]
        assert job_source in compose["volumes"], name
    assert (
        _mounts(services["api"])[services["api"]["environment"]["CTVIS_JOB_DIR"]]
        == _mounts(services["worker"])[services["worker"]["environment"]["CTVIS_JOB_DIR"]]
    )
    # Prometheus is optional: only with a profile, and nothing waits for it.
    assert services["prometheus"].get("profiles")
    assert all("prometheus" not in s.get("depends_on", {}) for s in services.values())
    # Replicas cannot share a host port: the API is reached through the load balancer only.
    assert "replicas" in services["api"]["deploy"] and "ports" not in services["api"]
    assert services["lb"]["ports"]


def test_every_service_has_a_healthcheck_and_waits_for_health(
    compose: dict[str, Any], nginx: str, tmp_path: Path
) -> None:
    services = compose["services"]
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services
            assert condition == {"condition": "service_healthy"}, name
    # The probe is told the role the container runs; it is the role it would detect itself.
    for name in ("api", "worker"):
        cmdline = tmp_path / f"{name}.cmdline"
        cmdline.write_bytes(
            b"\0".join(arg.encode() for arg in ["ctvis", *services[name]["command"]])
        )
        assert services[name]["healthcheck"]["test"][-1] == healthcheck.detect_role(cmdline)
    # Every service waits for the services it connects to.
    for name in ("api", "worker"):
        redis_host = urlsplit(services[name]["environment"]["CTVIS_REDIS_URL"]).hostname
        assert redis_host in services[name]["depends_on"], name
    upstreams = {host for host, _ in re.findall(r"server (\S+):(\d+);", nginx)}
    assert upstreams and upstreams <= set(services["lb"]["depends_on"])


def test_worker_reserves_gpus(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    count = int(_default(device["count"]))
    assert count >= 1
    # By default the worker runs on one of the GPUs it reserves.
    torch_device = Settings(device=_default(worker["environment"]["CTVIS_DEVICE"])).device
    kind, _, index = torch_device.partition(":")
    assert kind == "cuda" and int(index or 0) < count


def test_redis_persistence_and_eviction(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    args = redis_service["command"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    # Job queue and records survive a restart: append-only file in /data, a named volume.
    assert flags["--appendonly"] == "yes" and "--dir" not in flags
    source, mode = _mounts(redis_service)["/data"]
    assert source in compose["volumes"] and mode == "rw"
    # A memory limit, and eviction only of keys with a TTL (never of keys the service keeps).
    assert _default(flags["--maxmemory"]) and flags["--maxmemory-policy"].startswith("volatile-")


def test_environment_names_are_settings(compose: dict[str, Any]) -> None:
    valid = setting_env_names()
    services = compose["services"]
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        assert set(environment) <= valid, set(environment) - valid
        # The Redis URL is valid for Settings and names the compose service `redis`.
        url = Settings(redis_url=environment["CTVIS_REDIS_URL"]).redis_url
        assert url is not None and urlsplit(url).hostname in services
    # The api and workers share the settings that decide the model id and the stream.
    shared = compose["x-ctvis-shared-env"]
    for name in ("api", "worker"):
        assert shared.items() <= services[name]["environment"].items()


def test_env_example_documents_every_variable(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    text += (DEPLOY / "compose.cpu.yml").read_text()
    used = {m.group(1): m.group(2) for m in INTERPOLATION.finditer(text)}
    assert set(used) == set(env_example), set(used) ^ set(env_example)
    for name, default in used.items():
        if default is not None:
            assert env_example[name] == default, name


def test_env_example_settings_have_the_settings_defaults(env_example: dict[str, str]) -> None:
    valid = setting_env_names()
    for name, value in env_example.items():
        if not name.startswith("CTVIS_"):
            continue
        assert name in valid, f"{name} is not read by Settings"
        field = name.removeprefix("CTVIS_").lower()
        try:
            parsed = getattr(Settings(**{field: value}), field)
        except ValidationError as exc:  # pragma: no cover - shown on failure
            raise AssertionError(f"{name}={value!r}: {exc}") from exc
        assert (parsed or None) == Settings.model_fields[field].default, name


# Settings that docker-compose.yml fixes instead of reading from .env, and why.
NOT_IN_ENV_FILE = {
    "CTVIS_HOST": "the API binds 0.0.0.0 inside its container",
    "CTVIS_PORT": "8000 inside the container; PUBLISH_PORT picks the host port",
    "CTVIS_REDIS_URL": "the compose service `redis`",
    "CTVIS_DEVICE": "per role: API_DEVICE and WORKER_DEVICE",
    "CTVIS_WORKER": "set by the commands (`serve --no-worker`, `worker`)",
    "CTVIS_MAX_WAIT_MS": "batching happens in the workers, which read until max_batch_size",
    "CTVIS_JOB_DIR": "the shared volume `jobs`, mounted at /var/lib/ctvis/jobs",
}


def test_every_setting_is_configurable(env_example: dict[str, str]) -> None:
    missing = setting_env_names() - set(env_example) - set(NOT_IN_ENV_FILE)
    assert not missing, f"add to .env.example and docker-compose.yml: {sorted(missing)}"
    assert set(NOT_IN_ENV_FILE) <= setting_env_names()


def test_cpu_override(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "compose.cpu.yml").read_text()
    override = yaml.load(text, Loader=_ResetLoader)
    assert set(override["services"]) <= set(compose["services"])
    merged = _merge(compose, override)["services"]
    # With the override: the CPU image for both roles, workers on the CPU, no GPU reserved.
    assert (
        merged["api"]["image"] == merged["worker"]["image"] != compose["services"]["api"]["image"]
    )
    for name in ("api", "worker"):
        assert _default(merged[name]["build"]["args"]["VARIANT"]) == "cpu", name
    assert (
        Settings(device=_default(merged["worker"]["environment"]["CTVIS_DEVICE"])).device == "cpu"
    )
    assert "resources" not in merged["worker"]["deploy"]
    assert (
        merged["worker"]["deploy"]["replicas"]
        == compose["services"]["worker"]["deploy"]["replicas"]
    )


def test_nginx_and_prometheus_configs(compose: dict[str, Any], nginx: str) -> None:
    services = compose["services"]
    api_port = services["api"]["environment"]["CTVIS_PORT"]
    metrics_port = _args(services["worker"]).metrics_port
    # nginx: balances over the API replicas on the port they listen on, and listens on the
    # port the lb service publishes.
    upstreams = re.findall(r"server (\S+):(\d+);", nginx)
    assert upstreams == [("api", api_port)] and api_port in services["api"]["expose"]
    (listen,) = re.findall(r"listen (\d+);", nginx)
    assert [port.rsplit(":", 1)[1] for port in services["lb"]["ports"]] == [listen]
    # WebSocket streams and server-sent events pass through.
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx and "proxy_buffering off;" in nginx
    # Prometheus scrapes every API replica and worker where they serve /metrics.
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        job["dns_sd_configs"][0]["names"][0]: str(job["dns_sd_configs"][0]["port"])
        for job in prometheus["scrape_configs"]
    }
    assert targets == {"api": api_port, "worker": str(metrics_port)}
    assert str(metrics_port) in services["worker"]["expose"]
    mounts = services["prometheus"]["volumes"] + services["lb"]["volumes"]
    for mount in mounts:
        assert (REPO / mount.split(":")[0]).is_file(), mount
