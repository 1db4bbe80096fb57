"""Plain text, Markdown and reStructuredText: decoding bytes, and finding section headings."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ragkit.documents.document import Heading, Page
from ragkit.errors import LoadError


@dataclass(frozen=True)
class Extracted:
    """What a reader makes of a file's bytes."""

    text: str
    pages: tuple[Page, ...] = ()
    headings: tuple[Heading, ...] = ()
    warnings: tuple[str, ...] = ()
    line_map: tuple[tuple[int, int], ...] = ()


def decode(data: bytes, charset: str | None = None) -> tuple[str, tuple[str, ...]]:
    """Bytes to text with "\\n" newlines; rejects binary and empty files.

    UTF-8 first (and UTF-16 with a byte-order mark); a declared ``charset`` (HTML) next; else
    Windows-1252, the superset of Latin-1 that legacy Western files use. A warning is kept only
    when that last step is a real guess: the text it gives does not look like Western prose.
    """
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
            if charset and _codec(charset) not in (None, "utf-8"):
                text = data.decode(charset, errors="replace")
                notes = (f"not UTF-8; decoded as declared charset {charset}",)
            else:
                text, notes = _legacy(data)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise LoadError("empty file", failed=False)
    return text, notes


def _codec(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
# Non-letters that Western text does put between two letters: don’t, l·l (Catalan).
_INSIDE_WORDS = frozenset("\u2019\u00b7")


def _as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """A decoding error handler: read the bytes that are not UTF-8 as Windows-1252."""
    assert isinstance(error, UnicodeDecodeError)
    bad = error.object[error.start : error.end]
    # Five bytes are undefined in cp1252; Latin-1 maps them to the C1 controls, like browsers.
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in bad), error.end


codecs.register_error("ragkit-cp1252", _as_cp1252)


def _legacy(data: bytes) -> tuple[str, tuple[str, ...]]:
    """Non-UTF-8 bytes read as Windows-1252, with a warning when that is only a guess.

    Sequences that are valid UTF-8 stay UTF-8: files pasted together from both encodings
    come out right too.
    """
    text = data.decode("utf-8", errors="ragkit-cp1252")
    if _looks_western(text):
        return text, ()
    return text, (
        "not UTF-8; guessed Windows-1252 (Latin-1), which may be wrong: convert the file to UTF-8",
    )


def _looks_western(text: str) -> bool:
    """Whether cp1252-decoded text reads like a Western European language, not mojibake.

    Other 8-bit encodings decoded as cp1252 give runs of accented letters (Cyrillic, Greek) or
    symbols inside words (Central European: "w³asny"); Western text has a few accented letters
    among many plain ones.
    """
    accented = 0
    for match in _NON_ASCII.finditer(text):
        ch, at = match.group(), match.start()
        if ch.isalpha():
            accented += 1
        elif "\x80" <= ch <= "\x9f":
            return False  # C1 control codes: not text in any Western encoding
        elif (
            ch not in _INSIDE_WORDS
            and 0 < at < len(text) - 1
            and text[at - 1].isalpha()
            and text[at + 1].isalpha()
        ):
            return False
    plain = len(_ASCII_LETTER.findall(text))
    return accented <= 0.25 * (accented + plain)


def read_plain(data: bytes) -> Extracted:
    """A text or code file: its text as it is."""
    text, notes = decode(data)
    return Extracted(text, warnings=notes)


def read_markdown(data: bytes) -> Extracted:
    """A Markdown file, with its ATX and setext headings."""
    text, notes = decode(data)
    return Extracted(text, headings=tuple(_markdown_headings(text)), warnings=notes)


def read_rst(data: bytes) -> Extracted:
    """A reStructuredText file, with its section titles."""
    text, notes = decode(data)
    return Extracted(text, headings=tuple(_rst_headings(text)), warnings=notes)


def text_lines(text: str) -> Iterator[tuple[int, str]]:
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
    lines = list(text_lines(text))
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
    lines = list(text_lines(text))
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
