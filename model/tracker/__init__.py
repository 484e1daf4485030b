"""Online CTVIS tracker: candidate selection, memory bank value, matching and its codec."""

from model.tracker.codec import dumps, loads
from model.tracker.select import select_candidates
from model.tracker.state import TrackState, check_state, init_state
from model.tracker.step import track_step

__all__ = [
    "TrackState",
    "check_state",
    "dumps",
    "init_state",
    "loads",
    "select_candidates",
    "track_step",
]
