"""Low-rank factorization (``lowrank``), accuracy-aware selection (``select-compression``) and the
helpers every compression pass shares (reports, ``compress=`` specs)."""

from passes.lowrank.common import CompressionError, compression_pipeline, with_compression

__all__ = ["CompressionError", "compression_pipeline", "with_compression"]
