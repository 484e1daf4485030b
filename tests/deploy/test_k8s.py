"""Kubernetes manifests: API Deployment + Service + HPA, GPU workers, Redis, scrape config."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.main import create_app
from service.settings import Settings
from tests.deploy.conftest import DEPLOY, is_subcommand, load_all, load_yaml, setting_env_names

K8S = DEPLOY / "k8s"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    found = {}
    for name in kustomization["resources"]:
        for doc in load_all(K8S / name):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), name
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _container(objects: dict, deployment: str) -> dict[str, Any]:
    (container,) = objects[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"]
    return container


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_expected_objects(objects: dict) -> None:
    assert {
        ("Deployment", "ctvis-api"),
        ("Service", "ctvis-api"),
        ("HorizontalPodAutoscaler", "ctvis-api"),
        ("Deployment", "ctvis-worker"),
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("ConfigMap", "ctvis-config"),
        ("PersistentVolumeClaim", "ctvis-checkpoints"),
        ("PersistentVolumeClaim", "ctvis-jobs"),
    } <= set(objects)
    assert objects[("PersistentVolumeClaim", "ctvis-jobs")]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]


def test_services_select_their_pods(objects: dict) -> None:
    for (kind, name), obj in objects.items():
        if kind != "Service":
            continue
        pods = objects[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"].items() <= pods.items(), name
        ports = {p["name"] for p in _container(objects, name)["ports"]}
        assert {p["targetPort"] for p in obj["spec"]["ports"]} <= ports
    for kind, name in objects:
        if kind == "Deployment":
            spec = objects[(kind, name)]["spec"]
            assert (
                spec["selector"]["matchLabels"].items()
                <= spec["template"]["metadata"]["labels"].items()
            )


def test_hpa_scales_the_api(objects: dict) -> None:
    hpa = objects[("HorizontalPodAutoscaler", "ctvis-api")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ctvis-api",
    }
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # Utilisation targets need requests on the scaled container.
    assert "cpu" in _container(objects, "ctvis-api")["resources"]["requests"]


def test_roles_and_gpu(objects: dict) -> None:
    api, worker = _container(objects, "ctvis-api"), _container(objects, "ctvis-worker")
    assert api["args"] == ["serve", "--no-worker"] and is_subcommand(api["args"])
    assert worker["args"] == ["worker", "--metrics-port", "9100"] and is_subcommand(worker["args"])
    assert api["image"] == worker["image"] == "ctvis-serve"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in api["resources"].get("limits", {})
    assert worker["livenessProbe"]["exec"]["command"][-1] == "worker"
    for deployment in ("ctvis-api", "ctvis-worker"):
        pod = objects[("Deployment", deployment)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
        mounts = {v["mountPath"]: v for v in _container(objects, deployment)["volumeMounts"]}
        assert mounts["/checkpoints"]["readOnly"] is True
        job_dir = objects[("ConfigMap", "ctvis-config")]["data"]["CTVIS_JOB_DIR"]
        assert not mounts[job_dir].get("readOnly")
        claims = {
            v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]
        }
        assert claims[mounts[job_dir]["name"]] == "ctvis-jobs"


def test_probes_hit_real_routes(objects: dict) -> None:
    paths = set(create_app(Settings()).openapi()["paths"])
    api = _container(objects, "ctvis-api")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in paths
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_environment_names_are_settings(objects: dict) -> None:
    valid = setting_env_names()
    config = objects[("ConfigMap", "ctvis-config")]["data"]
    assert set(config) <= valid, set(config) - valid
    assert all(isinstance(v, str) for v in config.values())  # ConfigMap values are strings
    Settings(**{k.removeprefix("CTVIS_").lower(): v for k, v in config.items()})  # validates
    for deployment in ("ctvis-api", "ctvis-worker"):
        container = _container(objects, deployment)
        names = {e["name"] for e in container.get("env", [])}
        assert names <= valid, names - valid
        refs = [s.get("configMapRef", {}).get("name") for s in container["envFrom"]]
        assert "ctvis-config" in refs


def test_redis_matches_compose(objects: dict) -> None:
    (redis,) = objects[("Deployment", "redis")]["spec"]["template"]["spec"]["containers"]
    flags = dict(zip(redis["args"][::2], redis["args"][1::2], strict=True))
    assert flags["--maxmemory-policy"] == "volatile-lru" and flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert {"name": "data", "mountPath": "/data"} in redis["volumeMounts"]
    url = objects[("ConfigMap", "ctvis-config")]["data"]["CTVIS_REDIS_URL"]
    assert url.startswith("redis://redis:6379")


def test_kubernetes_scrape_config(objects: dict) -> None:
    (job,) = load_yaml(DEPLOY / "prometheus" / "kubernetes.yml")["scrape_configs"]
    for deployment in ("ctvis-api", "ctvis-worker"):
        template = objects[("Deployment", deployment)]["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = {str(p["containerPort"]) for p in _container(objects, deployment)["ports"]}
        assert annotations["prometheus.io/port"] in ports
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert {"api|worker", "true"} == {r["regex"] for r in keep}


# The oldest Kubernetes release the manifests target (autoscaling/v2, the usual managed
# offerings) and the newest one kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", "latest")


def _validator() -> Any:
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate comes with the dev extra"
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(
    objects: dict[tuple[str, str], dict[str, Any]], version: str
) -> None:
    """Every object of the kustomization against the API schemas (offline: the package bundles
    them), strict: an unknown or misspelt field is an error, not silently dropped."""
    kv = _validator()
    version = kv.latest_version() if version == "latest" else version
    for (kind, name), obj in objects.items():
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:  # pragma: no cover - shown on failure
            raise AssertionError(f"{kind}/{name} (Kubernetes {version}): {exc}") from exc


def test_schema_validation_catches_mistakes(objects: dict) -> None:
    kv = _validator()
    api = objects[("Deployment", "ctvis-api")]
    misspelt = copy.deepcopy(api)
    misspelt["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (misspelt, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, kv.latest_version(), strict=True)
