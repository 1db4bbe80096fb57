"""HTML pages: the visible text of the page's content, its headings, and source line numbers.

Page furniture (navigation, headers, footers, sidebars, permalink signs) is left out, and when a
page marks its content (``<main>``, ``role="main"``, ``<article>``) only that is read. Every
stretch of text remembers the line of the file it came from, so citations open at the spot.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from ragkit.documents.document import Heading
from ragkit.documents.text import Extracted, decode
from ragkit.errors import LoadError

_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "canvas", "iframe"})
# fmt: off
_PARAGRAPH = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol", "dl",
    "section", "article", "header", "footer", "main", "nav", "aside", "figure", "form",
    "fieldset", "details", "address", "hr",
})
_LINE = frozenset({
    "div", "br", "li", "tr", "dt", "dd", "caption", "figcaption", "summary", "option",
})
_VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr",
})
# Furniture by tag, by ARIA role, and by the class names Sphinx, MkDocs and their themes use.
_FURNITURE_TAGS = frozenset({"nav", "aside"})
_FURNITURE_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "complementary"})
_FURNITURE_CLASSES = frozenset({
    "sphinxsidebar", "related", "headerlink", "footer", "md-sidebar", "md-header", "md-footer",
    "md-tabs", "wy-nav-side", "rst-versions", "rst-footer-buttons", "sidebar-drawer",
    "toc-drawer", "related-pages", "mobile-header", "navbar",
})
# fmt: on
# <header> and <footer> are furniture only outside a page's content (an article's own header
# holds its title).
_SECTIONING = frozenset({"article", "main", "section"})
# Signs themes append to headings as permalinks.
_PERMALINK_SIGNS = frozenset({"\u00b6", "#", "\u00a7", "\U0001f517"})
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_:.-]+)""", re.IGNORECASE)
_WORD = re.compile(r"\S+")
_MAIN_TAG = re.compile(r"<main[\s>]", re.IGNORECASE)
_MAIN_ROLE = re.compile(r"""<[a-z][^>]*\srole\s*=\s*["']?main\b""", re.IGNORECASE)
_ARTICLE_TAG = re.compile(r"<article[\s>]", re.IGNORECASE)


def _attr(attrs: list[tuple[str, str | None]], name: str) -> str:
    return next((v or "" for k, v in attrs if k == name), "")


class _HTMLText(HTMLParser):
    """Collects an HTML page's visible text, with line breaks at block elements."""

    def __init__(self, scope: str | None, max_chars: int) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.headings: list[Heading] = []
        self.title_parts: list[str] = []
        self.title_line = 1
        self.line_map: list[tuple[int, int]] = []
        self._max_chars = max_chars
        self._scope = scope  # "main", "role=main", "article" or None (the whole body)
        self._scope_tag: str | None = None
        self._scope_depth = 0
        self._drop_tag: str | None = None  # the furniture element being left out
        self._drop_depth = 0
        self._sectioning = 0
        self._breaks = 0  # newlines owed before the next text
        self._sep = ""  # separator owed before the next text on the same line
        self._skip = 0
        self._pre = 0
        self._pre_fresh = False
        self._in_head = self._in_title = False
        self._heading: tuple[int, int | None, list[str]] | None = None  # level, start, words
        self._cells = 0

    def _is_furniture(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag in _FURNITURE_TAGS or _attr(attrs, "role") in _FURNITURE_ROLES:
            return True
        if tag in ("header", "footer") and not self._sectioning:
            return True
        return not _FURNITURE_CLASSES.isdisjoint(_attr(attrs, "class").split())

    def _enters_scope(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if self._scope == "role=main":
            return _attr(attrs, "role") == "main"
        return tag == self._scope

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._drop_tag is not None:
            self._drop_depth += tag == self._drop_tag
            return
        if tag not in _VOID and not self._in_head and self._is_furniture(tag, attrs):
            self._drop_tag, self._drop_depth = tag, 1
            return
        if self._scope is not None:
            if self._scope_depth:
                self._scope_depth += tag == self._scope_tag
            elif tag not in _VOID and self._enters_scope(tag, attrs):
                self._scope_tag, self._scope_depth = tag, 1
        if tag in _SECTIONING:
            self._sectioning += 1
        if tag in _SKIP:
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
        if tag in _PARAGRAPH:
            self._breaks = 2
        elif tag in _LINE:
            self._breaks = max(self._breaks, 1)
        if tag == "tr":
            self._cells = 0
        elif tag == "pre":
            self._pre += 1
            self._pre_fresh = True
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._heading = (int(tag[1]), None, [])

    def handle_endtag(self, tag: str) -> None:
        if self._drop_tag is not None:
            if tag == self._drop_tag:
                self._drop_depth -= 1
                if not self._drop_depth:
                    self._drop_tag = None
            return
        if self._scope_depth and tag == self._scope_tag:
            self._scope_depth -= 1
        if tag in _SECTIONING:
            self._sectioning = max(0, self._sectioning - 1)
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "head":
            self._in_head = False
        elif tag == "title":
            self._in_title = False
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag in _PARAGRAPH:
            self._breaks = 2
        elif tag in _LINE:
            self._breaks = max(self._breaks, 1)
        if self._heading is not None and tag == f"h{self._heading[0]}":
            level, start, words = self._heading
            while words and words[-1] in _PERMALINK_SIGNS:
                words.pop()
            if start is not None and words:
                self.headings.append(Heading(start, level, " ".join(words)))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._skip or self._drop_tag is not None:
            return
        line = self.getpos()[0]  # the line where this stretch of text begins
        if self._in_title:
            if not self.title_parts:
                self.title_line = line
            self.title_parts.append(data)
            return
        if self._in_head or (self._scope is not None and not self._scope_depth):
            return
        if self._pre:
            if self._pre_fresh:  # HTML drops the newline that follows <pre>
                if data.startswith("\n"):
                    data, line = data[1:], line + 1
                self._pre_fresh = False
            if data:
                self._emit(data, line)
            return
        if data[:1].isspace() and not self._sep:
            self._sep = " "
        at, found = 0, False
        for match in _WORD.finditer(data):
            if found:
                self._sep = " "
            line += data.count("\n", at, match.start())
            at = match.start()
            self._emit(match.group(), line)
            found = True
        if found and data[-1:].isspace():
            self._sep = " "

    def _emit(self, text: str, line: int) -> None:
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
        self._note_line(self.length, line)
        newline = text.find("\n")
        while newline >= 0:  # <pre> text: every line of it keeps its own source line
            line += 1
            self._note_line(self.length + newline + 1, line)
            newline = text.find("\n", newline + 1)
        self.parts.append(text)
        self.length += len(text)
        if self.length > self._max_chars:
            raise LoadError(
                f"more than {self._max_chars:,} characters of text (--max-chars-per-file)",
                failed=True,
            )

    def _note_line(self, offset: int, line: int) -> None:
        if not self.line_map or self.line_map[-1][1] != line:
            self.line_map.append((offset, line))


def _scope(html: str) -> str | None:
    """Where a page keeps its content: <main>, an element with role=main, or its <article>s."""
    if _MAIN_TAG.search(html):
        return "main"
    if _MAIN_ROLE.search(html):
        return "role=main"
    if _ARTICLE_TAG.search(html):
        return "article"
    return None


def _parse(html: str, scope: str | None, max_chars: int) -> _HTMLText:
    parser = _HTMLText(scope, max_chars)
    parser.feed(html)
    parser.close()
    return parser


def read_html(data: bytes, *, max_chars: int) -> Extracted:
    """An HTML page's content text, headings and the source line of every stretch of text."""
    charset = _CHARSET.search(data[:4096])
    html, notes = decode(data, charset.group(1).decode("ascii") if charset else None)
    scope = _scope(html)
    parser = _parse(html, scope, max_chars)
    if scope is not None and not "".join(parser.parts).strip():
        parser = _parse(html, None, max_chars)  # the marker was a false lead (e.g. in a comment)
    text = "".join(parser.parts).rstrip()
    headings = parser.headings
    line_map = parser.line_map
    title = " ".join(" ".join(parser.title_parts).split())
    if title and all(h.title != title for h in headings):
        # The <title> becomes the first line and heading, unless a heading repeats it anyway.
        shift = len(title) + 2
        text = f"{title}\n\n{text}" if text else title
        headings = [Heading(0, 1, title)] + [
            Heading(h.start + shift, h.level, h.title) for h in headings
        ]
        line_map = [(0, parser.title_line)] + [(o + shift, n) for o, n in line_map]
    if not text.strip():
        raise LoadError("no visible text", failed=False)
    return Extracted(text, headings=tuple(headings), warnings=notes, line_map=tuple(line_map))
