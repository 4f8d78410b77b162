"""Model backends: one Transformer, in PyTorch and in JAX/Flax, one checkpoint format;
and ``hf``, HuggingFace transformers models (:mod:`gramophone.hf`), decoded and trained.

Importing this package imports neither framework; :func:`get_backend` imports the one
asked for.

>>> "torch" in known_backends() and "jax" in known_backends()
True
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from gramophone.backends.base import Backend, Batch, Checkpoint
from gramophone.backends.config import (
    PRESETS,
    ModelConfig,
    Preset,
    TrainConfig,
    get_preset,
    learning_rate,
)
from gramophone.errors import BackendUnavailableError

__all__ = [
    "PRESETS",
    "Backend",
    "Batch",
    "Checkpoint",
    "ModelConfig",
    "Preset",
    "TrainConfig",
    "available_backends",
    "decode_loop",
    "get_backend",
    "get_preset",
    "known_backends",
    "learning_rate",
    "register_backend",
]


@dataclass(frozen=True)
class _Entry:
    module: str  # module defining the backend class
    cls: str  # its name
    requires: tuple[str, ...]  # top-level modules that must be importable
    extra: str  # the pip extra that installs them
    loop: str | None = None  # module whose backend_sampler(backend, params) decodes (else numpy)


_REGISTRY: dict[str, _Entry] = {
    "torch": _Entry(
        "gramophone.backends.torch_backend",
        "TorchBackend",
        ("torch", "safetensors"),
        "torch",
        "gramophone.decoding.torch_loop",
    ),
    "jax": _Entry(
        "gramophone.backends.jax_backend",
        "JaxBackend",
        ("jax", "flax", "optax", "safetensors"),
        "jax",
        "gramophone.decoding.jax_loop",
    ),
    # HuggingFace transformers models (save_pretrained folders); decodes with the torch loop,
    # trains with the torch backend's training half
    "hf": _Entry(
        "gramophone.hf",
        "HFBackend",
        ("torch", "transformers", "safetensors"),
        "hf",
        "gramophone.hf",
    ),
}
_INSTANCES: dict[str, Backend] = {}


def register_backend(
    name: str,
    module: str,
    cls: str,
    requires: tuple[str, ...] = (),
    extra: str | None = None,
    *,
    loop: str | None = None,
) -> None:
    """Make ``get_backend(name)`` import ``module`` and instantiate its class ``cls``.

    ``loop``: a module whose ``backend_sampler(backend, params)`` returns the decoding loop
    ``(tables, request) -> DecodeResult`` (see :mod:`gramophone.decoding.loop`); without
    one, decoding runs the numpy reference loop over the backend's ``prefill``/``step``.
    """
    _REGISTRY[name] = _Entry(module, cls, tuple(requires), extra or name, loop)
    _INSTANCES.pop(name, None)


def decode_loop(name: str) -> str | None:
    """The module of ``name``'s own decoding loop (see :func:`register_backend`), or None."""
    entry = _REGISTRY.get(name)
    return None if entry is None else entry.loop


def known_backends() -> list[str]:
    """Every registered backend name, installed or not."""
    return sorted(_REGISTRY)


def _missing(entry: _Entry) -> list[str]:
    return [m for m in entry.requires if importlib.util.find_spec(m) is None]


def available_backends() -> list[str]:
    """Registered backends whose frameworks are installed (checked without importing them)."""
    return [name for name in sorted(_REGISTRY) if not _missing(_REGISTRY[name])]


def get_backend(name: str, **options: Any) -> Backend:
    """The backend called ``name`` (``"torch"``, ``"jax"``, ``"hf"``), importing its framework now.

    Without ``options`` the instance is shared; ``options`` go to the backend's constructor
    (e.g. ``device="cuda"`` for torch). Raises :class:`BackendUnavailableError` for an
    unknown name or a framework that is not installed.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; known backends: {', '.join(known_backends())}"
        )
    if not options and name in _INSTANCES:
        return _INSTANCES[name]
    missing = _missing(entry)
    if missing:
        raise BackendUnavailableError(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed: "
            f"pip install 'gramophone[{entry.extra}]'"
        )
    try:
        cls = getattr(importlib.import_module(entry.module), entry.cls)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {name!r} could not be imported ({exc}); try pip install 'gramophone[{entry.extra}]'"
        ) from exc
    backend: Backend = cls(**options)
    if not options:
        _INSTANCES[name] = backend
    return backend
