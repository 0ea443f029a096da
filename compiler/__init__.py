"""edgec's core: the IR, frontends, pass infrastructure and the ``compile()`` API.

``compiler.compile`` and ``compiler.CompiledModel`` are imported lazily, so ``import compiler``
stays cheap (no torch, no onnxruntime).
"""

from __future__ import annotations

from typing import Any

from compiler.estimate import estimate

__all__ = ["compile", "CompiledModel", "estimate"]


def __getattr__(name: str) -> Any:
    if name in ("compile", "CompiledModel"):
        from compiler import api

        return getattr(api, name)
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")
