"""The browser page: ``GET /`` and its static files under ``/static``.

Plain HTML, CSS and JavaScript modules shipped as package data of ``service`` (no build step,
nothing loaded from another host). The page uses only the public API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# The page talks only to its own origin; no other host may provide anything.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
        "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["page"], include_in_schema=False)


def _file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or not path.is_file() or path.suffix not in _TYPES:
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    """The page: upload a video, or track live from a camera or a local file."""
    return _file("index.html")


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    """One file of the page (flat directory: no sub-folders)."""
    return _file(name)
