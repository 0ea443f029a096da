"""Golden IR-text tests of ``canonicalize`` and each of its sub-passes, checked on the reference.

Each case parses IR text, runs a pipeline (verifying after every pass), compares the printed
result with the expected text, and checks that the reference computes the same outputs before
and after.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from compiler.ir import Graph, parse, print_graph
from compiler.passes import PassContext, PassManager
from compiler.reference import run_reference

RNG = np.random.default_rng(5)


def _ir(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _inputs(g: Graph) -> dict[str, np.ndarray]:
    feed = {}
    for v in g.inputs:
        shape = tuple(d if isinstance(d, int) else 3 for d in v.shape or ())
        if v.dtype.is_float:
            feed[v.name] = RNG.standard_normal(shape).astype(v.dtype.numpy)
        else:
            feed[v.name] = RNG.integers(-5, 5, shape).astype(v.dtype.numpy)
    return feed


def assert_same_outputs(before: Graph, after: Graph) -> None:
    """Both graphs compute the same outputs (by name) on the reference."""
    feed = _inputs(before)
    want, got = run_reference(before, feed), run_reference(after, feed)
    assert list(want) == list(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, equal_nan=True)


def check(pipeline: str, before: str, after: str, *, numerics: bool = True) -> PassContext:
    """Run ``pipeline`` on ``before``; the result must print as ``after``."""
    g = parse(_ir(before))
    g.verify()
    original = g.copy()
    ctx = PassManager(pipeline).run(g)
    assert print_graph(g, inline_limit=16) == _ir(after)
    if numerics:
        assert_same_outputs(original, g)
    return ctx


def stats(ctx: PassContext) -> dict[str, int | float]:
    """Stats of the last pass run."""
    return ctx.history[-1].result.stats


def test_infer_shapes_fills_unknown_types() -> None:
    ctx = check("infer-shapes", """
        graph g(%x: f32[n,4], %z: f32[2,3]) -> (%y, %y2, %m, %c) opset(ai.onnx=17) {
          %sh = const i64[2] = [3, -1]
          %r = Relu(%x) : f32[*]
          %y = Add(%r, %r) : f32[*]
          %s = Shape(%x) : f32[*]
          %y2 = Cast(%s) {to=1} : f32[*]
          %t = Transpose(%z) {perm=[1, 0]} : f32[*]
          %m = MatMul(%z, %t) : f32[2,?]
          %c = Reshape(%z, %sh) : f32[3,?]
        }
    """, """
        graph g(%x: f32[n,4], %z: f32[2,3]) -> (%y, %y2, %m, %c) opset(ai.onnx=17) {
          %sh = const i64[2] = [3, -1]
          %r = Relu(%x) : f32[n,4]
          %y = Add(%r, %r) : f32[n,4]
          %s = Shape(%x) : i64[2]
          %y2 = Cast(%s) {to=1} : f32[2]
          %t = Transpose(%z) {perm=[1, 0]} : f32[3,2]
          %m = MatMul(%z, %t) : f32[2,2]
          %c = Reshape(%z, %sh) : f32[3,2]
        }
    """)
    assert stats(ctx) == {"refined": 7}


def test_infer_shapes_keeps_known_dims_and_unknown_symbols() -> None:
    # A symbol ONNX invents (unk__0) stays unknown; nothing known is overwritten.
    check("infer-shapes", """
        graph g(%x: f32[n,4]) -> (%y) opset(ai.onnx=17) {
          %sh = const i64[2] = [2, -1]
          %y = Reshape(%x, %sh) : f32[*]
        }
    """, """
        graph g(%x: f32[n,4]) -> (%y) opset(ai.onnx=17) {
          %sh = const i64[2] = [2, -1]
          %y = Reshape(%x, %sh) : f32[2,?]
        }
    """)


def test_fold_constants_evaluates_chains_nan_and_outputs() -> None:
    ctx = check("fold-constants", """
        graph g(%x: f32[2,3]) -> (%y, %k, %n) opset(ai.onnx=17) {
          %a = const f32[3] = [1.0, 2.0, 3.0]
          %b = const f32[3] = [0.5, 0.5, 0.5]
          %zero = const f32[] = [0.0]
          %s = Add(%a, %b) : f32[3]
          %t = Mul(%s, %s) : f32[3]
          %y = Add(%x, %t) : f32[2,3]
          %q = Div(%zero, %zero) : f32[]
          %k = Add(%x, %q) : f32[2,3]
          %n = Neg(%a) : f32[3]
        }
    """, """
        graph g(%x: f32[2,3]) -> (%y, %k, %n) opset(ai.onnx=17) {
          %t = const f32[3] = [2.25, 6.25, 12.25]
          %q = const f32[] = [nan]
          %n = const f32[3] = [-1.0, -2.0, -3.0]
          %y = Add(%x, %t) : f32[2,3]
          %k = Add(%x, %q) : f32[2,3]
        }
    """)
    assert stats(ctx) == {"folded": 4, "refused": 0}
    assert [r.rule for r in ctx.trace] == ["fold"] * 4


def test_fold_constants_folds_static_shapes() -> None:
    check("fold-constants", """
        graph g(%x: f32[n,2,3]) -> (%y) opset(ai.onnx=17) {
          %i = const i64[] = [0]
          %three = const i64[] = [3]
          %axes = const i64[1] = [0]
          %s = Shape(%x) {start=1} : i64[2]
          %d = Gather(%s, %i) {axis=0} : i64[]
          %m = Mul(%d, %three) : i64[]
          %u = Unsqueeze(%m, %axes) : i64[1]
          %minus1 = const i64[1] = [-1]
          %shape = Concat(%minus1, %u) {axis=0} : i64[2]
          %y = Reshape(%x, %shape) : f32[?,6]
        }
    """, """
        graph g(%x: f32[n,2,3]) -> (%y) opset(ai.onnx=17) {
          %shape = const i64[2] = [-1, 6]
          %y = Reshape(%x, %shape) : f32[?,6]
        }
    """)


def test_fold_constants_keeps_shapes_of_symbolic_dims() -> None:
    text = """
        graph g(%x: f32[n,2]) -> (%y) opset(ai.onnx=17) {
          %s = Shape(%x) {end=1} : i64[1]
          %y = Cast(%s) {to=1} : f32[1]
        }
    """
    check("fold-constants", text, text)


BIG = """
    graph g(%x: f32[1]) -> (%y) opset(ai.onnx=17) {
      %shape = const i64[2] = [64, 64]
      %big = ConstantOfShape(%shape) : f32[TYPE]
      %y = Add(%x, %big) : f32[TYPE]
    }
"""

BIG_FOLDED = """
    graph g(%x: f32[1]) -> (%y) opset(ai.onnx=17) {
      %big = const f32[64,64] #sha:fbafc2f5b927b757
      %y = Add(%x, %big) : f32[TYPE]
    }
"""


@pytest.mark.parametrize("dims", ["64,64", "*"], ids=["size-known", "size-after-evaluation"])
def test_fold_constants_refuses_results_over_max_bytes(dims: str) -> None:
    text = BIG.replace("TYPE", dims)
    ctx = check("fold-constants{max_bytes=1024}", text, text)
    assert stats(ctx) == {"folded": 0, "refused": 1}
    assert ctx.log == ["fold-constants: refused to fold ConstantOfShape (%big): result of 16384 "
                       "bytes exceeds max_bytes=1024"]
    ctx = check("fold-constants", text, BIG_FOLDED.replace("TYPE", dims))
    assert stats(ctx) == {"folded": 1, "refused": 0}


def test_fold_constants_folds_a_weight_transpose_of_any_size() -> None:
    # No larger than the constant it is computed from: folding costs nothing.
    g = Graph("t")
    x = g.add_input("x", parse(BIG).inputs[0].type.with_shape((8, 64)))
    w = g.add_const("w", RNG.standard_normal((64, 64)).astype(np.float32))
    t = g.make_node("Transpose", [w], {"perm": [1, 0]}, outputs=["t"],
                    types=[w.type]).outputs[0]
    g.outputs = [g.make_node("MatMul", [x, t], outputs=["y"], types=[x.type]).outputs[0]]
    original = g.copy()
    ctx = PassManager("fold-constants{max_bytes=1024}").run(g)
    assert stats(ctx) == {"folded": 1, "refused": 0}
    assert [n.op for n in g.nodes] == ["MatMul"] and list(g.constants) == ["t"]
    assert_same_outputs(original, g)


def test_eliminate_dead_code() -> None:
    ctx = check("eliminate-dead-code", """
        graph g(%x: f32[3]) -> (%y) opset(ai.onnx=17) {
          %w = const f32[3] = [1.0, 2.0, 3.0]
          %unused = const f32[1] = [9.0]
          %a = Mul(%x, %w) : f32[3]
          %b = Neg(%a) : f32[3]
          %y = Relu(%x) : f32[3]
        }
    """, """
        graph g(%x: f32[3]) -> (%y) opset(ai.onnx=17) {
          %y = Relu(%x) : f32[3]
        }
    """)
    assert stats(ctx) == {"nodes": 2, "constants": 1}
    assert [(r.rule, r.removed) for r in ctx.trace] == [
        ("dead-node", ("%b",)), ("dead-node", ("%a", "%w")), ("dead-constant", ("%unused",))]


def test_eliminate_common_subexpressions() -> None:
    ctx = check("eliminate-common-subexpressions", """
        graph g(%x: f32[3]) -> (%y, %z, %o1, %o2) opset(ai.onnx=17) {
          %c1 = const f32[3] = [1.0, 2.0, 3.0]
          %c2 = const f32[3] = [1.0, 2.0, 3.0]
          %c3 = const f32[3] = [1.0, 2.0, 4.0]
          %a = Add(%x, %c1) : f32[3]
          %b = Add(%x, %c2) : f32[3]
          %y = Mul(%a, %b) : f32[3]
          %e = Softmax(%x) {axis=0} : f32[3]
          %f = Softmax(%x) {axis=-1} : f32[3]
          %g = Add(%e, %c3) : f32[3]
          %z = Add(%g, %f) : f32[3]
          %o1 = Neg(%x) : f32[3]
          %o2 = Neg(%x) : f32[3]
        }
    """, """
        graph g(%x: f32[3]) -> (%y, %z, %o1, %o2) opset(ai.onnx=17) {
          %c1 = const f32[3] = [1.0, 2.0, 3.0]
          %c3 = const f32[3] = [1.0, 2.0, 4.0]
          %a = Add(%x, %c1) : f32[3]
          %y = Mul(%a, %a) : f32[3]
          %e = Softmax(%x) {axis=0} : f32[3]
          %f = Softmax(%x) {axis=-1} : f32[3]
          %g = Add(%e, %c3) : f32[3]
          %z = Add(%g, %f) : f32[3]
          %o1 = Neg(%x) : f32[3]
          %o2 = Neg(%x) : f32[3]
        }
    """)
    assert stats(ctx) == {"constants": 1, "nodes": 1}


def test_cse_merged_node_takes_the_graph_output_name() -> None:
    check("eliminate-common-subexpressions", """
        graph g(%x: f32[3]) -> (%y) opset(ai.onnx=17) {
          %a = Relu(%x) : f32[3]
          %y = Relu(%x) : f32[3]
          %z = Add(%a, %y) : f32[3]
        }
    """.replace("-> (%y)", "-> (%y, %z)"), """
        graph g(%x: f32[3]) -> (%y, %z) opset(ai.onnx=17) {
          %y = Relu(%x) : f32[3]
          %z = Add(%y, %y) : f32[3]
        }
    """)


def test_remove_noops() -> None:
    ctx = check("remove-noops", """
        graph g(%x: f32[2,3]) -> (%y) opset(ai.onnx=17) {
          %shape = const i64[2] = [2, 3]
          %shape2 = const i64[2] = [3, 2]
          %i = Identity(%x) : f32[2,3]
          %d, %mask = Dropout(%i) : f32[2,3], bool[2,3]
          %c = Cast(%d) {to=1} : f32[2,3]
          %r = Reshape(%c, %shape) : f32[2,3]
          %t1 = Transpose(%r) {perm=[1, 0]} : f32[3,2]
          %t2 = Transpose(%t1) {perm=[1, 0]} : f32[2,3]
          %r2 = Reshape(%t2, %shape2) : f32[3,2]
          %y = Relu(%r2) : f32[3,2]
        }
    """, """
        graph g(%x: f32[2,3]) -> (%y) opset(ai.onnx=17) {
          %shape2 = const i64[2] = [3, 2]
          %r2 = Reshape(%x, %shape2) : f32[3,2]
          %y = Relu(%r2) : f32[3,2]
        }
    """)
    assert stats(ctx) == {"identity": 1, "dropout": 1, "cast-same-type": 1,
                          "reshape-same-shape": 1, "transpose-inverse-pair": 1}


def test_remove_noops_keeps_what_is_not_a_noop() -> None:
    text = """
        graph g(%x: f32[2,3], %r: f32[]) -> (%y, %m, %t) opset(ai.onnx=17) {
          %on = const bool[] = [true]
          %y, %m = Dropout(%x, %r, %on) : f32[2,3], bool[2,3]
          %t = Transpose(%x) {perm=[1, 0]} : f32[3,2]
        }
    """
    check("remove-noops", text, text, numerics=False)  # training-mode Dropout is random


def test_simplify_algebra() -> None:
    check("simplify-algebra", """
        graph g(%x: f32[2,3], %v: f32[3], %x3: f32[2,3,4]) -> (%y, %w, %q, %r2) opset(ai.onnx=17) {
          %one = const f32[1] = [1.0]
          %ones = const f32[2,3] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
          %zero = const f32[3] = [0.0, 0.0, 0.0]
          %s1 = const i64[2] = [6, 4]
          %s2 = const i64[3] = [2, 2, 6]
          %m = Mul(%x, %one) : f32[2,3]
          %a = Add(%zero, %m) : f32[2,3]
          %y = Neg(%a) : f32[2,3]
          %w = Mul(%v, %ones) : f32[2,3]
          %p = Transpose(%x3) {perm=[1, 2, 0]} : f32[3,4,2]
          %q = Transpose(%p) {perm=[1, 0, 2]} : f32[4,3,2]
          %r1 = Reshape(%x3, %s1) : f32[6,4]
          %r2 = Reshape(%r1, %s2) : f32[2,2,6]
        }
    """, """
        graph g(%x: f32[2,3], %v: f32[3], %x3: f32[2,3,4]) -> (%y, %w, %q, %r2) opset(ai.onnx=17) {
          %ones = const f32[2,3] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
          %s2 = const i64[3] = [2, 2, 6]
          %y = Neg(%x) : f32[2,3]
          %w = Mul(%v, %ones) : f32[2,3]
          %q = Transpose(%x3) {perm=[2, 1, 0]} : f32[4,3,2] {pass="simplify-algebra", rule="transpose-transpose"}
          %r2 = Reshape(%x3, %s2) : f32[2,2,6] {pass="simplify-algebra", rule="reshape-reshape"}
        }
    """)


def test_sort_topologically() -> None:
    g = parse(_ir("""
        graph g(%x: f32[3]) -> (%y) opset(ai.onnx=17) {
          %a = Relu(%x) : f32[3]
          %b = Neg(%a) : f32[3]
          %c = Abs(%x) : f32[3]
          %y = Add(%b, %c) : f32[3]
        }
    """))
    original = g.copy()
    a, b = g.find_node("a"), g.find_node("b")
    g.nodes.remove(a)
    g.insert(a, after=b)  # %a is now read before it is defined
    ctx = PassManager("sort-topologically", verify_each=False).run(g)
    assert stats(ctx) == {"moved": 2}
    assert [n.outputs[0].name for n in g.nodes] == ["a", "b", "c", "y"]
    g.verify()
    assert_same_outputs(original, g)
    ctx = PassManager("sort-topologically").run(g)
    assert not ctx.history[-1].result.modified


CANON_IN = """
    graph model(%x: f32[batch,8]) -> (%logits, %width) opset(ai.onnx=17) {
      %w = const f32[8,4] #sha:WEIGHT {src="fc"}
      %w2 = const f32[8,4] #sha:WEIGHT {src="fc"}
      %one = const f32[] = [1.0]
      %half = const f32[] = [0.5]
      %shape = const i64[2] = [-1, 4]
      %id = Identity(%x) : f32[*]
      %wt = Transpose(%w) {perm=[1, 0]} : f32[*]
      %wtt = Transpose(%wt) {perm=[1, 0]} : f32[*]
      %h = MatMul(%id, %wtt) : f32[*] {src="fc"}
      %h2 = MatMul(%id, %w2) : f32[*] {src="fc"}
      %s = Add(%h, %h2) : f32[*]
      %m = Mul(%s, %one) : f32[*]
      %r = Reshape(%m, %shape) : f32[*]
      %logits = Relu(%r) : f32[*] {src="act"}
      %dead = Sigmoid(%x) : f32[*]
      %shp = Shape(%x) {start=1} : f32[*]
      %k = Gather(%shp, %idx) {axis=0} : f32[*]
      %kf = Cast(%k) {to=1} : f32[*]
      %width = Mul(%kf, %half) : f32[*]
    }
"""

CANON_OUT = """
    graph model(%x: f32[batch,8]) -> (%logits, %width) opset(ai.onnx=17) {
      %w = const f32[8,4] #sha:WEIGHT {src="fc"}
      %width = const f32[] = [4.0]
      %h = MatMul(%x, %w) : f32[batch,4] {src="fc"}
      %s = Add(%h, %h) : f32[batch,4]
      %logits = Relu(%s) : f32[batch,4] {src="act"}
    }
"""


def test_canonicalize_cleans_a_graph_and_is_idempotent() -> None:
    weight = RNG.standard_normal((8, 4)).astype(np.float32)
    from compiler.ir import const_hash

    digest = const_hash(weight)
    text = _ir(CANON_IN.replace("WEIGHT", digest)).replace(
        "  %shape = const", "  %idx = const i64[] = [0]\n  %shape = const")
    g = parse(text, constants={digest: weight})
    g.verify()
    original = g.copy()
    ctx = PassManager("canonicalize").run(g)
    assert print_graph(g, inline_limit=16) == _ir(CANON_OUT.replace("WEIGHT", digest))
    assert_same_outputs(original, g)
    assert ctx.history[-1].path == "canonicalize"
    # Round 2 refines %logits (its Reshape is gone); round 3 confirms the fixpoint.
    assert ctx.history[-1].result.stats["rounds"] == 3
    assert [(r.pass_name, r.rule) for r in ctx.trace] == [
        ("remove-noops", "identity"), ("remove-noops", "transpose-inverse-pair"),
        ("remove-noops", "reshape-to-own-shape"), ("simplify-algebra", "mul-one"),
        ("fold-constants", "fold"), ("fold-constants", "fold"), ("fold-constants", "fold"),
        ("fold-constants", "fold"), ("eliminate-common-subexpressions", "duplicate-constant"),
        ("eliminate-common-subexpressions", "duplicate-node"),
        ("eliminate-dead-code", "dead-node")]
    ctx = PassManager("canonicalize").run(g)
    assert not any(r.result.modified for r in ctx.history)


def test_each_sub_pass_is_a_pass_of_its_own() -> None:
    from passes.canonicalize import Canonicalize

    names = [p.name for p in Canonicalize().passes()]
    assert names == ["infer-shapes", "remove-noops", "simplify-algebra", "fold-constants",
                     "eliminate-common-subexpressions", "eliminate-dead-code",
                     "sort-topologically"]
    g = parse(_ir(BIG.replace("TYPE", "*")))
    for name in names:
        PassManager(name).run(g)
    g.verify()


@pytest.mark.parametrize("name", ["llama", "unet", "vit", "whisper"])
def test_canonicalize_keeps_zoo_model_outputs(name: str) -> None:
    import warnings

    from compiler.frontends.fx import load_torch
    from tests.models import ZOO

    model, example = ZOO[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = load_torch(model, example, frontend="fx")
    feeds = [t.numpy().copy() for t in example]
    want = run_reference(g, feeds)
    nodes = len(g.nodes)
    ctx = PassManager("canonicalize").run(g)
    assert ctx.trace and len(g.nodes) < nodes  # these exports have constant shape chains
    got = run_reference(g, feeds)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
