"""Video mode of the page (issue tests 1 and 4): upload, progress, overlay, tracks, errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.browser.conftest import API_KEY, VIDEO_FPS, Server, decode_rle, open_page, wait_for
from tests.browser.conftest import save_screenshot as shoot


def expected_rows(results: list[dict[str, Any]], names: dict[int, str]) -> list[list[Any]]:
    """The track table computed from the results JSON: one row per ``track_id`` (the id the
    overlay draws), from the track's best-scoring entry, in order of first appearance."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for entry in results:
        groups.setdefault(entry["track_id"], []).append(entry)
    rows = []
    for track_id, entries in groups.items():
        best = max(entries, key=lambda e: e["score"])
        seen = [t for t, s in enumerate(best["segmentations"]) if s and decode_rle(s).any()]
        rows.append(
            [
                str(track_id),
                names.get(best["category_id"], f"category {best['category_id']}"),
                str(seen[0]) if seen else "–",
                str(seen[-1]) if seen else "–",
                str(len(seen)),
                best["score"],
            ]
        )
    return rows


def test_upload_progress_overlay_tracks_download(
    page: Any, keyed_server: Server, synthetic: dict[str, Any], artefacts: Path
) -> None:
    open_page(page, keyed_server)
    page.set_input_files("#video-file", str(synthetic["mp4"]))
    assert page.is_checked("#overlay")
    page.click("#upload")
    page.wait_for_selector("#video-panel[data-state='done']", timeout=90_000)
    job_id = page.get_attribute("#video-panel", "data-job-id")
    assert page.eval_on_selector("#progress", "p => p.value") == 100
    assert page.get_attribute("#progress", "data-percent") == "100"

    # The overlay video loads and lasts as long as the frames.
    wait_for(page, "() => document.getElementById('overlay-video').readyState >= 2")
    duration = page.eval_on_selector("#overlay-video", "v => v.duration")
    frames = len(synthetic["frames"])
    assert abs(duration - frames / VIDEO_FPS) <= 1.0 / VIDEO_FPS + 1e-6, duration

    # The track table matches GET /v1/videos/{job}/result, numbered by its track ids.
    result = keyed_server.get(f"/v1/videos/{job_id}/result")
    assert result.status_code == 200
    models = keyed_server.get("/v1/models").json()["models"][0]
    names = {c["category_id"]: c["name"] for c in models["classes"]}
    want = expected_rows(result.json(), names)
    got = page.eval_on_selector_all(
        "#tracks tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert len(got) == len(want) and want, (got, want)
    for g, w in zip(got, want, strict=True):
        assert g[:5] == w[:5], (g, w)
        assert abs(float(g[5]) - w[5]) <= 5e-5, (g, w)
    assert all(int(r[4]) <= frames for r in got)
    ids = page.eval_on_selector_all("#tracks tbody tr", "rows => rows.map(r => r.dataset.trackId)")
    assert ids == [r[0] for r in want]

    # The downloaded JSON equals the API's bytes exactly.
    with page.expect_download() as info:
        page.click("#download")
    downloaded = Path(info.value.path()).read_bytes()
    assert downloaded == result.content

    # It plays to the end in the page.
    ended_at = page.eval_on_selector(
        "#overlay-video",
        "v => new Promise((resolve, reject) => {"
        " v.addEventListener('ended', () => resolve(v.currentTime), {once: true});"
        " v.addEventListener('error', () => reject(new Error('playback failed')), {once: true});"
        " v.play().catch(reject); })",
    )
    assert abs(ended_at - duration) <= 1.0 / VIDEO_FPS + 1e-6, (ended_at, duration)
    page.wait_for_timeout(300)
    shoot(page, artefacts, "video")


def test_wrong_key_and_corrupt_upload_show_readable_errors(
    page: Any, keyed_server: Server, artefacts: Path, tmp_path: Path
) -> None:
    wrong = keyed_server.get("/v1/models", key="not-the-key")
    assert wrong.status_code == 401
    open_page(page, keyed_server, key="not-the-key")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error-text") == wrong.json()["message"]
    assert page.get_attribute("#error", "data-code") == wrong.json()["code"]

    # Live mode with the wrong key: creating the session is refused in the same words.
    page.click("#error-dismiss")
    page.click("#tab-live")
    page.click("#live-start")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error-text") == wrong.json()["message"]
    shoot(page, artefacts, "error-key")

    # The right key, then a corrupt upload: the job fails and its message is shown.
    page.click("#tab-video")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#model-info[data-key-accepted='true']")
    assert page.is_hidden("#error")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(4096))
    page.set_input_files("#video-file", str(corrupt))
    page.click("#upload")
    page.wait_for_selector("#video-panel[data-state='failed']", timeout=60_000)
    page.wait_for_selector("#error:not([hidden])")
    # The server refuses the upload (415) with the reason in its JSON message; the same
    # bytes sent directly give the same words (up to the job's own folder name).
    direct = httpx.post(
        f"{keyed_server.url}/v1/videos",
        content=corrupt.read_bytes(),
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert direct.status_code == 415, direct.text
    job = re.compile(r"[0-9a-f]{32}")
    shown = page.text_content("#error-text") or ""
    assert job.sub("<job>", shown) == job.sub("<job>", direct.json()["message"])
    assert page.get_attribute("#error", "data-code") == direct.json()["code"]
    shoot(page, artefacts, "error-upload")
