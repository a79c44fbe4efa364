"""Typed errors. Every error a user can cause derives from :class:`Portrait3DError`.

Each carries a message a person understands and an ``exit_code`` for the CLI (HTTP maps them to 4xx,
batch to error rows).
"""

from __future__ import annotations


class Portrait3DError(Exception):
    """Base of all errors caused by input, configuration or environment."""

    exit_code = 2

    @property
    def kind(self) -> str:
        return type(self).__name__


class InputError(Portrait3DError):
    """The input could not be used."""


class ImageReadError(InputError):
    """The path is missing, unreadable, or not a file."""


class NotAnImageError(InputError):
    """The bytes are not an image format we can decode."""


class TruncatedImageError(InputError):
    """The image file ends early or is corrupt."""


class ImageTooLargeError(InputError):
    """The image has more pixels than allowed (decompression-bomb guard)."""


class NoFaceError(InputError):
    """No face was found in the image."""


class FaceTooSmallError(InputError):
    """The face is too small to reconstruct."""


class OutputPathError(Portrait3DError):
    """The output location cannot be written (e.g. it is a file, not a folder)."""


class StorageError(Portrait3DError):
    """A local path or ``s3://`` URI cannot be read, listed or written."""


class WorkerDiedError(Portrait3DError):
    """A worker process died on this input on every attempt (e.g. out of memory)."""


class HeadTimeoutError(Portrait3DError):
    """A worker pool spent longer than ``batch.head_timeout_s`` on one head."""


class CancelledError(Portrait3DError):
    """The work was cancelled through its cancellation token (a user's cancel, a time limit); nothing
    half-done was written."""

    exit_code = 130


class ConfigError(Portrait3DError):
    """A profile, stage name or config override is invalid."""


class ModelError(Portrait3DError):
    """A model file is missing, corrupt, or of the wrong kind."""


class BundleError(Portrait3DError):
    """A head bundle is missing files or is malformed."""


class OptimizationError(Portrait3DError):
    """An optimization diverged or collapsed (a non-finite loss, an empty surface): settings to change
    are in the message."""
