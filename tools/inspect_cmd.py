"""``edgec inspect OUT_DIR | model.onnx``: what an artifact holds.

Lists the HTP partitions (``EPContext`` nodes) with their context binary's file, size, SHA-256,
arch and the QNN SDK version that built it; the nodes left on the CPU; and the model's inputs
and outputs with shapes, dtypes and (from ``model.ir`` beside it, when present) quantization
encodings. Reads only the files of the artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from compiler.errors import ModelLoadError

__all__ = ["add_inspect_parser", "run_inspect", "inspect_artifact"]


def add_inspect_parser(sub: Any) -> None:
    """Register ``inspect`` on the CLI's subparsers."""
    p = sub.add_parser("inspect", help="show the partitions, binaries and I/O of an artifact")
    p.add_argument("artifact", help="an output folder of 'edgec compile' or a context model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_inspect)


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return None


def inspect_artifact(path: str | Path) -> dict[str, Any]:
    """The facts ``edgec inspect`` prints, as a dict."""
    import onnx

    from compiler.frontends.onnx_import import ONNX_TO_DTYPE

    p = Path(path)
    model_path = p / "model.onnx" if p.is_dir() else p
    if not model_path.is_file():
        raise ModelLoadError(f"{p}: no model.onnx (give an 'edgec compile' output folder or "
                             "an .onnx context model)")
    try:
        m = onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have many types
        raise ModelLoadError(f"{model_path}: not an ONNX model: {e}") from None
    folder = model_path.parent
    parts, cpu = [], []
    for n in m.graph.node:
        if n.op_type == "EPContext":
            info: dict[str, Any] = {"node": n.name, "inputs": list(n.input),
                                    "outputs": list(n.output),
                                    "ep_sdk_version": _attr(n, "ep_sdk_version"),
                                    "embed_mode": _attr(n, "embed_mode")}
            ref = _attr(n, "ep_cache_context")
            if info["embed_mode"] == 0 and isinstance(ref, str) and ref:
                b = (folder / ref).resolve()
                if folder.resolve() not in b.parents or not b.is_file():
                    raise ModelLoadError(f"{model_path}: context {n.name} points at {ref!r}, "
                                         "which is not a file beside the model")
                info.update(binary=ref, bytes=b.stat().st_size,
                            sha256=hashlib.sha256(b.read_bytes()).hexdigest())
            parts.append(info)
        elif n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            # unnamed nodes (as the CPU target writes them) go by their first output
            cpu.append({"node": n.name or (n.output[0] if n.output else ""), "op": n.op_type})
    encodings: dict[str, str] = {}
    ir = folder / "model.ir"
    if p.is_dir() and ir.is_file():
        from compiler.ir import load_ir
        from compiler.ir.printer import encoding_str

        g = load_ir(ir)
        for v in [*g.inputs, *g.outputs]:
            if v.encoding is not None:
                encodings[v.name] = encoding_str(v.encoding)

    def io(vi: Any) -> dict[str, Any]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in t.shape.dim]
        dt = ONNX_TO_DTYPE.get(t.elem_type)
        return {"name": vi.name, "dtype": dt.value if dt else str(t.elem_type), "shape": dims,
                "encoding": encodings.get(vi.name)}

    report = {}
    rep = folder / "report.json"
    if p.is_dir() and rep.is_file():
        report = json.loads(rep.read_text())
    return {"model": str(model_path), "arch": report.get("arch"),
            "qairt_version": report.get("qairt_version"), "partitions": parts,
            "cpu_nodes": cpu, "inputs": [io(i) for i in m.graph.input],
            "outputs": [io(o) for o in m.graph.output]}


def run_inspect(args: argparse.Namespace) -> int:
    """``edgec inspect``."""
    info = inspect_artifact(args.artifact)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return 0
    w = sys.stdout.write
    w(f"{info['model']}  (HTP v{info['arch'] or '?'}, QAIRT {info['qairt_version'] or '?'})\n")
    w(f"partitions: {len(info['partitions'])}\n")
    for c in info["partitions"]:
        size = (f"{c['bytes']:,} bytes" if "bytes" in c
                else "embedded" if c["embed_mode"] == 1 else "(in the main context's binary)")
        w(f"  {c['node']}: {c.get('binary', '')} {size} sha256 {c.get('sha256', '')[:16]} "
          f"(built by QNN {c['ep_sdk_version']})\n")
    w(f"CPU nodes: {len(info['cpu_nodes'])}\n")
    for c in info["cpu_nodes"]:
        w(f"  {c['node']} ({c['op']})\n")
    for kind in ("inputs", "outputs"):
        w(f"{kind}:\n")
        for t in info[kind]:
            enc = f"  {t['encoding']}" if t["encoding"] else ""
            w(f"  {t['name']}: {t['dtype']}{t['shape']}{enc}\n")
    return 0
