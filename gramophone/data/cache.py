"""The project's cache folder and atomic writes into it.

The cache lives outside the repository (``~/.cache/gramophone`` unless the environment
variable ``GRAMOPHONE_CACHE`` says otherwise) so that every clone on one machine, the test
suite and CI share one copy of what is slow to build (the corpus converted to MIDI, ...).
Everything written there goes through :func:`atomic_write_bytes` (or the same temp file +
:func:`os.replace` pattern), so a killed run never leaves a truncated file behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "atomic_write_bytes", "cache_dir", "remove_stale_temp_files"]

CACHE_ENV_VAR = "GRAMOPHONE_CACHE"
"""Name of the environment variable that moves the cache folder."""

TEMP_SUFFIX = ".tmp"
"""Suffix of the temporary files that atomic writes rename into place."""


def cache_dir() -> Path:
    """The project's cache folder, created on demand.

    ``$GRAMOPHONE_CACHE`` when set (and not empty), else ``~/.cache/gramophone``.
    """
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "gramophone"
    path.mkdir(parents=True, exist_ok=True)
    return path


def temp_path_for(dest: Path) -> Path:
    """A fresh, unique temporary path in the folder of *dest* (same file system).

    The file is created (empty) so that two writers never pick the same name; the caller
    fills it and renames it over *dest* with :func:`os.replace`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write *data* to *dest* atomically: a temp file in the same folder, then a rename."""
    tmp = temp_path_for(dest)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temp_files(folder: Path, older_than_s: float = 3600.0) -> int:
    """Delete temp files left in *folder* (recursively) by killed runs; returns how many.

    Only files older than *older_than_s* are removed, so that a run going on at the same
    time in another process (two test sessions sharing the cache) keeps its own.
    """
    if not folder.is_dir():
        return 0
    now = time.time()
    removed = 0
    for path in folder.rglob(f".*{TEMP_SUFFIX}"):
        try:
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except OSError:  # raced with its owner or another cleaner: not ours to worry about
            continue
    return removed
