"""Read YouTube-VIS ground truth and results JSON into typed, validated records.

Ground truth follows the official YouTube-VIS layout (``videos``, ``categories``,
``annotations`` with one entry per track and per-frame ``segmentations`` lists). A frame's
segmentation may be ``null``, a polygon list, an uncompressed RLE (``counts`` is a list of
ints) or a compressed RLE (``counts`` is a string); everything is normalised to compressed
RLE dicts so that :mod:`pycocotools.mask` can work on it directly. :func:`load_videos` reads
only the ``videos`` section (the same :class:`Video` records), so that a split without
annotations (a test split) can be tracked.

Results are a JSON list of ``{"video_id", "category_id", "score", "segmentations"}`` with one
compressed RLE or ``null`` per frame (the official ``instances_to_coco_json_video`` in
``ctvis/data/vis/ytvis_eval.py``, https://github.com/KainingYing/CTVIS). Other keys are
ignored, as the official evaluator ignores them, except an optional ``category_name`` (our
results name the model's class), kept so that a label space foreign to the ground truth can
be told (``training.ytvis_eval.label_space_mismatch``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

Rle = dict[str, Any]
"""A compressed COCO RLE: ``{"size": [H, W], "counts": bytes | str}``."""


class YtvisFormatError(ValueError):
    """A ground-truth or results file does not follow the YouTube-VIS format."""


@dataclass(frozen=True)
class Video:
    """One video of the ground truth.

    Attributes:
        id: Dataset video id.
        height: Frame height in pixels.
        width: Frame width in pixels.
        length: Number of annotated frames T.
        file_names: T frame paths relative to the dataset's ``JPEGImages/`` folder.
    """

    id: int
    height: int
    width: int
    length: int
    file_names: tuple[str, ...]


@dataclass(frozen=True)
class Track:
    """One ground-truth track or one predicted track (a results entry).

    Attributes:
        id: Annotation id (ground truth) or 1-based position in the results file.
        video_id: Video the track belongs to.
        category_id: Dataset category id.
        score: Confidence (1.0 for ground truth).
        iscrowd: Whether the ground truth is a crowd region (always False for results).
        segmentations: T compressed RLEs, ``None`` where the object is absent.
        areas: T x int64 per-frame mask areas in pixels (0 where absent).
        avg_area: Mean of the non-zero per-frame areas (0 if none), the value YTVOSeval
            buckets on. Ground truth uses the file's ``areas`` list when it has one, as the
            official evaluator does; results use the mask areas.
        category_name: The class name a results entry gives (``category_name``), None when it
            gives none and for ground truth (whose names are ``GroundTruth.categories``).
    """

    id: int
    video_id: int
    category_id: int
    score: float
    iscrowd: bool
    segmentations: tuple[Rle | None, ...]
    areas: np.ndarray
    avg_area: float
    category_name: str | None = None


@dataclass(frozen=True)
class GroundTruth:
    """A parsed YouTube-VIS annotation file.

    Attributes:
        videos: Videos by id.
        categories: Category names by id, in file order.
        tracks: Ground-truth tracks in file order.
    """

    videos: dict[int, Video]
    categories: dict[int, str]
    tracks: tuple[Track, ...]


def read_json(path: str | Path) -> Any:
    """Load a JSON file, turning I/O and syntax problems into :class:`YtvisFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise YtvisFormatError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise YtvisFormatError(f"{path}: not a readable JSON file ({exc})") from exc


def to_rle(segmentation: Any, height: int, width: int) -> Rle | None:
    """Normalise one frame's segmentation to a compressed RLE.

    Args:
        segmentation: ``None``, a list of polygons, or an (un)compressed RLE dict.
        height: Frame height the mask must have.
        width: Frame width the mask must have.

    Returns:
        A compressed RLE dict with ``size == [height, width]``, or ``None`` if absent.

    Raises:
        YtvisFormatError: For an unknown form or a size that does not match the video.
    """
    if segmentation is None:
        return None
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise YtvisFormatError(f"unsupported segmentation of type {type(segmentation).__name__}")
    size = [int(s) for s in segmentation.get("size", [])]
    if size != [height, width]:
        raise YtvisFormatError(f"mask size {size} does not match video size {[height, width]}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(counts, str):
        return {"size": size, "counts": counts.encode("ascii")}
    if isinstance(counts, bytes):
        return {"size": size, "counts": counts}
    raise YtvisFormatError(f"unsupported RLE counts of type {type(counts).__name__}")


def _frame_areas(rles: list[Rle | None]) -> np.ndarray:
    present = [i for i, r in enumerate(rles) if r is not None]
    areas = np.zeros(len(rles), dtype=np.int64)
    if present:
        areas[present] = mask_utils.area([rles[i] for i in present])
    return areas


def _mean_present(areas: list[Any] | np.ndarray) -> float:
    """Mean over truthy entries (skips ``None`` and 0), as ``[a for a in areas if a]``."""
    present = [float(a) for a in areas if a]
    return float(np.mean(present)) if present else 0.0


def _parse_track(
    raw: dict[str, Any], video: Video, track_id: int, score: float, file_areas: bool
) -> Track:
    segs = raw.get("segmentations")
    if not isinstance(segs, list) or len(segs) != video.length:
        n = len(segs) if isinstance(segs, list) else "no"
        raise YtvisFormatError(
            f"track {track_id} in video {video.id}: {n} segmentations for {video.length} frames"
        )
    try:
        rles = [to_rle(s, video.height, video.width) for s in segs]
    except YtvisFormatError as exc:
        raise YtvisFormatError(f"track {track_id} in video {video.id}: {exc}") from exc
    areas = _frame_areas(rles)
    listed = raw.get("areas") if file_areas else None
    avg_area = _mean_present(listed if isinstance(listed, list) else areas)
    return Track(
        id=track_id,
        video_id=video.id,
        category_id=int(raw["category_id"]),
        score=score,
        iscrowd=bool(raw.get("iscrowd", 0)),
        segmentations=tuple(rles),
        areas=areas,
        avg_area=avg_area,
    )


def _video(raw: dict[str, Any]) -> Video:
    return Video(
        id=int(raw["id"]),
        height=int(raw["height"]),
        width=int(raw["width"]),
        length=len(raw["file_names"]),
        file_names=tuple(raw["file_names"]),
    )


def parse_videos(data: Any) -> dict[int, Video]:
    """The videos of a loaded YouTube-VIS file by id, in file order; other sections unread.

    Raises:
        YtvisFormatError: If there is no ``videos`` list or a video lacks a field.
    """
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise YtvisFormatError("a YouTube-VIS file needs a 'videos' list")
    try:
        return {int(v["id"]): _video(v) for v in data["videos"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise YtvisFormatError(f"malformed video: missing or bad field {exc}") from exc


def parse_ground_truth(data: Any) -> GroundTruth:
    """Parse a loaded YouTube-VIS annotation dict.

    Raises:
        YtvisFormatError: If required keys are missing or inconsistent.
    """
    if not isinstance(data, dict) or not {"videos", "categories", "annotations"} <= data.keys():
        raise YtvisFormatError("ground truth needs 'videos', 'categories' and 'annotations'")
    try:
        videos = {int(v["id"]): _video(v) for v in data["videos"]}
        categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        tracks = []
        for ann in data["annotations"]:
            video = videos.get(int(ann["video_id"]))
            if video is None:
                raise YtvisFormatError(f"annotation {ann['id']}: unknown video {ann['video_id']}")
            tracks.append(_parse_track(ann, video, int(ann["id"]), 1.0, file_areas=True))
    except (KeyError, TypeError) as exc:
        raise YtvisFormatError(f"malformed ground truth: missing or bad field {exc}") from exc
    return GroundTruth(videos=videos, categories=categories, tracks=tuple(tracks))


def parse_results(data: Any, gt: GroundTruth) -> tuple[Track, ...]:
    """Parse a loaded results list against the ground truth's videos.

    Entries get ids 1..N in file order, as the official ``loadRes`` does.

    Raises:
        YtvisFormatError: If the data is not a list of results entries, names a video the
            ground truth does not have, or has the wrong number of frames.
    """
    if not isinstance(data, list):
        raise YtvisFormatError("results must be a JSON list of per-track entries")
    tracks = []
    for index, entry in enumerate(data, start=1):
        try:
            video = gt.videos.get(int(entry["video_id"]))
            if video is None:
                raise YtvisFormatError(
                    f"result {index}: video {entry['video_id']} is not in the ground truth"
                )
            track = _parse_track(entry, video, index, float(entry["score"]), file_areas=False)
            name = entry.get("category_name")
            if name is not None:
                track = replace(track, category_name=str(name))
            tracks.append(track)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, YtvisFormatError):
                raise
            raise YtvisFormatError(f"result {index}: missing or bad field {exc}") from exc
    return tuple(tracks)


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read and parse a YouTube-VIS annotation file (errors name the file)."""
    data = read_json(path)
    try:
        return parse_ground_truth(data)
    except YtvisFormatError as exc:
        raise YtvisFormatError(f"{path}: {exc}") from exc


def load_videos(path: str | Path) -> dict[int, Video]:
    """Read the videos of a YouTube-VIS file, annotated or not (errors name the file)."""
    data = read_json(path)
    try:
        return parse_videos(data)
    except YtvisFormatError as exc:
        raise YtvisFormatError(f"{path}: {exc}") from exc


def load_results(path: str | Path, gt: GroundTruth) -> tuple[Track, ...]:
    """Read and parse a YouTube-VIS results file against ``gt`` (errors name the file)."""
    data = read_json(path)
    try:
        return parse_results(data, gt)
    except YtvisFormatError as exc:
        raise YtvisFormatError(f"{path}: {exc}") from exc
