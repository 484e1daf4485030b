"""The batch worker: frames of many sessions through one forward, then one tracker step each.

``Engine.run_batch`` is synchronous and never touches the store: it receives
``(frame, state, tracker config)`` items and returns ``(new state, instances)`` outcomes, so it
can be tested with plain tensors. Frames are grouped by padded input size (frames of one video
share it; mixing sizes would change the padding and therefore the numbers), each group runs as
one forward, and the tracker runs per item afterwards. If a grouped forward raises, its items
are retried one at a time so that a poison frame fails only its own request.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from model.config import TrackerConfig
from model.postprocess import MaskSizes, to_instances
from model.preprocess import prepare_frames
from model.structures import FrameBatch, FrameOutputs, Instance
from model.tracker import TrackState, select_candidates, track_step
from service.served import ServedModel


@dataclass(frozen=True)
class FrameItem:
    """One session's frame with the state it continues from.

    Attributes:
        frame: HxWx3 uint8 RGB.
        state: the session's tracker state before this frame.
        tracker_cfg: the session's tracker settings.
        session_id: the session's id; the Redis frame queue routes the frame to the stream
            shard of this id (``service.keys.shard_of``). The engine does not read it.
    """

    frame: np.ndarray
    state: TrackState
    tracker_cfg: TrackerConfig
    session_id: str = ""


@dataclass(frozen=True)
class FrameOutcome:
    """What the engine returns for one item (``error`` set instead when it failed)."""

    state: TrackState | None
    instances: list[Instance]
    model_ms: float
    batch_size: int
    error: Exception | None = None


class Engine:
    """Runs batches of frames for the served model on its device."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served

    def _forward(self, pixels: torch.Tensor) -> FrameOutputs:
        return self.served.forward(pixels)

    def _track(
        self, item: FrameItem, outputs: FrameOutputs, row: int, batch: FrameBatch
    ) -> tuple[TrackState, list[Instance]]:
        cfg = item.tracker_cfg
        with torch.inference_mode():
            det = select_candidates(
                outputs.pred_logits[row].float().cpu(),
                outputs.pred_masks[row].float().cpu(),
                outputs.pred_embeds[row].float().cpu(),
                cfg,
            )
            state, assignment = track_step(item.state, det, cfg)
            sizes = MaskSizes.of(batch)
            instances = to_instances(det, assignment, state, sizes, cfg.temporal_score_type)
        return state, instances

    def run_group(self, items: list[FrameItem], batches: list[FrameBatch]) -> list[FrameOutcome]:
        """One forward for frames of one padded size, then the tracker per item.

        Raises:
            Exception: whatever the forward raised (``run_batch`` then retries the items one
                at a time); a tracker failure is returned in its item's outcome instead.
        """
        started = time.perf_counter()
        outputs = self._forward(torch.cat([b.pixels for b in batches]))
        results: list[tuple[TrackState | None, list[Instance], Exception | None]] = []
        for row, (item, batch) in enumerate(zip(items, batches, strict=True)):
            try:
                state, instances = self._track(item, outputs, row, batch)
                results.append((state, instances, None))
            except Exception as exc:  # noqa: BLE001 - isolated to this item
                results.append((None, [], exc))
        ms = (time.perf_counter() - started) * 1000
        return [FrameOutcome(s, i, ms, len(items), e) for s, i, e in results]

    def run_batch(self, items: list[FrameItem]) -> list[FrameOutcome]:
        """Process frames of different sessions; outcomes are in item order.

        Args:
            items: at most one frame per session (a session's frames run strictly in order,
                so the caller never puts two frames of one session in one batch).

        Returns:
            One ``FrameOutcome`` per item; a failing item carries its exception.
        """
        outcomes: list[FrameOutcome | None] = [None] * len(items)
        prepared: dict[int, FrameBatch] = {}
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            try:
                prepared[i] = prepare_frames([item.frame], self.served.preprocess_cfg)
                groups[prepared[i].padded_size].append(i)
            except Exception as exc:  # noqa: BLE001 - a bad frame fails only itself
                outcomes[i] = FrameOutcome(None, [], 0.0, 1, exc)
        for indices in groups.values():
            try:
                group = self.run_group([items[i] for i in indices], [prepared[i] for i in indices])
            except Exception:  # noqa: BLE001 - retry one by one to isolate a poison frame
                group = []
                for i in indices:
                    try:
                        group.extend(self.run_group([items[i]], [prepared[i]]))
                    except Exception as exc:  # noqa: BLE001
                        group.append(FrameOutcome(None, [], 0.0, 1, exc))
            for i, outcome in zip(indices, group, strict=True):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]
