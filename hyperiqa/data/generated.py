"""Datasets generated on first use (demo, photos): written once per folder, whoever asks first.

A folder is complete when its marker file holds the generator's version; the marker is written last,
so a generation that died half-way is simply done again, and a changed generator (new version)
regenerates old folders. Trials starting together on one node wait on one file lock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from hyperiqa.utils import atomic_write_text

MARKER = ".complete"


def ensure_generated(root: str | Path, version: str, generate: Callable[[Path], None]) -> Path:
    """Run generate(root) unless `root` holds a complete copy of `version`; returns the absolute root."""
    root = Path(root).expanduser().resolve()
    if is_complete(root, version):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if not is_complete(root, version):
            (root / MARKER).unlink(missing_ok=True)
            generate(root)
            atomic_write_text(root / MARKER, version + "\n")
    return root


def is_complete(root: Path, version: str) -> bool:
    try:
        return (root / MARKER).read_text().strip() == version
    except OSError:
        return False
