"""Run edgec's benchmarks: ``ingest`` (foundation: import/canonicalize/export vs the onnx
package) and ``htp`` (compile for the HTP vs ONNX Runtime's QNN recipe, on the simulator).
Each writes its table to ``benchmarks/results/<name>.md``; the README quotes them.

    .venv/bin/python benchmarks/run.py                 # everything
    .venv/bin/python benchmarks/run.py --only ingest   # one of them
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCHMARKS = ("ingest", "htp")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks in order; extra arguments go to each script."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=BENCHMARKS, action="append")
    args, rest = p.parse_known_args(argv)
    code = 0
    for name in args.only or BENCHMARKS:
        if name == "ingest":
            from benchmarks import ingest

            code |= ingest.main(rest)
        else:
            from benchmarks import htp

            code |= htp.main(rest)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
