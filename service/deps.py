"""FastAPI dependencies, declared once as ``Annotated`` aliases (read from ``app.state``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from service.auth import api_key_allowed, hash_secret
from service.errors import ApiError
from service.jobs.admission import JobBackend
from service.metrics import Metrics
from service.sessions import SessionService
from service.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _sessions(request: Request) -> SessionService:
    service = getattr(request.app.state, "sessions", None)
    if service is None:
        raise ApiError(503, "not_ready", "the service is starting")
    return service


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def require_api_key(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    """401 unless no API keys are configured or ``Authorization: Bearer <key>`` matches."""
    if not api_key_allowed(authorization, request.app.state.api_key_digests):
        raise ApiError(401, "unauthorized", "missing or invalid API key (Authorization: Bearer)")


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> str | None:
    """Who is calling: the digest of the API key in use, or None when keys are off."""
    if not request.app.state.api_key_digests or not authorization:
        return None
    return hash_secret(authorization[7:].strip())


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionsDep = Annotated[SessionService, Depends(_sessions)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
CallerDep = Annotated[str | None, Depends(caller)]


def _jobs(request: Request) -> JobBackend:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ApiError(503, "not_ready", "the service is starting")
    return jobs


JobsDep = Annotated[JobBackend, Depends(_jobs)]
