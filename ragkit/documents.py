"""File discovery and loaders: which files to index, and their text with page and heading spans.

``discover`` walks a folder and says which files to load and which it skipped and why;
``load_document`` turns one file into a ``Document`` (suffix -> reader) or raises ``LoadError``.
Offsets in ``Page`` and ``Heading`` index ``Document.text``, after newlines are normalised.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import logging
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from ragkit.errors import LoadError

if TYPE_CHECKING:
    from pypdf import PdfReader

DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Page:
    """One PDF page's span in ``Document.text``."""

    number: int  # 1-based PDF page number
    start: int  # offset in Document.text where this page's text begins
    end: int  # offset where it ends (exclusive)


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


@dataclass(frozen=True)
class Skipped:
    """A file discovery or loading passed over, and why."""

    path: str  # relative POSIX path
    reason: str
    # True: should have been indexed but could not be (corrupt, encrypted, unreadable);
    # False: deliberately left out (unsupported type, binary, empty, over the size cap).
    failed: bool


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
# Tool and dependency folders that are never documents; walked past silently, like hidden ones.
_IGNORED_DIRS = frozenset({"__pycache__", "node_modules", "__pypackages__", "site-packages"})


def _kind(path: Path) -> str | None:
    """The loader kind for a file name, or None when ragkit does not read it."""
    suffix = path.suffix.lower()
    if suffix:
        return _KIND_BY_SUFFIX.get(suffix)
    return _KIND_BY_NAME.get(path.name.lower())


def _unsupported(path: Path) -> str:
    suffix = path.suffix.lower()
    return f"unsupported type {suffix}" if suffix else "unsupported type (no extension)"


# --- discovery -----------------------------------------------------------------------------


def relative_path(path: Path, root: Path) -> str:
    """``path`` as a POSIX string relative to ``root``; the file name when root is the file."""
    if path == root:
        return path.name
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.resolve().relative_to(root.resolve()).as_posix()


def discover(
    root: Path,
    *,
    exclude: Sequence[Path] = (),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> tuple[list[Path], list[Skipped]]:
    """Files under ``root`` (a folder or one file) to load, in sorted order, and those skipped."""
    root = Path(root)
    excluded = {os.path.realpath(p) for p in exclude}
    files: list[Path] = []
    skipped: list[Skipped] = []
    # Real paths already walked or taken, so symlinks never loop or load one thing twice.
    seen: dict[str, str] = {}

    def consider_file(path: Path, rel: str, real: str, st: os.stat_result) -> None:
        if _kind(path) is None:
            skipped.append(Skipped(rel, _unsupported(path), failed=False))
        elif not stat.S_ISREG(st.st_mode):
            skipped.append(Skipped(rel, "not a regular file", failed=False))
        elif st.st_size > max_file_bytes:
            reason = f"larger than {_megabytes(max_file_bytes)} (--max-file-mb)"
            skipped.append(Skipped(rel, reason, failed=False))
        elif real in seen:
            skipped.append(Skipped(rel, f"same file as {seen[real]}", failed=False))
        elif real not in excluded:
            seen[real] = rel
            files.append(path)

    def walk(folder: Path, folder_rel: str, real_folder: str, ancestors: frozenset[str]) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(folder_rel, _os_reason(exc), failed=True))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            rel = f"{folder_rel}/{entry.name}" if folder_rel else entry.name
            try:
                st = entry.stat()  # follows symlinks
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    skipped.append(Skipped(rel, "symlink loop", failed=False))
                elif entry.is_symlink() and exc.errno == errno.ENOENT:
                    wanted = _kind(path) is not None
                    skipped.append(Skipped(rel, "broken symlink", failed=wanted))
                else:
                    skipped.append(Skipped(rel, _os_reason(exc), failed=True))
                continue
            # realpath costs a syscall per path component, so only symlinks pay for it.
            is_link = entry.is_symlink()
            real = os.path.realpath(path) if is_link else os.path.join(real_folder, entry.name)
            if not stat.S_ISDIR(st.st_mode):
                consider_file(path, rel, real, st)
            elif entry.name in _IGNORED_DIRS or entry.name.endswith(".egg-info"):
                continue
            elif real in excluded or os.path.isfile(os.path.join(real, "pyvenv.cfg")):
                continue  # the index folder, or a virtualenv under any name
            elif real in ancestors:
                skipped.append(Skipped(rel, "symlink loop", failed=False))
            elif real in seen:
                skipped.append(Skipped(rel, f"same folder as {seen[real]}", failed=False))
            else:
                seen[real] = rel
                walk(path, rel, real, ancestors | {real})

    try:
        root_stat = root.stat()
    except FileNotFoundError as exc:
        raise LoadError(f"{root} does not exist; check the path", failed=True) from exc
    except OSError as exc:
        raise LoadError(f"cannot read {root} ({_os_reason(exc)}); check the path") from exc
    real_root = os.path.realpath(root)
    if stat.S_ISDIR(root_stat.st_mode):
        seen[real_root] = "."
        walk(root, "", real_root, frozenset({real_root}))
    else:
        consider_file(root, relative_path(root, root), real_root, root_stat)
    return files, skipped


def _megabytes(n: int) -> str:
    mib = n / (1024 * 1024)
    return f"{mib:g} MB" if mib >= 1 else f"{n} bytes"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"unreadable: {exc.strerror or exc}"


# --- loading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Extracted:
    """What a reader makes of a file's bytes."""

    text: str
    pages: tuple[Page, ...] = ()
    headings: tuple[Heading, ...] = ()
    warnings: tuple[str, ...] = ()


def load_document(path: Path, root: Path) -> Document:
    """Read one file into a ``Document``; raises ``LoadError`` saying why it cannot."""
    path = Path(path)
    kind = _kind(path)
    if kind is None:
        raise LoadError(_unsupported(path), failed=False)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block open() for ever
            raise LoadError("not a regular file", failed=False)
        with open(path, "rb") as fh:
            data = fh.read()
            mtime = os.fstat(fh.fileno()).st_mtime
    except OSError as exc:
        raise LoadError(f"unreadable: {exc.strerror or exc}", failed=True) from exc
    extracted = _READERS[kind](data)
    return Document(
        path=relative_path(path, Path(root)),
        text=extracted.text,
        kind=kind,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        mtime=mtime,
        pages=extracted.pages,
        headings=extracted.headings,
        warnings=extracted.warnings,
    )


def _decode(data: bytes, charset: str | None = None) -> tuple[str, tuple[str, ...]]:
    """Bytes to text with "\\n" newlines; rejects binary and empty files, flags bad UTF-8."""
    notes: tuple[str, ...] = ()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", errors="replace")
    else:
        sample = data[:8192]
        controls = sum(1 for b in sample if (b < 32 and b not in b"\t\n\r\f\x1b") or b == 127)
        if b"\x00" in sample or controls > len(sample) // 10:
            raise LoadError("binary content", failed=False)
        data = data.removeprefix(codecs.BOM_UTF8)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            # Every U+FFFD beyond the ones spelled in the file is a replaced byte sequence.
            bad = text.count("\ufffd") - data.count("\ufffd".encode())
            notes = (f"invalid UTF-8 replaced at {bad} place{'s' if bad != 1 else ''}",)
            if charset and _codec(charset) not in (None, "utf-8"):
                text = data.decode(charset, errors="replace")
                notes = (f"not UTF-8; decoded as declared charset {charset}",)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise LoadError("empty file", failed=False)
    return text, notes


def _codec(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _read_plain(data: bytes) -> _Extracted:
    text, notes = _decode(data)
    return _Extracted(text, warnings=notes)


def _read_markdown(data: bytes) -> _Extracted:
    text, notes = _decode(data)
    return _Extracted(text, headings=tuple(_markdown_headings(text)), warnings=notes)


def _read_rst(data: bytes) -> _Extracted:
    text, notes = _decode(data)
    return _Extracted(text, headings=tuple(_rst_headings(text)), warnings=notes)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Each line of text (without its newline) and the offset where it begins."""
    offset = 0
    for line in text.split("\n"):
        yield offset, line
        offset += len(line) + 1


# --- Markdown headings ---------------------------------------------------------------------

_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r" {0,3}([-*+][ \t]|\d{1,9}[.)][ \t]|>|\|)")  # list, quote, table
_FRONT_MATTER_END = re.compile(r"(---|\.\.\.)[ \t]*$")


def _markdown_headings(text: str) -> list[Heading]:
    """ATX ('#') and setext headings, ignoring code fences, indented code and front matter."""
    headings: list[Heading] = []
    lines = list(_lines(text))
    start_at = 0
    if lines and lines[0][1].rstrip() == "---":  # YAML front matter: its '---' is no heading
        for i, (_, line) in enumerate(lines[1:], start=1):
            if _FRONT_MATTER_END.match(line):
                start_at = i + 1
                break
    fence: str | None = None  # the opening fence while inside a fenced block
    para: list[tuple[int, str]] = []  # the open paragraph's lines
    para_titled = False  # whether a setext underline would make the paragraph a heading
    for offset, line in lines[start_at:]:
        if fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence) and stripped == stripped[0] * len(stripped):
                fence = None
            continue
        if fence_match := _FENCE.match(line):
            fence, para = fence_match.group(1), []
        elif not line.strip():
            para = []
        elif atx := _ATX.match(line):
            if atx.group(2):
                headings.append(Heading(offset, len(atx.group(1)), atx.group(2).strip()))
            para = []
        elif para:
            if setext := _SETEXT.match(line):  # an underline, or a thematic break after a list
                if para_titled:
                    title = " ".join(part.strip() for _, part in para)
                    level = 1 if setext.group(1)[0] == "=" else 2
                    headings.append(Heading(para[0][0], level, title))
                para = []
            else:
                para.append((offset, line))
        elif not line.startswith(("    ", "\t")) and not _SETEXT.match(line):  # not code/rule
            para = [(offset, line)]
            para_titled = not _NOT_PARAGRAPH.match(line)
    return headings


# --- reStructuredText headings -------------------------------------------------------------

_RST_ADORNMENT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _adornment(line: str) -> str | None:
    """The character of an rst over/underline ('=====' -> '='), or None."""
    line = line.rstrip()
    if len(line) >= 2 and line[0] in _RST_ADORNMENT and line == line[0] * len(line):
        return line[0]
    return None


def _rst_headings(text: str) -> list[Heading]:
    """Section titles; levels follow the order each adornment style first appears."""
    lines = list(_lines(text))
    levels: dict[tuple[str, bool], int] = {}
    headings: list[Heading] = []

    def add(offset: int, char: str, overlined: bool, title: str) -> None:
        level = levels.setdefault((char, overlined), len(levels) + 1)
        headings.append(Heading(offset, level, title.strip()))

    i, after_blank = 0, True
    while i < len(lines):
        offset, line = lines[i]
        char = _adornment(line)
        if char and i + 2 < len(lines):
            title, under = lines[i + 1][1], lines[i + 2][1]
            if title.strip() and not _adornment(title) and under.rstrip() == line.rstrip():
                add(offset, char, True, title)
                i, after_blank = i + 3, True
                continue
        if after_blank and line[:1].strip() and not char and i + 1 < len(lines):
            under = lines[i + 1][1].rstrip()
            under_char = _adornment(under)
            # docutils accepts a short underline only when it is at least 4 characters long.
            if under_char and (len(under) >= len(line.rstrip()) or len(under) >= 4):
                add(offset, under_char, False, line)
                i, after_blank = i + 2, True
                continue
        after_blank = not line.strip()
        i += 1
    return headings


# --- HTML ----------------------------------------------------------------------------------

_HTML_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "canvas", "iframe"})
# fmt: off
_HTML_PARAGRAPH = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol", "dl",
    "section", "article", "header", "footer", "main", "nav", "aside", "figure", "form",
    "fieldset", "details", "address", "hr",
})
_HTML_LINE = frozenset({
    "div", "br", "li", "tr", "dt", "dd", "caption", "figcaption", "summary", "option",
})
# fmt: on
_HTML_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_:.-]+)""", re.IGNORECASE)


class _HTMLText(HTMLParser):
    """Collects an HTML page's visible text, with line breaks at block elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.headings: list[Heading] = []
        self.title_parts: list[str] = []
        self._breaks = 0  # newlines owed before the next text
        self._sep = ""  # separator owed before the next text on the same line
        self._skip = 0
        self._pre = 0
        self._pre_fresh = False
        self._in_head = self._in_title = False
        self._heading: tuple[int, int | None, list[str]] | None = None  # level, start, words
        self._cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP:
            self._skip += 1
        elif tag == "head":
            self._in_head = True
        elif tag == "body":
            self._in_head = False
        elif tag == "title":
            self._in_title = True
        elif tag in ("td", "th"):
            if self._cells:
                self._sep = " | "
            self._cells += 1
        if tag in _HTML_PARAGRAPH:
            self._breaks = 2
        elif tag in _HTML_LINE:
            self._breaks = max(self._breaks, 1)
        if tag == "tr":
            self._cells = 0
        elif tag == "pre":
            self._pre += 1
            self._pre_fresh = True
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._heading = (int(tag[1]), None, [])

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "head":
            self._in_head = False
        elif tag == "title":
            self._in_title = False
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag in _HTML_PARAGRAPH:
            self._breaks = 2
        elif tag in _HTML_LINE:
            self._breaks = max(self._breaks, 1)
        if self._heading is not None and tag == f"h{self._heading[0]}":
            level, start, words = self._heading
            if start is not None and words:
                self.headings.append(Heading(start, level, " ".join(words)))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._in_head:
            return
        if self._pre:
            if self._pre_fresh:  # HTML drops the newline that follows <pre>
                data = data.removeprefix("\n")
                self._pre_fresh = False
            if data:
                self._emit(data)
            return
        words = data.split()
        if data[:1].isspace() and not self._sep:
            self._sep = " "
        for i, word in enumerate(words):
            if i:
                self._sep = " "
            self._emit(word)
        if words and data[-1:].isspace():
            self._sep = " "

    def _emit(self, text: str) -> None:
        if self.length:
            # Newlines that <pre> text already ends with count towards the breaks owed.
            owed = self._breaks - (len(self.parts[-1]) - len(self.parts[-1].rstrip("\n")))
            prefix = "\n" * max(owed, 0) if self._breaks else self._sep
            self.parts.append(prefix)
            self.length += len(prefix)
        self._breaks, self._sep = 0, ""
        if self._heading is not None:
            level, start, words = self._heading
            self._heading = (level, self.length if start is None else start, words)
            words.extend(text.split())
        self.parts.append(text)
        self.length += len(text)


def _read_html(data: bytes) -> _Extracted:
    charset = _HTML_CHARSET.search(data[:4096])
    html, notes = _decode(data, charset.group(1).decode("ascii") if charset else None)
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts).rstrip()
    headings = parser.headings
    title = " ".join(" ".join(parser.title_parts).split())
    if title and all(h.title != title for h in headings):
        # The <title> becomes the first line and heading, unless a heading repeats it anyway.
        shift = len(title) + 2
        text = f"{title}\n\n{text}" if text else title
        headings = [Heading(0, 1, title)] + [
            Heading(h.start + shift, h.level, h.title) for h in headings
        ]
    if not text.strip():
        raise LoadError("no visible text", failed=False)
    return _Extracted(text, headings=tuple(headings), warnings=notes)


# --- PDF -----------------------------------------------------------------------------------

_PDF_NOTES_KEPT = 5  # pypdf can log hundreds of lines for one damaged file


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextmanager
def _pdf_notes() -> Iterator[list[str]]:
    """Catch pypdf's log lines and Python warnings into a list instead of the user's console."""
    notes: list[str] = []
    pdf_logger = logging.getLogger("pypdf")
    handler = _ListHandler(notes)
    propagate = pdf_logger.propagate
    pdf_logger.addHandler(handler)
    pdf_logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notes
        notes.extend(str(w.message) for w in caught)
    finally:
        pdf_logger.removeHandler(handler)
        pdf_logger.propagate = propagate


def _clip(message: str) -> str:
    """One line of at most 120 characters, for reasons and warnings."""
    message = " ".join(message.split())
    return message if len(message) <= 120 else message[:117] + "..."


def _open_pdf(data: bytes) -> PdfReader:
    from pypdf import PasswordType, PdfReader  # lazily: pypdf is slow to import

    # pypdf reports damage through many exception types (PdfReadError, ValueError, KeyError,
    # RecursionError...); each becomes a reported LoadError, not a hidden failure.
    try:
        reader = PdfReader(io.BytesIO(data))
        if not reader.is_encrypted:
            return reader
    except Exception as exc:
        raise LoadError(f"corrupt PDF: {_reason(exc)}", failed=True) from exc
    try:
        unlocked = reader.decrypt("")  # many PDFs are encrypted only to set permissions
    except Exception as exc:  # e.g. pypdf's DependencyError for AES without `cryptography`
        raise LoadError(f"encrypted PDF — decrypt it first ({_reason(exc)})", failed=True) from exc
    if unlocked == PasswordType.NOT_DECRYPTED:
        raise LoadError("encrypted PDF — decrypt it first", failed=True)
    return reader


def _reason(exc: BaseException) -> str:
    return _clip(str(exc)) or type(exc).__name__


def _read_pdf(data: bytes) -> _Extracted:
    parts: list[str] = []
    pages: list[Page] = []
    failures: list[str] = []
    with _pdf_notes() as notes:
        reader = _open_pdf(data)
        try:
            count = len(reader.pages)
        except Exception as exc:  # a broken page tree; see _open_pdf
            raise LoadError(f"corrupt PDF: {_reason(exc)}", failed=True) from exc
        offset = 0
        for number in range(1, count + 1):
            try:
                raw = reader.pages[number - 1].extract_text()
            # One bad page should not cost the others; see _open_pdf for the broad except.
            except Exception as exc:  # noqa: BLE001
                failures.append(f"page {number} failed: {_reason(exc)}")
                continue
            page_text = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()
            if not page_text:
                continue
            if parts:
                offset += 2  # the "\n\n" between pages
            pages.append(Page(number, offset, offset + len(page_text)))
            parts.append(page_text)
            offset += len(page_text)
    if not parts:
        if failures:
            raise LoadError(f"corrupt PDF: no page could be read ({failures[0]})", failed=True)
        raise LoadError("no text — scanned? (OCR it first)", failed=True)
    unique = list(dict.fromkeys(notes))
    kept = [f"pypdf: {_clip(note)}" for note in unique[:_PDF_NOTES_KEPT]]
    if len(unique) > _PDF_NOTES_KEPT:
        kept.append(f"pypdf: {len(unique) - _PDF_NOTES_KEPT} more warnings")
    return _Extracted("\n\n".join(parts), pages=tuple(pages), warnings=tuple(failures + kept))


_READERS: dict[str, Callable[[bytes], _Extracted]] = {
    "text": _read_plain,
    "code": _read_plain,
    "markdown": _read_markdown,
    "rst": _read_rst,
    "html": _read_html,
    "pdf": _read_pdf,
}
