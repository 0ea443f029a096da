"""Keep the CLI's stdout for edgec's own output.

The QNN HTP simulator's native libraries print banners (``# LIBNATIVE: ...``) straight to file
descriptor 1, which would corrupt ``--json`` on stdout and interleave with tables. While a
command runs, fd 1 points at stderr and Python's ``sys.stdout`` writes to a duplicate of the
original stdout, so what edgec prints still goes where the user sent it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator

__all__ = ["native_stdout_to_stderr"]


def _real_fd(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined, no-any-return]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Meanwhile, native writes to fd 1 go to stderr; ``sys.stdout`` keeps the real stdout."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no real fds (embedded use): nothing to protect
        yield
        return
    old = sys.stdout
    swapped = _real_fd(old) == 1
    if swapped:  # Python's own stdout is fd 1: keep it on the original target
        sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0),
                                      encoding=getattr(old, "encoding", None) or "utf-8",
                                      errors="replace", line_buffering=True, write_through=True)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # flush C stdio buffers written meanwhile
            import ctypes

            ctypes.CDLL(None).fflush(None)
        if swapped:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stdout.close()
            sys.stdout = old
        os.dup2(saved, 1)
        os.close(saved)
