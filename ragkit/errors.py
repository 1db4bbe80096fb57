"""Errors ragkit raises on purpose.

Every error a user can cause is a ``RagkitError`` whose message says what to do next; the CLI
prints it as one line and exits non-zero. Anything else is a bug and keeps its traceback.
Where a built-in exception means the same thing, the error is also that built-in (in brackets),
so code that already catches ``ValueError`` or ``FileNotFoundError`` catches ragkit's too.

    RagkitError
    ├── ConfigError           [ValueError] a bad setting: unknown embedder or model, no API key
    ├── QueryError            [ValueError] an empty, non-UTF-8 or otherwise unusable query
    ├── IndexNotFoundError    [FileNotFoundError] no index where one was expected
    ├── IndexMismatchError    the index was built by another embedder or dimension
    ├── IndexLockedError      another process is writing this index
    ├── LoadError             one file could not be read (carries the reason)
    ├── EmbeddingError        the embedding provider failed for good
    │   └── QuotaError        the provider says the account is out of quota
    └── ChatError             the chat model failed or its stream was cut
"""

from __future__ import annotations


class RagkitError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(RagkitError, ValueError):
    """A setting is wrong or missing."""


class QueryError(RagkitError, ValueError):
    """The query cannot be run as given."""


class IndexNotFoundError(RagkitError, FileNotFoundError):
    """There is no index at the given location."""


class IndexMismatchError(RagkitError):
    """The index was built with a different embedder, model or dimension."""


class IndexLockedError(RagkitError):
    """Another process holds the index's write lock."""


class LoadError(RagkitError):
    """A file could not be loaded; ``reason`` is the short form for reports."""

    def __init__(self, reason: str, *, failed: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        # failed=False marks a deliberate skip (unsupported, binary, empty, too large);
        # failed=True a file that should have been indexed and could not be.
        self.failed = failed


class EmbeddingError(RagkitError):
    """The embedding provider failed and retrying will not help."""


class QuotaError(EmbeddingError):
    """The provider refused the request for lack of quota or credit."""


class ChatError(RagkitError):
    """The chat model failed, or its answer stream was cut short."""
