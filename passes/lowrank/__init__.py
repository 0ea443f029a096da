"""Low-rank factorization (``lowrank``), accuracy-aware selection (``select-compression``) and the
helpers every compression pass shares (reports, ``compress=`` specs).

:func:`choose_compression` (accuracy-aware selection with a user metric callback) is loaded
lazily: ``passes.lowrank.auto`` imports the pruning passes, which import this package.
"""

from typing import Any

from compiler.errors import CompressionError
from passes.lowrank.common import compression_pipeline, with_compression

__all__ = ["CompressionError", "compression_pipeline", "with_compression", "choose_compression"]


def __getattr__(name: str) -> Any:
    if name == "choose_compression":
        from passes.lowrank.auto import choose_compression

        return choose_compression
    raise AttributeError(f"module 'passes.lowrank' has no attribute {name!r}")
