"""The page's files are served from the package, same-origin only (no browser needed)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.api.page import STATIC_DIR
from service.main import create_app
from service.settings import Settings


def test_page_and_static_files_are_served_offline() -> None:
    client = TestClient(create_app(Settings()))  # no lifespan: the page needs no model
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '"/static/app.js"' in page.text and '"/static/style.css"' in page.text
    for name in ("app.js", "api.js", "live.js", "video.js", "rle.js", "style.css"):
        resp = client.get(f"/static/{name}")
        assert resp.status_code == 200, name
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assert resp.headers["content-type"].startswith(kind), name
    # Nothing is loaded from another host.
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path.name
        assert not re.search(r"""(import|from)\s*["'](https?:)?//""", text), path.name
        assert 'fetch("http' not in text and "url(http" not in text, path.name


def test_static_paths_outside_the_folder_are_refused() -> None:
    client = TestClient(create_app(Settings()))
    for path in ("/static/..%2Fmain.py", "/static/missing.js", "/static/index.txt"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert set(resp.json()) == {"code", "message"}
