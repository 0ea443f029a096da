"""Turn a model argument of the CLI into an IR graph.

A model argument is an ``.onnx`` file, an ``.ir`` text file (as written by ``edgec opt -o``
or a crash reproducer), or ``path/to/module.py:factory`` where ``factory()`` returns
``(torch_module, example_inputs)``. Only the named files are read.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from compiler.errors import ModelLoadError
from compiler.ir import Graph

__all__ = ["load_model", "load_factory"]


def load_factory(spec: str) -> tuple[Any, tuple[Any, ...]]:
    """Import ``file.py:factory`` and call it; returns ``(module, example_inputs)``."""
    path_s, _, func = spec.rpartition(":")
    path = Path(path_s)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such Python file")
    name = f"_edgec_user_{abs(hash(str(path.resolve())))}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ModelLoadError(f"{path}: cannot be imported as a Python module")
    mod = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = mod
    try:
        mod_spec.loader.exec_module(mod)
    except Exception as e:  # user code: any failure is a load error naming the file
        raise ModelLoadError(f"{path}: importing it failed: {type(e).__name__}: {e}") from e
    factory = getattr(mod, func, None)
    if not callable(factory):
        raise ModelLoadError(f"{path}: has no callable {func!r}")
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelLoadError(f"{path}:{func} must return (module, example_inputs)")
    module, example = result
    if not isinstance(example, tuple):
        example = (example,)
    return module, example


def load_model(spec: str | Path, *, frontend: str = "auto") -> Graph:
    """Load ``spec`` (``.onnx``, ``.ir`` or ``file.py:factory``) as an IR graph."""
    text = str(spec)
    if text.endswith(".ir"):
        from compiler.ir import load_ir

        return load_ir(text)
    if ".py:" in text:
        from compiler.frontends import load_torch

        module, example = load_factory(text)
        return load_torch(module, example, frontend=frontend)
    from compiler.frontends import load_onnx

    return load_onnx(text)
