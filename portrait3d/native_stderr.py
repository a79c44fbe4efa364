"""Keep native libraries' log lines off the terminal.

mediapipe's TensorFlow Lite, absl and glog write straight to file descriptor 2 (six lines before
every message of a `generate`, whatever the outcome); no setting of theirs silences all of them.
:func:`hidden_native_stderr` points descriptor 2 at ``/dev/null`` for a while, and gives Python's
own ``sys.stderr`` (our messages, warnings, tracebacks) a copy of the original descriptor, so
everything Python writes still shows.

Example:
    >>> with hidden_native_stderr():
    ...     _ = os.write(2, b"I0000 a native log line\\n")   # goes nowhere
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def hidden_native_stderr(enabled: bool = True) -> Iterator[None]:
    """While active, writes to descriptor 2 from native code are dropped (``enabled=False``: no-op)."""
    if not enabled:
        yield
        return
    try:
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests): it is not descriptor 2
        python_on_fd2 = False
    sys.stderr.flush()
    saved = os.dup(2)
    python_side = os.fdopen(os.dup(saved), "w", buffering=1, errors="backslashreplace") if python_on_fd2 else None
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    old = sys.stderr
    if python_side is not None:
        sys.stderr = python_side
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)
        if python_side is not None:
            python_side.close()
