"""The FastAPI application factory and its lifespan (model, store, batch worker)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from service.api import page as page_routes
from service.api import sessions as session_routes
from service.api import videos as video_routes
from service.api import ws as ws_routes
from service.auth import parse_api_keys
from service.batching import BatchQueue
from service.deps import require_api_key
from service.engine import Engine, FrameItem, FrameOutcome
from service.errors import ApiError, install_error_handlers
from service.frame_stream import RedisFrameQueue
from service.jobs.local import LocalJobManager
from service.jobs.redis_manager import RedisJobManager
from service.metrics import Metrics
from service.middleware import JsonBodyLimit
from service.served import ServedModel, load_served_model_for
from service.sessions import SessionService
from service.settings import Settings, get_settings, job_dir
from service.store import SessionStore, make_store

log = logging.getLogger("ctvis.service")


def _make_queue(
    engine: Engine, settings: Settings, metrics: Metrics
) -> BatchQueue[FrameItem, FrameOutcome]:
    async def run(items: list[FrameItem]) -> list[FrameOutcome]:
        # The model runs in a worker thread so it never blocks the event loop.
        return await asyncio.to_thread(engine.run_batch, items)

    def observe(size: int, seconds: float) -> None:
        metrics.batch_size.observe(size)
        metrics.model_seconds.observe(seconds)

    return BatchQueue(run, settings.max_batch_size, settings.max_wait_ms / 1000, observe)


def _mount_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI from the ``swagger-ui-bundle`` package's files, so the page
    works on hosts that cannot reach a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API documentation",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _frame_queue(
    settings: Settings, served: ServedModel, metrics: Metrics
) -> BatchQueue[FrameItem, FrameOutcome] | RedisFrameQueue:
    """Frames run in this process (``worker``) or on ``ctvis worker`` processes via Redis."""
    if settings.worker:
        return _make_queue(Engine(served), settings, metrics)
    assert settings.redis_url is not None  # checked by Settings
    return RedisFrameQueue(
        settings.redis_url, served.model_id, settings.worker_timeout_s,
        settings.frames_stream, settings.stream_ttl_s, settings.redis_mode,
        settings.stream_shards,
    )  # fmt: skip


def _job_manager(
    settings: Settings, served: ServedModel, metrics: Metrics
) -> LocalJobManager | RedisJobManager:
    """Video jobs run in this process (``worker``) or on ``ctvis worker`` processes."""
    if settings.worker:
        return LocalJobManager(served, metrics, settings.max_video_frames)
    assert settings.redis_url is not None
    return RedisJobManager(
        settings.redis_url, job_dir(settings), settings.max_video_frames,
        settings.job_ttl_s, settings.jobs_stream, settings.redis_mode,
        settings.stream_shards,
    )  # fmt: skip


def _lifespan(
    settings: Settings, metrics: Metrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Load the model and connect the store, queue and job manager while the app runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.api_key_digests = parse_api_keys(settings.api_keys)
        served = await asyncio.to_thread(load_served_model_for, settings)
        app.state.model = served
        app.state.store = make_store(settings.redis_url, settings.redis_mode)
        queue = _frame_queue(settings, served, metrics)
        queue.start()
        app.state.sessions = SessionService(settings, served, app.state.store, queue, metrics)
        app.state.jobs = _job_manager(settings, served, metrics)
        try:
            yield
        finally:
            await app.state.jobs.close()
            await queue.close()
            await app.state.store.close()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The model loads and the store connects in the lifespan, not here."""
    settings = settings or get_settings()
    metrics = Metrics()
    app = FastAPI(
        title="ctvis-serve",
        version="0.1.0",
        description="Online video instance segmentation (CTVIS).",
        lifespan=_lifespan(settings, metrics),
        docs_url=None,  # served below from local assets, never from a CDN
        redoc_url=None,
    )
    _mount_docs(app)
    app.add_middleware(JsonBodyLimit, idle_timeout_s=settings.body_idle_timeout_s)
    install_error_handlers(app)
    app.state.api_key_digests = parse_api_keys(settings.api_keys)
    app.state.websockets = set()
    secured = [Depends(require_api_key)]
    app.include_router(session_routes.router, dependencies=secured)
    app.include_router(video_routes.router, dependencies=secured)
    app.include_router(ws_routes.router)
    app.include_router(page_routes.router)

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

    @app.get("/metrics", tags=["ops"], dependencies=secured)
    async def prometheus() -> Response:
        """Prometheus metrics of this process (needs an API key when keys are configured)."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", tags=["models"], dependencies=secured)
    async def list_models(request: Request) -> dict[str, Any]:
        """The served model, its classes, and any warning about its weights."""
        model: ServedModel | None = getattr(request.app.state, "model", None)
        if model is None:
            raise ApiError(503, "model_not_loaded", "the model is not loaded yet")
        return {"models": [model.describe()]}

    return app
