"""The app with its embedded defaults: health, readiness, model listing, error shape."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.served import DEMO_MODEL_WARNING, RANDOM_WEIGHTS_WARNING
from service.settings import Settings


@pytest.fixture()
def client() -> TestClient:
    with TestClient(create_app(Settings())) as c:
        yield c


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_embedded_store(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["store"] == "memory"


def test_models_warns_about_random_weights(client: TestClient) -> None:
    # the test suite serves the explicit random-weight preset (tests/conftest.py)
    models = client.get("/v1/models").json()["models"]
    assert len(models) == 1
    assert models[0]["name"] == "tiny-random"
    assert models[0]["random_weights"] is True
    assert RANDOM_WEIGHTS_WARNING in models[0]["warnings"]
    assert len(models[0]["classes"]) == models[0]["num_classes"]


def test_embedded_default_is_the_bundled_demo_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTVIS_CHECKPOINT")
    with TestClient(create_app(Settings())) as c:
        model = c.get("/v1/models").json()["models"][0]
    assert model["name"] == "ctvis-demo"
    assert model["random_weights"] is False
    assert model["warnings"] == [DEMO_MODEL_WARNING]  # the page shows it above the forms
    assert "only on synthetic shapes" in DEMO_MODEL_WARNING
    assert [k["name"] for k in model["classes"]] == [
        "circle", "square", "triangle", "star", "hexagon", "cross"
    ]  # fmt: skip
    assert model["provenance"]["provenance"]["trainer"] == "training.loop.train"


def test_unknown_route_is_json_error(client: TestClient) -> None:
    resp = client.get("/v1/does-not-exist")
    assert resp.status_code == 404
    assert resp.json()["code"] == "not_found"


@pytest.mark.redis
def test_readyz_with_real_redis() -> None:
    url = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    with TestClient(create_app(Settings(redis_url=url))) as c:
        body = c.get("/readyz").json()
    assert body == {
        "model_loaded": True,
        "store": "redis",
        "store_reachable": True,
        "status": "ready",
    }


def test_readyz_unreachable_redis_is_503() -> None:
    with TestClient(create_app(Settings(redis_url="redis://127.0.0.1:1/0"))) as c:
        resp = c.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["store_reachable"] is False


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTVIS_PORT", "9123")
    monkeypatch.setenv("CTVIS_MAX_BATCH_SIZE", "3")
    s = Settings()
    assert s.port == 9123 and s.max_batch_size == 3


def test_settings_reject_bad_redis_url() -> None:
    with pytest.raises(ValueError):
        Settings(redis_url="http://nope")
