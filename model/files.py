"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

Every writer goes through ``atomic_path``: the data is written to a temporary file in the
target's folder (same filesystem, so the final ``os.replace`` is an atomic rename) and moved
over the target only once the write returned; a failed write leaves the target untouched and
no temporary file behind. The temporary name is hidden (leading dot), unique per writer, and
keeps the target's suffix, so writers that pick a format from the extension (video encoders,
``torch.save`` of ``.pt``) write the right one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write to; it replaces ``path`` when the block exits normally.

    The folder of ``path`` must exist. On an exception the temporary file is deleted (if the
    block created it) and ``path`` keeps its previous contents.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically (see the module doc)."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
