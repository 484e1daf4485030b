"""schemathesis over the OpenAPI spec: generated requests never get a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from service.main import create_app
from service.settings import Settings

app = create_app(Settings(max_video_frames=20, max_upload_bytes=1 << 20))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def running_app() -> Iterator[None]:
    # Run the lifespan once (model, store, batch queue) and keep it open for every case.
    with TestClient(app):
        yield


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text)


# Session options in depth: the tracker options' schema comes from the server's own rule
# table, so generated cases cover each option's type and range edges; negative cases add
# out-of-range values, wrong types and unknown names. All must be 201 or a 4xx.
sessions_schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(
    path="/v1/sessions", method="POST"
)
sessions_schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)


@sessions_schema.parametrize()
@settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_session_options_never_give_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.body, response.text)
    if response.status_code == 422 and isinstance(case.body, dict):
        tracker = case.body.get("tracker")
        if isinstance(tracker, dict) and tracker:
            assert response.json()["code"] in ("invalid_tracker_option", "invalid_request")
