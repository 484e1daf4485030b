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
    return settings
