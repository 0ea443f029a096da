"""``edgec demo``: the bundled example through the compiler, with its work shown.

Imports ``tools/examples/tiny_cnn.py`` (a small trained CNN) from PyTorch, runs the
foundation pipeline, checks the result against PyTorch on the CPU reference, exports ONNX
into the output folder and prints the IR and a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]

PIPELINE = "canonicalize,fuse"


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; writes only inside ``args.output``."""
    import numpy as np

    from compiler.frontends import load_torch, save_onnx
    from compiler.ir import print_graph, save_ir
    from compiler.passes import PassContext, PassManager, StatisticsInstrument
    from compiler.reference import run_reference
    from tools.examples.tiny_cnn import make

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    t = time.perf_counter()
    module, example = make()
    times["build_model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    graph = load_torch(module, example)
    times["import_s"] = time.perf_counter() - t
    nodes_in = len(graph.nodes)

    stats = StatisticsInstrument()
    t = time.perf_counter()
    PassManager(PIPELINE, instruments=[stats]).run(graph, PassContext())
    times["passes_s"] = time.perf_counter() - t

    import torch

    with torch.no_grad():
        want = module(*example).numpy()
    got = run_reference(graph, [example[0].numpy()])[graph.outputs[0].name]
    rel = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))

    t = time.perf_counter()
    save_onnx(graph, out / "model.onnx")
    save_ir(graph, out / "model.ir")
    times["export_s"] = time.perf_counter() - t

    ops: dict[str, int] = {}
    for n in graph.nodes:
        ops[n.op] = ops.get(n.op, 0) + 1
    summary: dict[str, Any] = {
        "model": "tools/examples/tiny_cnn.py:make",
        "pipeline": PIPELINE,
        "nodes_imported": nodes_in,
        "nodes_after_passes": len(graph.nodes),
        "ops": dict(sorted(ops.items())),
        "weight_bytes": int(sum(v.const.nbytes for v in graph.constants.values()
                                if v.const is not None)),
        "rel_error_vs_torch": rel,
        "artifacts": sorted(str(p) for p in out.iterdir() if not p.name.startswith(".")),
        "times_s": {k: round(v, 3) for k, v in times.items()},
    }
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return 0
    sys.stdout.write(print_graph(graph))
    sys.stdout.write("\n")
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        sys.stdout.write(f"{k:<{width}}  {v}\n")
    return 0
