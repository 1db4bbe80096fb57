"""What loading produces: ``Document`` and its spans, ``Skipped``, and the caps on loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Page:
    """One PDF page's span in ``Document.text``."""

    number: int  # 1-based PDF page number
    start: int  # offset in Document.text where this page's text begins
    end: int  # offset where it ends (exclusive)
    label: str | None = None  # the printed page label ("xii") when it differs from the number


@dataclass(frozen=True)
class Heading:
    """A section heading found in the text, at the offset where its line begins."""

    start: int
    level: int  # 1 = top
    title: str


@dataclass(frozen=True)
class Document:
    """One loaded file: its extracted text plus where its pages and headings are."""

    path: str  # POSIX path relative to the indexed root (the file name for a lone file)
    text: str  # extracted text; chunks and offsets refer to it
    kind: str  # "text" | "markdown" | "rst" | "html" | "pdf" | "code"
    sha256: str  # hex digest of the file's bytes
    size: int  # bytes
    mtime: float
    pages: tuple[Page, ...] = ()  # PDFs: one per page that yielded text
    headings: tuple[Heading, ...] = ()
    warnings: tuple[str, ...] = ()  # things the user may want to know, e.g. replaced bytes
    # HTML: (offset in text, 1-based line of the source file) pairs, ascending; the text from
    # each offset on came from that line. Empty when text lines are the file's own lines.
    line_map: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Skipped:
    """A file discovery or loading passed over, and why."""

    path: str  # relative POSIX path
    reason: str
    # True: should have been indexed but could not be (corrupt, encrypted, unreadable);
    # False: deliberately left out (unsupported type, binary, empty, over the size cap).
    failed: bool


DEFAULT_MAX_CHARS_PER_FILE = 10_000_000
DEFAULT_MAX_CHARS_PER_PAGE = 200_000
DEFAULT_MAX_SECONDS_PER_FILE = 120.0


@dataclass(frozen=True)
class Limits:
    """Caps that stop one hostile file (a decompression bomb) costing unbounded time or memory."""

    # About 4,000 book pages; a real page holds a few thousand characters.
    max_chars_per_file: int = DEFAULT_MAX_CHARS_PER_FILE
    max_chars_per_page: int = DEFAULT_MAX_CHARS_PER_PAGE
    max_seconds_per_file: float = DEFAULT_MAX_SECONDS_PER_FILE  # PDFs: the only expanding format
    skip_generated: bool = True  # minified or generated assets (a line over 1,000 characters)


# --- what we read --------------------------------------------------------------------------

# fmt: off
_SUFFIXES_BY_KIND: dict[str, tuple[str, ...]] = {
    "text": (".txt", ".text", ".csv", ".tsv", ".tex", ".org", ".adoc"),
    "markdown": (".md", ".markdown"),
    "rst": (".rst",),
    "html": (".html", ".htm"),
    "pdf": (".pdf",),
    "code": (".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".c", ".h", ".cpp", ".hpp", ".cc",
             ".go", ".rs", ".rb", ".php", ".cs", ".swift", ".kt", ".scala", ".sh", ".bash", ".sql",
             ".r", ".m", ".lua", ".pl", ".toml", ".yaml", ".yml", ".ini", ".cfg", ".json", ".xml",
             ".css"),
}
# Well-known files that carry no suffix, by lower-cased name.
_NAMES_BY_KIND: dict[str, tuple[str, ...]] = {
    "text": ("readme", "license", "licence", "copying", "notice", "authors", "changelog"),
    "code": ("makefile", "dockerfile", "containerfile", "jenkinsfile", "gemfile"),
}
# fmt: on
_KIND_BY_SUFFIX = {suffix: kind for kind, group in _SUFFIXES_BY_KIND.items() for suffix in group}
_KIND_BY_NAME = {name: kind for kind, group in _NAMES_BY_KIND.items() for name in group}


def kind_of(path: Path | str) -> str | None:
    """The loader kind for a file name, or None when ragkit does not read it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix:
        return _KIND_BY_SUFFIX.get(suffix)
    return _KIND_BY_NAME.get(path.name.lower())


def unsupported(path: Path | str) -> str:
    """The skip reason for a file ragkit does not read."""
    suffix = Path(path).suffix.lower()
    return f"unsupported type {suffix}" if suffix else "unsupported type (no extension)"


def clip(message: str) -> str:
    """One line of at most 120 characters, for reasons and warnings."""
    message = " ".join(message.split())
    return message if len(message) <= 120 else message[:117] + "..."
