"""STUB for the chunking branch only: the real ragkit/documents.py replaces this at merge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Page:
    """One PDF page: 1-based number and its character span [start, end) in Document.text."""

    number: int
    start: int
    end: int


@dataclass(frozen=True)
class Heading:
    """A heading: offset where its line begins, level (1 = top), and its title."""

    start: int
    level: int
    title: str


@dataclass(frozen=True)
class Document:
    """A loaded file's text with page and heading positions."""

    path: str
    text: str
    kind: str
    sha256: str
    size: int
    mtime: float
    pages: tuple[Page, ...] = ()
    headings: tuple[Heading, ...] = ()
    warnings: tuple[str, ...] = ()
