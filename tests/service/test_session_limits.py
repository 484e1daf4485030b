"""Sessions stay bounded: tracker options checked, expired sessions free their slots, per-session
tables pruned, 503s that name no internal host, keyed metrics, local API docs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.logs import RedactSecrets, redact
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import free_port, png_bytes

# What clients sent, raw (NaN and Infinity are not JSON, but Python's parser reads them).
BAD_TRACKER_BODIES = [
    ('{"tracker": {"cache_size": 1000000}}', "cache_size"),
    ('{"tracker": {"cache_size": 1208925819614629174706176}}', "cache_size"),
    ('{"tracker": {"max_tracks": -5}}', "max_tracks"),
    ('{"tracker": {"max_tracks": 1000000000}}', "max_tracks"),
    ('{"tracker": {"num_dead_frames": 1000000000000}}', "num_dead_frames"),
    ('{"tracker": {"match_threshold": NaN}}', "match_threshold"),
    ('{"tracker": {"momentum": Infinity}}', "momentum"),
    ('{"tracker": {"embed_type": "evil"}}', "embed_type"),
    ('{"tracker": {"frame_weight": "yes"}}', "frame_weight"),
]


@pytest.fixture()
def client() -> TestClient:
    with TestClient(create_app(Settings())) as c:
        yield c


@pytest.mark.parametrize(("body", "option"), BAD_TRACKER_BODIES)
def test_bad_tracker_options_are_422_naming_the_option(
    client: TestClient, body: str, option: str
) -> None:
    resp = client.post("/v1/sessions", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    error = resp.json()
    assert error["code"] == "invalid_tracker_option"
    assert repr(option) in error["message"] and "must be" in error["message"]


def test_good_tracker_options_are_kept(client: TestClient) -> None:
    resp = client.post("/v1/sessions", json={"tracker": {"cache_size": 64, "momentum": 1}})
    assert resp.status_code == 201, resp.text
    created = resp.json()
    info = client.get(
        f"/v1/sessions/{created['session_id']}", headers={"X-Session-Token": created["token"]}
    ).json()
    assert info["tracker"]["cache_size"] == 64 and info["tracker"]["momentum"] == 1.0


def _create(c: TestClient) -> tuple[str, dict[str, str]]:
    resp = c.post("/v1/sessions")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    return body["session_id"], {"X-Session-Token": body["token"]}


def _expiry_frees_slots(settings: Settings, frame: np.ndarray) -> None:
    with TestClient(create_app(settings)) as c:
        sessions = c.app.state.sessions
        made = [_create(c) for _ in range(3)]
        sid, hdr = made[0]
        assert c.post(f"/v1/sessions/{sid}/frames", content=png_bytes(frame), headers=hdr)
        full = c.post("/v1/sessions")
        assert full.status_code == 429 and full.json()["code"] == "too_many_sessions"
        assert "Retry-After" in full.headers
        assert sid in sessions._buckets and sid in sessions._last_used
        time.sleep(settings.session_ttl_s + 1.2)
        # abandoned without DELETE: their TTL passed, so their slots are free again
        assert c.post("/v1/sessions").status_code == 201
        for table in (sessions._locks, sessions._buckets, sessions._last_used, sessions._states):
            assert sid not in table, table
        assert c.get(f"/v1/sessions/{sid}", headers=hdr).status_code == 404


def test_expired_sessions_free_their_slots_in_process(video_frames: list[np.ndarray]) -> None:
    _expiry_frees_slots(Settings(max_sessions=3, session_ttl_s=1), video_frames[0])


@pytest.mark.redis
def test_expired_sessions_free_their_slots_in_redis(
    tmp_path: Path, video_frames: list[np.ndarray]
) -> None:
    from tests.service.test_redis_processes import _redis_server

    port = free_port()
    server = _redis_server(port, tmp_path)  # a private Redis: the count is store-wide
    try:
        url = f"redis://127.0.0.1:{port}/0"
        _expiry_frees_slots(
            Settings(redis_url=url, max_sessions=3, session_ttl_s=1), video_frames[0]
        )
        import redis

        client = redis.Redis(port=port)
        assert client.ttl("ctvis:sessions") > 0  # the count key expires like everything else
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.redis
def test_deleted_sessions_leave_the_count_at_once(tmp_path: Path) -> None:
    from tests.service.test_redis_processes import _redis_server

    port = free_port()
    server = _redis_server(port, tmp_path)
    try:
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", max_sessions=2)
        with TestClient(create_app(settings)) as c:
            made = [_create(c) for _ in range(2)]
            assert c.post("/v1/sessions").status_code == 429
            assert c.delete(f"/v1/sessions/{made[0][0]}", headers=made[0][1]).status_code == 204
            assert c.post("/v1/sessions").status_code == 201
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_store_outage_503_names_no_internal_address() -> None:
    port = free_port()  # nothing listens there
    with TestClient(create_app(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))) as c:
        resp = c.post("/v1/sessions")
    assert resp.status_code == 503
    body = resp.json()
    assert body["code"] == "state_store_unavailable"
    assert str(port) not in resp.text and "127.0.0.1" not in resp.text
    assert resp.headers["Retry-After"] == "1"


def test_metrics_need_a_key_when_keys_are_configured() -> None:
    with TestClient(create_app(Settings(api_keys="k1"))) as c:
        assert c.get("/metrics").status_code == 401
        keyed = c.get("/metrics", headers={"Authorization": "Bearer k1"})
        assert keyed.status_code == 200 and "ctvis_" in keyed.text
        assert c.get("/healthz").status_code == 200  # probes stay open
    with TestClient(create_app(Settings())) as c:
        assert c.get("/metrics").status_code == 200


def test_api_docs_load_nothing_from_another_host(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in page.text
        resp = client.get(asset)
        assert resp.status_code == 200 and len(resp.content) > 10_000


def test_redact_hides_query_secrets_and_bearer_keys() -> None:
    line = (
        "GET /v1/sessions/ab/stream?token=s3cr3t-Tok_en&x=1&api_key=KEY123 "
        "Authorization: Bearer abc.def"
    )
    out = redact(line)
    assert "s3cr3t" not in out and "KEY123" not in out and "abc.def" not in out
    assert "?token=[redacted]&x=1&api_key=[redacted]" in out


def test_redaction_filter_keeps_uvicorn_access_format() -> None:
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/v1/sessions/x?token=SECRET", "1.1", 200), None,
    )  # fmt: skip
    assert RedactSecrets().filter(record)
    text = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s").format(record)
    assert "SECRET" not in text and "/v1/sessions/x?token=[redacted]" in text


def test_json_bodies_are_bounded(client: TestClient) -> None:
    big = '{"tracker": {}, "model": "' + "x" * 100_000 + '"}'
    resp = client.post("/v1/sessions", content=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit stops the stream itself
        for _ in range(40):
            yield b" " * 4096

    resp = client.post(
        "/v1/sessions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413
    assert client.post("/v1/sessions", json={"queue_size": 2}).status_code == 201


def test_fuzzed_tracker_options_are_201_or_a_named_422() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from model.config import TRACKER_OPTION_RULES

    names = st.sampled_from([*TRACKER_OPTION_RULES, "nope", "", "cache_size "])
    values = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, 1, 64, 65, 1024, 1025, 0.5, -1.0, 10.0, 10.5]),
        st.text(max_size=12),
        st.sampled_from(["cosine", "hungarian", "max", "momentum", "last"]),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
    app = create_app(Settings(max_sessions=100_000))
    with TestClient(app) as c:

        @given(st.dictionaries(names, values, max_size=5))
        @settings(
            max_examples=300,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(options: dict) -> None:
            body = json.dumps({"tracker": options}, allow_nan=True)
            resp = c.post(
                "/v1/sessions", content=body, headers={"Content-Type": "application/json"}
            )
            assert resp.status_code in (201, 422), (options, resp.text)
            if resp.status_code == 422:
                error = resp.json()
                assert error["code"] == "invalid_tracker_option", error
                assert any(repr(str(k)) in error["message"] for k in options), error

        check()
