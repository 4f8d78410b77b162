"""Data: the corpus (music21's Bach chorales by default) as cached MIDI files, splits, and
token windows with their automaton states (:mod:`gramophone.data.dataset`).

Importing this package imports neither music21 nor symusic; they are loaded when a
conversion actually runs.
"""

from __future__ import annotations

from gramophone._files import cache_dir
from gramophone.data.chorales import (
    CHORALES_VERSION,
    chorale_dir,
    chorale_midis,
    chorale_names,
    chorale_path,
    split_names,
)
from gramophone.data.dataset import DataConfig, Dataset, TokenSplit, load_dataset, train_batch

__all__ = [
    "CHORALES_VERSION",
    "DataConfig",
    "Dataset",
    "TokenSplit",
    "cache_dir",
    "chorale_dir",
    "chorale_midis",
    "chorale_names",
    "chorale_path",
    "load_dataset",
    "split_names",
    "train_batch",
]
