"""File discovery and loaders: which files to index, and their text with page and heading spans.

``discover`` walks a folder and says which files to load and which it skipped and why;
``load_document`` turns one file into a ``Document`` (suffix -> reader) or raises ``LoadError``.
Offsets in ``Page`` and ``Heading`` index ``Document.text``, after newlines are normalised.
"""

from ragkit.documents.discovery import DEFAULT_MAX_FILE_BYTES, HIDDEN, discover, relative_path
from ragkit.documents.document import Document, Heading, Limits, Page, Skipped
from ragkit.documents.load import load_document
from ragkit.documents.select import IGNORE_FILE, Selection

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "HIDDEN",
    "IGNORE_FILE",
    "Document",
    "Heading",
    "Limits",
    "Page",
    "Selection",
    "Skipped",
    "discover",
    "load_document",
    "relative_path",
]
