"""The CPU reference runs IR states on ONNX Runtime, validates inputs and caches sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler import reference
from compiler.ir import DType, Graph, QuantEncoding, TensorType
from compiler.reference import (
    ReferenceInputError,
    ReferenceRunner,
    clear_reference_cache,
    run_reference,
)

RNG = np.random.default_rng(11)


def _mlp() -> Graph:
    """y = relu(x @ w1 + b) @ w2, with a symbolic batch."""
    g = Graph("mlp")
    x = g.add_input("x", TensorType(DType.F32, ("batch", 4)))
    w1 = g.add_const("w1", RNG.standard_normal((4, 6)).astype(np.float32))
    b = g.add_const("b", RNG.standard_normal(6).astype(np.float32))
    w2 = g.add_const("w2", RNG.standard_normal((6, 2)).astype(np.float32))
    h = g.make_node("MatMul", [x, w1], types=[TensorType(DType.F32, ("batch", 6))],
                    outputs=["h"], name="fc1")
    a = g.make_node("Add", [h.outputs[0], b], types=[TensorType(DType.F32, ("batch", 6))],
                    outputs=["a"], name="bias")
    r = g.make_node("Relu", [a.outputs[0]], types=[TensorType(DType.F32, ("batch", 6))],
                    outputs=["r"], name="act")
    y = g.make_node("MatMul", [r.outputs[0], w2], types=[TensorType(DType.F32, ("batch", 2))],
                    outputs=["y"], name="fc2")
    g.outputs = [y.outputs[0]]
    g.verify()
    return g


def _numpy_mlp(g: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    c = {k: v.const for k, v in g.constants.items()}
    h = x @ c["w1"]
    a = h + c["b"]
    r = np.maximum(a, 0)
    return {"h": h, "a": a, "r": r, "y": r @ c["w2"]}


def test_matches_numpy_with_mapping_and_sequence_inputs() -> None:
    g = _mlp()
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    want = _numpy_mlp(g, x)["y"]
    got = run_reference(g, {"x": x})
    assert list(got) == ["y"]
    np.testing.assert_allclose(got["y"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(run_reference(g, [x])["y"], got["y"])


def test_any_value_can_be_an_output() -> None:
    g = _mlp()
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    want = _numpy_mlp(g, x)
    got = run_reference(g, [x], outputs=["h", "r", "y", "w1", "x"])
    assert list(got) == ["h", "r", "y", "w1", "x"]
    for k in ("h", "r", "y"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["w1"], g.constants["w1"].const)
    np.testing.assert_array_equal(got["x"], x)


def test_encodings_apply_with_qdq_and_not_without() -> None:
    g = _mlp()
    a = g.find_node("bias").outputs[0]
    enc = QuantEncoding(8, True, 0.05, 0)
    a.encoding = enc
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    float_ = run_reference(g, [x], outputs=["a"], qdq=False)["a"]
    quant = run_reference(g, [x], outputs=["a"])["a"]
    np.testing.assert_allclose(float_, _numpy_mlp(g, x)["a"], rtol=1e-6, atol=1e-6)
    # ORT's QuantizeLinear and numpy may round a tie differently: at most one step apart.
    np.testing.assert_allclose(quant, enc.fake_quant(float_), atol=0.05 + 1e-6)
    assert len(np.unique(np.round(quant / 0.05))) <= 256
    assert not np.array_equal(quant, float_)


def test_sessions_are_cached_per_graph_state() -> None:
    clear_reference_cache()
    g = _mlp()
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    run_reference(g, [x])
    run_reference(g, [x])
    run_reference(g.copy(), [x])  # same state, same session
    assert len(reference._cache) == 1
    run_reference(g, [x], outputs=["h"])
    assert len(reference._cache) == 2
    g.find_node("act").op = "Sigmoid"  # a new state gets a new session
    got = run_reference(g, [x], outputs=["r"])["r"]
    assert len(reference._cache) == 3
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-_numpy_mlp(g, x)["a"])), rtol=1e-5)


def test_runner_feeds_many_batches_and_is_independent_of_later_edits() -> None:
    g = _mlp()
    runner = ReferenceRunner(g, outputs=["r"])
    g.find_node("act").op = "Neg"
    for n in (1, 3, 7):
        x = RNG.standard_normal((n, 4)).astype(np.float32)
        out = runner(x)["r"]
        assert out.shape == (n, 6) and (out >= 0).all()


def test_missing_input_is_named() -> None:
    with pytest.raises(ReferenceInputError, match=r"'x'.*missing"):
        run_reference(_mlp(), {})


def test_unknown_input_is_named() -> None:
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(ReferenceInputError, match=r"'z' is not an input"):
        run_reference(_mlp(), {"x": x, "z": x})


def test_wrong_dtype_is_named() -> None:
    with pytest.raises(ReferenceInputError, match=r"'x' must be f32.*float64"):
        run_reference(_mlp(), [np.zeros((1, 4))])


def test_wrong_shape_is_named() -> None:
    with pytest.raises(ReferenceInputError, match=r"'x'.*\['batch', 4\].*\[2, 5\]"):
        run_reference(_mlp(), [np.zeros((2, 5), np.float32)])
    with pytest.raises(ReferenceInputError, match=r"'x'.*rank 2"):
        run_reference(_mlp(), [np.zeros(4, np.float32)])


def test_inconsistent_symbols_are_named() -> None:
    g = Graph("two")
    a = g.add_input("a", TensorType(DType.F32, ("n",)))
    b = g.add_input("b", TensorType(DType.F32, ("n",)))
    s = g.make_node("Add", [a, b], types=[TensorType(DType.F32, ("n",))])
    g.outputs = [s.outputs[0]]
    with pytest.raises(ReferenceInputError, match=r"'b' has n=3.*'a' has n=2"):
        run_reference(g, [np.zeros(2, np.float32), np.zeros(3, np.float32)])


def test_wrong_input_count_and_unknown_output() -> None:
    with pytest.raises(ReferenceInputError, match=r"takes 1 inputs"):
        run_reference(_mlp(), [])
    with pytest.raises(ReferenceInputError, match=r"%nope"):
        run_reference(_mlp(), [np.zeros((1, 4), np.float32)], outputs=["nope"])


def test_large_graph_path_with_external_data() -> None:
    g = _mlp()
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    runner = ReferenceRunner(g, outputs=["h", "y"], external_threshold=0)
    assert runner._tmp is not None
    assert any(p.name.endswith(".onnx.data") for p in Path(runner._tmp.name).iterdir())
    got = runner(x)
    want = _numpy_mlp(g, x)
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["h"], want["h"], rtol=1e-6, atol=1e-6)
