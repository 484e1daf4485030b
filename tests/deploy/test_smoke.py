"""deploy/smoke.sh, its driver deploy/smoke_drive.py and the local images it builds.

The smoke test itself (build, compose stack, drive) runs from ``.ci/run`` after the suite;
these tests check its parts that need no container engine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.deploy.conftest import DEPLOY, REPO, load_yaml
from tests.deploy.test_dockerfile import parse_dockerfile
from tests.modules import load_module

SMOKE = DEPLOY / "smoke.sh"
drive = load_module(DEPLOY / "smoke_drive.py")


def bash(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``script`` in bash after sourcing smoke.sh (which then only defines its functions)."""
    return subprocess.run(
        ["bash", "-c", f'source "{SMOKE}"; {script}'],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env},
    )  # fmt: skip


def test_smoke_script_parses_and_lints() -> None:
    assert subprocess.run(["bash", "-n", str(SMOKE)], timeout=30).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        done = subprocess.run([shellcheck, str(SMOKE)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout
    sourced = bash("type main build_image stack_up wait_healthy > /dev/null && echo defined")
    assert sourced.stdout.strip() == "defined", sourced.stderr  # sourcing runs nothing


APT_ONE_LINE = """\
# deb http://ignored.example/debian bookworm main
deb [arch=amd64 trusted=yes signed-by=/k.gpg] http://mirror.example/debian bookworm main
deb http://mirror.example/debian-security bookworm-security main
"""
APT_DEB822 = """\
Types: deb
URIs: http://deb822.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb822.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.mark.parametrize(
    ("files", "suite", "want"),
    [
        ({"sources.list": APT_ONE_LINE}, "bookworm", "http://mirror.example/debian"),
        (
            {"sources.list": APT_ONE_LINE},
            "bookworm-security",
            "http://mirror.example/debian-security",
        ),
        ({"sources.list.d/debian.sources": APT_DEB822}, "bookworm", "http://deb822.example/debian"),
        (
            {"sources.list.d/debian.sources": APT_DEB822},
            "bookworm-security",
            "http://deb822.example/debian-security",
        ),
        ({"sources.list.d/debian.sources": APT_DEB822}, "trixie", "DEFAULT"),
        ({}, "bookworm", "DEFAULT"),
    ],
)
def test_debootstrap_mirror_is_the_one_apt_uses(
    tmp_path: Path, files: dict[str, str], suite: str, want: str
) -> None:
    (tmp_path / "sources.list.d").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = bash(f"apt_mirror {suite} DEFAULT", APT_ETC=str(tmp_path))
    assert done.returncode == 0 and done.stdout.strip() == want, done.stderr


def test_pip_settings_reach_the_build(tmp_path: Path) -> None:
    """The environment wins over pip's configuration; file:// indexes are not passed on."""
    python = tmp_path / "python"
    python.write_text(
        '#!/bin/sh\ncase "$5" in global.index-url) echo "file:///opt/pypi/simple";;\n'
        "global.cert) echo /etc/cert.pem;; *) exit 1;; esac\n"
    )
    python.chmod(0o755)
    done = bash(
        "pip_setting PIP_CERT cert; pip_setting PIP_INDEX_URL index-url; "
        "pip_setting PIP_TRUSTED_HOST trusted-host; echo end",
        PYTHON=str(python),
        PIP_TRUSTED_HOST="mirror.example",
    )
    assert done.stdout.splitlines() == [
        "/etc/cert.pem",
        "file:///opt/pypi/simple",
        "mirror.example",
        "end",
    ]


def test_compose_images_are_replaceable_and_replicas_explicit() -> None:
    services = load_yaml(REPO / "docker-compose.yml")["services"]
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7.4-alpine}"
    assert services["lb"]["image"] == "${NGINX_IMAGE:-nginx:1.27-alpine}"
    assert services["prometheus"]["image"].startswith("${PROMETHEUS_IMAGE:-prom/prometheus:")
    for name in ("api", "worker"):  # podman-compose reads replicas only in this mode
        assert services[name]["deploy"]["mode"] == "replicated"
    # smoke.sh falls back to these public images, then to the local ones.
    text = SMOKE.read_text()
    assert "docker.io/library/redis:7.4-alpine localhost/ctvis-redis" in text
    assert "docker.io/library/nginx:1.27-alpine localhost/ctvis-nginx" in text


def _entrypoint(path: Path) -> list[str]:
    (args,) = [a for k, a in parse_dockerfile(path.read_text()) if k == "ENTRYPOINT"]
    return list(json.loads(args))


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (
            ["redis-server", "--appendonly", "yes", "--save", ""],
            "redis-server|--protected-mode|no|--appendonly|yes|--save|",
        ),
        (["redis-cli", "ping"], "redis-cli|ping"),
    ],
)
def test_local_redis_image_accepts_other_containers(
    tmp_path: Path, argv: list[str], want: str
) -> None:
    """Debian's redis-server without a configuration file only answers localhost (protected
    mode); the local image's entry point turns that off like the official image does."""
    for name in ("redis-server", "redis-cli"):
        fake = tmp_path / name
        fake.write_text(f"#!/bin/sh\nprintf '%s' {name}\nfor a; do printf '|%s' \"$a\"; done\n")
        fake.chmod(0o755)
    entrypoint = _entrypoint(DEPLOY / "local-images" / "redis.Dockerfile")
    done = subprocess.run(
        [*entrypoint, *argv], capture_output=True, text=True, timeout=30, check=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )  # fmt: skip
    assert done.stdout == want


def test_local_images_work_like_the_public_ones() -> None:
    compose = load_yaml(REPO / "docker-compose.yml")["services"]
    redis = (DEPLOY / "local-images" / "redis.Dockerfile").read_text()
    nginx = (DEPLOY / "local-images" / "nginx.Dockerfile").read_text()
    assert compose["redis"]["command"][0] == "redis-server"
    assert compose["redis"]["healthcheck"]["test"][1] == "redis-cli"  # part of redis-server
    assert "WORKDIR /data" in redis and "redis-data:/data" in compose["redis"]["volumes"]
    assert "USER 999:999" in redis  # the official image's uid: volumes keep working
    assert compose["lb"]["healthcheck"]["test"][1] == "wget" and " wget " in nginx
    assert any(v.endswith(":/etc/nginx/nginx.conf:ro") for v in compose["lb"]["volumes"])
    assert 'CMD ["nginx", "-g", "daemon off;"]' in nginx


# ---- the driver ----------------------------------------------------------------------------


class FakeStack(drive.Stack):
    """``smoke_drive.Stack`` answering from a table instead of a container engine; with
    ``cluster`` the stack has the Redis Cluster nodes of deploy/compose.redis-cluster.yml."""

    def __init__(self, pending: str, cluster: bool = False, shards: int = 1) -> None:
        super().__init__("podman", "fake", shards)
        self.pending = pending
        self.cluster = cluster
        self.asked: list[str] = []

    def containers(self, service: str) -> list[str]:
        if service.startswith("redis-node-") and not self.cluster:
            return []
        return [f"{service}-id"]

    def exec(self, container: str, *argv: str, timeout: float = 60) -> str:
        from service.keys import JOB_GROUP, JOBS_STREAM, jobs_stream_key

        cli = ("redis-cli", "-c") if self.cluster else ("redis-cli",)
        assert container == ("redis-node-1-id" if self.cluster else "redis-id")
        streams = [
            jobs_stream_key(JOBS_STREAM, k, self.stream_shards) for k in range(self.stream_shards)
        ]
        assert argv[: len(cli) + 1] == (*cli, "XPENDING") and argv[len(cli) + 1] in streams
        assert argv[len(cli) + 2 :] == (JOB_GROUP, "-", "+", "10")
        self.asked.append(argv[len(cli) + 1])
        # the entry sits on the last shard: the others answer nothing
        return self.pending if argv[len(cli) + 1] == streams[-1] else ""


def test_job_holder_reads_the_pending_entry() -> None:
    out = "1733600000000-0\n3f2a9c1b7e4d-7-jobs\n812\n1\n"
    assert drive.job_holder(FakeStack(out)) == "3f2a9c1b7e4d"
    assert drive.job_holder(FakeStack("")) is None
    assert drive.job_holder(FakeStack("1-0\nframes-consumer-7\n5\n1\n")) is None
    assert drive.job_holder(FakeStack(out, cluster=True)) == "3f2a9c1b7e4d"
    sharded = FakeStack(out, cluster=True, shards=3)
    assert drive.job_holder(sharded) == "3f2a9c1b7e4d" and len(set(sharded.asked)) == 3


def _instance(track: int, score: float, mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "track_id": track,
        "category_id": 1,
        "score": score,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
    }


def test_sessions_must_agree() -> None:
    mask = np.zeros((16, 16), bool)
    mask[2:10, 3:12] = True
    a = [_instance(1, 0.9, mask)]
    drive.same_instances(a, [_instance(1, 0.9 + 5e-5, mask)], "frame 0")
    with pytest.raises(drive.CheckFailed, match="track ids"):
        drive.same_instances(a, [_instance(2, 0.9, mask)], "frame 0")
    with pytest.raises(drive.CheckFailed, match="scores"):
        drive.same_instances(a, [_instance(1, 0.8, mask)], "frame 0")
    other = np.zeros((16, 16), bool)
    other[8:16, 8:16] = True
    with pytest.raises(drive.CheckFailed, match="IoU"):
        drive.same_instances(a, [_instance(1, 0.9, other)], "frame 0")


def test_id_consistency_against_ground_truth() -> None:
    masks = []
    for t in range(4):
        m = np.zeros((16, 16), bool)
        m[t : t + 6, 2:8] = True
        masks.append(m)
    truth = [{"category": 0, "masks": masks}]
    steady = [{"instances": [_instance(5, 0.9, m)]} for m in masks]
    assert drive.id_consistency(steady, truth) == 1.0
    switching = [{"instances": [_instance(5 if t < 2 else 6, 0.9, m)]} for t, m in enumerate(masks)]
    assert drive.id_consistency(switching, truth) == 0.5
    assert drive.id_consistency([{"instances": []}] * 4, truth) == 0.0


def test_youtube_vis_result_shape() -> None:
    entry = {"video_id": 1, "category_id": 2, "score": 0.9, "segmentations": [None, None]}
    drive.check_ytvis([entry], 2)
    with pytest.raises(drive.CheckFailed):
        drive.check_ytvis([entry], 3)
    with pytest.raises(drive.CheckFailed):
        drive.check_ytvis([], 2)
    with pytest.raises(drive.CheckFailed):
        drive.check_ytvis([{"video_id": 1, "segmentations": [None, None]}], 2)


def test_metric_samples_are_summed() -> None:
    text = (
        "# TYPE ctvis_frames_total counter\n"
        'ctvis_frames_total{path="stream"} 20.0\n'
        'ctvis_frames_total{path="http"} 4.0\n'
    )
    assert drive.samples(text, "ctvis_frames_total") == 24.0
    assert drive.samples(text, "ctvis_missing") == 0.0


def test_driver_reports_one_line_and_fails_without_a_stack(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, str(DEPLOY / "smoke_drive.py"), "--url", "http://127.0.0.1:9",
            "--project", "none", "--work", str(tmp_path), "--timeout", "1",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout.startswith("drive FAIL [ready]: /readyz not 200"), done.stdout
    assert len(done.stdout.splitlines()) == 1
