"""Helpers shared by the ``ctvis`` subcommands that build service settings."""

from __future__ import annotations

import sys
from typing import Any


def load_settings(command: str, overrides: dict[str, Any]) -> Any | None:
    """``service.settings.Settings`` from the environment plus non-None ``overrides``.

    Prints the validation error and returns None when the settings are invalid; configures
    logging at the settings' level otherwise.
    """
    import logging

    from service.settings import Settings

    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        print(f"ctvis {command}: invalid settings: {exc}", file=sys.stderr)
        return None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    if settings.malloc_tuned and not tune_malloc():
        logging.getLogger("ctvis").info("malloc_tuned: not glibc, left as it is")
    return settings


def tune_malloc(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where it is not glibc.

    glibc serves blocks above its (adaptive, 128 KiB to 32 MiB) mmap threshold with fresh
    mappings and unmaps them on free, so a loop that allocates and frees ~1 MB tensors every
    frame page-faults them in every time. Pinning the thresholds keeps those blocks in the heap
    for reuse: the same as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the
    environment, but settable after start-up.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    ok = mallopt(m_mmap_threshold, mmap_threshold) == 1
    return mallopt(m_trim_threshold, trim_threshold) == 1 and ok
