"""Where gramophone keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache folder: ``$GRAMOPHONE_CACHE`` or ``~/.cache/gramophone`` (created on demand).

    Shared by every clone on a machine, so tests and CI reuse converted corpora and
    compiled automata.
    """
    root = os.environ.get("GRAMOPHONE_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "gramophone"
    path.mkdir(parents=True, exist_ok=True)
    return path
