"""Secrets never reach a log line.

Browsers cannot set headers on a WebSocket, so the session token and API key may travel in the
query string (``?token=``, ``?api_key=``), and uvicorn's access and WebSocket log lines print
the whole path. ``RedactSecrets`` rewrites those values to ``[redacted]`` in every record that
passes a handler it is installed on, whatever the logger.
"""

from __future__ import annotations

import logging
import re

SECRET_PARAMS = ("token", "api_key", "key", "access_token")
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:" + "|".join(SECRET_PARAMS) + r")=)[^&\s\"']*",
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with query-string secrets and bearer credentials replaced by ``[redacted]``."""
    return _BEARER.sub(r"\1" + REDACTED, _SECRET_QUERY.sub(r"\1" + REDACTED, text))


class RedactSecrets(logging.Filter):
    """A handler filter that redacts secrets in a record's message and arguments.

    Arguments are redacted one by one (not the formatted message), so formatters that read
    positional arguments, such as uvicorn's access formatter, keep working.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def install_redaction(*logger_names: str) -> None:
    """Add ``RedactSecrets`` to every handler of the root logger and of ``logger_names``."""
    flt = RedactSecrets()
    for name in ("", *logger_names):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(flt)
