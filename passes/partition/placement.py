"""Cost-driven placement of a graph's nodes on several targets (``htp-v75`` + ``cpu``, ...).

The problem (:func:`build_problem`): *items* are the units of placement, one per node, or one
per ``meta["unit"]`` group (attention, SiLU, RMSNorm: placed as one); each item has a predicted
cost on every target (:func:`targets.cost.graph_cost`), the targets it may go to (capability
refusals with their reason codes, user pins) and *flows*, the tensors it hands to other items.

The objective (:func:`evaluate`), for an assignment of items to targets:

- items on one target are grouped into *partitions*: connected runs merged while the
  partition graph stays acyclic (merging is checked with networkx first, as
  ``torch.fx``'s capability partitioner does), then same-target partitions with no path
  between them merged too, so every partition is one launch;
- ``total = sum(node costs) + sum over partitions of (launch or transfer)``: a partition fed
  by another device pays :func:`targets.cost.transfer_cost` for the tensors it receives
  (bytes at the slower DRAM bandwidth, plus the synchronisation latency, once per partition:
  one launch waits for all its inputs); a partition fed only by graph inputs or its own
  device pays its device's launch (``graph_overhead_s``, the same latency). On one target the
  total is exactly ``graph_cost(...).seconds``.

The solvers (:func:`solve`):

- ``greedy``: every item on the first target (in the order given) that takes it, what
  capability-based flows (Qualcomm's QNN EP partitioner) do;
- ``fallback`` (one NPU with the CPU as a fallback): greedy, then small NPU islands moved
  wholly to the CPU when the predicted total drops by more than a margin; the biggest NPU
  partition stays, and a model the NPU fully supports is left as one NPU partition
  (:func:`_fallback`);
- ``cost``: a minimum s-t cut (networkx) of node costs plus tensor transfers for two targets
  (cheapest-per-item for more), then local search over the exact objective: move a whole
  partition, or one item at a partition boundary, to another target while that lowers the
  total (this removes partitions too small to pay for their launch and transfers). Starting
  points are the cut, the greedy placement and each single target that takes every item; the
  best refined one wins, so ``cost`` is never predicted slower than ``greedy``.

Everything iterates in a fixed order (item index, target order), so the same graph, targets and
pins give the same placement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx

from compiler.errors import TargetError, UnsupportedOpError
from compiler.ir import Graph, Node, Value
from passes.partition.pins import pin_of
from targets.base import DeviceSpec

__all__ = ["Item", "Flow", "Problem", "Partition", "Placement", "Policy", "build_problem",
           "evaluate", "solve", "greedy_assignment", "family"]

Policy = Literal["cost", "greedy", "fallback"]

#: ``fallback``: an NPU island moves to the CPU only when the predicted total drops by more
#: than this many seconds ...
FALLBACK_MARGIN_S = 5e-6
#: ... and by more than this fraction of the total (both: a conservative margin, so model
#: error cannot flip a placement the user asked the NPU for)
FALLBACK_MARGIN_FRAC = 0.05
#: ... and only small islands: at most this fraction of the anchor's (the biggest NPU
#: partition's) predicted compute or of its node count; comparable halves of a model stay
FALLBACK_ISLAND_FRAC = 0.25

#: local-search rounds at most (each applies one strictly improving move)
_MAX_ROUNDS = 200
#: below this many partitions, same-target partitions without a path between them are merged
_MAX_SIBLING_MERGE = 400
#: improvements smaller than this (seconds) do not count: no churn on float noise
_EPS = 1e-12


def family(target: str) -> str:
    """``htp`` / ``cpu`` / ``gpu``: the short placement name of a target (``node.placement``)."""
    return target.split("-", 1)[0]


@dataclass
class Item:
    """One unit of placement: a node, or the nodes of one ``meta["unit"]`` group."""

    index: int
    nodes: tuple[Node, ...]
    names: tuple[str, ...]
    unit: str | None
    cost: dict[str, float]
    allowed: tuple[str, ...]
    refusals: dict[str, str]
    pin: tuple[str, str] | None = None
    #: target -> each member's own cost, in ``nodes`` order (they sum to ``cost``)
    node_costs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #: each member's own pin ``(target, pattern)`` or None, in ``nodes`` order
    member_pins: tuple[tuple[str, str] | None, ...] = ()

    @property
    def label(self) -> str:
        """The unit name, or the node name."""
        return self.unit or self.names[0]


@dataclass(frozen=True)
class Flow:
    """A tensor ``name`` of ``nbytes`` made by item ``producer`` and read by ``consumers``."""

    name: str
    producer: int
    consumers: tuple[int, ...]
    nbytes: int


@dataclass
class Problem:
    """The placement problem of one graph (see the module docstring)."""

    graph: Graph
    targets: tuple[str, ...]
    devices: dict[str, DeviceSpec]
    items: list[Item]
    flows: list[Flow]
    dag: nx.DiGraph
    names: dict[int, str]
    notes: list[str] = field(default_factory=list)

    def item_of(self, node: Node) -> Item:
        """The item holding ``node``."""
        for it in self.items:
            if any(n is node for n in it.nodes):
                return it
        raise KeyError(node.name)


@dataclass(frozen=True)
class Partition:
    """Items on one target launched together, with their predicted cost.

    ``launch_s`` is the device's launch overhead (a partition fed by no other device);
    ``transfer_s`` the cost of the tensors it receives from other devices, synchronisation
    included (:func:`targets.cost.transfer_cost`); ``predicted_s`` adds its nodes' costs."""

    index: int
    target: str
    items: tuple[int, ...]
    compute_s: float
    launch_s: float
    transfer_s: float
    transfer_bytes: int

    @property
    def predicted_s(self) -> float:
        """Nodes + launch + incoming transfers."""
        return self.compute_s + self.launch_s + self.transfer_s


@dataclass
class Placement:
    """An assignment of every item to a target, its partitions and predicted total."""

    problem: Problem
    assign: tuple[str, ...]
    partitions: list[Partition]
    total_s: float
    policy: str = "cost"
    reasons: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: node name -> ``(code, sentence)`` where a member of an item has its own reason (a
    #: unit placed by a pin on one of its members); the rest take their item's
    node_reasons: dict[str, tuple[str, str]] = field(default_factory=dict)

    def reason_of(self, item: int, name: str) -> tuple[str, str]:
        """``(code, sentence)`` of node ``name`` of item ``item``."""
        return self.node_reasons.get(name) or self.reasons.get(item, ("", ""))

    def target_of(self) -> dict[str, str]:
        """Node name -> target name."""
        return {name: self.assign[it.index] for it in self.problem.items for name in it.names}

    def partition_of(self) -> dict[int, int]:
        """Item index -> partition index."""
        return {i: p.index for p in self.partitions for i in p.items}


def _bits(v: Value, key: str | None) -> int:
    if v.encoding is not None:
        return int(v.encoding.bits)
    if v.dtype.is_float and key is not None:
        from targets.cost import KEY_BITS

        return KEY_BITS.get(key, (int(v.dtype.bits), 0))[0]
    return int(v.dtype.bits)


def _nbytes(v: Value, key: str | None) -> int:
    n = v.type.numel
    return 0 if n is None else (int(n) * _bits(v, key) + 7) // 8


def _target_obj(name: str) -> Any:
    from targets import get_target

    return get_target(name)


def _costs(graph: Graph, device: DeviceSpec, key: str | None) -> list[float]:
    from targets.cost import graph_cost

    if key is not None:
        try:
            return [c.seconds for c in graph_cost(graph, device, key).nodes]
        except TargetError:  # a float-only device (the GPU) asked for an integer scheme
            pass
    return [c.seconds for c in graph_cost(graph, device).nodes]


def build_problem(graph: Graph, targets: Sequence[str], *,
                  pins: Mapping[str, str] | None = None, precision: str | None = None,
                  assume_quantized: bool = False) -> Problem:
    """The placement problem of ``graph`` over ``targets`` (names, e.g. ``["htp-v75",
    "cpu"]``).

    ``precision`` (a scheme such as ``w8a8``) costs nodes without encodings at that scheme
    (``compiler.estimate``'s rule); without it they cost at each device's float key.
    ``assume_quantized`` skips the HTP's "left in float" refusal (for a float graph that the
    quantizer would quantize: ``edgec explain``).

    Raises :class:`~compiler.errors.TargetError` for an unknown or repeated target or a pin
    naming a target not in ``targets``, and :class:`~compiler.errors.UnsupportedOpError`
    naming the node when a pin sends a node to a target that refuses it, or no target takes a
    node.
    """
    from targets.cost import device_of, is_fused_activation, node_names, scheme_key

    names_t = tuple(_target_obj(t).name for t in targets)
    if not names_t:
        raise TargetError("placement needs at least one target")
    if len(set(names_t)) != len(names_t) or len({family(t) for t in names_t}) != len(names_t):
        raise TargetError(f"placement targets must be distinct devices, got {list(targets)}")
    tobjs = {t: _target_obj(t) for t in names_t}
    devices = {t: device_of(o) for t, o in tobjs.items()}
    key = scheme_key(precision) if precision else None
    fp16 = assume_quantized or precision == "fp16" or graph.meta.get("precision") == "fp16"
    names = node_names(graph)
    nodes = list(graph.nodes)
    costs = {t: _costs(graph, devices[t], key) for t in names_t}
    pin_map = dict(pins or {})
    notes: list[str] = []

    per_node: list[tuple[dict[str, float], dict[str, str], tuple[str, str] | None]] = []
    used_pins: set[str] = set()
    for i, n in enumerate(nodes):
        refusals: dict[str, str] = {}
        for t in names_t:
            s = tobjs[t].supports(n, fp16=fp16)
            if not s.ok:
                refusals[t] = f"{s.reason.value}: {s.detail}"
        pin = pin_of(n, pin_map, names_t, names[id(n)]) if pin_map else None
        if pin is not None:
            used_pins.add(pin[1])
            if pin[0] in refusals:
                raise UnsupportedOpError(
                    f"node {names[id(n)]} ({n.op}) is pinned to {pin[0]} by {pin[1]!r}, but "
                    f"{pin[0]} refuses it: {refusals[pin[0]]}")
        per_node.append(({t: costs[t][i] for t in names_t}, refusals, pin))
    for p in pin_map:
        if p not in used_pins:
            notes.append(f"placement pin {p!r} matches no node")

    index = {id(n): i for i, n in enumerate(nodes)}
    # An activation the HTP fuses into its producer (Conv + Relu, ...) is placed with it: on
    # the HTP it costs nothing only next to its producer, and splitting the pair buys nothing.
    fused_key: dict[int, str] = {}
    npu = any(family(t) == "htp" for t in names_t)
    for i, n in enumerate(nodes):
        x = n.inputs[0] if n.inputs else None
        if not npu or not is_fused_activation(n) or x is None or x.producer is None:
            continue
        j = index.get(id(x.producer))
        if j is None or "unit" in n.meta or "unit" in nodes[j].meta or j in fused_key:
            continue
        pi, pj = per_node[i][2], per_node[j][2]
        if pi is None or pj is None or pi[0] == pj[0]:
            fused_key[i] = fused_key[j] = f"fused:{j}"
    dissolved: set[str] = set()
    while True:
        groups: dict[str, list[int]] = {}
        order: list[list[int]] = []
        for i, n in enumerate(nodes):
            u = n.meta.get("unit", fused_key.get(i))
            if isinstance(u, str) and u not in dissolved:
                if u not in groups:
                    groups[u] = []
                    order.append(groups[u])
                groups[u].append(i)
            else:
                order.append([i])
        owner = {i: k for k, members in enumerate(order) for i in members}
        dag: nx.DiGraph = nx.DiGraph()
        dag.add_nodes_from(range(len(order)))
        for i, n in enumerate(nodes):
            for v in n.inputs:
                if v is not None and v.producer is not None and id(v.producer) in index:
                    a, b = owner[index[id(v.producer)]], owner[i]
                    if a != b:
                        dag.add_edge(a, b)
        if nx.is_directed_acyclic_graph(dag):
            break
        # a unit whose members reach each other through outside nodes cannot be one item
        for comp in nx.strongly_connected_components(dag):
            if len(comp) > 1:
                for k in comp:
                    u = nodes[order[k][0]].meta.get("unit", fused_key.get(order[k][0]))
                    if isinstance(u, str):
                        dissolved.add(u)
                        notes.append(f"unit {u} placed node by node: outside nodes sit "
                                     "between its members")

    topo = list(nx.lexicographical_topological_sort(dag, key=lambda k: order[k][0]))
    renum = {old: new for new, old in enumerate(topo)}
    items: list[Item] = []
    for old in topo:
        members = order[old]
        ns = tuple(nodes[i] for i in members)
        cost = {t: sum(per_node[i][0][t] for i in members) for t in names_t}
        item_refusals: dict[str, str] = {}
        for i in members:
            for t, r in per_node[i][1].items():
                item_refusals.setdefault(t, r if len(members) == 1
                                    else f"{r} (member {names[id(nodes[i])]})")
        pins_here: set[tuple[str, str]] = {pn for i in members
                                           if (pn := per_node[i][2]) is not None}
        unit = nodes[members[0]].meta.get("unit") if len(members) > 1 else None
        label = str(unit) if unit else names[id(ns[0])]
        if len({p[0] for p in pins_here}) > 1:
            raise TargetError(f"unit {label}: its members are pinned to different targets "
                              f"({sorted(p[0] for p in pins_here)}); a unit "
                              "is placed as one")
        pin = min(pins_here, key=lambda p: (p[0], p[1])) if pins_here else None
        allowed = tuple(t for t in names_t if t not in item_refusals)
        if pin is not None:
            if pin[0] in item_refusals:
                raise UnsupportedOpError(f"unit {label} is pinned to {pin[0]} by {pin[1]!r}, "
                                         f"but {pin[0]} refuses it: {item_refusals[pin[0]]}")
            allowed = (pin[0],)
        if not allowed:
            raise UnsupportedOpError(
                f"node {label} ({ns[0].op}) runs on none of {', '.join(names_t)}: "
                + "; ".join(f"{t}: {r}" for t, r in item_refusals.items()))
        items.append(Item(renum[old], ns, tuple(names[id(n)] for n in ns),
                          str(unit) if unit else None, cost, allowed, item_refusals, pin,
                          {t: tuple(per_node[i][0][t] for i in members) for t in names_t},
                          tuple(per_node[i][2] for i in members)))
    item_dag: nx.DiGraph = nx.DiGraph()
    item_dag.add_nodes_from(range(len(items)))
    item_dag.add_edges_from((renum[a], renum[b]) for a, b in dag.edges)

    flows: list[Flow] = []
    for i, n in enumerate(nodes):
        for v in n.outputs:
            if v is None or v.is_const:
                continue
            src = renum[owner[i]]
            cons = sorted({renum[owner[index[id(u)]]] for u in v.consumers()
                           if id(u) in index} - {src})
            if cons:
                flows.append(Flow(v.name, src, tuple(cons), _nbytes(v, key)))
    return Problem(graph, names_t, devices, items, flows, item_dag,
                   {id(n): names[id(n)] for n in nodes}, notes)


# -- partitions and the objective -------------------------------------------------------------


def _creates_cycle(q: nx.DiGraph, a: int, b: int) -> bool:
    """Whether contracting ``a`` and ``b`` in DAG ``q`` makes a cycle: a path between them that
    goes through a third node."""
    for x, y in ((a, b), (b, a)):
        for s in q.successors(x):
            if s != y and nx.has_path(q, s, y):
                return True
    return False


def _contract(q: nx.DiGraph, keep: int, gone: int) -> None:
    for p in list(q.predecessors(gone)):
        if p != keep:
            q.add_edge(p, keep)
    for s in list(q.successors(gone)):
        if s != keep:
            q.add_edge(keep, s)
    q.remove_node(gone)


def _groups(problem: Problem, assign: Sequence[str]) -> list[list[int]]:
    """Items grouped into acyclic partitions (see the module docstring), in topological
    order of the partition graph."""
    q: nx.DiGraph = problem.dag.copy()
    members: dict[int, list[int]] = {i: [i] for i in q.nodes}
    root = {i: i for i in q.nodes}

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    def merge(a: int, b: int) -> None:
        keep, gone = min(a, b), max(a, b)
        _contract(q, keep, gone)
        members[keep].extend(members.pop(gone))
        root[gone] = keep

    for u, v in sorted(problem.dag.edges):
        a, b = find(u), find(v)
        if a != b and assign[u] == assign[v] and not _creates_cycle(q, a, b):
            merge(a, b)
    if q.number_of_nodes() <= _MAX_SIBLING_MERGE:
        changed = True
        while changed:
            changed = False
            roots = sorted(q.nodes)
            for x in range(len(roots)):
                for y in range(x + 1, len(roots)):
                    a, b = roots[x], roots[y]
                    if a in q and b in q and assign[a] == assign[b] and not _creates_cycle(
                            q, a, b):
                        merge(a, b)
                        changed = True
    order = list(nx.lexicographical_topological_sort(q, key=lambda r: r))
    return [sorted(members[r]) for r in order]


def evaluate(problem: Problem, assign: Sequence[str], policy: str = "cost") -> Placement:
    """Partitions and predicted total latency of ``assign`` (one target per item)."""
    from targets.cost import transfer_cost

    groups = _groups(problem, assign)
    part_of = {i: k for k, g in enumerate(groups) for i in g}
    incoming: dict[int, dict[str, int]] = {k: {} for k in range(len(groups))}
    for f in problem.flows:
        src_t = assign[f.producer]
        dst_parts = sorted({part_of[c] for c in f.consumers
                            if assign[c] != src_t and part_of[c] != part_of[f.producer]})
        for k in dst_parts:
            incoming[k][src_t] = incoming[k].get(src_t, 0) + f.nbytes
    parts: list[Partition] = []
    total = 0.0
    for k, g in enumerate(groups):
        t = assign[g[0]]
        dev = problem.devices[t]
        compute = sum(problem.items[i].cost[t] for i in g)
        launch = transfer = 0.0
        nbytes = 0
        if incoming[k]:
            # the synchronisation latency is paid once per partition: one launch waits for
            # all its inputs, whichever device they come from
            for j, (src, b) in enumerate(sorted(incoming[k].items())):
                c = transfer_cost(b, problem.devices[src], dev)
                transfer += c if j == 0 else c - dev.graph_overhead_s
                nbytes += b
        else:
            launch = dev.graph_overhead_s
        p = Partition(k, t, tuple(g), compute, launch, transfer, nbytes)
        parts.append(p)
        total += p.predicted_s
    return Placement(problem, tuple(assign), parts, total, policy)


# -- solvers ----------------------------------------------------------------------------------


def greedy_assignment(problem: Problem) -> list[str]:
    """Every item on the first target (in ``problem.targets`` order) that takes it."""
    return [it.allowed[0] for it in problem.items]


def _cheapest(problem: Problem) -> list[str]:
    return [min(it.allowed, key=lambda t: (it.cost[t], problem.targets.index(t)))
            for it in problem.items]


def _ps(seconds: float) -> int:
    return max(0, round(seconds * 1e12))


def _min_cut(problem: Problem) -> list[str]:
    """Two targets: node costs plus tensor transfers (bytes at the slower bandwidth plus the
    synchronisation latency, per consumer) as a minimum s-t cut."""
    from targets.cost import transfer_cost

    a, b = problem.targets
    g: nx.DiGraph = nx.DiGraph()
    g.add_node("s")
    g.add_node("t")
    for it in problem.items:
        # it on the a side cuts it->t (pays cost on a); on the b side cuts s->it
        if a in it.allowed:
            g.add_edge(it.index, "t", capacity=_ps(it.cost[a]))
        else:
            g.add_edge(it.index, "t")  # no capacity: infinite, it cannot be on the a side
        if b in it.allowed:
            g.add_edge("s", it.index, capacity=_ps(it.cost[b]))
        else:
            g.add_edge("s", it.index)
    for f in problem.flows:
        for c in f.consumers:
            for x, y, src, dst in ((f.producer, c, a, b), (c, f.producer, b, a)):
                cap = _ps(transfer_cost(f.nbytes, problem.devices[src], problem.devices[dst]))
                prev = g.get_edge_data(x, y, {}).get("capacity", 0)
                g.add_edge(x, y, capacity=prev + cap)
    _, (side_a, _) = nx.minimum_cut(g, "s", "t")
    return [a if it.index in side_a else b for it in problem.items]


def _refine(problem: Problem, assign: list[str], policy: str) -> Placement:
    """Local search: apply the best strictly improving move (a whole partition, or one
    boundary item, to another allowed target) until none is left."""
    best = evaluate(problem, assign, policy)
    for _ in range(_MAX_ROUNDS):
        cur = list(best.assign)
        moves: list[tuple[str, ...]] = []
        candidates: list[list[str]] = []
        for p in best.partitions:
            for t in problem.targets:
                if t != p.target and all(t in problem.items[i].allowed for i in p.items):
                    cand = list(cur)
                    for i in p.items:
                        cand[i] = t
                    candidates.append(cand)
        for it in problem.items:
            near = {cur[j] for j in (*problem.dag.predecessors(it.index),
                                     *problem.dag.successors(it.index))}
            for t in it.allowed:
                if t != cur[it.index] and t in near:
                    cand = list(cur)
                    cand[it.index] = t
                    candidates.append(cand)
        seen: set[tuple[str, ...]] = {tuple(cur)}
        for cand in candidates:
            if tuple(cand) not in seen:
                seen.add(tuple(cand))
                moves.append(tuple(cand))
        improved: Placement | None = None
        for m in moves:
            e = evaluate(problem, m, policy)
            if e.total_s < (improved.total_s if improved else best.total_s) - _EPS:
                improved = e
        if improved is None:
            return best
        best = improved
    return best


def _size(problem: Problem, p: Partition) -> int:
    return sum(len(problem.items[i].nodes) for i in p.items)


def _fallback(problem: Problem) -> Placement:
    """One NPU with the CPU as a fallback, cost-driven but conservative.

    Start from the greedy placement (every item the NPU takes on the NPU). When that puts
    nothing on the CPU, keep it: a model the NPU fully supports stays one NPU partition. Else
    the NPU partition with the most predicted NPU compute is the anchor and stays; every other
    NPU partition that is small (an island between CPU fallbacks with at most
    :data:`FALLBACK_ISLAND_FRAC` of the anchor's compute or nodes) may move wholly to the CPU
    when that lowers the predicted total, launches and transfers included, by more than the
    margin (:data:`FALLBACK_MARGIN_S` and :data:`FALLBACK_MARGIN_FRAC` of the total). The best such
    move is applied, then the next, until none clears the margin. Items pinned to the NPU
    never move; single items are never split off an island."""
    greedy = greedy_assignment(problem)
    best = evaluate(problem, greedy, "fallback")
    npu = [t for t in problem.targets if family(t) == "htp"]
    cpu = [t for t in problem.targets if family(t) == "cpu"]
    if not npu or not cpu or all(a in npu for a in greedy):
        return best
    while True:
        parts = [p for p in best.partitions if p.target in npu]
        anchor = max(parts, key=lambda p: (p.compute_s, -p.index)) if parts else None
        improved: Placement | None = None
        margin = max(FALLBACK_MARGIN_S, FALLBACK_MARGIN_FRAC * best.total_s)
        for p in parts:
            if p is anchor or not all(cpu[0] in problem.items[i].allowed for i in p.items):
                continue
            if anchor is not None and not (
                    p.compute_s <= FALLBACK_ISLAND_FRAC * anchor.compute_s
                    or _size(problem, p) <= FALLBACK_ISLAND_FRAC * _size(problem, anchor)):
                continue
            cand = list(best.assign)
            for i in p.items:
                cand[i] = cpu[0]
            e = evaluate(problem, cand, "fallback")
            if e.total_s < best.total_s - margin and (improved is None
                                                       or e.total_s < improved.total_s):
                improved = e
        if improved is None:
            return best
        best = improved


def solve(problem: Problem, policy: Policy = "cost") -> Placement:
    """Place every item (see the module docstring); fills :attr:`Placement.reasons`."""
    if policy not in ("cost", "greedy", "fallback"):
        raise TargetError(f"unknown placement policy {policy!r}; use 'cost', 'greedy' or "
                          "'fallback'")
    greedy = greedy_assignment(problem)
    if policy == "greedy" or len(problem.targets) == 1:
        result = evaluate(problem, greedy, policy)
    elif policy == "fallback":
        result = _fallback(problem)
    else:
        starts: list[list[str]] = []
        starts.append(_min_cut(problem) if len(problem.targets) == 2 else _cheapest(problem))
        starts.append(greedy)
        for t in problem.targets:
            if all(t in it.allowed for it in problem.items):
                starts.append([t] * len(problem.items))
        best: Placement | None = None
        tried: set[tuple[str, ...]] = set()
        for s in starts:
            if tuple(s) in tried:
                continue
            tried.add(tuple(s))
            r = _refine(problem, s, policy)
            if best is None or r.total_s < best.total_s - _EPS:
                best = r
        if best is None:  # pragma: no cover - starts always holds the greedy placement
            raise TargetError("placement found no assignment")
        result = best
    result.reasons = _reasons(result)
    result.node_reasons = _member_reasons(result)
    return result


def _us(s: float) -> str:
    return f"{s * 1e6:.2f} us"


def _member_reasons(pl: Placement) -> dict[str, tuple[str, str]]:
    """Per node, for items of several nodes placed by a pin: the pinned members say which
    pin; the others name the pinned members they were placed with (a Conv fused with a Relu
    pinned by ``op:Relu`` is not itself selected by that pattern)."""
    out: dict[str, tuple[str, str]] = {}
    for it in pl.problem.items:
        if it.pin is None or len(it.nodes) < 2:
            continue
        pinned = [name for name, p in zip(it.names, it.member_pins) if p is not None]
        for name, own in zip(it.names, it.member_pins):
            if own is not None:
                out[name] = ("user-pin", f"user pin {own[1]!r} -> {own[0]}")
            else:
                out[name] = ("user-pin", f"in a unit with {', '.join(pinned)}, pinned by "
                                         f"{it.pin[1]!r} -> {it.pin[0]}")
    return out


def _reasons(pl: Placement) -> dict[int, tuple[str, str]]:
    """``(code, sentence)`` per item: why it is where it is."""
    problem = pl.problem
    out: dict[int, tuple[str, str]] = {}
    for it in problem.items:
        t = pl.assign[it.index]
        if it.pin is not None:
            out[it.index] = ("user-pin", f"user pin {it.pin[1]!r} -> {it.pin[0]}")
            continue
        refused = {o: r for o, r in it.refusals.items() if o != t}
        if len(it.allowed) == 1 and refused:
            o, r = next(iter(refused.items()))
            out[it.index] = (r.split(":", 1)[0], f"{o} refuses it: {r}")
            continue
        if pl.policy == "greedy" or len(it.allowed) == 1:
            out[it.index] = ("capability", f"{t} takes it (first capable target)")
            continue
        if pl.policy == "fallback":
            if t == it.allowed[0]:
                out[it.index] = ("capability", f"{t} takes it (first capable target)")
            else:
                out[it.index] = ("cost", f"an NPU island moved to {t}: {it.allowed[0]} takes "
                                         f"it, but the predicted total is lower with its "
                                         f"island on {t} (no launch and transfers; "
                                         f"{_us(it.cost[t])} on {t} vs "
                                         f"{_us(it.cost[it.allowed[0]])} on {it.allowed[0]})")
            continue
        costs = " vs ".join(f"{_us(it.cost[o])} on {o}" for o in
                            (t, *(o for o in it.allowed if o != t)))
        cheapest = min(it.allowed, key=lambda o: (it.cost[o], problem.targets.index(o)))
        why = f"cost: {costs}"
        if cheapest != t:
            why += (f"; kept on {t} with its neighbours: alone on {cheapest} it would pay "
                    "a launch and transfers")
        out[it.index] = ("cost", why)
    return out
