"""Files, once: the cache folder, the hash of the code that fills it, atomic writes.

The cache lives outside the repository (``~/.cache/gramophone`` unless the environment
variable ``GRAMOPHONE_CACHE`` says otherwise) so that every clone on one machine, the test
suite and CI share one copy of what is slow to build (the corpus converted to MIDI,
compiled automata, decoding tables, datasets, XLA executables). Every cache key includes
:func:`code_hash` of the code that builds the entry.

Everything gramophone writes goes through :func:`atomic_write`: a temporary file in the
same folder, fsynced, then :func:`os.replace`, so a killed run never leaves a truncated
file behind (:func:`remove_stale_temp_files` sweeps the temporary files of killed runs).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "CACHE_ENV_VAR",
    "TEMP_SUFFIX",
    "atomic_write",
    "atomic_write_bytes",
    "cache_dir",
    "code_hash",
    "keep_cache_under",
    "remove_stale_temp_files",
    "temp_path_for",
    "touch",
]

CACHE_ENV_VAR = "GRAMOPHONE_CACHE"
"""Name of the environment variable that moves the cache folder."""

TEMP_SUFFIX = ".tmp"
"""Suffix of the temporary files that atomic writes rename into place."""


def cache_dir() -> Path:
    """The cache folder, created on demand: ``$GRAMOPHONE_CACHE`` when set (and not
    empty), else ``~/.cache/gramophone``."""
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "gramophone"
    path.mkdir(parents=True, exist_ok=True)
    return path


def code_hash(files: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 (16 hex) of the names and contents of ``files`` (in sorted order).

    Part of every cache key, so that a cache entry never outlives a change to the code that
    built it (between releases too, where the version alone would not notice).
    """
    return _code_hash(tuple(sorted(str(f) for f in files)))


@functools.cache
def _code_hash(files: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in files:
        path = Path(name)
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- atomic writes


def temp_path_for(dest: Path) -> Path:
    """A fresh, unique temporary path in the folder of ``dest`` (same file system), created
    empty so that two writers never pick the same name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    os.close(fd)
    return Path(name)


@functools.cache
def _new_file_mode() -> int:
    """The mode :func:`open` gives a new file: 0o666 less the process's umask (read once;
    :func:`os.umask` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def give_mode(tmp: Path, dest: Path) -> None:
    """Before ``tmp`` (a private temporary file) replaces ``dest``: the mode of the
    ``dest`` it replaces, or that a plain ``open`` gives a new file under the umask."""
    try:
        mode = dest.stat().st_mode & 0o7777
    except OSError:
        mode = _new_file_mode()
    os.chmod(tmp, mode)


def atomic_write(dest: str | os.PathLike[str], content: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``dest`` whole or not at all: ``content`` (bytes, UTF-8 text, or
    ``writer(tmp_path)`` that fills a temporary path) into a temporary file next to it,
    fsync, :func:`os.replace`. On any exception (Ctrl-C included) the temporary file is
    removed and ``dest`` is untouched. The file gets the mode a plain ``open`` would give
    it (the temporary file is private until then), or keeps the mode of the ``dest`` it
    replaces. Returns ``dest``."""
    dest = Path(dest)
    tmp = temp_path_for(dest)
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        give_mode(tmp, dest)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return dest


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(dest, data)


def remove_stale_temp_files(folder: Path, older_than_s: float = 3600.0) -> int:
    """Delete temp files left in ``folder`` (recursively) by killed runs; returns how many.

    Only files older than ``older_than_s`` are removed, so that a run going on at the same
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


# ----------------------------------------------------------------------------- cache size

CACHE_MAX_ENV_VAR = "GRAMOPHONE_CACHE_MAX_GB"
"""Environment variable: the most gigabytes one cache folder (decoding tables, ...) keeps."""
DEFAULT_CACHE_MAX_GB = 4.0


def keep_cache_under(folder: Path, max_bytes: int | None = None) -> int:
    """Delete the least recently used files of ``folder`` until it holds at most
    ``max_bytes`` (default ``$GRAMOPHONE_CACHE_MAX_GB``, 4 GB); returns how many. Cache keys
    change with the code, so without this old entries pile up (readers touch the entries
    they use: :func:`touch`). The newest entry is always kept."""
    if max_bytes is None:
        try:
            max_bytes = int(float(os.environ.get(CACHE_MAX_ENV_VAR, DEFAULT_CACHE_MAX_GB)) * 1e9)
        except ValueError:
            max_bytes = int(DEFAULT_CACHE_MAX_GB * 1e9)
    entries = []
    for path in folder.glob("*"):
        try:
            st = path.stat()
        except OSError:
            continue
        if path.is_file() and not path.name.startswith("."):
            entries.append((st.st_mtime, st.st_size, path))
    entries.sort()
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in entries[:-1]:  # oldest first, never the newest
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            total -= size
            removed += 1
    return removed


def touch(path: Path) -> None:
    """Mark a cache entry as just used (its modification time: what
    :func:`keep_cache_under` evicts by)."""
    with contextlib.suppress(OSError):
        os.utime(path)
