"""What changed between a folder and an index: the changes ``index`` (and its dry run) carry out.

A ``FolderSync`` compares the files under a root with the documents an index holds and yields
one ``Change`` per file that needs work, loading each document only when its size or mtime
moved (the content hash then decides). It never writes: the caller applies each change as it
comes, so a large folder is streamed, not held in memory. ``folder_sync`` makes one from the
settings, and from the file selection an index stored when the settings name none.
``IndexReport`` is what a run (or a dry run) did: these changes, and what was embedded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragkit.documents import (
    Document,
    Limits,
    Selection,
    Skipped,
    discover,
    load_document,
    relative_path,
)
from ragkit.errors import LoadError
from ragkit.store import DocumentRow

if TYPE_CHECKING:
    from ragkit.config import Settings
    from ragkit.store.protocol import IndexStore


@dataclass(frozen=True)
class Change:
    """One file that needs work: ``kind`` says what."""

    kind: str  # "added" | "changed" (doc loaded, to chunk) | "same" (touched) | "moved"
    path: str
    mtime: float
    doc: Document | None = None  # for "added" and "changed"
    old_path: str | None = None  # for "moved"


@dataclass(frozen=True)
class IndexReport:
    """What one ``index`` run did."""

    index: str
    embedder: str
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    moved: tuple[tuple[str, str], ...] = ()
    unchanged: int = 0
    skipped: tuple[Skipped, ...] = ()  # deliberately not indexed (unsupported, binary, empty...)
    failed: tuple[Skipped, ...] = ()  # should have been indexed and could not be
    warnings: tuple[tuple[str, str], ...] = ()  # (path, warning) for files indexed with caveats
    chunks_embedded: int = 0
    chunks_reused: int = 0
    documents: int = 0  # in the index after the run
    chunks: int = 0
    tokens_embedded: int = 0
    seconds: float = 0.0
    dry_run: bool = False  # True: nothing was embedded or written; counts are what a run would do
    cost_usd: float | None = None  # tokens_embedded at the model's list price; None if unknown

    @property
    def ok(self) -> bool:
        """True when every file was indexed or deliberately skipped."""
        return not self.failed


def _under(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` itself or lies inside it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class FolderSync:
    """The comparison of one folder with one index's documents."""

    def __init__(
        self,
        root: Path,
        known: dict[str, DocumentRow],
        *,
        exclude: Sequence[Path],
        max_file_bytes: int,
        follow_symlinks: bool = False,
        selection: Selection | None = None,
        limits: Limits | None = None,
        recheck: bool = False,
    ) -> None:
        self.root = root
        self.known = known
        self.limits = limits or Limits()
        # Read every file again, not only those whose size or mtime moved: the rules about what
        # to index changed, and content decides some of them (minified files).
        self.recheck = recheck
        files, passed_over = discover(
            root,
            exclude=exclude,
            max_file_bytes=max_file_bytes,
            follow_symlinks=follow_symlinks,
            selection=selection,
        )
        self.skipped = [s for s in passed_over if not s.failed]
        self.failed = [s for s in passed_over if s.failed]
        self.present = {relative_path(f, root): f for f in files}
        # A failure to look (unlistable folder, broken link) is not a deletion: what is indexed
        # under it stays.
        kept = {p for p in known if any(_under(p, s.path) for s in self.failed)}
        self.gone = {p: r for p, r in known.items() if p not in self.present and p not in kept}
        self.added: list[str] = []
        self.changed: list[str] = []
        self.moved: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []
        self.unchanged = 0

    @property
    def removed(self) -> list[str]:
        """Indexed paths with no file any more (known once ``changes`` has been run through)."""
        return sorted(self.gone)

    def summary(self) -> dict[str, Any]:
        """What this comparison found, as the matching fields of an IndexReport."""
        return {
            "added": tuple(self.added),
            "changed": tuple(self.changed),
            "removed": tuple(self.removed),
            "moved": tuple(self.moved),
            "unchanged": self.unchanged,
            "skipped": tuple(self.skipped),
            "failed": tuple(self.failed),
            "warnings": tuple(self.warnings),
        }

    def changes(
        self,
        progress: Callable[[str, int, int], None],
        on_file: Callable[[str, int], None] | None = None,
    ) -> Iterator[Change]:
        """Each file that needs work, in path order; counts and reports fill in as it goes.

        ``on_file(path, size)`` is called before each file is read.
        """
        # Renames: a new path whose bytes match a document whose path is gone.
        by_hash = {r.sha256: p for p, r in self.gone.items()}
        for done, (rel, file) in enumerate(self.present.items(), start=1):
            progress("load", done, len(self.present))
            row = self.known.get(rel)
            try:
                stat = file.stat()
                if (
                    row
                    and not self.recheck
                    and row.status == "indexed"
                    and (row.size, row.mtime)
                    == (
                        stat.st_size,
                        stat.st_mtime,
                    )
                ):
                    self.unchanged += 1  # fast path: size and mtime unchanged
                    continue
                if on_file is not None:
                    on_file(rel, stat.st_size)
                doc = load_document(file, self.root, limits=self.limits)
            except LoadError as exc:
                if exc.failed:  # the indexed version, if any, stays searchable
                    self.failed.append(Skipped(rel, exc.reason, True))
                else:  # now empty, binary...: nothing of it belongs in the index any more
                    self.skipped.append(Skipped(rel, exc.reason, False))
                    if row:
                        self.gone[rel] = row
                continue
            except OSError as exc:
                self.failed.append(Skipped(rel, f"unreadable: {exc.strerror or exc}", True))
                continue
            self.warnings.extend((rel, w) for w in doc.warnings)
            if row and row.sha256 == doc.sha256:
                # Same bytes: touched, or interrupted before all its vectors were stored (those
                # still missing are embedded with the rest).
                self.unchanged += 1
                yield Change("same", rel, doc.mtime)
                continue
            old = by_hash.pop(doc.sha256, None) if row is None else None
            if old is not None:
                del self.gone[old]
                self.moved.append((old, rel))
                yield Change("moved", rel, doc.mtime, old_path=old)
                continue
            (self.changed if row else self.added).append(rel)
            yield Change("changed" if row else "added", rel, doc.mtime, doc=doc)


def _selection(settings: Settings, stored: str | None) -> dict[str, Any]:
    """The file selection for a run: the settings' patterns, else those the index stored."""
    old = json.loads(stored) if stored else {}
    return {
        "include": [p for p in settings.include if p]
        if settings.include is not None
        else old.get("include", []),
        "exclude": [p for p in settings.exclude if p]
        if settings.exclude is not None
        else old.get("exclude", []),
        "skip_generated": settings.skip_generated,
    }


def folder_sync(
    root: Path, known: dict[str, DocumentRow], settings: Settings, store: IndexStore | None
) -> tuple[FolderSync, str]:
    """The comparison of ``root`` with an index's documents, under the settings' limits and file
    selection; also that selection as stored in the index."""
    stored = store.note("selection") if store is not None else None
    selection = _selection(settings, stored)
    encoded = json.dumps(selection, sort_keys=True)
    # Changed rules (or an index from before they were stored) are applied to every file.
    recheck = bool(known) and encoded != stored
    sync = FolderSync(
        root,
        known,
        exclude=[Path(settings.index_dir)],
        max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
        follow_symlinks=settings.follow_symlinks,
        selection=Selection.for_root(
            root if root.is_dir() else root.parent,
            include=selection["include"],
            exclude=selection["exclude"],
            skip_generated=selection["skip_generated"],
        ),
        limits=Limits(
            max_chars_per_file=settings.max_chars_per_file,
            max_chars_per_page=settings.max_chars_per_page,
            max_seconds_per_file=settings.max_seconds_per_file,
            skip_generated=selection["skip_generated"],
        ),
        recheck=recheck,
    )
    return sync, encoded
