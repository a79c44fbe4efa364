"""The one interface every stage has: a typed input, a typed output, progress, cancellation, close().

A stage is built from its ``Config`` and called as ``stage(inputs, report)``: ``inputs`` is the
stage's input dataclass (``types``), the result its output dataclass, and ``report`` a
:class:`Reporter` that every long loop calls: ``report(fraction, message)`` raises
:class:`~portrait3d.errors.CancelledError` once the run's :class:`CancelToken` is set, and passes
progress on to the run's callback at most every ``interval_s``. ``close()`` frees what the stage
holds. The CLI, Ray Data workers and Serve deployments drive every stage the same way.

=========  =================  ==================
stage      input              output
=========  =================  ==================
analysis   AnalysisInput      PortraitAnalysis
init       InitInput          HeadMesh
sculpt     SculptInput        SculptResult
texture    TextureInput       TexturedHead
export     ExportInput        Bundle
=========  =================  ==================

Example:
    >>> seen = []
    >>> token = CancelToken()
    >>> report = Reporter("sculpt", lambda stage, f, msg: seen.append((stage, f)), token, interval_s=0)
    >>> report(0.5, "half way")
    >>> token.cancel("the user cancelled")
    >>> report(0.6)
    Traceback (most recent call last):
    ...
    portrait3d.errors.CancelledError: the user cancelled
    >>> seen
    [('sculpt', 0.5)]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..errors import CancelledError
from .types import (
    AnalysisInput,
    Bundle,
    ExportInput,
    HeadMesh,
    InitInput,
    PortraitAnalysis,
    SculptInput,
    SculptResult,
    TexturedHead,
    TextureInput,
)

#: ``progress(stage, fraction of that stage done, message)``
Progress = Callable[[str, float, str], None]


class CancelToken:
    """A flag one thread sets and the stages' loops check; thread-safe, set once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError(self.reason)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds or until cancelled; True when cancelled."""
        return self._event.wait(timeout)


class _Throttle:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = float("-inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            return True
        return False


class Reporter:
    """Progress and cancellation for one stage of one run (see the module docstring).

    ``span(lo, hi)`` gives a reporter for a part of the stage: its fractions 0..1 map to lo..hi.
    """

    def __init__(
        self,
        stage: str,
        progress: Progress | None = None,
        cancel: CancelToken | None = None,
        interval_s: float = 0.1,
        *,
        _span: tuple[float, float] = (0.0, 1.0),
        _throttle: _Throttle | None = None,
    ) -> None:
        self.stage, self.progress, self.token = stage, progress, cancel or CancelToken()
        self._lo, self._hi = _span
        self._throttle = _throttle or _Throttle(interval_s)

    def __call__(self, fraction: float, message: str = "") -> None:
        """Raise CancelledError if cancelled, else report ``fraction`` (0..1) of this span done."""
        self.token.raise_if_cancelled()
        if self.progress is not None and (fraction >= 1 or self._throttle.due()):
            self.progress(self.stage, self._lo + (self._hi - self._lo) * min(max(fraction, 0.0), 1.0), message)

    def check(self) -> None:
        """Raise CancelledError if cancelled (for loops that have no fraction to report)."""
        self.token.raise_if_cancelled()

    def span(self, lo: float, hi: float) -> Reporter:
        a, b = self._lo + (self._hi - self._lo) * lo, self._lo + (self._hi - self._lo) * hi
        return Reporter(self.stage, self.progress, self.token, _span=(a, b), _throttle=self._throttle)


class AnalysisStage(Protocol):
    def __call__(self, inputs: AnalysisInput, report: Reporter) -> PortraitAnalysis: ...
    def close(self) -> None: ...


class InitStage(Protocol):
    def __call__(self, inputs: InitInput, report: Reporter) -> HeadMesh: ...
    def close(self) -> None: ...


class SculptStage(Protocol):
    def __call__(self, inputs: SculptInput, report: Reporter) -> SculptResult: ...
    def close(self) -> None: ...


class TextureStage(Protocol):
    def __call__(self, inputs: TextureInput, report: Reporter) -> TexturedHead: ...
    def close(self) -> None: ...


class ExportStage(Protocol):
    def __call__(self, inputs: ExportInput, report: Reporter) -> Bundle: ...
    def close(self) -> None: ...


#: Per stage: its protocol, input type and output type.
INTERFACES: dict[str, tuple[type, type, type]] = {
    "analysis": (AnalysisStage, AnalysisInput, PortraitAnalysis),
    "init": (InitStage, InitInput, HeadMesh),
    "sculpt": (SculptStage, SculptInput, SculptResult),
    "texture": (TextureStage, TextureInput, TexturedHead),
    "export": (ExportStage, ExportInput, Bundle),
}
