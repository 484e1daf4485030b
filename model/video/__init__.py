"""Offline video work: frame decoding, whole-video tracking with checkpoints, overlay videos."""
