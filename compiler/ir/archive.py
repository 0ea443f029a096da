"""Save and load a graph as IR text plus a weights file beside it.

The text form prints large constants by content hash only, so ``save_ir(graph, "m.ir")``
writes ``m.ir`` (the text) and, when any constant is not inlined, ``m.ir.weights`` (a zip of
one raw ``.npy`` byte array per constant, named after the value). ``load_ir("m.ir")`` reads
both and checks every constant against the hash printed in the text, so a weights file that
does not belong to the text is refused, naming the constant.

Both files are written atomically (temporary file, then rename) and byte-identically for the
same graph: zip entries carry a fixed timestamp and are stored in sorted order.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from compiler.errors import ModelLoadError, ParseError
from compiler.fileio import atomic_write_bytes
from compiler.ir.core import Graph, UnresolvedConst, const_hash
from compiler.ir.parser import parse
from compiler.ir.printer import print_graph

__all__ = ["save_ir", "load_ir", "weights_path"]

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: a fixed one keeps bytes stable


def weights_path(path: str | os.PathLike[str]) -> Path:
    """The weights file that belongs to the IR text file ``path``."""
    p = Path(path)
    return p.with_name(p.name + ".weights")


def save_ir(graph: Graph, path: str | os.PathLike[str], *, inline_limit: int = 1) -> list[Path]:
    """Write ``graph`` as IR text to ``path`` and its large constants to
    :func:`weights_path` (``path`` + ``.weights``). Returns the files written."""
    path = Path(path)
    text = print_graph(graph, inline_limit=inline_limit)
    written = [path]
    big = {name: v for name, v in sorted(graph.constants.items())
           if v.const is not None and v.const.size > inline_limit}
    wpath = weights_path(path)
    if big:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for name, v in big.items():
                arr = np.ascontiguousarray(v.const)
                entry = io.BytesIO()
                np.lib.format.write_array(entry, arr.reshape(-1).view(np.uint8),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                zf.writestr(info, entry.getvalue())
        atomic_write_bytes(wpath, buf.getvalue())
        written.append(wpath)
    atomic_write_bytes(path, text.encode("utf-8"))
    return written


def load_ir(path: str | os.PathLike[str]) -> Graph:
    """Read IR text from ``path`` and resolve its hashed constants from the weights file
    beside it (if there is one). Raises ``ParseError``/``ModelLoadError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read IR text: {e}") from e
    try:
        graph = parse(text)
    except ParseError as e:
        raise ParseError(f"{path}: {e}") from None
    pending = {name: v for name, v in graph.constants.items()
               if isinstance(v.const_source, UnresolvedConst)}
    if not pending:
        return graph
    wpath = weights_path(path)
    if not wpath.is_file():
        first = next(iter(pending))
        raise ModelLoadError(f"{path}: constant %{first} is printed by hash and {wpath.name} "
                             "(its weights file) is missing")
    try:
        with zipfile.ZipFile(wpath) as zf:
            names = set(zf.namelist())
            for name, v in pending.items():
                src = v.const_source
                assert isinstance(src, UnresolvedConst)
                entry = f"{name}.npy"
                if entry not in names:
                    raise ModelLoadError(f"{wpath}: no data for constant %{name}")
                with zf.open(entry) as f:
                    raw = np.lib.format.read_array(f, allow_pickle=False)
                dtype = src.dtype.numpy
                if raw.dtype != np.uint8 or raw.size != int(np.prod(src.shape)) * dtype.itemsize:
                    raise ModelLoadError(f"{wpath}: data for constant %{name} does not fit "
                                         f"{src.dtype.value}{list(src.shape)}")
                arr = raw.view(dtype).reshape(src.shape)
                if const_hash(arr) != src.digest:
                    raise ModelLoadError(f"{wpath}: data for constant %{name} does not match "
                                         f"its hash #sha:{src.digest} in {path.name}")
                v.const = arr
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise ModelLoadError(f"{wpath}: cannot read weights: {e}") from e
    return graph
