"""Fusion rules, one rule set per file, registered into ``fuse`` on import of this package.

``passes/fuse.py`` imports this package, so every module listed here adds its rules to
``FUSIONS`` before the first ``fuse`` runs.
"""

from passes.fusions import activations, bias, fold_batch_norm, l2norm, matmul_to_gemm, norms

__all__ = ["activations", "bias", "fold_batch_norm", "l2norm", "matmul_to_gemm", "norms"]
