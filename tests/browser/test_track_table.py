"""The page's track table (``trackRows`` in ``service/static/video.js``) run by Node.js.

The Chromium test (``test_page_video.py``) checks the rendered table end to end; this one runs
the same function on hand-made results without a browser, so the numbering rule (rows are the
results' ``track_id``s, the ids the overlay draws) is checked wherever Node.js is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import numpy as np

from model import rle
from service.api.page import STATIC_DIR

NODE = shutil.which("node")


def _track_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    script = (
        f"import {{ trackRows }} from {json.dumps((STATIC_DIR / 'video.js').as_uri())};"
        "import { readFileSync } from 'node:fs';"
        "console.log(JSON.stringify(trackRows(JSON.parse(readFileSync(0, 'utf8')))));"
    )
    assert NODE is not None, "Node.js runs the page's modules here (apt install nodejs)"
    out = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        input=json.dumps(results),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def _mask(frames: list[tuple[int, int] | None]) -> list[dict[str, Any]]:
    """Per frame an RLE of rows [a, b) of an 8x8 frame (empty where None)."""
    out = []
    for rows in frames:
        mask = np.zeros((8, 8), dtype=bool)
        if rows is not None:
            mask[rows[0] : rows[1]] = True
        out.append(rle.encode(mask))
    return out


def test_rows_are_the_results_track_ids() -> None:
    track_7 = _mask([None, (0, 2), (0, 3), None])
    track_2 = _mask([(4, 6), (4, 6), None, None])
    results = [
        {"video_id": 1, "score": 0.5, "category_id": 3, "track_id": 7, "segmentations": track_7},
        {"video_id": 1, "score": 0.9, "category_id": 1, "track_id": 2, "segmentations": track_2},
        {"video_id": 1, "score": 0.8, "category_id": 4, "track_id": 7, "segmentations": track_7},
        {"video_id": 1, "score": 0.1, "category_id": 2, "track_id": 2, "segmentations": track_2},
        {"video_id": 1, "score": 0.05, "category_id": 5, "segmentations": track_2},  # no id
    ]
    rows = _track_rows(results)
    assert rows == [
        {"id": 7, "categoryId": 4, "first": 1, "last": 2, "frames": 2, "score": 0.8},
        {"id": 2, "categoryId": 1, "first": 0, "last": 1, "frames": 2, "score": 0.9},
        {"id": None, "categoryId": 5, "first": 0, "last": 1, "frames": 2, "score": 0.05},
    ]
