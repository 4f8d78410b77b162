"""The public surface is explicit, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import gramophone


def test_public_names_are_pinned() -> None:
    assert sorted(gramophone.__all__) == sorted(
        [
            "Automaton",
            "BackendUnavailableError",
            "CheckpointError",
            "Component",
            "GrammarError",
            "GramophoneError",
            "TokenFileError",
            "UnsupportedConfigError",
            "__version__",
            "check_ids",
            "compile_grammar",
            "compile_remi",
            "compile_tokenizer",
            "load_tokenizer",
            "read_token_file",
        ]
    )
    for name in gramophone.__all__:
        assert getattr(gramophone, name) is not None


def test_error_hierarchy() -> None:
    assert issubclass(gramophone.GrammarError, ValueError)
    assert issubclass(gramophone.UnsupportedConfigError, gramophone.GrammarError)
    assert issubclass(gramophone.BackendUnavailableError, ImportError)
    for name in ("GrammarError", "TokenFileError", "CheckpointError", "BackendUnavailableError"):
        assert issubclass(getattr(gramophone, name), gramophone.GramophoneError)


def test_import_loads_neither_torch_nor_jax() -> None:
    code = (
        "import sys, gramophone, gramophone.grammar, gramophone.tokenizers, gramophone.cli, "
        "gramophone.training, gramophone.models, gramophone.data, gramophone.bench.train, "
        "gramophone.decoding, gramophone.kernels, gramophone.kernels.numpy, gramophone.bench.vocab; "
        "print(any(m in sys.modules for m in ('torch', 'jax', 'flax')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
