"""xatlas UV unwrapping in a warm helper process, so that a cancel ends it at once.

xatlas holds the GIL for its whole run (3.5 s for the ``fast`` profile's 20k-face head on 2 cores,
more than 10 s for a 60k-face one), so in-process it could be neither cancelled nor interleaved
with a server's other threads. :class:`UVUnwrapper` keeps one helper process (it imports only NumPy
and xatlas) that reads each request from its stdin and writes the atlas to its stdout as ``.npy``
arrays (no pickle); a cancel kills it, and the next call starts a new one. The same xatlas call on
the same arrays gives the same atlas in either process.

Example:
    >>> from portrait3d.pipelines.mesh import symmetric_sphere
    >>> v, f, _ = symmetric_sphere(2)
    >>> with UVUnwrapper() as unwrap:
    ...     uv, uv_faces, uv_to_vertex = unwrap((v * 0.1).astype("float32"), f, 256, 2)
    >>> uv_faces.shape == f.shape and bool((uv_to_vertex[uv_faces] == f).all())
    True
"""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)
_POLL_S = 0.05


def xatlas_unwrap(
    vertices: np.ndarray, faces: np.ndarray, resolution: int, padding: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas in this process: ``vertices (N, 3)`` float32, ``faces (F, 3)`` -> (uv ``(M, 2)`` float32 in
    [0, 1] v up, uv faces ``(F, 3)`` int64, uv-to-vertex ``(M,)`` int64); faces keep their order and winding."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(resolution)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmap, idx, uv = atlas[0]
    return uv.astype(np.float32), idx.astype(np.int64), vmap.astype(np.int64)


def _write(stream: io.BufferedIOBase, *arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    for a in arrays:
        np.save(buf, a, allow_pickle=False)
    data = buf.getvalue()
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _read(stream: io.BufferedIOBase) -> list[np.ndarray]:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the stream ended")
    size = int.from_bytes(head, "little")
    buf = io.BytesIO(stream.read(size))
    if len(buf.getbuffer()) < size:
        raise EOFError("the stream ended inside a message")
    out = []
    while buf.tell() < size:
        out.append(np.load(buf, allow_pickle=False))
    return out


def serve() -> None:
    """The helper's loop: requests from stdin, atlases to stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the helper
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            vertices, faces, params = _read(stdin)
        except (ValueError, EOFError, OSError):
            return  # the parent has gone
        try:
            out = xatlas_unwrap(vertices, faces, *params.tolist())
        except Exception as e:  # reported to the parent, which raises it
            _write(stdout, np.frombuffer(f"{type(e).__name__}: {e}".encode(), np.uint8))
        else:
            _write(stdout, np.zeros(0, np.uint8), *out)


class UVUnwrapper:
    """xatlas through a warm helper process; ``check`` (called every 50 ms while xatlas runs) may raise
    to cancel, which ends the helper. Where no helper can start, xatlas runs in this process."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        cmd = [sys.executable, "-c", "from portrait3d.pipelines.uv_unwrap import serve; serve()"]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=os.environ.copy())
        except OSError as e:
            log.warning("no xatlas helper process (%s): unwrapping in this process, which cannot be cancelled", e)
            self._proc = None

    def __call__(
        self,
        vertices: np.ndarray,
        faces: np.ndarray,
        resolution: int,
        padding: int,
        check: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            if self._proc is None:
                return xatlas_unwrap(vertices, faces, resolution, padding)
            try:
                return self._ask(vertices, faces, resolution, padding, check)
            except BaseException:
                self._kill()  # cancelled or broken: the next call starts a fresh helper
                raise

    def _ask(
        self, vertices: np.ndarray, faces: np.ndarray, resolution: int, padding: int, check: Callable[[], None] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        proc = self._proc
        try:
            _write(
                proc.stdin,
                np.ascontiguousarray(vertices, np.float32),
                np.ascontiguousarray(faces, np.uint32),
                np.array([resolution, padding], np.int64),
            )
            while not select.select([proc.stdout], [], [], _POLL_S)[0]:
                if check is not None:
                    check()
                if proc.poll() is not None:
                    raise RuntimeError(f"the xatlas helper process ended (exit status {proc.returncode})")
            error, *atlas = _read(proc.stdout)
            if error.size:
                raise RuntimeError(f"xatlas failed: {error.tobytes().decode()}")
            return tuple(atlas)
        except (BrokenPipeError, ValueError, EOFError) as e:
            raise RuntimeError(f"the xatlas helper process failed: {e}") from None

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __enter__(self) -> UVUnwrapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
