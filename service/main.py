"""The FastAPI application factory and its lifespan (model, store)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.errors import ApiError, install_error_handlers
from service.models import ServedModel, load_served_model
from service.settings import Settings, get_settings
from service.store import SessionStore, make_store

log = logging.getLogger("ctvis.service")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The model loads and the store connects in the lifespan, not here."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.model = load_served_model(settings.checkpoint, settings.device)
        app.state.store = make_store(settings.redis_url)
        try:
            yield
        finally:
            await app.state.store.close()

    app = FastAPI(
        title="ctvis-serve",
        version="0.1.0",
        description="Online video instance segmentation (CTVIS).",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the model is loaded and the session store is reachable."""
        model: ServedModel | None = getattr(request.app.state, "model", None)
        store: SessionStore | None = getattr(request.app.state, "store", None)
        store_ok = bool(store is not None and await store.ping())
        body: dict[str, Any] = {
            "model_loaded": model is not None,
            "store": store.kind if store is not None else None,
            "store_reachable": store_ok,
        }
        ready = model is not None and store_ok
        body["status"] = "ready" if ready else "not_ready"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/models", tags=["models"])
    async def list_models(request: Request) -> dict[str, Any]:
        """The served model, its classes, and any warning about its weights."""
        model: ServedModel | None = getattr(request.app.state, "model", None)
        if model is None:
            raise ApiError(503, "model_not_loaded", "the model is not loaded yet")
        return {"models": [model.describe()]}

    return app
