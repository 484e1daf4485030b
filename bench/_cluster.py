"""A Redis Cluster on loopback for tests and benchmarks: primaries and replicas of redis-server."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis


def _free_cluster_port() -> int:
    """A free port p < 55536 whose cluster bus port p + 10000 is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _ask(port: int, command: str, *args: str) -> Any:
    """One command to the Redis on ``port``, on a connection closed right after."""
    with redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=5) as client:
        return client.execute_command(command, *args)


def _info(port: int, section: str) -> dict[str, Any]:
    with redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=5) as client:
        return dict(client.info(section))


def _cluster_info(port: int) -> dict[str, Any]:
    with redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=5) as client:
        return dict(client.cluster("info"))


def _spawn_redis(port: int, args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    """Start ``redis-server args`` in ``workdir/<port>`` and wait until it answers PING."""
    node_dir = workdir / str(port)
    node_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", *args], cwd=node_dir,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20  # a loaded 2-core machine can take seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _ask(port, "PING"):
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    code = proc.poll()
    proc.kill()
    proc.wait()
    why = f"exited with {code} (port taken?)" if code is not None else "did not answer in 20 s"
    raise RuntimeError(f"redis process on {port} {why}")


def _stop_all(procs: dict[int, subprocess.Popen[bytes]]) -> None:
    """Terminate every process, killing those that do not exit within 10 s."""
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class _RedisProcesses:
    """Redis processes by port, all stopped when the ``with`` block ends."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _stop_all(self.procs)


class LocalCluster(_RedisProcesses):
    """``redis-server --cluster-enabled yes`` nodes joined by ``redis-cli --cluster create``.

    ``url`` names the first node (the service needs only one); ``procs`` maps port -> process.
    """

    def __init__(self, workdir: Path, primaries: int = 3, replicas: int = 1) -> None:
        super().__init__()
        self.workdir = workdir
        self.ports = [_free_cluster_port() for _ in range(primaries * (1 + replicas))]
        self.replicas = replicas
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        """Start one cluster-enabled node on ``port``."""
        self.procs[port] = _spawn_redis(
            port,
            ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
             "--save", "", "--appendonly", "no"],
            self.workdir,
        )  # fmt: skip

    def __enter__(self) -> LocalCluster:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is needed to create a cluster")
        for port in self.ports:
            self.start_node(port)
        if len(self.ports) == 1:  # redis-cli refuses fewer than 3 primaries: assign by hand
            subprocess.run(
                ["redis-cli", "-p", str(self.ports[0]), "cluster", "addslotsrange", "0", "16383"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
            return self._wait_state_ok()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return self._wait_state_ok()

    def _wait_state_ok(self) -> LocalCluster:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [_cluster_info(p) for p in self.ports]
            if all(s.get("cluster_state") == "ok" for s in states):
                return self
            time.sleep(0.2)
        raise RuntimeError("the cluster did not reach state ok")

    def primaries(self) -> list[int]:
        """Ports of the live nodes that are primaries now."""
        out = []
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            try:
                if _info(port, "replication").get("role") == "master":
                    out.append(port)
            except redis.ConnectionError:
                continue
        return out

    def kill_primary(self) -> int:
        """SIGKILL one primary other than the node ``url`` names; returns its port."""
        victim = next(p for p in self.primaries() if p != self.ports[0])
        self.procs[victim].kill()
        self.procs[victim].wait(timeout=10)
        return victim

    def wait_ok(self, timeout_s: float = 30) -> float:
        """Seconds until every live node says ``cluster_state:ok`` again."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            states = []
            for port, proc in self.procs.items():
                if proc.poll() is None:
                    states.append(_cluster_info(port).get("cluster_state"))
            if states and all(s == "ok" for s in states):
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError("the cluster did not recover")

    def all_keys(self) -> dict[str, int]:
        """Every key on every primary with its PTTL (ms; -1 means no TTL)."""
        out: dict[str, int] = {}
        for port in self.primaries():
            with redis.Redis(port=port) as client:
                for key in client.scan_iter("*"):
                    out[key.decode()] = int(client.pttl(key))
        return out


class LocalSentinel(_RedisProcesses):
    """One primary, one replica and three Sentinels on loopback (quorum 2, 1 s down-after).

    ``url`` is the service's ``redis+sentinel://`` URL; ``kill_primary`` SIGKILLs the current
    primary so the Sentinels promote the replica.
    """

    SERVICE = "ctvis"

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir
        self.data_ports = [_free_cluster_port(), _free_cluster_port()]
        self.sentinel_ports = [_free_cluster_port() for _ in range(3)]
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def _spawn(self, port: int, args: list[str]) -> None:
        self.procs[port] = _spawn_redis(port, args, self.workdir)

    def __enter__(self) -> LocalSentinel:
        primary, replica = self.data_ports
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._spawn(primary, ["--port", str(primary), *common])
        self._spawn(replica, ["--port", str(replica), *common,
                              "--replicaof", "127.0.0.1", str(primary)])  # fmt: skip
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
            )
            self._spawn(port, [str(conf), "--sentinel"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = _info(replica, "replication")
            if info.get("master_link_status") == "up":
                return self
            time.sleep(0.1)
        raise RuntimeError("the replica did not sync")

    def primary_port(self) -> int:
        """The port the Sentinels name as primary now."""
        with redis.Redis(port=self.sentinel_ports[0]) as client:
            _, port = client.sentinel_get_master_addr_by_name(self.SERVICE)
        return int(port)

    def kill_primary(self) -> int:
        """SIGKILL the current primary; returns its port."""
        victim = self.primary_port()
        self.procs[victim].kill()
        self.procs[victim].wait(timeout=10)
        return victim
