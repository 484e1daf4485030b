"""Download and unpack a checkpoint archive at image build time (``DEMO_CHECKPOINT_URL``).

    python deploy/fetch_checkpoint.py URL DEST [--sha256 HEX]

``URL`` names a ``.tar.gz`` (or ``.tar``) whose members are the files of one checkpoint
directory (as written by ``ctvis convert`` or training), at the top level or inside a single
folder. An empty ``URL`` does nothing, so the Dockerfile can call this unconditionally.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path


def fetch_checkpoint(url: str, dest: Path, sha256: str | None = None) -> Path | None:
    """Unpack the archive at ``url`` into ``dest``; returns ``dest`` (None when ``url`` is "").

    Raises:
        ValueError: if the archive's SHA-256 differs from ``sha256`` or it is empty.
    """
    if not url:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "checkpoint.tar"
        with urllib.request.urlopen(url, timeout=600) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if sha256 and digest != sha256.lower():
            raise ValueError(f"{url}: sha256 {digest} differs from the expected {sha256}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")  # refuses absolute paths and links out
        entries = list(unpacked.iterdir())
        if not entries:
            raise ValueError(f"{url}: the archive is empty")
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(root, dest, dirs_exist_ok=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    """Command line of ``fetch_checkpoint``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="archive URL; empty: do nothing")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--sha256", default=None)
    args = parser.parse_args(argv)
    done = fetch_checkpoint(args.url, args.dest, args.sha256 or None)
    print(f"checkpoint unpacked into {done}" if done else "no checkpoint to bake")
    return 0


if __name__ == "__main__":
    sys.exit(main())
