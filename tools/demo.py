"""``edgec demo``: the bundled example compiled for the HTP, run on the simulator, reported.

Takes ``tools/examples/tiny_cnn.py`` (a small CNN trained in a few seconds on a synthetic
task), compiles it with ``compiler.compile`` for ``htp-v75`` at ``w8a16`` (calibrating on 16
generated images), runs the context binary on the HTP simulator on held-out images, compares
with PyTorch in FP32 (SQNR and whether the predicted class agrees), and prints the summary.
Everything is written inside ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["run_demo"]


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; writes only inside ``args.output``."""
    import torch

    import compiler
    from compiler.numerics import metrics
    from tools.examples.tiny_cnn import _data, calibration_batches, make

    module, example = make()
    cm = compiler.compile(module, example, target=args.target, precision=args.precision,
                          calibration_data=calibration_batches(16), output_dir=args.output,
                          progress=sys.stderr.isatty())
    x, labels = _data(8, seed=7)
    refs, outs, agree, correct = [], [], 0, 0
    for i in range(len(x)):
        with torch.no_grad():
            want = module(x[i:i + 1]).numpy()
        got = cm.run(x[i:i + 1].numpy())[0]
        refs.append(want)
        outs.append(got)
        agree += int(want.argmax() == got.argmax())
        correct += int(got.argmax() == int(labels[i]))
    m = metrics(refs, outs)
    summary: dict[str, Any] = dict(cm.report["summary"])
    summary["heldout"] = {"images": len(x), "sqnr_db": round(m.sqnr_db, 2),
                          "cosine": round(m.cosine, 6), "top1_agreement": agree / len(x),
                          "accuracy_on_simulator": correct / len(x)}
    summary["artifacts"] = {k: str(v) for k, v in sorted(cm.artifacts.items())}
    summary["qairt"] = cm.report.get("qairt_version")
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return 0
    w = sys.stdout.write
    w("edgec demo: tools/examples/tiny_cnn.py -> "
      f"{summary['target']} at {summary['precision']} (QAIRT {summary['qairt']})\n\n")
    rows = [
        ("nodes", f"{summary['nodes']} ({summary['npu_nodes']} on the NPU, "
                  f"{summary['cpu_nodes']} on the CPU)"),
        ("HTP contexts", summary["partitions"]),
        ("MACs", f"{summary['macs']:,}"),
        ("weight bytes", f"{summary['weight_bytes']:,}"),
        ("SQNR vs FP32 (calibration)", f"{summary['sqnr_db']} dB"),
        ("SQNR vs FP32 (held-out, simulator)", f"{summary['heldout']['sqnr_db']} dB"),
        ("top-1 agreement with FP32", f"{agree}/{len(x)}"),
        ("accuracy on the simulator", f"{correct}/{len(x)}"),
        ("stage times", ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in summary["times_s"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        w(f"  {k:<{width}}  {v}\n")
    for node in cm.report.get("cpu_nodes", []):
        w(f"  on the CPU: {node['node']} ({node['op']}): {node['reason']}\n")
    w("\nartifacts:\n")
    for k, v in summary["artifacts"].items():
        w(f"  {k:<9} {v}\n")
    return 0
