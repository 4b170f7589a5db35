"""fastattn: hand-written Triton and CUDA C++ kernels for attention, softmax and sampling, as PyTorch ops.

The public API (docs/api.md in the repository) is re-exported here. Importing fastattn touches no GPU.
"""
from ._backend import BackendUnavailable, available_backends, use_backend
from .ops.attention import attention, decode_attention, scaled_dot_product_attention
from .ops.sampling import sample, top_k_top_p_filter
from .ops.softmax import softmax

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "attention",
    "available_backends",
    "decode_attention",
    "sample",
    "scaled_dot_product_attention",
    "softmax",
    "top_k_top_p_filter",
    "use_backend",
]


def __getattr__(name):
    """fastattn.nn, fastattn.models, fastattn.distributed and fastattn.integrations load on first use (PEP 562),
    keeping the import of fastattn light. fastattn.integrations.transformers is never loaded implicitly: importing
    it registers "fastattn" with transformers."""
    if name in ("nn", "models", "distributed", "integrations"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastattn' has no attribute {name!r}")
