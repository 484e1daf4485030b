"""The compose Redis Cluster profile: its file, and its init script run against real nodes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.modules import REPO, load_module

_cluster = load_module(REPO / "bench" / "_cluster.py", "ctvis_bench_cluster")

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "deploy" / "compose.redis-cluster.yml"
INIT = ROOT / "deploy" / "redis-cluster-init.sh"


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return yaml.safe_load(OVERRIDE.read_text())


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_six_cluster_nodes_each_announcing_its_own_name(override: dict[str, Any]) -> None:
    nodes = {k: v for k, v in override["services"].items() if k.startswith("redis-node-")}
    assert len(nodes) == 6
    volumes = set()
    for name, service in nodes.items():
        command = service["command"]
        assert _flag(command, "--cluster-enabled") == "yes"
        assert _flag(command, "--cluster-announce-hostname") == name
        assert _flag(command, "--appendonly") == "yes"
        assert "healthcheck" in service
        volumes.add(service["volumes"][0].split(":")[0])
    assert len(volumes) == 6  # no two nodes share a data volume
    assert set(volumes) <= set(override["volumes"])


def test_init_forms_the_cluster_of_the_defined_nodes_for_api_and_workers(
    override: dict[str, Any],
) -> None:
    services = override["services"]
    init = services["redis-cluster-init"]
    named = set(init["environment"]["CLUSTER_NODES"].split())
    assert named == {k for k in services if k.startswith("redis-node-")}
    assert set(init["depends_on"]) == named
    for role in ("api", "worker"):
        env = services[role]["environment"]
        host = env["CTVIS_REDIS_URL"].split("//")[1].split(":")[0]
        assert host in named and env["CTVIS_REDIS_MODE"] == "cluster"
        # one frames / jobs shard per primary (6 nodes, 1 replica each)
        primaries = len(named) // (1 + int(init["environment"]["CLUSTER_REPLICAS"]))
        assert int(env["CTVIS_STREAM_SHARDS"]) == primaries
        # started with the nodes (the init exits; podman-compose cannot order after it)
        assert services[role]["depends_on"][host]["condition"] == "service_healthy"
    mount = init["volumes"][0].split(":")
    assert (ROOT / mount[0]).resolve() == INIT


def _roles(port: int, timeout_s: float = 15.0) -> dict[str, int]:
    """Primaries and replicas in the node table (replicas attach a moment after the create)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with redis.Redis(port=port) as client:
            table = client.execute_command("CLUSTER", "NODES").decode().splitlines()
        flags = [line.split()[2].split(",") for line in table]
        roles = {role: sum(role in f for f in flags) for role in ("master", "slave")}
        if roles == {"master": 3, "slave": 3} or time.monotonic() > deadline:
            return roles
        time.sleep(0.2)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_init_script_forms_a_cluster_and_leaves_a_formed_one_alone(tmp_path: Path) -> None:
    ports: list[int] = []
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for _ in range(6):
            port = _cluster._free_cluster_port()
            ports.append(port)
            args = ["--port", str(port), "--cluster-enabled", "yes", "--save", ""]
            args += [
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "2000",
            ]
            procs[port] = _cluster._spawn_redis(port, args, tmp_path)
        env = {
            **os.environ,
            "CLUSTER_NODES": " ".join(f"127.0.0.1:{p}" for p in ports),
            "CLUSTER_REPLICAS": "1",
        }
        first = subprocess.run(
            ["sh", str(INIT)], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert first.returncode == 0, first.stdout + first.stderr
        assert "cluster formed" in first.stdout
        info = _cluster._cluster_info(ports[0])
        assert info["cluster_state"] == "ok" and int(info["cluster_size"]) == 3
        assert _roles(ports[0]) == {"master": 3, "slave": 3}
        again = subprocess.run(
            ["sh", str(INIT)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert again.returncode == 0 and "already formed" in again.stdout
    finally:
        _cluster._stop_all(procs)
