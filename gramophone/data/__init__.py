"""Data: the corpus (music21's Bach chorales by default) as cached MIDI files, splits, and
token windows with their automaton states (:mod:`gramophone.data.dataset`); any folder of
MIDI files tokenized into memory-mapped shards (:mod:`gramophone.data.corpus`).

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
from gramophone.data.corpus import CorpusReport, build_corpus, find_midi_files, load_data
from gramophone.data.dataset import DataConfig, Dataset, TokenSplit, load_dataset, train_batch

__all__ = [
    "CHORALES_VERSION",
    "CorpusReport",
    "DataConfig",
    "Dataset",
    "TokenSplit",
    "build_corpus",
    "cache_dir",
    "chorale_dir",
    "chorale_midis",
    "chorale_names",
    "chorale_path",
    "find_midi_files",
    "load_data",
    "load_dataset",
    "split_names",
    "train_batch",
]
