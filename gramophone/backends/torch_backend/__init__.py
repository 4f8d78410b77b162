"""PyTorch backend (imports torch)."""

from gramophone.backends.torch_backend.backend import TorchBackend, TorchTrainState
from gramophone.backends.torch_backend.model import GPT, KVCache

__all__ = ["GPT", "KVCache", "TorchBackend", "TorchTrainState"]
