"""Run edgec's benchmarks, each against its baseline side by side in one run:

- ``ingest``: import/canonicalize/export vs the onnx package (foundation);
- ``htp``: compile for the HTP vs ONNX Runtime's QNN recipe and AIMET, on the simulator;
- ``quant_ablation``: what each piece of the HTP quantization pipeline buys;
- ``cost``: predicted vs published latency, rank correlation vs simulator cycles;
- ``placement``: cost-driven vs greedy placement on the zoo;
- ``compress``: accuracy vs MACs, cycles and size of the compression passes.

Each writes its table to ``benchmarks/results/<name>.md``; the README quotes them.

    .venv/bin/python benchmarks/run.py                 # everything
    .venv/bin/python benchmarks/run.py --only ingest   # one of them (repeatable)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCHMARKS = ("ingest", "htp", "quant_ablation", "cost", "placement", "compress")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks in order; extra arguments go to each script."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=BENCHMARKS, action="append")
    args, rest = p.parse_known_args(argv)
    code = 0
    for name in args.only or BENCHMARKS:
        code |= importlib.import_module(f"benchmarks.{name}").main(rest)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
