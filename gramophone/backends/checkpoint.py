"""Framework-neutral checkpoints: a directory any backend can read.

Layout::

    CKPT/
      config.json                {"format", "version", "model", "train", "step", "meta",
                                  "backend", "files": {name: {"file", "bytes", "sha256"}},
                                  "previous": [files of the previous save]}
      model.<sha12>.safetensors  float32 weights, PyTorch layout and names ("model.safetensors")
      optimizer-torch.<sha12>.pt optional, for resuming with the torch backend
      optimizer-jax...           optional, for resuming with the jax backend

Parameter names and shapes are those of :func:`expected_shapes` (a ``Linear`` weight is
``[out, in]``; the JAX backend transposes at the boundary).

**Atomic as a whole.** Each file is written under a name that holds its content's SHA-256
(``model.safetensors`` is stored as ``model.<sha12>.safetensors``), then ``config.json``,
which names them, is replaced in one ``os.replace``: a reader that opens ``config.json``
sees the old checkpoint or the new one, never new weights with an old config. The files of
the save before the previous one are removed then (those of the previous save stay, for a
reader that read the old ``config.json`` a moment ago). Version-1 checkpoints (files under
their plain names, as the bundled model) are read as before. A checkpoint that was
truncated or corrupted is detected (sizes and SHA-256) and reported as one
:class:`~gramophone.errors.CheckpointError` line naming the file. Other files in the
directory (logs, samples) are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gramophone import _files
from gramophone.backends.config import ModelConfig, TrainConfig
from gramophone.errors import CheckpointError

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "VERSION",
    "WEIGHTS_FILE",
    "CheckpointInfo",
    "atomic_write",
    "check_weights",
    "expected_shapes",
    "file_path",
    "read_info",
    "read_weights",
    "save_checkpoint",
]

FORMAT = "gramophone-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: files under their plain names
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in the checkpoint's (PyTorch) layout and order."""
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (V, D)}
    for i in range(config.n_layers):
        p = f"blocks.{i}."
        shapes |= {
            p + "ln1.weight": (D,),
            p + "ln1.bias": (D,),
            p + "attn.qkv.weight": (3 * D, D),
            p + "attn.qkv.bias": (3 * D,),
            p + "attn.proj.weight": (D, D),
            p + "attn.proj.bias": (D,),
            p + "ln2.weight": (D,),
            p + "ln2.bias": (D,),
            p + "mlp.fc.weight": (F, D),
            p + "mlp.fc.bias": (F,),
            p + "mlp.proj.weight": (D, F),
            p + "mlp.proj.bias": (D,),
        }
    shapes |= {"ln_f.weight": (D,), "ln_f.bias": (D,), "head.weight": (V, D), "head.bias": (V,)}
    return shapes


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``config.json`` says (weights not loaded)."""

    path: Path
    model: ModelConfig
    train: TrainConfig | None
    step: int
    meta: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- writing


def atomic_write(path: Path, writer: Callable[[Path], object]) -> dict[str, Any]:
    """:func:`gramophone._files.atomic_write` of ``writer``; returns ``{"bytes", "sha256"}``
    of the written file."""
    return _describe(_files.atomic_write(path, writer))


def _describe(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def save_checkpoint(
    path: str | os.PathLike[str],
    weights: Mapping[str, np.ndarray] | None,
    model: ModelConfig,
    *,
    train: TrainConfig | None = None,
    step: int = 0,
    meta: Mapping[str, Any] | None = None,
    backend: str | None = None,
    extra_files: Mapping[str, Callable[[Path], object]] | None = None,
) -> Path:
    """Write a checkpoint directory (created if needed) and return its path.

    ``weights``: name -> float32 array, exactly the names and shapes of
    :func:`expected_shapes` (checked before anything is written); ``None`` for a backend
    whose model is not gramophone's Transformer (``hf``): it writes its weights among
    ``extra_files``, and ``model`` describes the shape.
    ``extra_files``: file name -> ``writer(tmp_path)``, e.g. optimizer state.
    """
    from safetensors.numpy import save_file

    directory = Path(path)
    writers: dict[str, Callable[[Path], object]] = {}
    if weights is not None:
        check_weights(weights, model, f"{directory / WEIGHTS_FILE} (writing)")
        arrays = {k: np.ascontiguousarray(weights[k], dtype=np.float32) for k in expected_shapes(model)}
        writers[WEIGHTS_FILE] = lambda tmp: save_file(arrays, str(tmp))
    directory.mkdir(parents=True, exist_ok=True)
    writers |= extra_files or {}
    before, earlier = _previous_files(directory)
    files = {name: _write_addressed(directory, name, writer) for name, writer in writers.items()}
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.to_dict(),
        "train": None if train is None else train.to_dict(),
        "step": int(step),
        "meta": dict(meta or {}),
        "backend": backend,
        "files": files,
        "previous": sorted(before),
    }
    text = json.dumps(config, indent=2, sort_keys=False) + "\n"
    atomic_write(directory / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    keep = before | {r["file"] for r in files.values()}
    for stale in earlier - keep:  # the save before the previous one: no reader holds it now
        with contextlib.suppress(OSError):
            (directory / stale).unlink()
    return directory


def _stored_name(name: str, sha256: str) -> str:
    """``model.safetensors`` -> ``model.<sha12>.safetensors`` (the content names the file)."""
    stem, dot, suffix = name.partition(".")
    return f"{stem}.{sha256[:12]}{dot}{suffix}"


def _write_addressed(directory: Path, name: str, writer: Callable[[Path], object]) -> dict[str, Any]:
    """Write ``name`` under its content-addressed name; its ``files`` record in config.json."""
    tmp = _files.temp_path_for(directory / name)
    try:
        record = atomic_write(tmp, writer)
        stored = _stored_name(name, record["sha256"])
        os.replace(tmp, directory / stored)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return {"file": stored, **record}


def _previous_files(directory: Path) -> tuple[set[str], set[str]]:
    """The files the current ``config.json`` names, and those of the save before it."""
    try:
        data = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        files = data.get("files") or {}
        current = {str(r.get("file", n)) for n, r in files.items()}
        earlier = {str(f) for f in data.get("previous") or []}
    except (OSError, ValueError, AttributeError):
        return set(), set()
    return current, earlier


# ----------------------------------------------------------------------------- reading


def read_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read and validate ``config.json``; raises :class:`CheckpointError`."""
    directory = Path(path)
    cfg_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (is {directory} a gramophone checkpoint?)")
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f'{cfg_path}: not a gramophone checkpoint config (expected "format": "{FORMAT}")'
        )
    if data.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{cfg_path}: unsupported checkpoint version "
            f"{data.get('version')!r} (this gramophone reads {', '.join(map(str, READABLE_VERSIONS))})"
        )
    try:
        model = ModelConfig.from_dict(data["model"])
        train = None if data.get("train") is None else TrainConfig.from_dict(data["train"])
    except KeyError as exc:
        raise CheckpointError(f"{cfg_path}: missing key {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{cfg_path}: invalid configuration: {exc}") from None
    step, meta, files = data.get("step", 0), data.get("meta") or {}, data.get("files") or {}
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f'{cfg_path}: "step" must be a non-negative int, got {step!r}')
    if not isinstance(meta, dict) or not isinstance(files, dict):
        raise CheckpointError(f'{cfg_path}: "meta" and "files" must be JSON objects')
    return CheckpointInfo(directory, model, train, step, meta, data.get("backend"), files)


def file_path(info: CheckpointInfo, name: str, *, verify: bool = True) -> Path | None:
    """Path of the checkpoint's file ``name`` if ``config.json`` lists it, else ``None``.

    With ``verify``, a listed file that is missing or whose size or SHA-256 differs from the
    record raises :class:`CheckpointError`.
    """
    record = info.files.get(name)
    if record is None:
        return None
    stored = record.get("file", name) if isinstance(record, dict) else name
    if not isinstance(stored, str) or Path(stored).name != stored:
        raise CheckpointError(f"{info.path / CONFIG_FILE}: file record of {name!r} is malformed")
    p = info.path / stored
    if not p.is_file():
        raise CheckpointError(f"{p}: missing (listed in {CONFIG_FILE})")
    if verify:
        size = p.stat().st_size
        if size != record.get("bytes"):
            raise CheckpointError(
                f"{p}: truncated or corrupted: {size} bytes, {CONFIG_FILE} records {record.get('bytes')}"
            )
        if record.get("sha256") and _describe(p)["sha256"] != record["sha256"]:
            raise CheckpointError(
                f"{p}: corrupted or overwritten: SHA-256 differs from the one recorded in {CONFIG_FILE}"
            )
    return p


def read_weights(info: CheckpointInfo, *, verify: bool = True) -> dict[str, np.ndarray]:
    """Load the weights (``model.safetensors``) and check it against ``info.model``; name -> float32 array."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    # a config without file records (written by hand): the plain name, safetensors' own checks
    p = file_path(info, WEIGHTS_FILE, verify=verify) or info.path / WEIGHTS_FILE
    if not p.is_file() and info.files and info.backend is not None:
        raise CheckpointError(
            f"{info.path}: holds a model of the {info.backend} backend, not gramophone's Transformer: "
            f"load it with --backend {info.backend}"
        )
    if not p.is_file():
        raise CheckpointError(f"{p}: missing")
    try:
        weights = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p}: truncated or corrupted ({exc})") from None
    check_weights(weights, info.model, str(p))
    return weights


def check_weights(weights: Mapping[str, np.ndarray], model: ModelConfig, where: str) -> None:
    """Raise :class:`CheckpointError` unless ``weights`` has exactly the names, shapes and
    dtype (float32) that ``model`` needs; ``where`` starts the message."""
    shapes = expected_shapes(model)
    missing = [k for k in shapes if k not in weights]
    unexpected = sorted(set(weights) - set(shapes))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise CheckpointError(f"{where}: tensors do not match the model config: " + "; ".join(parts))
    for name, shape in shapes.items():
        arr = weights[name]
        if tuple(arr.shape) != shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(arr.shape)}, but the model config "
                f"(vocab_size={model.vocab_size}, d_model={model.d_model}, d_ff={model.d_ff}) "
                f"expects {shape}"
            )
        if arr.dtype != np.float32:
            raise CheckpointError(f"{where}: tensor {name!r} is {arr.dtype}, expected float32")


def _few(names: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
