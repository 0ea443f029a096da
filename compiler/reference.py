"""The CPU reference: run any IR state on ONNX Runtime.

Every pass is checked against this. The graph is exported with
:func:`~compiler.frontends.onnx_export.to_onnx` (encodings as explicit Q/DQ unless
``qdq=False``; edgec ops through their registered lowering) and run by an ONNX Runtime CPU
session with graph optimizations disabled (ORT must not fuse or fold anything: the numbers are
those of the graph as written), deterministic compute, and one thread by default.

Sessions are expensive, so :func:`run_reference` caches one per graph *state*: the key is the
SHA-256 of the printed IR (constants enter through their content hash, which each value
caches) plus the requested outputs and the ``qdq`` flag. Use :class:`ReferenceRunner` directly
to feed many batches (calibration) without even hashing the graph again.

``outputs`` may name any value of the graph -- an intermediate, a constant, an input -- and it
is exposed as an extra output. With ``qdq=True`` a value that carries an encoding is returned
as the graph means it: dequantized after quantization.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import EdgecError, EmitError, UnsupportedOpError
from compiler.ir import EDGEC_DOMAIN, Graph, print_graph
from compiler.ir.types import TensorType
from compiler.ir.verify import edgec_op

__all__ = [
    "run_reference",
    "ReferenceRunner",
    "ReferenceInputError",
    "ReferenceRunError",
    "clear_reference_cache",
    "graph_key",
]

_CACHE_SIZE = 8
_cache: OrderedDict[tuple[Any, ...], ReferenceRunner] = OrderedDict()
_lock = threading.Lock()


class ReferenceInputError(EdgecError, ValueError):
    """Inputs given to the reference do not match the graph (names the input)."""


class ReferenceRunError(EdgecError):
    """ONNX Runtime failed while running the reference (names the graph)."""


def graph_key(graph: Graph) -> str:
    """SHA-256 of the printed IR: equal for equal graph states."""
    return hashlib.sha256(print_graph(graph).encode()).hexdigest()


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.use_deterministic_compute = True
    so.log_severity_level = 3
    return so


class ReferenceRunner:
    """An ONNX Runtime session for one graph state; call :meth:`run` once per batch.

    The graph is exported when the runner is made; later mutations of ``graph`` do not
    affect it. ``outputs``/``qdq`` are as in :func:`run_reference`; ``threads`` sets ORT's
    intra-op threads (1 keeps results independent of the machine); graphs whose weights
    exceed ``external_threshold`` bytes (default: just under 2 GB) are handed to ORT as a
    temporary file with external data.
    """

    def __init__(self, graph: Graph, *, outputs: Sequence[str] | None = None, qdq: bool = True,
                 threads: int = 1, external_threshold: int | None = None) -> None:
        import onnxruntime as ort

        from compiler.frontends.onnx_export import EXTERNAL_DATA_THRESHOLD, _Exporter, _save

        for n in graph.nodes:
            if n.domain == EDGEC_DOMAIN:
                sch = edgec_op(n.op)
                if sch is None or sch.lower is None:
                    raise UnsupportedOpError(f"{n.label()}: edgec op has no reference lowering "
                                             "(EdgecOpSchema.lower), so the CPU reference "
                                             "cannot run it")
        self.graph_name = graph.name
        self.inputs: list[tuple[str, TensorType]] = [(v.name, v.type) for v in graph.inputs]
        values = graph.value_map()
        if outputs is None:
            requested = [v.name for v in graph.outputs]
        else:
            requested = list(outputs)
            for name in requested:
                if name not in values:
                    raise ReferenceInputError(f"requested output %{name} is not a value of "
                                              f"graph {graph.name}")
        self.outputs = requested
        # Inputs asked for as outputs are answered from the feed (ORT cannot fetch them),
        # unless they carry an encoding that the exported graph applies.
        self._from_feed = {n for n in requested
                           if values[n].is_input and (values[n].encoding is None or not qdq)}
        graph_outs = {v.name for v in graph.outputs}
        extra = [n for n in requested if n not in self._from_feed and n not in graph_outs]
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        opts: dict[str, Any] = {"materialize_qdq": qdq, "lower_edgec": True,
                                "extra_outputs": extra}
        limit = EXTERNAL_DATA_THRESHOLD if external_threshold is None else external_threshold
        if graph.weight_bytes() > limit:
            # Past protobuf's 2 GB the session must load from a file with external data.
            self._tmp = tempfile.TemporaryDirectory(prefix="edgec-ref-")
            path, names = _save(graph, Path(self._tmp.name) / "reference.onnx",
                                external_data=True, external_threshold=0,
                                min_external_bytes=1024, **opts)
            model_src: Any = str(path)
        else:
            exporter = _Exporter(graph, **opts)
            model_src = exporter.run().SerializeToString()
            names = exporter.output_names
        self._onnx_name = {n: names[n] for n in requested if n not in self._from_feed}
        try:
            self.session = ort.InferenceSession(model_src, _session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph...)
            raise EmitError(f"graph {graph.name}: ONNX Runtime refused the exported reference "
                            f"model: {e}") from None
        self._fetch = [self._onnx_name[n] for n in requested if n not in self._from_feed]

    def _feed(self, inputs: Mapping[str, Any] | Sequence[Any] | np.ndarray
              ) -> dict[str, np.ndarray]:
        names = [n for n, _ in self.inputs]
        if isinstance(inputs, np.ndarray) and len(names) == 1:
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            for k in inputs:
                if k not in names:
                    raise ReferenceInputError(f"input '{k}' is not an input of graph "
                                              f"{self.graph_name} (inputs: {names})")
            for n in names:
                if n not in inputs:
                    raise ReferenceInputError(f"input '{n}' of graph {self.graph_name} is "
                                              "missing")
            given = {n: inputs[n] for n in names}
        elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
            if len(inputs) != len(names):
                which = names[len(inputs)] if len(inputs) < len(names) else "(extra)"
                raise ReferenceInputError(f"graph {self.graph_name} takes {len(names)} inputs "
                                          f"{names}, got {len(inputs)}; first mismatch: {which}")
            given = dict(zip(names, inputs))
        else:
            raise ReferenceInputError(f"inputs must be a mapping or a sequence of arrays, not "
                                      f"{type(inputs).__name__}")
        feed: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for name, t in self.inputs:
            arr = given[name]
            if not isinstance(arr, np.ndarray):
                arr = np.asarray(arr)
            want = t.dtype.numpy
            if arr.dtype != want:
                raise ReferenceInputError(f"input '{name}' must be {t.dtype.value} "
                                          f"({want}), got {arr.dtype}")
            if t.shape is not None:
                if arr.ndim != len(t.shape):
                    raise ReferenceInputError(f"input '{name}' must have shape "
                                              f"{list(t.shape)} (rank {len(t.shape)}), got "
                                              f"{list(arr.shape)}")
                for i, (d, got) in enumerate(zip(t.shape, arr.shape)):
                    if isinstance(d, int) and d != got:
                        raise ReferenceInputError(f"input '{name}' must have shape "
                                                  f"{list(t.shape)}, got {list(arr.shape)} "
                                                  f"(dim {i})")
                    if isinstance(d, str):
                        prev = symbols.setdefault(d, (got, name))
                        if prev[0] != got:
                            raise ReferenceInputError(
                                f"input '{name}' has {d}={got} (dim {i}) but input "
                                f"'{prev[1]}' has {d}={prev[0]}")
            feed[name] = arr
        return feed

    def run(self, inputs: Mapping[str, Any] | Sequence[Any] | np.ndarray
            ) -> dict[str, np.ndarray]:
        """Run one batch; returns ``{output name: array}`` in the requested order.

        ``inputs`` is a mapping by name, a sequence in graph-input order, or (for a graph with
        one input) a bare array.
        """
        feed = self._feed(inputs)
        try:
            got = self.session.run(self._fetch, feed) if self._fetch else []
        except Exception as e:  # ORT runtime failures (shape errors inside the graph ...)
            raise ReferenceRunError(f"graph {self.graph_name}: ONNX Runtime failed: {e}"
                                    ) from None
        it = iter(got)
        out: dict[str, np.ndarray] = {}
        for n in self.outputs:
            out[n] = feed[n].copy() if n in self._from_feed else next(it)
        return out

    __call__ = run


def run_reference(
    graph: Graph,
    inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray,
    *,
    outputs: Sequence[str] | None = None,
    qdq: bool = True,
) -> dict[str, np.ndarray]:
    """Run ``graph`` on the ONNX Runtime CPU reference and return ``{name: array}``.

    ``inputs`` maps input names to arrays, or lists them in graph-input order; each must have
    the input's dtype and a compatible shape (``ReferenceInputError`` names the input
    otherwise). ``outputs`` defaults to the graph outputs and may name any value.
    ``qdq=False`` ignores quantization encodings.
    """
    key = (graph_key(graph), None if outputs is None else tuple(outputs), qdq)
    with _lock:
        runner = _cache.get(key)
        if runner is not None:
            _cache.move_to_end(key)
    if runner is None:
        runner = ReferenceRunner(graph, outputs=outputs, qdq=qdq)
        with _lock:
            _cache[key] = runner
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return runner.run(inputs)


def clear_reference_cache() -> None:
    """Drop every cached session."""
    with _lock:
        _cache.clear()
