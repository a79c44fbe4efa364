"""Typed errors. Every error a user can cause derives from :class:`Portrait3DError`.

Each carries a message a person understands, an ``exit_code`` for the CLI and an ``http_status`` for
the HTTP service; batch turns them into error rows. The same error is the same code everywhere.

Example:
    >>> NoFaceError("no face found in photo.jpg").http_status, NotAnImageError.http_status
    (422, 415)
"""

from __future__ import annotations


class Portrait3DError(Exception):
    """Base of all errors caused by input, configuration or environment."""

    exit_code = 2
    http_status = 400

    @property
    def kind(self) -> str:
        return type(self).__name__


class InputError(Portrait3DError):
    """The input could not be used."""

    http_status = 422


class ImageReadError(InputError):
    """The path is missing, unreadable, or not a file."""


class NotAnImageError(InputError):
    """The bytes are not an image format we can decode."""

    http_status = 415


class TruncatedImageError(InputError):
    """The image file ends early or is corrupt."""


class ImageTooLargeError(InputError):
    """The image has more pixels or bytes than allowed (decompression-bomb and upload guard)."""

    http_status = 413


class NoFaceError(InputError):
    """No face was found in the image."""


class FaceTooSmallError(InputError):
    """The face is too small to reconstruct."""


class BadRequestError(Portrait3DError):
    """An HTTP request is malformed (a missing field, a body that is not what its type says)."""


class AuthError(Portrait3DError):
    """The request has no bearer token, or a wrong one."""

    http_status = 401


class JobNotFoundError(Portrait3DError):
    """No job has this id (or the id is not a job id at all)."""

    http_status = 404


class JobStateError(Portrait3DError):
    """The job is not in a state that allows this (e.g. the files of a job that is not done)."""

    http_status = 409


class TooManyJobsError(Portrait3DError):
    """The client, or the whole service, has as many jobs queued as it may."""

    http_status = 429


class OutputPathError(Portrait3DError):
    """The output location cannot be written (e.g. it is a file, not a folder)."""

    http_status = 500


class StorageError(Portrait3DError):
    """A local path or ``s3://`` URI cannot be read, listed or written."""

    http_status = 503


class WorkerDiedError(Portrait3DError):
    """A worker process died on this input on every attempt (e.g. out of memory)."""

    http_status = 500


class HeadTimeoutError(Portrait3DError):
    """A worker pool spent longer than ``batch.head_timeout_s`` on one head."""

    http_status = 504


class CancelledError(Portrait3DError):
    """The work was cancelled through its cancellation token (a user's cancel, a time limit); nothing
    half-done was written."""

    exit_code = 130
    http_status = 409


class ConfigError(Portrait3DError):
    """A profile, stage name or config override is invalid."""

    http_status = 422


class ModelError(Portrait3DError):
    """A model file is missing, corrupt, or of the wrong kind."""

    http_status = 500


class BundleError(Portrait3DError):
    """A head bundle is missing files or is malformed."""

    http_status = 500


class OptimizationError(Portrait3DError):
    """An optimization diverged or collapsed (a non-finite loss, an empty surface): settings to change
    are in the message."""

    http_status = 500
