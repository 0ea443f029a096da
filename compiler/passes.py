"""Pass infrastructure: passes, the pass context, pipeline strings, the pass manager, instruments.

A pass is a frozen dataclass whose fields are its options::

    @dataclass(frozen=True)
    class Fuse(Pass):
        name: ClassVar[str] = "fuse"
        summary: ClassVar[str] = "Fuse operator chains the target runs as one kernel"
        level: int = option(1, "0 = off, 1 = safe fusions, 2 = also aggressive ones")

        def run(self, graph: Graph, ctx: PassContext) -> PassResult: ...

A pipeline is one string, the same in the API and the CLI::

    canonicalize,fuse{level=2},calibrate{method=mse},partition{targets=htp-v75|cpu}

Option values are ``int``, ``float``, ``bool`` (``true``/``false``), ``str``, a ``Literal``
choice, a ``tuple`` of those (items separated by ``|``) or any of them ``| None`` (``none``).
A value that is not a plain word is written as a JSON string (``{path="a b.npz"}``).
:func:`format_pipeline` writes the canonical form: no spaces, options in field order, only
those that differ from their default; ``format_pipeline(parse_pipeline(s))`` is a fixed point.

A :class:`PipelinePass` is a named sub-pipeline (``canonicalize``). The :class:`PassManager`
runs its sub-passes itself, so verification and instruments see every sub-pass; a sub-pass is
named by its path, ``canonicalize/fold-constants``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shlex
import sys
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal

from compiler.errors import NumericsError, PassError, PipelineError
from compiler.fileio import atomic_write_text
from compiler.ir import Graph, check_finite, parse, print_graph

if TYPE_CHECKING:
    from compiler.rewrite import RewriteRecord

__all__ = [
    "Pass",
    "PipelinePass",
    "PassResult",
    "PassContext",
    "PassRecord",
    "OptionInfo",
    "option",
    "parse_pipeline",
    "format_pipeline",
    "format_pass",
    "PassManager",
    "Instrument",
    "TimingInstrument",
    "StatisticsInstrument",
    "PrintIRInstrument",
    "DumpInstrument",
    "CrashReproducerInstrument",
    "read_reproducer",
    "REPRODUCER_INLINE_LIMIT",
]

#: ``print_graph(inline_limit=...)`` for reproducers: every constant is printed in full.
REPRODUCER_INLINE_LIMIT = 1 << 62


# ---------------------------------------------------------------------------------------------
# passes


@dataclass(frozen=True)
class PassResult:
    """What a pass did: whether it changed the graph, and counters for the statistics."""

    modified: bool
    stats: dict[str, int | float] = field(default_factory=dict)


def option(default: Any, doc: str = "") -> Any:
    """A pass option field with a one-line description (shown by ``edgec opt --list-passes``)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Pass:
    """Base of every pass: a frozen dataclass whose fields are its pipeline-string options.

    Subclasses set ``name`` (the pipeline name, ``verb-noun``) and ``summary`` (one line), and
    implement :meth:`run`. Options are validated when the pass is made (``PipelineError``).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: Passes that compute with weight values (folding, calibration, quantization) set this:
    #: the PassManager then refuses NaN weights before the pass runs, naming them.
    needs_finite_weights: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for opt in self.options():
            value = getattr(self, opt.name)
            if opt.kind.is_list and isinstance(value, list):
                value = tuple(value)  # frozen passes are hashable: lists become tuples
                object.__setattr__(self, opt.name, value)
            opt.kind.validate(self.name, opt.name, value)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Transform ``graph`` in place; return whether it changed and counters."""
        raise NotImplementedError(f"pass {self.name!r} does not implement run()")

    @classmethod
    def options(cls) -> list[OptionInfo]:
        """The options of this pass, in field order."""
        return _options(cls)

    def __str__(self) -> str:
        return format_pass(self)


@dataclass(frozen=True)
class PipelinePass(Pass):
    """A pass that is a named sub-pipeline, repeated up to :meth:`rounds` times until no
    sub-pass changes the graph."""

    def passes(self) -> list[Pass]:
        """The sub-passes, in order."""
        raise NotImplementedError(f"pipeline pass {self.name!r} does not implement passes()")

    def rounds(self) -> int:
        """How many times the sub-pipeline may run (it stops early when nothing changes)."""
        return 1

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Run the sub-pipeline (without verification or instruments: use a PassManager)."""
        return PassManager([], verify_each=False)._run_pipeline(self, graph, ctx)


# ---------------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class _Kind:
    """How one option type reads and writes: scalar type or choices, list-ness, optional-ness."""

    scalar: type | None  # int, float, bool, str; None for a choice
    choices: tuple[Any, ...] = ()
    is_list: bool = False
    optional: bool = False

    @property
    def text(self) -> str:
        base = "|".join(str(c) for c in self.choices) if self.choices else self.scalar.__name__  # type: ignore[union-attr]
        if self.choices:
            base = f"{{{base}}}"
        if self.is_list:
            base = f"list[{base}]"
        return base + " | none" if self.optional else base

    def _item(self, text: str) -> Any:
        if self.choices:
            for c in self.choices:
                if str(c) == text:
                    return c
            raise ValueError(f"must be one of {', '.join(str(c) for c in self.choices)}")
        if self.scalar is bool:
            if text in ("true", "false"):
                return text == "true"
            raise ValueError("must be true or false")
        if self.scalar is int:
            if re.fullmatch(r"[-+]?\d+", text):
                return int(text)
            raise ValueError("must be an integer")
        if self.scalar is float:
            try:
                return float(text)
            except ValueError:
                raise ValueError("must be a number") from None
        return text

    def parse(self, items: list[str]) -> Any:
        if self.optional and items == ["none"]:
            return None
        if self.is_list:
            if items == [""]:
                return ()
            return tuple(self._item(t) for t in items)
        if len(items) != 1:
            raise ValueError(f"takes one value, not a list of {len(items)}")
        return self._item(items[0])

    def format(self, value: Any) -> str:
        if value is None:
            return "none"
        if self.is_list:
            return "|".join(_format_item(x) for x in value)
        return _format_item(value)

    def _accepts(self, v: Any) -> bool:
        if self.choices:
            return any(v == c and type(v) is type(c) for c in self.choices)
        if isinstance(v, bool):  # bool is an int to Python, not to a pipeline
            return self.scalar is bool
        if self.scalar is float:
            return isinstance(v, (int, float))
        return isinstance(v, self.scalar)  # type: ignore[arg-type]

    def validate(self, pass_name: str, opt: str, value: Any) -> None:
        if value is None and self.optional:
            return
        if self.is_list:
            ok = isinstance(value, tuple) and all(self._accepts(v) for v in value)
        else:
            ok = self._accepts(value)
        if not ok:
            raise PipelineError(f"option {opt!r} of pass {pass_name!r} must be {self.text}, "
                                f"got {value!r}")


_BARE = re.compile(r"^[A-Za-z0-9_.+\-/:@]+$")


def _format_item(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return repr(x)
    s = str(x)
    return s if _BARE.match(s) and s != "none" else json.dumps(s)


def _kind_of(tp: Any) -> _Kind:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return dataclasses.replace(_kind_of(args[0]), optional=True)
    elif origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            inner = _kind_of(items[0])
            if not inner.is_list and not inner.optional:
                return dataclasses.replace(inner, is_list=True)
    elif origin is Literal:
        choices = typing.get_args(tp)
        if all(isinstance(c, str) for c in choices) or all(
                isinstance(c, int) and not isinstance(c, bool) for c in choices):
            return _Kind(None, tuple(choices))
    elif tp in (int, float, bool, str):
        return _Kind(tp)
    raise TypeError(f"pass option type {tp!r} is not supported (int, float, bool, str, "
                    "Literal[...], tuple[X, ...], X | None)")


@dataclass(frozen=True)
class OptionInfo:
    """One option of a pass: name, type text (``int``, ``{mse|minmax}``, ``list[str]``...),
    default and description."""

    name: str
    type: str
    default: Any
    doc: str
    kind: _Kind = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``list_passes``)."""
        default = list(self.default) if isinstance(self.default, tuple) else self.default
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": default,
                               "doc": self.doc}
        if self.kind.choices:
            out["choices"] = list(self.kind.choices)
        return out


_OPTIONS: dict[type[Pass], list[OptionInfo]] = {}


def _options(cls: type[Pass]) -> list[OptionInfo]:
    if cls in _OPTIONS:
        return _OPTIONS[cls]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is dataclasses.MISSING:
            raise TypeError(f"option {f.name!r} of pass {cls.name!r} needs a default")
        kind = _kind_of(hints[f.name])
        out.append(OptionInfo(f.name, kind.text, f.default, str(f.metadata.get("doc", "")),
                              kind))
    _OPTIONS[cls] = out
    return out


# ---------------------------------------------------------------------------------------------
# pipeline strings


def format_pass(p: Pass) -> str:
    """``name{opt=value,...}`` with the options that differ from their defaults."""
    parts = []
    for opt in p.options():
        value = getattr(p, opt.name)
        if value != opt.default or type(value) is not type(opt.default):
            parts.append(f"{opt.name}={opt.kind.format(value)}")
    return p.name + ("{" + ",".join(parts) + "}" if parts else "")


def format_pipeline(passes: Sequence[Pass]) -> str:
    """The canonical pipeline string of ``passes``."""
    return ",".join(format_pass(p) for p in passes)


class _Scanner:
    """Reads a pipeline string; errors quote the text and the column."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, msg: str) -> PipelineError:
        return PipelineError(f"pipeline {self.text!r}, column {self.pos + 1}: {msg}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        self.skip_ws()
        if self.peek() != ch:
            got = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected {ch!r}, got {got}")
        self.pos += 1

    def word(self, what: str) -> str:
        self.skip_ws()
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*").match(self.text, self.pos)
        if m is None:
            got = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected {what}, got {got}")
        self.pos = m.end()
        return m.group()

    def item(self) -> str:
        self.skip_ws()
        if self.peek() == '"':
            try:
                value, end = json.JSONDecoder().raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                raise self.error("unterminated or bad quoted value") from None
            self.pos = end
            return str(value)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ',{}|"=' and \
                not self.text[self.pos].isspace():
            self.pos += 1
        return self.text[start:self.pos]

    def value(self) -> list[str]:
        items = [self.item()]
        self.skip_ws()
        while self.peek() == "|":
            self.pos += 1
            items.append(self.item())
            self.skip_ws()
        return items


def _lookup(name: str, registry: Mapping[str, type[Pass]] | None) -> type[Pass]:
    if registry is not None:
        if name not in registry:
            raise PipelineError(_unknown_pass_msg(name, sorted(registry)))
        return registry[name]
    from passes import get_pass  # the registry lives with the passes (lazy: no import cycle)

    return get_pass(name)


def _unknown_pass_msg(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown pass {name!r}{hint}; valid passes: {', '.join(valid)}"


def _parse_options(sc: _Scanner, name: str, cls: type[Pass]) -> dict[str, Any]:
    """The ``{key=value,...}`` after a pass name (the scanner stands on ``{``)."""
    opts = {o.name: o for o in cls.options()}
    kwargs: dict[str, Any] = {}
    sc.expect("{")
    sc.skip_ws()
    if sc.peek() == "}":
        sc.pos += 1
        return kwargs
    while True:
        key_col = sc.pos
        key = sc.word("an option name")
        opt = opts.get(key)
        if opt is None:
            valid = ", ".join(f"{o.name} ({o.type}, default {o.kind.format(o.default)})"
                              for o in opts.values())
            sc.pos = key_col
            raise sc.error(f"pass {name!r} has no option {key!r}; options: {valid or 'none'}")
        if key in kwargs:
            sc.pos = key_col
            raise sc.error(f"option {key!r} of pass {name!r} is given twice")
        sc.expect("=")
        value_col = sc.pos
        items = sc.value()
        try:
            kwargs[key] = opt.kind.parse(items)
        except ValueError as e:
            sc.pos = value_col
            raise sc.error(f"option {key!r} of pass {name!r} {e}, got "
                           f"{'|'.join(items)!r}") from None
        sc.skip_ws()
        if sc.peek() != ",":
            sc.expect("}")
            return kwargs
        sc.pos += 1


def parse_pipeline(text: str, registry: Mapping[str, type[Pass]] | None = None) -> list[Pass]:
    """Parse ``a,b{opt=1},c{xs=p|q}`` into pass instances.

    ``registry`` maps names to pass classes (default: the registry of the ``passes``
    package). ``PipelineError`` names the unknown pass, option or bad value and lists what is
    valid.
    """
    sc = _Scanner(text)
    out: list[Pass] = []
    sc.skip_ws()
    while sc.peek() != "":
        if out:
            sc.expect(",")
        col = sc.pos
        name = sc.word("a pass name")
        try:
            cls = _lookup(name, registry)
        except PipelineError as e:
            raise PipelineError(f"pipeline {text!r}, column {col + 1}: {e}") from None
        sc.skip_ws()
        kwargs = _parse_options(sc, name, cls) if sc.peek() == "{" else {}
        try:
            out.append(cls(**kwargs))
        except PipelineError as e:
            raise PipelineError(f"pipeline {text!r}: {e}") from None
        sc.skip_ws()
    return out


# ---------------------------------------------------------------------------------------------
# context


@dataclass(frozen=True)
class PassRecord:
    """One pass that ran: its path (``canonicalize/fold-constants``), the pass and its result."""

    path: str
    pass_: Pass
    result: PassResult
    seconds: float


@dataclass
class PassContext:
    """Options and state shared by the passes of one pipeline run.

    - ``target``: the target name passes specialise for (``htp-v75``), or None;
    - ``calibration``: calibration batches (input name -> array), for the quantizer;
    - ``options``: further shared options, free-form;
    - ``bisect_limit``: apply at most this many rewrites in total (after LLVM's opt-bisect);
      ``rewrites`` counts those applied, ``bisect_skipped`` those the limit refused;
    - ``progress``: show a progress bar over the passes;
    - ``log``: notes passes leave for the user (``note``); ``report``: structured results;
    - ``trace``: every rewrite applied (for the visualizer), ``history``: passes run so far.
    """

    target: str | None = None
    calibration: Sequence[Mapping[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    bisect_limit: int | None = None
    progress: bool = False
    log: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    trace: list[RewriteRecord] = field(default_factory=list)
    history: list[PassRecord] = field(default_factory=list)
    rewrites: int = 0
    bisect_skipped: int = 0
    #: set once the weights were found finite (see ``Pass.needs_finite_weights``)
    weights_checked: bool = False
    #: (passes, index) of every pipeline level being run, outermost first
    stack: list[tuple[Sequence[Pass], int]] = field(default_factory=list)
    path: list[str] = field(default_factory=list)

    @property
    def pass_name(self) -> str:
        """Name of the innermost running pass, or ``""``."""
        return self.path[-1] if self.path else ""

    @property
    def pass_path(self) -> str:
        """Path of the innermost running pass: ``canonicalize/fold-constants``."""
        return "/".join(self.path)

    @property
    def depth(self) -> int:
        """Nesting depth of the running pass (0 for a pass of the top-level pipeline)."""
        return max(len(self.path) - 1, 0)

    def note(self, message: str) -> None:
        """Leave a note for the user, prefixed with the running pass's name."""
        self.log.append(f"{self.pass_path}: {message}" if self.path else message)

    def may_rewrite(self) -> bool:
        """True while the bisect budget allows one more rewrite (always without a limit)."""
        if self.bisect_limit is None or self.rewrites < self.bisect_limit:
            return True
        if self.bisect_skipped == 0:
            self.note(f"bisect: limit of {self.bisect_limit} rewrites reached; later rewrites "
                      "are skipped")
        self.bisect_skipped += 1
        return False

    def remaining_passes(self) -> list[Pass]:
        """The running pass and every pass after it, flattened across nesting levels."""
        out: list[Pass] = []
        for k, (passes, i) in enumerate(reversed(self.stack)):
            out.extend(passes[i:] if k == 0 else passes[i + 1:])
        return out

    def ran(self) -> tuple[str, ...]:
        """Paths of the leaf passes that completed, in order."""
        return tuple(r.path for r in self.history if not isinstance(r.pass_, PipelinePass))


# ---------------------------------------------------------------------------------------------
# instruments


class Instrument:
    """Hooks the PassManager calls around every pass (and every sub-pass of a pipeline pass).

    ``ctx.pass_path`` names the pass; ``isinstance(p, PipelinePass)`` tells a sub-pipeline.
    """

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        """Called before ``p`` runs."""

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Called after ``p`` ran and the graph verified."""

    def on_failure(self, p: Pass, graph: Graph, ctx: PassContext, exc: PassError) -> None:
        """Called once when ``p`` failed (raised or left invalid IR), before the error
        propagates; ``graph`` is in whatever state the pass left it."""


class TimingInstrument(Instrument):
    """Wall time per pass. ``totals`` maps pass paths to seconds (summed over repeats), in the
    order the passes first ran; ``report()`` is a table."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._start: list[float] = []

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        """Start the clock."""
        self.totals.setdefault(ctx.pass_path, 0.0)
        self._start.append(time.perf_counter())

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Stop the clock."""
        self.totals[ctx.pass_path] += time.perf_counter() - self._start.pop()

    def on_failure(self, p: Pass, graph: Graph, ctx: PassContext, exc: PassError) -> None:
        """Count the failed pass too."""
        self.after_pass(p, graph, ctx, PassResult(False))

    def report(self) -> str:
        """``pass  time(ms)`` lines, nested passes indented, and the total of top-level ones."""
        lines = [f"{'pass':<48} {'ms':>10}"]
        total = 0.0
        for path, secs in self.totals.items():
            depth = path.count("/")
            if depth == 0:
                total += secs
            lines.append(f"{'  ' * depth + path.rsplit('/', 1)[-1]:<48} {secs * 1e3:>10.2f}")
        lines.append(f"{'total':<48} {total * 1e3:>10.2f}")
        return "\n".join(lines) + "\n"


class StatisticsInstrument(Instrument):
    """Counters per pass path: each result's stats summed over runs, plus ``runs`` and
    ``modified`` (how many runs changed the graph) and the node count after the pass."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, int | float]] = {}

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Accumulate the result's counters."""
        s = self.stats.setdefault(ctx.pass_path, {"runs": 0, "modified": 0})
        s["runs"] += 1
        s["modified"] += int(result.modified)
        for k, v in result.stats.items():
            s[k] = s.get(k, 0) + v
        s["nodes"] = len(graph.nodes)

    def report(self) -> str:
        """``path.counter = value`` lines."""
        return "".join(f"{path}.{k} = {v}\n" for path, s in self.stats.items()
                       for k, v in s.items())


def _banner(what: str) -> str:
    return f"// ----- {what} ----- //\n"


class PrintIRInstrument(Instrument):
    """Prints the IR text to ``stream``: before/after the passes named in ``before``/``after``
    (a name matches the pass name or its path), after every (leaf) pass, as a unified diff
    after every leaf pass that changed the text, and after a failure."""

    def __init__(self, stream: IO[str] | None = None, *, before: Sequence[str] = (),
                 after: Sequence[str] = (), after_all: bool = False, after_change: bool = False,
                 after_failure: bool = False, inline_limit: int = 1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.before = set(before)
        self.after = set(after)
        self.after_all = after_all
        self.after_change = after_change
        self.after_failure = after_failure
        self.inline_limit = inline_limit
        self._texts: list[str] = []

    def _text(self, graph: Graph) -> str:
        return print_graph(graph, inline_limit=self.inline_limit)

    def _named(self, names: set[str], p: Pass, ctx: PassContext) -> bool:
        return p.name in names or ctx.pass_path in names

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        """Print before named passes; remember the text for the diff."""
        if self._named(self.before, p, ctx):
            self.stream.write(_banner(f"IR before {ctx.pass_path}") + self._text(graph))
        if self.after_change and not isinstance(p, PipelinePass):
            self._texts.append(self._text(graph))

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Print after named passes, after all, and the diff of a change."""
        leaf = not isinstance(p, PipelinePass)
        if self._named(self.after, p, ctx) or (self.after_all and leaf):
            self.stream.write(_banner(f"IR after {ctx.pass_path}") + self._text(graph))
        if self.after_change and leaf:
            old, new = self._texts.pop(), self._text(graph)
            if old != new:
                diff = difflib.unified_diff(old.splitlines(), new.splitlines(),
                                            f"before {ctx.pass_path}", f"after {ctx.pass_path}",
                                            lineterm="")
                self.stream.write(_banner(f"IR changed by {ctx.pass_path}") + "\n".join(diff)
                                  + "\n")

    def on_failure(self, p: Pass, graph: Graph, ctx: PassContext, exc: PassError) -> None:
        """Print the IR the failing pass left."""
        if self.after_change and not isinstance(p, PipelinePass) and self._texts:
            self._texts.pop()
        if self.after_failure:
            self.stream.write(_banner(f"IR after failure of {ctx.pass_path}: "
                                      f"{str(exc).splitlines()[0]}") + self._text(graph))


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text.replace("/", "."))


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


class DumpInstrument(Instrument):
    """Writes numbered IR files into ``directory``: ``000_input.ir``, then one per pass
    (``001_canonicalize.ir`` ...; with ``nested=True`` one per sub-pass instead:
    ``001_canonicalize.infer-shapes.ir``) and ``NNN_<pass>.failed.ir`` on a failure.

    Files are written atomically and only inside ``directory`` (created if missing); ``files``
    lists the paths written, in order.
    """

    def __init__(self, directory: str | os.PathLike[str], *, nested: bool = False,
                 inline_limit: int = 1) -> None:
        self.directory = Path(directory)
        self.nested = nested
        self.inline_limit = inline_limit
        self.files: list[Path] = []
        self._count = 0

    def _dump(self, label: str, graph: Graph) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self._count:03d}_{_safe_name(label)}.ir"
        self._count += 1
        _write_atomic(path, print_graph(graph, inline_limit=self.inline_limit))
        self.files.append(path)

    def _wanted(self, p: Pass, ctx: PassContext) -> bool:
        if self.nested:
            return not isinstance(p, PipelinePass)
        return ctx.depth == 0

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        """Dump the input once, before the first pass."""
        if self._count == 0:
            self._dump("input", graph)

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Dump after each wanted pass."""
        if self._wanted(p, ctx):
            self._dump(ctx.pass_path, graph)

    def on_failure(self, p: Pass, graph: Graph, ctx: PassContext, exc: PassError) -> None:
        """Dump what the failing pass left."""
        self._dump(ctx.pass_path + ".failed", graph)


class CrashReproducerInstrument(Instrument):
    """On a failure, writes ``path``: the failing pass's input IR with every constant inlined
    (so it replays exactly), headed by comment lines with the error, the remaining pipeline and
    the replay command. After a failure ``pipeline`` and ``command`` hold those; the error gets
    a ``hint`` naming the file and the command (the CLI prints it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.pipeline: str | None = None
        self.command: str | None = None
        self._inputs: list[tuple[Graph, int]] = []

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        """Keep a copy of the pass's input (constants are shared, not copied)."""
        self._inputs.append((graph.copy(), ctx.rewrites))

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Drop the copy."""
        self._inputs.pop()

    def on_failure(self, p: Pass, graph: Graph, ctx: PassContext, exc: PassError) -> None:
        """Write the reproducer."""
        snapshot, rewrites = self._inputs.pop()
        self.pipeline = format_pipeline(ctx.remaining_passes())
        cmd = f"edgec opt {shlex.quote(str(self.path))} -p {shlex.quote(self.pipeline)}"
        if ctx.bisect_limit is not None:
            cmd += f" --bisect-limit {max(ctx.bisect_limit - rewrites, 0)}"
        self.command = cmd
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        header = (f"// edgec crash reproducer: {first}\n"
                  f"// pipeline: {self.pipeline}\n"
                  f"// replay: {self.command}\n")
        text = print_graph(snapshot, inline_limit=REPRODUCER_INLINE_LIMIT)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, header + text)
        exc.hint = f"reproducer written to {self.path}; replay with: {self.command}"  # type: ignore[attr-defined]


def read_reproducer(path: str | os.PathLike[str]) -> tuple[Graph, str]:
    """The graph and the pipeline string of a reproducer written by
    :class:`CrashReproducerInstrument`."""
    text = Path(path).read_text(encoding="utf-8")
    pipeline = ""
    for line in text.splitlines():
        if line.startswith("// pipeline: "):
            pipeline = line[len("// pipeline: "):]
            break
    return parse(text), pipeline


# ---------------------------------------------------------------------------------------------
# the pass manager


class PassManager:
    """Runs passes in order, verifying the IR after each (``verify_each``), calling
    ``instruments`` around each, and turning any failure into a ``PassError``.

    ``passes`` is a list of passes or a pipeline string.
    """

    def __init__(self, passes: Sequence[Pass] | str, *, verify_each: bool = True,
                 instruments: Sequence[Instrument] = ()) -> None:
        self.passes: list[Pass] = (parse_pipeline(passes) if isinstance(passes, str)
                                   else list(passes))
        self.verify_each = verify_each
        self.instruments = list(instruments)

    @property
    def pipeline(self) -> str:
        """The canonical pipeline string."""
        return format_pipeline(self.passes)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PassContext:
        """Run the pipeline on ``graph`` (in place) and return the context (history, log,
        trace). Raises ``VerifyError`` when the input itself is invalid and ``PassError``
        naming the pass when a pass fails."""
        ctx = ctx if ctx is not None else PassContext()
        if self.verify_each:
            graph.verify()
        self._run_list(self.passes, graph, ctx, top=True)
        return ctx

    def _run_list(self, passes: Sequence[Pass], graph: Graph, ctx: PassContext,
                  top: bool = False) -> bool:
        modified = False
        ctx.stack.append((passes, 0))
        try:
            for i, p in enumerate(self._progress(passes, ctx, top)):
                ctx.stack[-1] = (passes, i)
                modified |= self._run_one(p, graph, ctx).modified
        finally:
            ctx.stack.pop()
        return modified

    @staticmethod
    def _progress(passes: Sequence[Pass], ctx: PassContext, top: bool) -> Iterator[Pass]:
        if not (top and ctx.progress):
            yield from passes
            return
        from tqdm import tqdm

        with tqdm(passes, unit="pass", file=sys.stderr) as bar:
            for p in bar:
                bar.set_description(p.name)
                yield p

    def _run_pipeline(self, p: PipelinePass, graph: Graph, ctx: PassContext) -> PassResult:
        modified = False
        rounds = 0
        sub = p.passes()
        for _ in range(max(p.rounds(), 1)):
            rounds += 1
            changed = self._run_list(sub, graph, ctx)
            modified |= changed
            if not changed:
                break
        return PassResult(modified, {"rounds": rounds})

    def _run_one(self, p: Pass, graph: Graph, ctx: PassContext) -> PassResult:
        if p.needs_finite_weights and not ctx.weights_checked:
            try:
                check_finite(graph, allow_inf=True)
            except NumericsError as e:
                raise NumericsError(f"pass {p.name!r} computes with weight values: {e}") from None
            ctx.weights_checked = True
        ctx.path.append(p.name)
        path = ctx.pass_path
        try:
            for inst in self.instruments:
                inst.before_pass(p, graph, ctx)
            start = time.perf_counter()
            try:
                if isinstance(p, PipelinePass):
                    result = self._run_pipeline(p, graph, ctx)
                else:
                    result = p.run(graph, ctx)
                    if not isinstance(result, PassResult):
                        raise TypeError(f"run() returned {type(result).__name__}, not a "
                                        "PassResult")
                    if self.verify_each:
                        graph.verify()
            except Exception as e:
                if getattr(e, "_edgec_pass_failure", False):
                    raise  # already reported by the sub-pass that failed
                raise self._failure(p, graph, ctx, e) from e
            ctx.history.append(PassRecord(path, p, result, time.perf_counter() - start))
            for inst in self.instruments:
                inst.after_pass(p, graph, ctx, result)
            return result
        finally:
            ctx.path.pop()

    def _failure(self, p: Pass, graph: Graph, ctx: PassContext, e: Exception) -> PassError:
        from compiler.errors import VerifyError

        path = ctx.pass_path
        before = ctx.ran()
        where = f"pass {p.name!r}" + (f" ({path})" if path != p.name else "")
        what = (f"left invalid IR: {e}" if isinstance(e, VerifyError)
                else f"failed: {type(e).__name__}: {e}")
        shown = ", ".join(before[-8:]) if before else "none"
        if len(before) > 8:
            shown = f"... ({len(before) - 8} more), " + shown
        msg = f"{where} {what}".replace("\n", " ") + f" [passes run before: {shown}]"
        err = PassError(msg, pass_name=path, before=before)
        err._edgec_pass_failure = True  # type: ignore[attr-defined]
        err.__cause__ = e
        for inst in self.instruments:
            inst.on_failure(p, graph, ctx, err)
        return err

