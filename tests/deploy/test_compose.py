"""docker-compose.yml, its CPU override and .env.example: services, health, GPUs, settings."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.deploy.conftest import DEPLOY, REPO, is_subcommand, load_yaml, setting_env_names

INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(REPO / "docker-compose.yml")


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
    assert services["api"]["command"] == ["serve", "--no-worker"]
    assert services["worker"]["command"] == ["worker", "--metrics-port", "9100"]
    for name in ("api", "worker"):
        assert is_subcommand(services[name]["command"]), name
        assert services[name]["image"] == services["api"]["image"]  # one image, two roles
        assert any(v.endswith(":/checkpoints:ro") for v in services[name]["volumes"])
        # Video jobs: one volume for every API replica and worker, at CTVIS_JOB_DIR.
        assert "jobs:/var/lib/ctvis/jobs" in services[name]["volumes"]
        assert services[name]["environment"]["CTVIS_JOB_DIR"] == "/var/lib/ctvis/jobs"
    assert "jobs" in compose["volumes"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert "replicas" in services["api"]["deploy"] and "ports" not in services["api"]
    assert any(p.endswith(":8080") for p in services["lb"]["ports"])


def test_every_service_has_a_healthcheck_and_waits_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services
            assert condition == {"condition": "service_healthy"}, name
    assert services["api"]["healthcheck"]["test"][-1] == "api"
    assert services["worker"]["healthcheck"]["test"][-1] == "worker"
    assert services["api"]["depends_on"].keys() == {"redis"}
    assert services["lb"]["depends_on"].keys() == {"api"}


def test_worker_reserves_gpus(compose: dict[str, Any]) -> None:
    (device,) = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == "${WORKER_GPU_COUNT:-1}"
    assert compose["services"]["worker"]["environment"]["CTVIS_DEVICE"].endswith("cuda:0}")


def test_redis_persistence_and_eviction(compose: dict[str, Any]) -> None:
    args = compose["services"]["redis"]["command"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "everysec"
    assert flags["--save"] == "" and flags["--maxmemory-policy"] == "volatile-lru"
    assert "redis-data:/data" in compose["services"]["redis"]["volumes"]
    assert "redis-data" in compose["volumes"]


def test_environment_names_are_settings(compose: dict[str, Any]) -> None:
    valid = setting_env_names()
    for name in ("api", "worker"):
        environment = compose["services"][name]["environment"]
        assert set(environment) <= valid, set(environment) - valid
        assert environment["CTVIS_REDIS_URL"] == "redis://redis:6379/0"
    # The api and workers share the settings that decide the model id and the stream.
    shared = compose["x-ctvis-shared-env"]
    for name in ("api", "worker"):
        assert shared.items() <= compose["services"][name]["environment"].items()


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
    "CTVIS_FAULT_INJECT": "testing only",
}


def test_every_setting_is_configurable(env_example: dict[str, str]) -> None:
    missing = setting_env_names() - set(env_example) - set(NOT_IN_ENV_FILE)
    assert not missing, f"add to .env.example and docker-compose.yml: {sorted(missing)}"
    assert set(NOT_IN_ENV_FILE) <= setting_env_names()


def test_cpu_override(compose: dict[str, Any]) -> None:
    override = load_yaml(DEPLOY / "compose.cpu.yml")["services"]
    assert set(override) <= set(compose["services"])
    assert override["worker"]["environment"] == {"CTVIS_DEVICE": "cpu"}
    assert override["worker"]["build"]["args"]["VARIANT"] == "cpu"
    assert "resources" in override["worker"]["deploy"]  # !reset drops the GPU reservation
    assert "resources: !reset" in (DEPLOY / "compose.cpu.yml").read_text()


def test_nginx_and_prometheus_configs(compose: dict[str, Any]) -> None:
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "server api:8000;" in nginx and "least_conn;" in nginx
    assert "listen 8080;" in nginx and "proxy_set_header Upgrade $http_upgrade;" in nginx
    assert "proxy_buffering off;" in nginx  # server-sent events
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        job["dns_sd_configs"][0]["names"][0]: job["dns_sd_configs"][0]["port"]
        for job in prometheus["scrape_configs"]
    }
    assert targets == {"api": 8000, "worker": 9100}  # worker: --metrics-port 9100
    assert "9100" in compose["services"]["worker"]["expose"]
    mounts = compose["services"]["prometheus"]["volumes"] + compose["services"]["lb"]["volumes"]
    for mount in mounts:
        assert (REPO / mount.split(":")[0]).is_file(), mount
