"""Data: the corpus (music21's Bach chorales by default) as cached MIDI files, and splits.

Importing this package imports neither music21 nor symusic; they are loaded when a
conversion actually runs.
"""

from __future__ import annotations

from gramophone.data.cache import cache_dir
from gramophone.data.chorales import (
    CHORALES_VERSION,
    chorale_dir,
    chorale_midis,
    chorale_names,
    chorale_path,
    split_names,
)

__all__ = [
    "CHORALES_VERSION",
    "cache_dir",
    "chorale_dir",
    "chorale_midis",
    "chorale_names",
    "chorale_path",
    "split_names",
]
