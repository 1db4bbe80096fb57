"""Metadata filters on search: which documents and chunks may be ranked at all.

A ``Filters`` value turns into one SQL condition over ``chunks c JOIN documents d``; the store
uses it to choose the chunk ids FAISS may return and the rows BM25 may rank, so a filter is
applied before ranking and never leaves fewer than k hits when k matching chunks exist.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ragkit.errors import ConfigError

# The loader kinds documents.py assigns; anything else given as a file type is a suffix.
KINDS = frozenset({"text", "markdown", "rst", "html", "pdf", "code"})


@dataclass(frozen=True)
class Filters:
    """Conditions a chunk must meet to be searched; all given conditions must hold."""

    path: str | None = None  # SQLite GLOB on the document path ("docs/*.md"); "docs" = "docs/*"
    file_types: tuple[str, ...] = ()  # loader kinds ("pdf") or suffixes (".md"); any may match
    modified_after: float | None = None  # document mtime >= this (epoch seconds)
    modified_before: float | None = None  # document mtime < this (epoch seconds)
    heading: str | None = None  # the chunk's heading path contains this (case-insensitive)

    @property
    def active(self) -> bool:
        """True when any condition is set."""
        return bool(
            self.path
            or self.file_types
            or self.modified_after is not None
            or self.modified_before is not None
            or self.heading
        )

    def where(self) -> tuple[str, list[Any]]:
        """An SQL condition over ``c`` (chunks) and ``d`` (documents), and its parameters."""
        clauses: list[str] = []
        args: list[Any] = []
        if self.path and not any(c in self.path for c in "*?["):
            # No glob characters: a file, or a folder and everything under it ("faq" = "faq/*").
            bare = self.path.removeprefix("./").rstrip("/")
            clauses.append("(d.path = ? OR d.path GLOB ?)")
            args.extend([bare, bare + "/*"])
        elif self.path:
            clauses.append("d.path GLOB ?")
            args.append(self.path)
        if self.file_types:
            kinds = [t for t in self.file_types if not t.startswith(".")]
            suffixes = [t for t in self.file_types if t.startswith(".")]
            either: list[str] = []
            if kinds:
                either.append(f"d.kind IN ({','.join('?' * len(kinds))})")
                args.extend(kinds)
            for suffix in suffixes:
                # lower() folds ASCII only, which covers file suffixes; '%' and '_' cannot occur
                # in a suffix that parse_file_types accepted, so LIKE needs no escaping.
                either.append("lower(d.path) LIKE ?")
                args.append("%" + suffix)
            clauses.append("(" + " OR ".join(either) + ")")
        if self.modified_after is not None:
            clauses.append("d.mtime >= ?")
            args.append(self.modified_after)
        if self.modified_before is not None:
            clauses.append("d.mtime < ?")
            args.append(self.modified_before)
        if self.heading:
            clauses.append("instr(lower(c.heading), ?) > 0")
            args.append(self.heading.lower())
        return (" AND ".join(clauses) or "1"), args


def parse_file_types(value: str | None) -> tuple[str, ...]:
    """``"pdf,.md"`` -> ``("pdf", ".md")``: kinds stay kinds, anything else becomes a suffix."""
    if not value:
        return ()
    out: list[str] = []
    for raw in value.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item not in KINDS:
            item = "." + item.lstrip(".")
            if not item[1:].replace(".", "").replace("-", "").isalnum():
                raise ConfigError(
                    f"bad file type {raw.strip()!r}: give a kind ({', '.join(sorted(KINDS))})"
                    " or a suffix such as .md"
                )
        out.append(item)
    return tuple(dict.fromkeys(out))


def parse_time(value: str | None, name: str) -> float | None:
    """An ISO date or date-time as epoch seconds; dates and naive times are local time."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):  # fromisoformat() accepts "Z" only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{name} {value!r} is not an ISO date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None
    return moment.timestamp()  # a naive datetime is taken as local time, as file mtimes are shown


def make_filters(
    *,
    path: str | None = None,
    file_type: str | None = None,
    modified_after: str | None = None,
    modified_before: str | None = None,
    heading: str | None = None,
) -> Filters:
    """Filters from the user's setting values, refusing ones that cannot be parsed."""
    after = parse_time(modified_after, "modified_after")
    before = parse_time(modified_before, "modified_before")
    if after is not None and before is not None and after >= before:
        raise ConfigError(
            f"modified_after ({modified_after}) is not before modified_before ({modified_before}):"
            " nothing could match"
        )
    return Filters(
        path=path or None,
        file_types=parse_file_types(file_type),
        modified_after=after,
        modified_before=before,
        heading=(heading.strip() or None) if heading else None,
    )
