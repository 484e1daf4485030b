"""Tracker options: one table of types and ranges, one function that reads them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from model.config import (
    TRACKER_OPTION_RULES,
    TrackerConfig,
    TrackerOptionError,
    check_tracker_option,
    to_dict,
    tracker_config_from_dict,
    validate_tracker_config,
)


def test_every_tracker_field_has_a_rule_and_the_defaults_pass() -> None:
    assert set(TRACKER_OPTION_RULES) == {f.name for f in dataclasses.fields(TrackerConfig)}
    assert validate_tracker_config(TrackerConfig()) == TrackerConfig()


# The payloads a careless or hostile client sent, each accepted before.
BAD = [
    ("cache_size", 1_000_000),
    ("cache_size", 2**80),
    ("cache_size", 0),
    ("cache_size", 2.5),
    ("max_tracks", -5),
    ("max_tracks", 10**9),
    ("num_dead_frames", 10**12),
    ("match_threshold", math.nan),
    ("momentum", math.inf),
    ("momentum", -math.inf),
    ("embed_type", "evil"),
    ("match_metric", 3),
    ("frame_weight", 1),
    ("select_threshold", True),
    ("select_threshold", "0.5"),
    ("mask_logit_offset", 11),
    ("box_iou_weight", None),
    ("temporal_score_type", ["mean"]),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_values_are_refused_naming_the_option_and_its_range(name: str, value: object) -> None:
    with pytest.raises(TrackerOptionError) as info:
        tracker_config_from_dict({name: value})
    assert info.value.option == name
    message = str(info.value)
    assert repr(name) in message
    assert TRACKER_OPTION_RULES[name].describe() in message
    assert len(message) < 400  # a huge value is shortened, not echoed


def test_unknown_option_and_non_mapping_are_refused() -> None:
    with pytest.raises(TrackerOptionError, match="unknown tracker option 'nope'"):
        tracker_config_from_dict({"nope": 1})
    with pytest.raises(TrackerOptionError) as info:
        tracker_config_from_dict([("cache_size", 3)])  # type: ignore[arg-type]
    assert info.value.option == "tracker"


def test_good_values_are_coerced_and_kept() -> None:
    base = dataclasses.replace(TrackerConfig(), match_threshold=0.5)
    cfg = tracker_config_from_dict(
        {"momentum": 1, "cache_size": 64, "embed_type": "momentum", "frame_weight": False}, base
    )
    assert cfg.momentum == 1.0 and isinstance(cfg.momentum, float)
    assert cfg.cache_size == 64 and cfg.embed_type == "momentum" and cfg.frame_weight is False
    assert cfg.match_threshold == 0.5  # the base's value where data is silent
    assert check_tracker_option("max_tracks", 1024) == 1024


def test_cache_rows_are_bounded_jointly() -> None:
    # the largest cache with the default track ceiling is allowed
    assert tracker_config_from_dict({"cache_size": 64}).max_tracks == TrackerConfig().max_tracks
    tracker_config_from_dict({"cache_size": 16, "max_tracks": 1024})
    with pytest.raises(TrackerOptionError, match="cache_size \\* max_tracks"):
        tracker_config_from_dict({"cache_size": 64, "max_tracks": 1024})


def test_checkpoint_with_out_of_range_tracker_is_refused(tmp_path: Path) -> None:
    from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from model.nn.build import PRESETS, build_segmenter

    model_cfg, pre_cfg, trk_cfg = PRESETS["tiny"]
    save_checkpoint(tmp_path, build_segmenter(model_cfg), model_cfg, pre_cfg, trk_cfg, {})
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["tracker"]["cache_size"] = 10**6
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cache_size"):
        load_checkpoint(tmp_path)


def test_training_config_checks_the_tracker_section() -> None:
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="tracker: .*max_tracks"):
        load_config(None, ["tracker.max_tracks=-5"])
    assert load_config(None, ["tracker.cache_size=4"]).tracker.cache_size == 4


def test_track_cli_overrides_use_the_same_rules() -> None:
    from cli.track import TrackError, _tracker_overrides

    cfg = _tracker_overrides(TrackerConfig(), ["box_iou_weight=0.5", "match_threshold=0.1"])
    assert (cfg.box_iou_weight, cfg.match_threshold) == (0.5, 0.1)
    with pytest.raises(TrackError, match="--tracker: .*'embed_type' must be one of"):
        _tracker_overrides(TrackerConfig(), ["embed_type=evil"])
    with pytest.raises(TrackError, match="cache_size"):
        _tracker_overrides(TrackerConfig(), ["cache_size=1000000"])


def test_round_trip_through_to_dict() -> None:
    cfg = dataclasses.replace(TrackerConfig(), cache_size=3, box_iou_weight=0.7)
    assert tracker_config_from_dict(to_dict(cfg)) == cfg
