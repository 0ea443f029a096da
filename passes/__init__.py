"""The pass registry: pass name -> ``"module:Class"``, imported only when a pass is asked for.

One pass per file, named ``verb_noun.py``; its pipeline name is ``verb-noun``. To add a pass,
add a line to ``_TABLE`` (or call :func:`register` from elsewhere).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from compiler.errors import PipelineError

if TYPE_CHECKING:
    from compiler.passes import Pass

__all__ = ["register", "unregister", "get_pass", "list_passes", "pass_names"]

_TABLE: dict[str, str | type[Pass]] = {
    "calibrate": "passes.quant.calibrate:Calibrate",
    "canonicalize": "passes.canonicalize:Canonicalize",
    "eliminate-common-subexpressions":
        "passes.eliminate_common_subexpressions:EliminateCommonSubexpressions",
    "eliminate-dead-code": "passes.eliminate_dead_code:EliminateDeadCode",
    "equalize": "passes.quant.equalize:Equalize",
    "fold-constants": "passes.fold_constants:FoldConstants",
    "fuse": "passes.fuse:Fuse",
    "infer-shapes": "passes.infer_shapes:InferShapes",
    "lower-group-norm": "passes.lower_group_norm:LowerGroupNorm",
    "lower-layer-norm": "passes.lower_layer_norm:LowerLayerNorm",
    "lowrank": "passes.lowrank.lowrank:LowRank",
    "partition": "passes.partition.place_nodes:Partition",
    "prune": "passes.prune.prune:Prune",
    "quantize": "passes.quant.quantize:Quantize",
    "remove-noops": "passes.remove_noops:RemoveNoops",
    "seq-mse": "passes.quant.seqmse:SeqMse",
    "select-compression": "passes.lowrank.auto:SelectCompression",
    "simplify-algebra": "passes.simplify_algebra:SimplifyAlgebra",
    "smooth-quant": "passes.quant.smooth:SmoothQuant",
    "sort-topologically": "passes.sort_topologically:SortTopologically",
}


def register(name: str, target: str | type[Pass]) -> None:
    """Register pass ``name`` as ``"module:Class"`` (imported on first use) or a class."""
    if name in _TABLE and _TABLE[name] != target:
        raise ValueError(f"pass {name!r} is already registered as {_TABLE[name]!r}")
    _TABLE[name] = target


def unregister(name: str) -> None:
    """Remove pass ``name`` from the registry (tests register throw-away passes)."""
    _TABLE.pop(name, None)


def pass_names() -> list[str]:
    """Every registered pass name, sorted."""
    return sorted(_TABLE)


def get_pass(name: str) -> type[Pass]:
    """The class of pass ``name``; ``PipelineError`` lists the valid names when unknown."""
    from compiler.passes import Pass, _unknown_pass_msg

    target = _TABLE.get(name)
    if target is None:
        raise PipelineError(_unknown_pass_msg(name, pass_names()))
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        cls = target
    if not (isinstance(cls, type) and issubclass(cls, Pass)) or cls.name != name:
        raise PipelineError(f"registry entry {name!r} -> {target!r} is not a Pass named "
                            f"{name!r}")
    return cls


def list_passes() -> list[dict[str, Any]]:
    """Name, summary, options (name, type, default, doc) and, for pipeline passes, the
    sub-pipeline of every registered pass, sorted by name. Imports every pass module."""
    from compiler.passes import PipelinePass, format_pipeline

    out = []
    for name in pass_names():
        cls = get_pass(name)
        info: dict[str, Any] = {"name": name, "summary": cls.summary,
                                "options": [o.to_dict() for o in cls.options()]}
        if issubclass(cls, PipelinePass):
            info["pipeline"] = format_pipeline(cls().passes())
        out.append(info)
    return out
