"""Constrained decoding: sampling rules, hard masking, length-aware masking, decode driver.

- :mod:`~gramophone.decoding.rules`: the sampling rules, written once (spec + numpy);
- :mod:`~gramophone.decoding.framing`: the decoding language (grammar + BOS/EOS framing +
  one note at least + optional bar count);
- :mod:`~gramophone.decoding.tables`: that language as per-group rows over the model's
  vocabulary (learned tokens lifted) and one exact distance-to-acceptance table
  (:mod:`~gramophone.decoding.distance`);
- :mod:`~gramophone.decoding.prompt`: prompts checked and stepped;
- :mod:`~gramophone.decoding.loop`: the loop contract and the numpy reference loop;
- ``torch_loop`` / ``jax_loop``: the device loops, imported only when chosen;
- :mod:`~gramophone.decoding.driver`: checkpoint -> batches -> files (``gramophone decode``).

Importing this package imports neither PyTorch nor JAX.
"""

from gramophone.decoding.driver import (
    DecodeOptions,
    DecodeSummary,
    decode_to_folder,
    generate,
    load_model,
    sampler_for,
)
from gramophone.decoding.loop import DecodeRequest, DecodeResult, sample_numpy
from gramophone.decoding.prompt import PreparedPrompt, prepare_prompt
from gramophone.decoding.rules import INF, Sampling
from gramophone.decoding.tables import DecodingTables, decoding_tables, tables_for

__all__ = [
    "INF",
    "DecodeOptions",
    "DecodeRequest",
    "DecodeResult",
    "DecodeSummary",
    "DecodingTables",
    "PreparedPrompt",
    "Sampling",
    "decode_to_folder",
    "decoding_tables",
    "generate",
    "load_model",
    "prepare_prompt",
    "sample_numpy",
    "sampler_for",
    "tables_for",
]
