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

__all__ = ["load_model", "load_factory", "load_inputs"]


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


def load_inputs(path: str | Path, graph: Graph) -> list[dict[str, Any]]:
    """Read input samples for ``graph`` from an ``.npz`` file.

    Layout: one array per graph input, keyed by the input's name. An array with one more axis
    than the input holds several samples along that leading axis (``x: [N, 1, 3, 224, 224]``
    for an input ``x: f32[1,3,224,224]`` is N samples); an array of the input's own rank is one
    sample. Every input needs the same number of samples. Returns one feed dict per sample.
    """
    import numpy as np

    from compiler.errors import QuantizationError

    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{p}: cannot read inputs: {e}") from e
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise QuantizationError(f"{p}: no array for graph input {missing[0]!r} "
                                f"(the file has {sorted(arrays)}; the model's inputs are "
                                f"{names})")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise QuantizationError(f"{p}: array {extra[0]!r} names no graph input "
                                f"(the model's inputs are {names})")
    samples: list[list[Any]] = []
    for v in graph.inputs:
        arr = arrays[v.name]
        rank = v.type.rank
        if rank is not None and arr.ndim == rank:
            arr = arr[None]
        elif rank is not None and arr.ndim != rank + 1:
            raise QuantizationError(f"{p}: array {v.name!r} has shape {list(arr.shape)}; input "
                                    f"{v.name!r} is {v.type} (give it that shape, or one more "
                                    "leading axis of samples)")
        samples.append(list(arr))
    counts = {len(s) for s in samples}
    if len(counts) != 1:
        raise QuantizationError(f"{p}: inputs have different sample counts {sorted(counts)}")
    if counts == {0}:
        raise QuantizationError(f"{p}: holds no samples")
    return [{n: s[i] for n, s in zip(names, samples)} for i in range(counts.pop())]


def synthetic_inputs(graph: Graph, seed: int = 0) -> list[dict[str, Any]]:
    """One generated sample for ``graph``'s inputs (float: standard normal from ``seed``;
    integer and bool: zeros), for float builds that need no calibration but still report an
    error against FP32. An input without a static shape is an error naming it."""
    import numpy as np

    from compiler.errors import QuantizationError

    rng = np.random.default_rng(seed)
    feed: dict[str, Any] = {}
    for v in graph.inputs:
        dims = v.type.shape
        if dims is None or not all(isinstance(d, int) for d in dims):
            raise QuantizationError(f"graph input {v.name!r} is {v.type}, not a static shape: "
                                    "give --calib INPUTS.npz")
        shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        dt = v.dtype.numpy
        feed[v.name] = (rng.standard_normal(shape).astype(dt) if v.dtype.is_float
                        else np.zeros(shape, dt))
    return [feed]
