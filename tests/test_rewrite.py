"""The pattern rewriter: rules fire, explain why not, honour bisect limits, record provenance."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from compiler.ir import EdgecOpSchema, Graph, Node, parse, print_graph, register_edgec_op
from compiler.passes import PassContext, PassManager
from compiler.reference import run_reference
from compiler.rewrite import (
    ALGEBRAIC_FOLDS,
    NOOP_FOLDS,
    Const,
    Pat,
    RewriteError,
    Rewriter,
    Rule,
    RuleSet,
    apply_rules,
)


def _lower_swish(graph: Graph, node: Node) -> None:
    """Reference lowering of the test op: x * sigmoid(x) (itself written with the Rewriter)."""
    rw = Rewriter(graph, rule="lower", root=node)
    x = node.inputs[0]
    assert x is not None
    rw.replace_root(rw.op("Mul", [x, rw.op("Sigmoid", [x])]))
    rw.finish()


register_edgec_op(EdgecOpSchema("TestSwish", 1, 1, 1, {}, "x * sigmoid(x), for tests",
                                lower=_lower_swish))

# The whole fusion: pattern, check with a reason, rewrite.
SWISH = Rule(
    "swish",
    Pat("Mul", "x", Pat("Sigmoid", "x", name="sig")),
    check=lambda m: None if m["x"].dtype.is_float else "not a float tensor",
    rewrite=lambda m, rw: rw.op("edgec.TestSwish", [m["x"]]),
    exclusive=True,
)

SWISH_IR = """\
graph g(%x: f32[2,3]) -> (%y) opset(ai.onnx=17) {
  %s = Sigmoid(%x) : f32[2,3] @htp {src="layers.0.act"}
  %y = Mul(%x, %s) : f32[2,3] @htp {src="layers.0.act"}
}
"""


def _ir(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def test_fusion_fires_keeps_names_provenance_and_numerics() -> None:
    g = parse(SWISH_IR)
    before = g.copy()
    ctx = PassContext()
    ctx.path.append("fuse")  # as if run by the PassManager inside the 'fuse' pass
    stats = apply_rules(g, [SWISH], ctx)
    assert stats == {"swish": 1}
    g.verify()
    assert print_graph(g) == _ir("""
        graph g(%x: f32[2,3]) -> (%y) opset(ai.onnx=17, edgec=1) {
          %y = edgec.TestSwish(%x) : f32[2,3] @htp {pass="fuse", rule="swish", src="layers.0.act"}
        }
    """)
    (rec,) = ctx.trace
    assert (rec.index, rec.pass_name, rec.rule, rec.root) == (1, "fuse", "swish", "%y")
    assert rec.created == ("%y",) and set(rec.removed) == {"%y", "%s"}  # by their names when matched
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(run_reference(g, [x])["y"], run_reference(before, [x])["y"],
                               rtol=1e-6)


def test_commutative_inputs_match_in_either_order() -> None:
    g = parse(SWISH_IR.replace("Mul(%x, %s)", "Mul(%s, %x)"))
    assert SWISH.explain(g.find_node("y")) == "applies"


def test_explain_gives_the_reason() -> None:
    g = parse(_ir("""
        graph g(%x: f32[2,3], %z: f32[2,3]) -> (%y, %s, %w) opset(ai.onnx=17) {
          %s = Sigmoid(%x) : f32[2,3]
          %y = Mul(%x, %s) : f32[2,3]
          %t = Sigmoid(%x) : f32[2,3]
          %w = Mul(%z, %t) : f32[2,3]
        }
    """))
    y, w, s = g.find_node("y"), g.find_node("w"), g.find_node("s")
    assert SWISH.explain(s) == "Sigmoid (%s) is not Mul"
    assert SWISH.explain(y) == "%s of Sigmoid (%s) is a graph output"
    assert SWISH.explain(w) == "'x' is %z but input 0 of Sigmoid (%t) is %x"
    one = Rule("mul-one", Pat("Mul", "x", Const(value=1)), lambda m, rw: m["x"])
    assert one.explain(y) == "input 1 of Mul (%y) (%s) is not a constant"
    with_check = Rule("swish-int", SWISH.pattern, SWISH.rewrite, lambda m: "ints only")
    g2 = parse(SWISH_IR)
    assert with_check.explain(g2.find_node("y")) == "ints only"
    assert RuleSet("s", [SWISH, one]).explain(g2.find_node("y")) == {
        "swish": "applies", "mul-one": "input 1 of Mul (%y) (%s) is not a constant"}


def test_exclusive_refuses_when_the_intermediate_has_other_readers() -> None:
    g = parse(_ir("""
        graph g(%x: f32[4]) -> (%y, %n) opset(ai.onnx=17) {
          %s = Sigmoid(%x) : f32[4]
          %y = Mul(%x, %s) : f32[4]
          %n = Neg(%s) : f32[4]
        }
    """))
    assert SWISH.explain(g.find_node("y")) == "%s of Sigmoid (%s) is also used by Neg (%n)"
    assert apply_rules(g, [SWISH]) == {}


def _identity_chain(n: int) -> Graph:
    lines = [f"  %i{k + 1} = Identity(%i{k}) : f32[3]" for k in range(n)]
    return parse("graph c(%i0: f32[3]) -> (%y) opset(ai.onnx=17) {\n" + "\n".join(lines)
                 + "\n  %y = Neg(%i" + str(n) + ") : f32[3]\n}\n")


def test_fixpoint_and_counts() -> None:
    g = _identity_chain(5)
    ctx = PassContext()
    assert apply_rules(g, NOOP_FOLDS, ctx) == {"identity": 5}
    assert [n.op for n in g.nodes] == ["Neg"] and g.find_node("y").inputs[0].name == "i0"
    assert ctx.rewrites == 5 and len(ctx.trace) == 5


def test_bisect_limit_stops_after_n_rewrites_across_passes() -> None:
    g = _identity_chain(5)
    ctx = PassContext(bisect_limit=2)
    assert apply_rules(g, NOOP_FOLDS, ctx) == {"identity": 2}
    assert [n.op for n in g.nodes].count("Identity") == 3
    assert ctx.rewrites == 2 and ctx.bisect_skipped == 1
    assert any("bisect: limit of 2 rewrites reached" in line for line in ctx.log)
    # The budget is shared by the whole run: the next passes get nothing either.
    g2 = _identity_chain(5)
    g2.make_node("Neg", [g2.inputs[0]])  # dead
    ctx2 = PassContext(bisect_limit=4)
    PassManager("remove-noops,eliminate-dead-code").run(g2, ctx2)
    assert ctx2.rewrites == 4
    assert [r.rule for r in ctx2.trace] == ["identity"] * 4
    assert len(g2.nodes) == 3  # one Identity, the Neg, and the dead Neg are left
    g2.verify()


def test_graph_output_keeps_its_name_or_the_rewrite_is_refused() -> None:
    g = parse(_ir("""
        graph g(%x: f32[3]) -> (%y, %z) opset(ai.onnx=17) {
          %n = Neg(%x) : f32[3]
          %y = Identity(%n) : f32[3]
          %z = Identity(%x) : f32[3]
        }
    """))
    ctx = PassContext()
    assert apply_rules(g, NOOP_FOLDS, ctx) == {"identity": 1}
    assert print_graph(g) == _ir("""
        graph g(%x: f32[3]) -> (%y, %z) opset(ai.onnx=17) {
          %y = Neg(%x) : f32[3]
          %z = Identity(%x) : f32[3]
        }
    """)
    assert ctx.log == ["rule 'identity' not applied at %z: graph output %z would be replaced "
                       "by %x, which is a graph input itself"]
    g.verify()


def test_wrong_replacement_type_is_a_rewrite_error_naming_the_rule() -> None:
    g = parse(SWISH_IR)
    bad = Rule("bad", Pat("Mul", "x", "_"), lambda m, rw: rw.op("Shape", [m["x"]],
                                                                type=g.inputs[0].type.with_dtype(
                                                                    g.inputs[0].dtype.I64)))
    with pytest.raises(RewriteError, match=r"rule 'bad': %shape \(i64\[2,3\]\) cannot replace "
                                           r"%y \(f32\[2,3\]\)"):
        apply_rules(g, [bad])


def test_untyped_new_node_takes_the_replaced_type() -> None:
    g = parse(SWISH_IR)
    # rw.op without a type: its dtype guess and unknown shape give way to the root's type.
    rule = Rule("neg-neg", Pat("Mul", "x", "_"), lambda m, rw: rw.op("Neg", [rw.op("Neg", [m["x"]])]))
    apply_rules(g, [rule], max_rounds=1)
    assert g.find_node("y").outputs[0].type == g.inputs[0].type
    g.verify()


def test_rule_set_names_are_unique_and_indexed_by_op() -> None:
    rs = RuleSet("r", [SWISH])
    with pytest.raises(ValueError, match="already has a rule 'swish'"):
        rs.add(SWISH)
    assert rs.for_op("Mul") == [SWISH] and rs.for_op("Add") == []
    assert [r.name for r in NOOP_FOLDS.for_op("Transpose")] == [
        "transpose-identity", "transpose-inverse-pair"]


@pytest.mark.parametrize(("name", "body", "fires"), [
    ("mul-one", "%y = Mul(%x, %c1) : f32[2,3]", True),
    ("mul-one", "%y = Mul(%c1, %x) : f32[2,3]", True),
    ("mul-one", "%y = Mul(%v, %c1) : f32[2,3]", False),  # would drop the broadcast of %v
    ("add-zero", "%y = Add(%x, %c0) : f32[2,3]", True),
    ("sub-zero", "%y = Sub(%c0, %x) : f32[2,3]", False),  # 0 - x is not x
    ("div-one", "%y = Div(%x, %c1) : f32[2,3]", True),
    ("pow-one", "%y = Pow(%x, %c1) : f32[2,3]", True),
])
def test_algebraic_table(name: str, body: str, fires: bool) -> None:
    g = parse(_ir(f"""
        graph g(%x: f32[2,3], %v: f32[3]) -> (%y) opset(ai.onnx=17) {{
          %c1 = const f32[1] = [1.0]
          %c0 = const f32[] = [0.0]
          {body}
        }}
    """))
    rule = next(r for r in ALGEBRAIC_FOLDS if r.name == name)
    assert (rule.explain(g.find_node("y")) == "applies") is fires
