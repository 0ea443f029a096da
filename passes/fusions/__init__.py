"""Fusion rules, one rule set per file, registered into ``fuse`` on import of this package.

``passes/fuse.py`` imports this package, so every module listed here adds its rules to
``FUSIONS`` before the first ``fuse`` runs.
"""

from passes.fusions import fold_batch_norm, matmul_to_gemm

__all__ = ["fold_batch_norm", "matmul_to_gemm"]
