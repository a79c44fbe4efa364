"""One storage layer for local paths and ``s3://`` URIs, on ``pyarrow.fs``.

S3 settings come from the environment, as AWS tools read them: credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or ``~/.aws``, the region
from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, and an S3-compatible endpoint (MinIO, moto, R2, ...)
from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``. Secrets are never taken from arguments.

Local writes go to a temporary file in the destination folder and are renamed into place, so a
reader sees a whole file or none; an S3 PUT is atomic by itself.

Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> write_bytes(join(root, "a", "b.txt"), b"hi")
    >>> read_bytes(join(root, "a", "b.txt")), exists(join(root, "a", "c.txt"))
    (b'hi', False)
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import glob
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .errors import ImageTooLargeError, StorageError

S3 = "s3://"


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3)


def normalize(uri: str | Path) -> str:
    """Local paths become absolute; ``s3://`` URIs keep their form without a trailing slash."""
    uri = str(uri)
    if is_s3(uri):
        bucket_and_key = uri[len(S3) :].strip("/")
        if not bucket_and_key:
            raise StorageError(f"{uri!r} names no bucket")
        return S3 + bucket_and_key
    if "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    return os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    """``base`` plus relative parts. Parts come from hashes and fixed names; anything that could climb
    out of ``base`` (``..``, absolute parts, empty parts) is refused."""
    for p in parts:
        segs = str(p).replace("\\", "/").split("/")
        if not p or str(p).startswith("/") or any(s in ("", ".", "..") for s in segs):
            raise StorageError(f"refusing unsafe path part {p!r}")
    if is_s3(base):
        return "/".join([normalize(base), *parts])
    return os.path.join(normalize(base), *parts)


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kw = {}
    if endpoint:
        u = urlparse(endpoint)
        kw["endpoint_override"] = u.netloc or u.path
        kw["scheme"] = u.scheme or "https"
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` for a URI."""
    uri = normalize(uri)
    if is_s3(uri):
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        return _s3(endpoint, region), uri[len(S3) :]
    return pafs.LocalFileSystem(), uri


def _info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise StorageError(f"cannot reach {uri}: {e}") from None


def exists(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.File


def is_dir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole object; ``max_bytes`` refuses bigger ones before reading them."""
    info = _info(uri)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"no such file: {uri}")
    if info.type != pafs.FileType.File:
        raise StorageError(f"not a file: {uri}")
    if max_bytes is not None and info.size is not None and info.size > max_bytes:
        raise ImageTooLargeError(f"{uri} is {info.size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB")
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as e:
        raise StorageError(f"cannot read {uri}: {e}") from None


def size(uri: str) -> int:
    """Bytes in a file; a StorageError when it is not one."""
    info = _info(uri)
    if info.type != pafs.FileType.File:
        raise StorageError(f"no such file: {uri}")
    return int(info.size)


@contextlib.contextmanager
def _atomic_local(path: str | Path) -> Iterator[BinaryIO]:
    """A file object whose bytes appear at ``path`` whole, or not at all: a temporary file in the
    same folder, renamed into place on success and removed on failure."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def sha256(uri: str, to: str | Path | None = None, chunk: int = 8 << 20) -> str:
    """Hex SHA-256 of a file, streamed (model weights are gigabytes); with ``to``, the bytes are also
    copied to that local path (atomically)."""
    fs, path = filesystem(uri)
    h = hashlib.sha256()
    try:
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(_atomic_local(to)) if to is not None else None
            f = stack.enter_context(fs.open_input_stream(path))
            while block := f.read(chunk):
                h.update(block)
                if out is not None:
                    out.write(block)
    except OSError as e:
        raise StorageError(f"cannot read {uri}: {e}") from None
    return h.hexdigest()


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    try:
        if is_s3(uri):
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        with _atomic_local(path) as f:
            f.write(data)
    except OSError as e:
        raise StorageError(f"cannot write {uri}: {e}") from None


def delete_tree(uri: str) -> None:
    """Remove a folder (or prefix) and everything under it; a missing one is fine."""
    fs, path = filesystem(uri)
    try:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)
    except OSError as e:
        raise StorageError(f"cannot delete {uri}: {e}") from None


def list_files(uri: str) -> list[str]:
    """Every file under a folder or prefix (recursively), or matching a glob (``*``, ``?``, ``[``,
    ``**``), as sorted URIs. Hidden files (a part starting with ``.``) are left out."""
    return [u for u, _, _ in list_file_stats(uri)]


def list_file_stats(uri: str) -> list[tuple[str, int, int]]:
    """:func:`list_files` with each file's size in bytes and modification time (ns since the epoch),
    from the listing itself (one ``stat`` per local file; on S3 the list calls carry both)."""
    uri = str(uri)
    if not any(c in uri for c in "*?["):
        base = normalize(uri)
        fs, path = filesystem(base)
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        except OSError as e:
            raise StorageError(f"cannot list {uri}: {e}") from None
        prefix = S3 if is_s3(base) else ""
        found = [(prefix + i.path, i.size, i.mtime_ns or 0) for i in infos if i.type == pafs.FileType.File]
        return sorted(f for f in found if not _hidden(f[0][len(base) :]))
    if not is_s3(uri):
        pattern = os.path.abspath(os.path.expanduser(uri))
        out = []
        for p in sorted(glob.glob(pattern, recursive=True)):
            st = os.stat(p)
            if os.path.isfile(p):
                out.append((p, st.st_size, st.st_mtime_ns))
        return out
    # s3 glob: list below the part before the first wildcard, then match
    head = uri[: min(uri.index(c) for c in "*?[" if c in uri)]
    base = head.rsplit("/", 1)[0]
    return [f for f in list_file_stats(base) if fnmatch.fnmatchcase(f[0], uri)]


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/") if part)


def check_writable(uri: str) -> str:
    """Fail early when an output location cannot take files; returns the normalized URI."""
    uri = normalize(uri)
    info = _info(uri)
    if info.type == pafs.FileType.File:
        raise StorageError(f"output {uri} is a file; give a folder or prefix")
    probe = join(uri, ".portrait3d-write-check")
    write_bytes(probe, b"")
    fs, path = filesystem(probe)
    try:
        fs.delete_file(path)
    except OSError:
        pass
    return uri
