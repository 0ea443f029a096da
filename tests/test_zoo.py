"""Every zoo model through both PyTorch import routes, checked against torch itself.

For each model and each route (``frontend="fx"``: our lowering table; ``frontend="onnx"``: the
dynamo ONNX exporter and our ONNX frontend) the imported graph must verify, its CPU reference
outputs must match torch within 1e-4 relative error on the example input and on a calibration
input, an export/import round trip (``to_onnx`` then ``load_onnx``) must keep the outputs, and
the module paths of the model must appear in ``meta["src"]``.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

from compiler.frontends import load_onnx, to_onnx
from compiler.frontends.fx import load_torch
from compiler.ir import Graph
from compiler.reference import run_reference
from tests.models import ZOO, calibration_inputs, rel_error, torch_outputs

ROUTES = ["fx", "onnx"]
TOL = 1e-4

# module paths each model must show in meta["src"] (one per interesting layer kind); the
# exporter's optimizer folds a conv into the batch norm after it, so for convs followed by a
# norm we name the norm (the fx route keeps both)
EXPECTED_SRC = {
    "resnet": ["bn1", "layer1.bn2", "layer2.downsample.1", "layer2.relu", "avgpool", "fc"],
    "mobilenet": ["stem.1", "stem.2", "blocks.0.depthwise.1", "blocks.1.se.fc1",
                  "blocks.2.project.1", "classifier"],
    "vit": ["patch_embed", "blocks.0.attn.qkv", "blocks.1.mlp.0", "blocks.1.mlp.2", "head"],
    "llama": ["embed_tokens", "layers.0.self_attn.q_proj", "layers.1.self_attn.o_proj",
              "layers.1.mlp.gate_proj", "lm_head"],
    "unet": ["conv_in", "time_embed.0", "res.conv1", "attn.attn2.to_k", "attn.proj_out",
             "up_conv", "conv_out"],
    "whisper": ["conv1", "conv2", "blocks.0.attn.query", "blocks.0.mlp.0", "ln_post"],
}


@functools.cache
def _model(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return ZOO[name]()


@functools.cache
def _imported(name: str, route: str) -> Graph:
    model, example = _model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation chatter
        return load_torch(model, example, frontend=route)


def _check_numerics(graph: Graph, name: str) -> None:
    model, example = _model(name)
    for inputs in (example, *calibration_inputs(name, 1)):
        feeds = [t.numpy().copy() for t in inputs]
        want = torch_outputs(model, inputs)
        got = run_reference(graph, feeds)
        assert len(graph.outputs) == len(want)
        for v, w in zip(graph.outputs, want):
            err = rel_error(got[v.name], w)
            assert err <= TOL, f"{name}: output %{v.name} is off by {err:.3g} (relative)"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_import_verifies_and_matches_torch(name: str, route: str) -> None:
    g = _imported(name, route)
    assert g.meta["frontend"] == route
    g.verify()
    _check_numerics(g, name)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_onnx_round_trip_keeps_outputs(name: str, route: str) -> None:
    g = _imported(name, route)
    back = load_onnx(to_onnx(g))
    back.verify()
    assert [v.name for v in back.inputs] == [v.name for v in g.inputs]
    _check_numerics(back, name)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_module_paths_in_provenance(name: str, route: str) -> None:
    g = _imported(name, route)
    srcs = {n.meta.get("src", "") for n in g.nodes}
    expected = list(EXPECTED_SRC[name])
    if route == "fx":  # every module that computes something, convs before norms included
        model, _ = _model(name)
        expected += [p for p, m in model.named_modules()
                     if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))]
    missing = [p for p in expected if p not in srcs]
    assert not missing, f"{name} via {route}: no node has src {missing}; have {sorted(srcs)}"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_fx_route_names_constants_by_fqn(name: str) -> None:
    model, _ = _model(name)
    g = _imported(name, "fx")
    params = dict(model.named_parameters())
    used = [k for k in params if k in g.constants]
    # every parameter the graph reads is a constant under its FQN holding the same numbers
    assert used
    for k in used:
        np.testing.assert_array_equal(g.constants[k].const, params[k].detach().numpy())


# --- after import: canonicalize ------------------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_canonicalize_keeps_outputs_and_round_trips(name: str, route: str) -> None:
    from compiler.frontends import load_onnx, to_onnx
    from compiler.passes import PassManager

    g = _imported(name, route).copy()
    PassManager("canonicalize").run(g)
    g.verify()
    _check_numerics(g, name)
    back = load_onnx(to_onnx(g))
    back.verify()
    _check_numerics(back, name)
