"""Live mode of the page (issue test 2): fake camera -> WebSocket -> masks on the canvas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.video.overlay import track_color
from tests.browser.conftest import Server, canvas_image, decode_rle, iou, open_page, wait_for
from tests.browser.conftest import save_screenshot as shoot

MIN_ANSWERED = 20


def watch_replies(page: Any) -> list[dict[str, Any]]:
    """Every JSON message the server sends on the page's WebSockets, in order."""
    replies: list[dict[str, Any]] = []

    def on_socket(ws: Any) -> None:
        ws.on("framereceived", lambda payload: replies.append(json.loads(payload)))

    page.on("websocket", on_socket)
    return replies


def painted_by_track(masks_rgba: np.ndarray, track_ids: list[int]) -> dict[int, np.ndarray]:
    """Pixels of the mask layer painted in each track's colour."""
    painted = {}
    alpha = masks_rgba[..., 3]
    for track_id in track_ids:
        colour = np.array(track_color(track_id), dtype=np.int16)
        close = np.abs(masks_rgba[..., :3].astype(np.int16) - colour).max(axis=-1) <= 8
        painted[track_id] = close & (alpha > 0)
    return painted


def nearest_frame(picture: np.ndarray, frames: list[np.ndarray]) -> tuple[int, float, float]:
    """Which synthetic frame the camera delivered for the sampled picture: its index, its
    mean squared error, and the next best error."""
    h, w = picture.shape[:2]
    errors = []
    for frame in frames:
        small = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR), np.float32)
        errors.append(float(np.mean((small - picture[..., :3].astype(np.float32)) ** 2)))
    order = np.argsort(errors)
    return int(order[0]), errors[order[0]], errors[order[1]]


def gt_union(tracks: list[dict[str, Any]], t: int, size: tuple[int, int]) -> np.ndarray:
    union = None
    for track in tracks:
        mask = track["masks"][t]
        if mask is None:
            continue
        img = Image.fromarray(mask.astype(np.uint8) * 255).resize(size[::-1], Image.NEAREST)
        m = np.asarray(img) > 127
        union = m if union is None else union | m
    return union if union is not None else np.zeros(size, bool)


def test_live_camera_masks_and_ids(
    page: Any, keyed_server: Server, synthetic: dict[str, Any], artefacts: Path
) -> None:
    replies = watch_replies(page)
    open_page(page, keyed_server)
    page.click("#tab-live")
    page.select_option("#live-source", "camera")
    page.fill("#send-width", "256")
    page.fill("#send-fps", "8")
    page.click("#live-start")
    answered = "n => Number(document.getElementById('live-view').dataset.answered) >= n"
    wait_for(page, answered, MIN_ANSWERED, timeout=90)
    page.click("#live-pause")
    assert page.text_content("#live-pause") == "Resume"
    wait_for(page, "() => document.getElementById('live-view').dataset.pending === '0'")
    assert page.is_hidden("#error"), page.text_content("#error-text")

    frames = [r for r in replies if r.get("type") == "frame"]
    assert not [r for r in replies if r.get("type") != "frame"], replies
    view = page.eval_on_selector("#live-view", "v => ({...v.dataset})")
    assert int(view["answered"]) == len(frames) >= MIN_ANSWERED
    assert int(page.text_content("#stat-answered") or 0) == len(frames)
    assert int(page.text_content("#stat-sent") or 0) >= len(frames)
    assert page.text_content("#stat-latency") != "–"

    # The ids on the page are those of the server's replies.
    shown = frames[-1]
    assert int(view["frameIndex"]) == shown["frame_index"]
    ids_now = sorted(i["track_id"] for i in shown["instances"])
    assert view["trackIds"] == ",".join(map(str, ids_now))
    all_ids = sorted({i["track_id"] for r in frames for i in r["instances"]})
    assert view["allTrackIds"] == ",".join(map(str, all_ids))
    rows = "#live-tracks tbody tr"
    table_ids = page.eval_on_selector_all(rows, "r => r.map(x => x.dataset.trackId)")
    assert table_ids == [str(i) for i in all_ids]

    # The mask layer holds each instance's mask in its track colour.
    masks = canvas_image(page, "#live-masks")
    picture = canvas_image(page, "#live-frame")
    assert masks.shape[:2] == (shown["height"], shown["width"])
    painted = painted_by_track(masks, ids_now)
    any_painted = masks[..., 3] > 0
    covered = np.zeros(any_painted.shape, bool)
    for inst in reversed(shown["instances"]):  # later instances are painted on top
        reply_mask = decode_rle(inst["segmentation"]) & ~covered
        covered |= reply_mask
        assert iou(painted[inst["track_id"]], reply_mask) >= 0.9, inst["track_id"]

    t, err, runner_up = nearest_frame(picture, synthetic["frames"])
    truth = gt_union(synthetic["tracks"], t, picture.shape[:2])
    gt_iou = iou(any_painted, truth)
    model = keyed_server.get("/v1/models").json()["models"][0]
    print(
        f"sampled frame {shown['frame_index']} = synthetic frame {t} (mse {err:.1f}, next "
        f"{runner_up:.1f}); IoU of painted vs ground truth {gt_iou:.3f}"
    )
    # The served model is the bundled demo checkpoint (trained on the synthetic benchmark):
    # its masks must land on the synthetic ground truth.
    assert not model["random_weights"], "the embedded default model must be the demo checkpoint"
    assert gt_iou >= 0.5

    shoot(page, artefacts, "live")
    page.click("#live-end")
    page.wait_for_selector("#live-panel[data-state='ended']", timeout=30_000)
