"""Heterogeneous placement: give every node a target (``htp-v75``, ``cpu``, ``gpu-adreno``) so
that total predicted latency, transfers included, is lowest.

- :mod:`passes.partition.placement`: the problem, the objective, the solvers (min-cut, local
  search, the greedy capability baseline);
- :mod:`passes.partition.pins`: user pins (``{"layers.0.*": "cpu"}``);
- :mod:`passes.partition.report`: :func:`place` and the JSON report;
- :mod:`passes.partition.place_nodes`: the ``partition`` pass.
"""

from passes.partition.pins import matches, pin_of, resolve_target
from passes.partition.placement import (
    Flow,
    Item,
    Partition,
    Placement,
    Problem,
    build_problem,
    evaluate,
    family,
    greedy_assignment,
    solve,
)
from passes.partition.report import annotate, place, placement_report, reevaluate

__all__ = [
    "Flow", "Item", "Partition", "Placement", "Problem", "annotate", "build_problem",
    "evaluate", "family", "greedy_assignment", "matches", "pin_of", "place",
    "placement_report", "reevaluate", "resolve_target", "solve",
]
