"""Metadata filters on search: which documents and chunks may be ranked at all.

A ``Filters`` value describes its conditions as data (``Filters.conditions()``); each store
compiles them into its own query over chunks and their documents, to choose the chunk ids dense
search may return and the rows keyword search may rank, so a filter is applied before ranking
and never leaves fewer than k hits when k matching chunks exist.
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

    # glob on the document path (case-sensitive), e.g. "docs/*.md"; with no glob characters, a
    # file or a folder and everything under it ("docs" = "docs" or "docs/*")
    path: str | None = None
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

    def conditions(self) -> tuple[tuple[Condition, ...], ...]:
        """The filters as data: every group must hold, and within a group any one condition."""
        groups: list[tuple[Condition, ...]] = []
        if self.path and not any(c in self.path for c in "*?["):
            bare = self.path.removeprefix("./").rstrip("/")
            groups.append(
                (Condition("path", "in", (bare,)), Condition("path", "glob", bare + "/*"))
            )
        elif self.path:
            groups.append((Condition("path", "glob", self.path),))
        if self.file_types:
            kinds = tuple(t for t in self.file_types if not t.startswith("."))
            either = [Condition("kind", "in", kinds)] if kinds else []
            either += [Condition("path", "endswith", t) for t in self.file_types if t[0] == "."]
            groups.append(tuple(either))
        if self.modified_after is not None:
            groups.append((Condition("mtime", "ge", self.modified_after),))
        if self.modified_before is not None:
            groups.append((Condition("mtime", "lt", self.modified_before),))
        if self.heading:
            groups.append((Condition("heading", "contains", self.heading.lower()),))
        return tuple(groups)


@dataclass(frozen=True)
class Condition:
    """One test on a document or chunk field, for each store to compile into its own query.

    Fields: ``path``, ``kind`` and ``mtime`` of the document, ``heading`` of the chunk.
    Operators: ``glob`` (SQLite GLOB semantics: ``*``, ``?``, ``[...]``, case-sensitive),
    ``in`` (one of a tuple), ``endswith`` (ASCII case-insensitive suffix), ``ge`` and ``lt``
    (numbers), ``contains`` (case-insensitive substring; the value is already lower case).
    """

    field: str
    op: str
    value: Any


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
