"""Domain errors shared by the services; each service maps them to HTTP codes in one place."""

from __future__ import annotations


class ClipRSError(Exception):
    """Base class of the errors a caller can act on."""


class InvalidInput(ClipRSError):
    """The caller sent something malformed; the message says how to fix it."""


class NotFound(ClipRSError):
    """The thing asked for does not exist."""


class Conflict(ClipRSError):
    """The request is valid but the thing is not in a state that allows it (e.g. a run that is
    not done yet); the message says what to wait for or do first."""


class TooLarge(ClipRSError):
    """The request is valid but exceeds a configured limit."""


class Unavailable(ClipRSError):
    """A dependency (database, Redis, a peer service, the index) is not reachable or not ready."""
